"""2D classification: in-plane rotation of Fourier points (adjointness, RELION's direction), class averages of
simulated particles against their clean projections, separation of two proteins, and the comparison helper.
Data: particles simulated from the bundled adenylate kinase model (and OmpK36 from the shared structures), box
32 at 3 Å/px."""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from vitreous.align import fourier_points
from vitreous.classify.class2d import Class2DOptions, check_inputs, classify
from vitreous.classify.compare import best_matches
from vitreous.classify.inplane import RotatedPoints, hermitian_complete, inplane_angles, inplane_matrices
from vitreous.errors import InputError
from vitreous.physics.fourier import fft2c, ifft2c, translate_images
from vitreous.physics.projection import Projector
from vitreous.physics.rotations import euler_to_matrix
from vitreous.sim.particles import Acquisition, simulate_stack
from vitreous.sim.truth import models_truth

APIX, BOX = 3.0, 32


def _adk() -> torch.Tensor:
    with resources.as_file(resources.files("vitreous.resources") / "adk_closed.pdb.gz") as path:
        return models_truth([path], BOX, APIX).volumes


def test_sampling_and_insertion_are_adjoint() -> None:
    generator = torch.Generator().manual_seed(0)
    rotated = RotatedPoints(fourier_points(16, 7, "cpu"), inplane_angles(30.0))
    spectra = torch.randn(3, 16, 16, dtype=torch.complex64, generator=generator)
    values = torch.randn(20, rotated.points.size, dtype=torch.complex64, generator=generator)
    classes, angles = torch.randint(0, 3, (20,), generator=generator), torch.randint(0, 12, (20,), generator=generator)
    target = torch.zeros_like(spectra)
    rotated.insert(target, values, classes, angles)
    left = (rotated.sample_at(spectra, classes, angles).conj() * values).sum()
    right = (spectra.conj() * target).sum()
    assert torch.allclose(left, right, rtol=1e-4)


