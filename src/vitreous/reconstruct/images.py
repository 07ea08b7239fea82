"""Particle images read lazily in batches as centred spectra with their CTFs, and the first noise estimate.

Shared by refinement, ab initio and the neural mixture's pose search: images optionally Fourier-cropped to a
smaller box (the pixel size grows by ``D / d``), ``fft2c`` spectra [ky, kx] with DC at ``d // 2``, RELION CTFs
at the same pixel size.
"""

from __future__ import annotations

import numpy as np
import torch

from vitreous.align import image_power, image_spectra
from vitreous.align.noise import ShellPower
from vitreous.align.points import fourier_points
from vitreous.data.particles import ParticleSet
from vitreous.physics.ctf import CTFParams, compute_ctf
from vitreous.physics.fourier import fourier_crop
from vitreous.reconstruct.backproject import batches


class CroppedImages:
    """Images and CTFs of the particles, Fourier-cropped to ``box`` (default: their own), on the device."""

    def __init__(self, particles: ParticleSet, box: int | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.particles, self.device = particles, torch.device(device)
        self.full_box = particles.box
        self.box = self.full_box if box is None else box
        self.pixel_size = particles.single_pixel_size() * self.full_box / self.box
        self.ctf = CTFParams.from_table(particles.ctf_table())

    def read(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(centred spectra (B, d, d), CTF images (B, d, d)) of particles ``idx``."""
        images = torch.as_tensor(self.particles.images.read(idx), dtype=torch.float32, device=self.device)
        if self.box < self.full_box:
            images = fourier_crop(images, self.box)
        return image_spectra(images), compute_ctf(self.ctf[idx].to(self.device), self.box, self.pixel_size)


def noise_spectrum(images: CroppedImages, members: np.ndarray, sample: int, seed: int,
                   batch_size: int = 256) -> torch.Tensor:
    """Mean image power per shell (d // 2 + 1,) of up to ``sample`` randomly chosen ``members``: the noise
    estimate before any pose is known (noise dominates at cryo-EM SNRs)."""
    chosen = np.sort(np.random.default_rng(seed).choice(members, min(len(members), sample), replace=False))
    power = ShellPower(images.box, images.device)
    points = fourier_points(images.box, images.box // 2, images.device)
    for part in batches(len(chosen), batch_size):
        spectra, _ = images.read(chosen[part])
        image_power(spectra, points, power)
    return power.spectrum()


__all__ = ["CroppedImages", "noise_spectrum"]
