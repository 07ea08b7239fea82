"""Training batches reproduce the image formation of the simulator: at high SNR, each image's Fourier coefficients
are CTF x slice of the truth (shift sign, CTF sign, pixel size and intensity scale), with and without
Fourier cropping to a smaller training box."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitreous.errors import InputError
from vitreous.neural.data import ParticleBatches
from vitreous.physics.fourier import fourier_crop
from vitreous.physics.projection import Projector


@pytest.mark.parametrize("box", [32, 24])
def test_batches_match_ctf_times_projector_slices(clean, box: int) -> None:
    data = ParticleBatches(clean.particles, box)
    batch = data.batch(np.arange(10))
    truth = clean.truth[0]
    if box != truth.shape[-1]:
        truth = fourier_crop(truth, box, ndim=3) * (truth.shape[-1] / box)  # projections sum over voxels
    predicted = batch.ctf * data.points.gather(Projector(truth / data.scale).slices(batch.rotations))
    error = (batch.spectra - predicted).norm() / batch.spectra.norm()
    assert error < 0.02
    assert data.pixel_size == pytest.approx(3.0 * 32 / box)
    assert batch.encoder_input.shape == (10, box * box) and torch.isfinite(batch.encoder_input).all()


def test_an_epoch_visits_every_particle_once(clean) -> None:
    data = ParticleBatches(clean.particles)
    seen = np.concatenate([step.batch.index for step in data.steps(16, np.random.default_rng(0))])
    assert sorted(seen.tolist()) == list(range(len(clean.particles)))


def test_particles_without_poses_point_to_refine(clean) -> None:
    table = clean.particles.particles.drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"])
    unposed = type(clean.particles)(table, clean.particles.optics, clean.particles.images, "unposed.star")
    with pytest.raises(InputError, match="vitreous refine"):
        ParticleBatches(unposed)
