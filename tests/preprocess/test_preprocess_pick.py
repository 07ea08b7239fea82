"""Particle picking on simulated micrographs (512 px at 2 Å/px, closed adenylate kinase at the simulator's
default SNR 0.1): template matching from the map and from clean 2D views, the PU-trained learned picker, and
the shared pieces (binning, peak finding, thresholds, matching)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vitreous.physics.ctf import CTFParams
from vitreous.preprocess.pick_learned import LearnedOptions, LearnedPicker, nnpu_loss, train_picker
from vitreous.preprocess.pick_template import (
    TemplateOptions,
    delocalisation_px,
    pick_micrograph,
    templates_from_averages,
    templates_from_map,
)
from vitreous.preprocess.picking import (
    automatic_threshold,
    count_threshold,
    find_peaks,
    fourier_bin,
    match_picks,
    picks_from_peaks,
)
from vitreous.sim.micrographs import Micrograph, MicrographOptions, MicrographSimulator
from vitreous.sim.truth import models_truth

ADK = Path(__file__).resolve().parents[2] / "src" / "vitreous" / "resources" / "adk_closed.pdb.gz"
APIX, SIZE = 2.0, 512


@pytest.fixture(scope="module")
def simulated() -> tuple[torch.Tensor, float, list[Micrograph]]:
    """The truth map, the particle diameter (Å) and three micrographs with 60 particles each."""
    torch.set_num_threads(1)  # torch is fastest with one thread on the 2 shared cores
    volume = models_truth([ADK], None, APIX).volumes[0]
    simulator = MicrographSimulator([volume], MicrographOptions(size=SIZE, apix=APIX, particles=(60, 60)))
    return volume, 2 * float(simulator.radii[0]), [simulator.simulate(seed) for seed in range(3)]


def truth_xy(micrograph: Micrograph) -> np.ndarray:
    return micrograph.particles[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()


def ctf_of(micrograph: Micrograph) -> CTFParams:
    c = micrograph.ctf
    return CTFParams.create(c["rlnDefocusU"], c["rlnDefocusV"], c["rlnDefocusAngle"], phase_shift=c["rlnPhaseShift"])


def precision_recall(found: list[np.ndarray], micrographs: list[Micrograph], tolerance: float) -> tuple[float, float]:
    hits = false_pos = false_neg = 0
    for xy, micrograph in zip(found, micrographs, strict=True):
        h, fp, fn = match_picks(xy, truth_xy(micrograph), tolerance)
        hits, false_pos, false_neg = hits + h, false_pos + fp, false_neg + fn
    return hits / max(hits + false_pos, 1), hits / (hits + false_neg)


def test_find_peaks_suppresses_neighbours_and_respects_threshold_border_and_count() -> None:
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    centres = [(10, 20, 3.0), (14, 22, 2.0), (40, 40, 1.0), (2, 50, 5.0)]  # (x, y, height): 2nd too close to 1st
    score = sum(h * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 4) for cx, cy, h in centres)
    yx, values = find_peaks(score, min_distance=6, threshold=0.5, border=3)
    assert yx.tolist() == [[20, 10], [40, 40]]  # (2, 50) lies in the border, (14, 22) is suppressed
    assert values == pytest.approx([3.0, 1.0], abs=0.05)
    assert find_peaks(score, 6, threshold=2.0, border=3)[0].tolist() == [[20, 10]]
    assert find_peaks(score, 6, max_peaks=1)[0].tolist() == [[50, 2]]
    assert find_peaks(score, 3, threshold=0.5)[0].tolist() == [[50, 2], [20, 10], [22, 14], [40, 40]]


def test_binned_peaks_map_back_to_micrograph_pixels() -> None:
    image = torch.zeros(300, 400)
    image[123, 321] = 1.0
    small = fourier_bin(image, (75, 100))
    assert float(small.sum()) == pytest.approx(float(image.sum()) * 75 * 100 / (300 * 400), rel=1e-4)
    yx, values = find_peaks(small, 5, max_peaks=1)
    picks = picks_from_peaks(yx, values, (75, 100), (300, 400))
    assert np.abs(picks.xy[0] - [321, 123]).max() <= 2.0


def test_thresholds_split_two_populations() -> None:
    rng = np.random.default_rng(0)
    background, particles = rng.normal(0.1, 0.02, 2000), rng.normal(0.3, 0.04, 300)
    cut = automatic_threshold(np.concatenate([background, particles]))
    assert np.mean(background >= cut) < 0.01 and np.mean(particles >= cut) > 0.99
    assert count_threshold(np.arange(10.0), 3) == 7.0


def test_match_picks_is_one_to_one() -> None:
    truth = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 90.0]])
    found = np.array([[11.0, 10.0], [12.0, 10.0], [50.0, 53.0], [200.0, 200.0]])
    assert match_picks(found, truth, 4.0) == (2, 2, 1)


def test_template_matching_with_a_map_finds_the_particles(simulated) -> None:
    volume, diameter, micrographs = simulated
    options = TemplateOptions(diameter_A=diameter)
    bank = templates_from_map(volume, APIX, options.working_pixel(APIX))
    assert len(bank) == 48 * 36 and bank.pixel_size == pytest.approx(diameter / 10, rel=0.05)
    delocalisation = delocalisation_px(CTFParams.create(3e4, 3e4), bank.pixel_size)
    picks = [pick_micrograph(m.image, APIX, bank, ctf_of(m), options, delocalisation) for m in micrographs]
    cut = automatic_threshold(np.concatenate([p.fom for p in picks]))
    found = [p.xy[p.fom >= cut] for p in picks]
    precision, recall = precision_recall(found, micrographs, 0.25 * volume.shape[-1])
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    assert all((np.diff(p.fom) <= 0).all() and (np.abs(p.fom) <= 1).all() for p in picks)


def test_template_matching_with_2d_averages_and_white_contrast(simulated) -> None:
    """Clean projections stand in for class averages; a contrast-inverted micrograph needs contrast='white'."""
    from vitreous.physics.projection import Projector
    from vitreous.physics.so3_grid import random_rotations

    volume, diameter, micrographs = simulated
    views = Projector(volume).project(random_rotations(12, generator=torch.Generator().manual_seed(0)))
    options = TemplateOptions(diameter_A=diameter, contrast="white", inplane_step_deg=15)
    bank = templates_from_averages(views, APIX, options.working_pixel(APIX), diameter, options.inplane_step_deg)
    assert len(bank) == 12 * 24
    delocalisation = delocalisation_px(CTFParams.create(3e4, 3e4), bank.pixel_size)
    picks = [pick_micrograph(-m.image, APIX, bank, ctf_of(m), options, delocalisation) for m in micrographs]
    cut = automatic_threshold(np.concatenate([p.fom for p in picks]))
    precision, recall = precision_recall([p.xy[p.fom >= cut] for p in picks], micrographs, 0.25 * volume.shape[-1])
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)


def test_nnpu_risk_is_never_negative() -> None:
    logits = torch.tensor([5.0, 5.0, -5.0, -5.0])
    positive = torch.tensor([True, True, False, False])
    risk = nnpu_loss(logits, positive, prior=0.9)  # the unlabelled negative risk estimate is < 0: clamped
    assert float(risk) == pytest.approx(0.9 * float(torch.nn.functional.softplus(torch.tensor(-5.0))), rel=1e-5)
    assert float(nnpu_loss(logits, torch.zeros(4, dtype=torch.bool), 0.1)) > 0


def test_learned_picker_trained_on_two_micrographs_finds_particles_on_a_third(simulated) -> None:
    volume, diameter, micrographs = simulated
    options = LearnedOptions(diameter_A=diameter, steps=200, channels=16, seed=1)
    picker = train_picker([m.image for m in micrographs[:2]], APIX, [truth_xy(m) for m in micrographs[:2]], options)
    assert picker.history[-1] < picker.history[0]
    test = micrographs[2]
    picks = picker.pick(test.image, APIX)
    cut = count_threshold(picks.fom, picker.density * SIZE * SIZE * APIX**2)
    assert picker.density * SIZE * SIZE * APIX**2 == pytest.approx(60)
    precision, recall = precision_recall([picks.xy[picks.fom >= cut]], [test], 0.25 * volume.shape[-1])
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    again = LearnedPicker.from_state(picker.state()).pick(test.image, APIX)
    np.testing.assert_array_equal(again.xy, picks.xy)


def test_learned_training_is_deterministic(simulated) -> None:
    _, diameter, micrographs = simulated
    options = LearnedOptions(diameter_A=diameter, steps=3, channels=4)
    first, second = (train_picker([micrographs[0].image], APIX, [truth_xy(micrographs[0])], options)
                     for _ in range(2))
    for a, b in zip(first.net.parameters(), second.net.parameters(), strict=True):
        assert torch.equal(a, b)
