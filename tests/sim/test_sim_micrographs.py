"""Simulated micrographs: placement, the particle image convention (sign, hand, centre), CTF over the field,
noise level, crystalline-ice rings, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vitreous.physics.ctf import CTFParams, compute_ctf, ctf_from_frequencies
from vitreous.physics.fourier import ifft2c, translate_ft, window
from vitreous.physics.projection import Projector
from vitreous.physics.rotations import euler_to_matrix
from vitreous.sim.micrographs import MicrographOptions, MicrographSimulator, map_radius
from vitreous.sim.truth import models_truth

ADK = Path(__file__).resolve().parents[2] / "src" / "vitreous" / "resources" / "adk_closed.pdb.gz"
APIX = 2.5
QUIET = {"ice_structure": 0.0, "ice_variation": 0.0}  # flat ice: only particles and noise vary


@pytest.fixture(scope="module")
def volumes() -> torch.Tensor:
    return models_truth([ADK], None, APIX).volumes


def test_particles_do_not_overlap_and_stay_inside(volumes: torch.Tensor) -> None:
    two = torch.stack([volumes[0], 0.5 * volumes[0]])  # two "models" of one size
    options = MicrographOptions(size=320, apix=APIX, particles=(60, 60), proportions=[0.25, 0.75])
    simulator = MicrographSimulator(two, options)
    table = simulator.simulate(3).particles
    radius = map_radius(volumes[0], APIX) / APIX
    assert 25 / APIX < radius < 35 / APIX  # adenylate kinase: ~28 Å from its centre
    xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    distance = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + np.eye(len(xy)) * 1e9
    assert len(table) == 60 and distance.min() >= 2 * radius - 1e-6
    assert xy.min() >= radius - 1e-6 and xy.max() <= 319 - radius + 1e-6
    assert set(table["vtsModel"]) == {1, 2} and (table["vtsModel"] == 2).sum() > (table["vtsModel"] == 1).sum()
    tilt = table["rlnAngleTilt"].to_numpy()
    assert tilt.min() >= 0 and tilt.max() <= 180 and 0.3 < np.mean(np.cos(np.radians(tilt)) > 0) < 0.7


def test_same_seed_same_micrograph(volumes: torch.Tensor) -> None:
    simulator = MicrographSimulator(volumes, MicrographOptions(size=128, apix=APIX, particles=(5, 5)))
    a, b, c = simulator.simulate((0, 1)), simulator.simulate((0, 1)), simulator.simulate((0, 2))
    assert np.array_equal(a.image, b.image) and a.particles.equals(b.particles)
    assert not np.allclose(a.image, c.image)
    assert a.image.dtype == np.float32 and a.image.shape == (128, 128)


def test_box_at_true_coordinate_is_the_dark_ctf_projection(volumes: torch.Tensor) -> None:
    """A box cut at round(coordinate), with origin round - coordinate, is -2 * lambda * apix * IFT[CTF *
    project(A, origin)] for an isolated particle: the convention `extract` and `vitreous simulate` share."""
    options = MicrographOptions(size=256, apix=APIX, particles=(6, 6), snr=1e8, astigmatism_A=600, **QUIET)
    simulator = MicrographSimulator(volumes, options)
    micrograph = simulator.simulate(11)
    B = 64
    projector = Projector(window(volumes[0], B, ndim=3))
    ctf = compute_ctf(CTFParams.create(*[micrograph.ctf[k] for k in ("rlnDefocusU", "rlnDefocusV",
                                                                       "rlnDefocusAngle")]), B, APIX)
    image = micrograph.image - np.median(micrograph.image)
    xy = micrograph.particles[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    rotations = torch.as_tensor(euler_to_matrix(micrograph.particles[["rlnAngleRot", "rlnAngleTilt",
                                                                      "rlnAnglePsi"]].to_numpy()), dtype=torch.float32)
    correlations, scales = [], []
    for i, (x, y) in enumerate(xy):
        ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        if not (B // 2 <= ix <= 256 - B // 2 and B // 2 <= iy <= 256 - B // 2):
            continue
        box = torch.as_tensor(image[iy - B // 2:iy + B // 2, ix - B // 2:ix + B // 2])
        origin = torch.tensor([[ix - x, iy - y]], dtype=torch.float32)
        clean = ifft2c(translate_ft(projector.slices(rotations[i:i + 1]), -origin) * ctf).real[0]
        clean = -2 * simulator.wavelength * APIX * clean
        correlations.append(float((clean * box).sum() / (clean.norm() * box.norm())))
        scales.append(float((clean * box).sum() / (clean * clean).sum()))
    assert len(correlations) >= 2
    # the best-isolated particles match exactly (others share their box with neighbours' delocalised signal)
    assert max(correlations) > 0.99
    assert np.median(np.abs(np.array(scales)[np.array(correlations) > 0.9] - 1)) < 0.05


def test_noise_level_and_flat_ice(volumes: torch.Tensor) -> None:
    options = MicrographOptions(size=256, apix=APIX, particles=(0, 0), snr=0.05, **QUIET)
    simulator = MicrographSimulator(volumes, options)
    image = simulator.simulate(0).image
    assert image.std() == pytest.approx(simulator.sigma, rel=0.02)
    # per-particle SNR: variance of 2 * lambda * apix * CTF * projection over the map box at the middle defocus
    low = MicrographSimulator(volumes, MicrographOptions(size=256, apix=APIX, snr=0.2))
    assert (simulator.sigma / low.sigma) ** 2 == pytest.approx(4.0, rel=1e-3)


def test_poisson_counts_at_the_dose(volumes: torch.Tensor) -> None:
    options = MicrographOptions(size=256, apix=APIX, particles=(0, 0), dose=40.0, ice_thickness_A=(400, 400),
                                **QUIET)
    micrograph = MicrographSimulator(volumes, options).simulate(0)
    counts = micrograph.image
    assert np.array_equal(counts, np.round(counts))
    mean = counts.mean()
    # flat ice of 400 Å: intensity 1 - 2 * CTF(0) * phase = 1 - 2 * 0.1 * lambda * 400 * n_water * f_water(0)
    assert 0.8 * 40 * APIX**2 < mean < 0.9 * 40 * APIX**2
    assert counts.var() == pytest.approx(mean, rel=0.05)


def test_thon_rings_follow_the_true_defocus(volumes: torch.Tensor) -> None:
    """Amorphous ice alone (no particles, no noise) gives a power spectrum shaped as CTF^2 at the true defocus."""
    options = MicrographOptions(size=512, apix=APIX, particles=(0, 0), snr=1e8, astigmatism_A=0.0,
                                ice_variation=0.0, ice_structure=1.0)
    micrograph = MicrographSimulator(volumes, options).simulate(5)
    spectrum = np.abs(np.fft.rfft2(micrograph.image - micrograph.image.mean())) ** 2
    ky = torch.fft.fftfreq(512, d=APIX)[:, None]
    kx = torch.fft.rfftfreq(512, d=APIX)[None, :]
    k = torch.sqrt(kx**2 + ky**2).numpy()
    band = (k > 1 / 40) & (k < 1 / 8)

    def zeros_over_peaks(defocus: float) -> float:
        """Mean power where |CTF(defocus)| < 0.2 over mean power where |CTF(defocus)| > 0.9, in the band."""
        ctf = ctf_from_frequencies(CTFParams.create(defocus), kx[None], ky[None])[0].abs().numpy()
        return float(spectrum[band & (ctf < 0.2)].mean() / spectrum[band & (ctf > 0.9)].mean())

    offsets = np.array([-1500, -500, -250, 0, 250, 500, 1500])
    ratios = np.array([zeros_over_peaks(micrograph.ctf["rlnDefocusU"] + d) for d in offsets])
    assert offsets[ratios.argmin()] == 0 and ratios.min() < 0.1 and ratios[[0, -1]].min() > 0.3


def test_crystalline_ice_rings() -> None:
    """Crystalline ice adds a ring at 3.67 Å to the power spectrum, relative to a band at 4.3-5 Å."""
    volumes = models_truth([ADK], None, 1.0).volumes

    def ring_contrast(crystalline: float) -> float:
        options = MicrographOptions(size=256, apix=1.0, particles=(0, 0), crystalline=crystalline)
        micrograph = MicrographSimulator(volumes, options).simulate(2)
        assert micrograph.crystalline == bool(crystalline)
        spectrum = np.abs(np.fft.rfft2(micrograph.image - micrograph.image.mean())) ** 2
        k = np.sqrt(np.fft.rfftfreq(256)[None] ** 2 + np.fft.fftfreq(256)[:, None] ** 2)
        ring = np.abs(k - 1 / 3.67) < 0.004
        reference = (k > 1 / 5) & (k < 1 / 4.3)
        return spectrum[ring].mean() / spectrum[reference].mean()

    assert ring_contrast(1.0) > 3 * ring_contrast(0.0)


def test_carbon_and_contamination_keep_particles_off(volumes: torch.Tensor) -> None:
    options = MicrographOptions(size=384, apix=APIX, particles=(300, 300), carbon=1.0, contamination=2.0)
    simulator = MicrographSimulator(volumes, options)
    micrograph = simulator.simulate(7)
    assert micrograph.carbon
    free = MicrographSimulator(volumes, MicrographOptions(size=384, apix=APIX, particles=(300, 300)))
    assert len(micrograph.particles) < len(free.simulate(7).particles)
    # the carbon side is darker (more potential) and holds no particle centre
    smooth = torch.nn.functional.avg_pool2d(torch.as_tensor(micrograph.image)[None, None], 16)[0, 0].numpy()
    dark = smooth < np.percentile(smooth, 10)
    cells = (micrograph.particles[["rlnCoordinateY", "rlnCoordinateX"]].to_numpy() // 16).astype(int)
    assert dark[cells[:, 0], cells[:, 1]].mean() < 0.05
