"""Simulated images with known poses for the pose-search tests: the bundled adenylate kinase model in a 32-px
box at 3 Å/px, projected with RELION's conventions (CTF, origin shifts) and optional white noise."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import pytest
import torch

from vitreous.physics.ctf import CTFParams, compute_ctf
from vitreous.physics.fourier import fft2c, ifft2c, translate_ft
from vitreous.physics.projection import Projector
from vitreous.physics.so3_grid import random_rotations
from vitreous.sim.truth import models_truth

BOX, APIX = 32, 3.0


@dataclass
class Images:
    """Images (n, D, D) with their spectra, CTF images, true rotations (n, 3, 3) and origins (n, 2) px."""

    images: torch.Tensor
    spectra: torch.Tensor
    ctf: torch.Tensor
    rotations: torch.Tensor
    shifts: torch.Tensor
    noise_sd: float


@pytest.fixture(scope="session")
def volume() -> torch.Tensor:
    """(D, D, D) potential of adenylate kinase (closed), the model bundled with vitreous."""
    with resources.as_file(resources.files("vitreous.resources") / "adk_closed.pdb.gz") as path:
        return models_truth([path], BOX, APIX).volumes[0]


@pytest.fixture(scope="session")
def projector(volume: torch.Tensor) -> Projector:
    return Projector(volume)


def simulate(projector: Projector, n: int, snr: float | None, seed: int, shift_sd: float = 1.0) -> Images:
    """``n`` images ``IFT[CTF * T_{-s} slice_A] + noise`` (noise variance = signal variance / snr; none if
    ``snr`` is None), defocus 1-2.5 µm with up to 300 Å astigmatism."""
    gen = torch.Generator().manual_seed(seed)
    rotations = random_rotations(n, generator=gen)
    shifts = torch.randn(n, 2, generator=gen) * shift_sd
    defocus = 1e4 + 1.5e4 * torch.rand(n, generator=gen)
    astigmatism = 300 * torch.rand(n, generator=gen)
    params = CTFParams.create(defocus + astigmatism / 2, defocus - astigmatism / 2,
                              360 * torch.rand(n, generator=gen) - 180)
    ctf = compute_ctf(params, BOX, APIX)
    clean = ifft2c(translate_ft(projector.slices(rotations), -shifts) * ctf).real
    sd = 0.0 if snr is None else float(clean.std()) / snr**0.5
    images = clean + sd * torch.randn(clean.shape, generator=gen)
    return Images(images, fft2c(images), ctf, rotations, shifts, sd)
