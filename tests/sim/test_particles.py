"""Simulated particle stacks (vitreous.sim.particles): noise level, CTF and shift signs, states, STAR round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import vitreous.sim.particles as particles_module
from vitreous.data.particles import ParticleSet
from vitreous.io.star import read_star, write_star
from vitreous.physics.ctf import CTFParams, compute_ctf
from vitreous.physics.fourier import fft2c, ifft2c, radial_average, translate_images
from vitreous.physics.projection import Projector
from vitreous.physics.so3_grid import random_rotations
from vitreous.sim.particles import Acquisition, clean_images, draw_metadata, simulate_stack
from vitreous.sim.truth import models_truth

APIX, BOX = 2.5, 32
AMPLITUDE_CONTRAST = Acquisition(apix=APIX).amplitude_contrast
NOISE_FREE = 1e12  # noise sigma = 1e-6 signal std: below the float32 resolution of the images


@pytest.fixture(scope="module")
def protease(structures: Path) -> torch.Tensor:
    """(1, D, D, D) potential of the HIV-1 protease dimer."""
    return models_truth([structures / "proteins/4E43.pdb"], BOX, APIX).volumes


@pytest.fixture(scope="module")
def mixture(structures: Path) -> torch.Tensor:
    """(2, D, D, D): HIV-1 protease and BPTI, two clearly different particles."""
    return models_truth([structures / "proteins/4E43.pdb", structures / "proteins/5PTI.cif.gz"], BOX, APIX).volumes


def reference_images(volume: torch.Tensor, particles: ParticleSet) -> np.ndarray:
    """The documented image formation, by another route: real projection moved by -origin
    (``Projector.project``), then the CTF applied to its Fourier transform."""
    projection = Projector(volume).project(particles.rotations, particles.shifts_px)
    ctf = compute_ctf(CTFParams.from_table(particles.ctf_table()), particles.box, APIX)
    return ifft2c(fft2c(projection) * ctf).real.numpy()


def all_images(particles: ParticleSet) -> np.ndarray:
    assert particles.images is not None
    return particles.images.read(np.arange(len(particles)))


@pytest.mark.parametrize(("snr", "sample"), [(0.05, 200), (1.0, 1000)])
def test_noise_matches_requested_snr(protease: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     snr: float, sample: int) -> None:
    n = 300
    monkeypatch.setattr(particles_module, "NOISE_SAMPLE", sample)  # 200: the level is set from a sample
    acq = Acquisition(apix=APIX, snr=snr, astigmatism_A=300.0, shift_sd_px=1.0, seed=3)
    particles = simulate_stack(protease, np.zeros(n, np.int64), tmp_path / "p.mrcs", acq)
    clean = reference_images(protease[0], particles)
    noise = all_images(particles) - clean
    # 3e5 noise pixels: their variance is known to 0.3 %; the signal variance of 200 of the 300 images is
    # within ~1 % of the whole set's
    assert clean.var() / noise.var() == pytest.approx(snr, rel=0.03)
    assert abs(noise.mean()) < 5 * noise.std() / np.sqrt(noise.size)
    # white noise: the same power in every Fourier shell (each shell averages thousands of coefficients)
    power = radial_average(fft2c(torch.from_numpy(noise)).abs() ** 2).mean(0)[1:BOX // 2].numpy()
    assert power.std() / power.mean() < 0.05
    # independent of the signal
    assert abs(np.corrcoef(clean.ravel(), noise.ravel())[0, 1]) < 0.01


def test_ctf_and_origin_follow_the_documented_signs(protease: torch.Tensor, tmp_path: Path) -> None:
    n = 8
    rotations = random_rotations(n, generator=torch.Generator().manual_seed(7), dtype=torch.float64).numpy()
    acq = Acquisition(apix=APIX, snr=NOISE_FREE, astigmatism_A=400.0, shift_sd_px=3.0, seed=11)
    particles = simulate_stack(protease, np.zeros(n, np.int64), tmp_path / "s.mrcs", acq, rotations=rotations)
    simulated = all_images(particles)
    scale = np.abs(simulated).max()
    assert np.abs(particles.shifts_px).max() > 1.0  # the origins are not trivially small
    np.testing.assert_allclose(particles.rotations, rotations, atol=1e-6)

    # IFT[CTF * T_{-origin} slice_A(V)]: the projector's projection moved by -origin, with the CTF applied
    np.testing.assert_allclose(simulated, reference_images(protease[0], particles), atol=1e-4 * scale)

    # the same image without an origin, then moved by -origin
    projector = Projector(protease[0])
    centred = particles.with_poses(shifts_angst=np.zeros((n, 2)))
    unshifted = clean_images(projector, centred, np.arange(n))
    moved = translate_images(unshifted, -torch.as_tensor(particles.shifts_px, dtype=torch.float32))
    np.testing.assert_allclose(simulated, moved.numpy(), atol=1e-4 * scale)

    # integer origins (x, y) move the image by exactly (-x, -y) pixels
    origins = np.random.default_rng(0).integers(-4, 5, (n, 2))
    shifted = clean_images(projector, particles.with_poses(shifts_angst=origins * APIX), np.arange(n)).numpy()
    rolled = np.stack([np.roll(image, (-oy, -ox), axis=(0, 1)) for image, (ox, oy) in zip(unshifted.numpy(),
                                                                                         origins, strict=True)])
    np.testing.assert_allclose(shifted, rolled, atol=1e-4 * scale)

    # ... so the particle centre lands on pixel D//2 - origin (centroid of the CTF-free projection)
    projections = projector.project(rotations, origins).numpy()
    grid = np.arange(BOX) - BOX // 2
    centroid = np.stack([(projections.sum(1) * grid).sum(1), (projections.sum(2) * grid).sum(1)], 1)
    centroid /= projections.sum((1, 2))[:, None]
    np.testing.assert_allclose(centroid, -origins, atol=0.5)

    # CTF(0) = +Q (RELION, white particles): each image's integral is Q times the projection's, same sign
    np.testing.assert_allclose(simulated.sum((1, 2)), AMPLITUDE_CONTRAST * projector.project(rotations).numpy()
                               .sum((1, 2)), rtol=1e-3)


def test_each_image_shows_its_own_state(mixture: torch.Tensor, tmp_path: Path) -> None:
    states = np.random.default_rng(2).integers(0, 2, 40)
    acq = Acquisition(apix=APIX, snr=NOISE_FREE, shift_sd_px=1.0, seed=4)
    # small batches: each state is written in several scattered runs of frames
    particles = simulate_stack(mixture, states, tmp_path / "m.mrcs", acq, batch_size=7)
    simulated = all_images(particles)
    for s in (0, 1):
        members = np.nonzero(states == s)[0]
        expected = reference_images(mixture[s], particles.subset(members))
        np.testing.assert_allclose(simulated[members], expected, atol=1e-4 * np.abs(expected).max())


def test_metadata_draws_follow_the_acquisition() -> None:
    acq = Acquisition(apix=APIX, defocus_um=(1.2, 2.2), astigmatism_A=500.0, shift_sd_px=2.0, seed=5)
    table = draw_metadata(4000, BOX, acq)
    mean_defocus = (table["rlnDefocusU"] + table["rlnDefocusV"]) / 2
    assert mean_defocus.between(1.2e4, 2.2e4).all()
    astigmatism = table["rlnDefocusU"] - table["rlnDefocusV"]
    assert astigmatism.between(0, 500).all() and astigmatism.max() > 450
    assert table[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy().std() == pytest.approx(2.0 * APIX, rel=0.05)
    rotations = ParticleSet(table, pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [APIX]})).rotations
    # uniform rotations: E[R] = 0 (each entry has sd 1/sqrt(3 * 4000) ~ 0.009)
    assert np.abs(rotations.mean(0)).max() < 0.05
    assert table.equals(draw_metadata(4000, BOX, acq))
    other = draw_metadata(4000, BOX, Acquisition(apix=APIX, shift_sd_px=2.0, seed=6))
    assert not np.allclose(table["rlnAngleRot"], other["rlnAngleRot"])


def test_star_round_trip(protease: torch.Tensor, tmp_path: Path) -> None:
    acq = Acquisition(apix=APIX, snr=0.3, astigmatism_A=300.0, shift_sd_px=2.0, voltage=200.0, cs=2.0,
                      amplitude_contrast=0.07, bfactor=20.0, seed=8)
    particles = simulate_stack(protease, np.zeros(50, np.int64), tmp_path / "stack" / "p.mrcs", acq)
    star = tmp_path / "meta" / "particles.star"
    star.parent.mkdir()
    write_star(star, particles)
    back = read_star(star)
    assert len(back) == 50 and back.box == BOX and back.single_pixel_size() == APIX
    np.testing.assert_allclose(back.rotations, particles.rotations, atol=1e-9)
    np.testing.assert_allclose(back.shifts_px, particles.shifts_px, atol=1e-9)
    original, read = particles.ctf_table(), back.ctf_table()
    assert list(read.columns) == list(original.columns)
    np.testing.assert_allclose(read.to_numpy(), original.to_numpy(), rtol=1e-9)
    assert read["voltage"].eq(200.0).all() and read["cs"].eq(2.0).all() and read["bfactor"].eq(20.0).all()
    assert read["amplitude_contrast"].eq(0.07).all()
    np.testing.assert_array_equal(all_images(back), all_images(particles))