def test_an_inplane_angle_moves_features_as_relion_rotates_them() -> None:
    """A blob at x_A in the average appears at R x_A in the image, R = euler_to_matrix(0, 0, psi)[:2, :2]."""
    box, psi = 32, 60.0
    y, x = torch.meshgrid(torch.arange(box) - box // 2, torch.arange(box) - box // 2, indexing="ij")
    blob = torch.exp(-((x - 6.0) ** 2 + y.float() ** 2) / 4.0)[None]
    rotated = RotatedPoints(fourier_points(box, box // 2 - 1, "cpu"), torch.tensor([psi]))
    values = rotated.sample(fft2c(blob))[:, 0]  # (1, M)
    grid = torch.zeros(1, box * box, dtype=torch.complex64)
    grid[:, rotated.points.flat] = values
    image = ifft2c(hermitian_complete(grid.reshape(1, box, box), torch.zeros(1, box, box))[0]).real[0]
    peak = torch.nonzero(image == image.max())[0]
    expected = inplane_matrices(torch.tensor(psi)) @ torch.tensor([6.0, 0.0])
    assert torch.allclose(inplane_matrices(torch.tensor(psi)), torch.as_tensor(
        euler_to_matrix(np.array([0.0, 0.0, psi]))[:2, :2], dtype=torch.float32), atol=1e-6)
    assert abs(int(peak[1]) - box // 2 - float(expected[0])) <= 1
    assert abs(int(peak[0]) - box // 2 - float(expected[1])) <= 1


def test_best_matches_finds_rotated_and_shifted_references() -> None:
    generator = torch.Generator().manual_seed(1)
    references = torch.nn.functional.avg_pool2d(torch.randn(5, 1, 32, 32, generator=generator), 5, 1, 2)[:, 0]
    rotated = RotatedPoints(fourier_points(32, 15, "cpu"), torch.tensor([40.0]))
    spectra = torch.zeros(2, 32 * 32, dtype=torch.complex64)
    spectra[:, rotated.points.flat] = rotated.sample(fft2c(references[[3, 1]]))[:, 0]
    images = ifft2c(hermitian_complete(spectra.reshape(2, 32, 32), torch.zeros(2, 32, 32))[0]).real
    images = translate_images(images, torch.tensor([1.0, -1.0]))
    match = best_matches(images, references, radius=8, psi_step_deg=10.0)
    assert match.reference.tolist() == [3, 1]
    assert torch.allclose(match.psi_deg, torch.tensor([40.0, 40.0]))
    assert (match.correlation > 0.95).all()
    assert torch.allclose(match.shift_px, torch.tensor([[-1.0, 1.0]] * 2))


def _views_dataset(tmp: Path, n: int = 160) -> tuple[object, np.ndarray, torch.Tensor]:
    """Particles showing two views of adk (random in-plane angles), labels, and the two clean projections."""
    volume = _adk()
    views = euler_to_matrix(np.array([[0.0, 0.0, 0.0], [0.0, 90.0, 0.0]]))
    labels = np.arange(n) % 2
    psi = np.random.default_rng(4).uniform(0, 360, n)
    rotations = euler_to_matrix(np.stack([np.zeros(n), np.zeros(n), psi], 1)) @ views[labels]
    acquisition = Acquisition(apix=APIX, snr=0.5, shift_sd_px=1.0, seed=5)
    particles = simulate_stack(volume, np.zeros(n, np.int64), tmp / "views.mrcs", acquisition, rotations=rotations)
    clean = Projector(volume[0]).project(torch.as_tensor(views, dtype=torch.float32))
    return particles, labels, clean


def test_class_averages_of_two_views_match_their_clean_projections(tmp_path: Path) -> None:
    particles, labels, clean = _views_dataset(tmp_path)
    state = classify(particles, Class2DOptions(classes=2, iterations=6, subset_per_class=0, diameter_A=84.0,
                                               seed=1))
    assert adjusted_rand_score(labels, state.classes) > 0.95
    averages = torch.as_tensor(state.references)
    match = best_matches(averages, clean, radius=BOX * APIX / 12.0, psi_step_deg=5.0, max_shift_px=3.0)
    assert sorted(match.reference.tolist()) == [0, 1]  # each average is one of the two views
    assert (match.correlation > 0.9).all(), match.correlation
    assert state.max_posterior.mean() > 0.5
    assert np.all(state.resolution_A < 30.0)


def test_classes_of_two_proteins_hold_one_protein_each(tmp_path: Path, structures: Path) -> None:
    """Six classes of random views of adk and OmpK36: labelling each particle with its class's majority protein
    recovers the proteins (2D classes split views too, so the classes themselves are not compared)."""
    with resources.as_file(resources.files("vitreous.resources") / "adk_closed.pdb.gz") as path:
        volumes = models_truth([path, structures / "proteins" / "1osm.pdb.gz"], BOX, APIX).volumes
    labels = np.arange(400) % 2
    particles = simulate_stack(volumes, labels, tmp_path / "two.mrcs", Acquisition(apix=APIX, snr=0.5, seed=8))
    state = classify(particles, Class2DOptions(classes=6, iterations=8, subset_per_class=0, seed=1))
    counts = np.stack([np.bincount(labels[state.classes == c], minlength=2) for c in range(6)])
    majority = counts.argmax(1)
    assert adjusted_rand_score(labels, majority[state.classes]) > 0.85
    assert set(majority[counts.sum(1) > 0]) == {0, 1}


def test_bad_options_and_inputs_are_refused(tmp_path: Path) -> None:
    particles, _, _ = _views_dataset(tmp_path, n=4)
    for options, words in ((Class2DOptions(classes=0), "at least 1"), (Class2DOptions(classes=5), "only 4"),
                           (Class2DOptions(classes=2, psi_step_deg=0), "--psi-step")):
        with pytest.raises(InputError, match=words):
            check_inputs(particles, options)
    no_ctf = replace(particles, particles=particles.particles.drop(columns=["rlnDefocusU", "rlnDefocusV"]))
    with pytest.raises(InputError, match="--no-ctf"):
        check_inputs(no_ctf, Class2DOptions(classes=2))
    check_inputs(no_ctf, Class2DOptions(classes=2, use_ctf=False))
