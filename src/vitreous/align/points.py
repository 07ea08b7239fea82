"""The Fourier pixels that pose search compares: a Hermitian half-plane of an image's centred spectrum.

Pixels are those of :mod:`vitreous.physics.fourier`'s centred layout ([ky, kx], DC at index ``D // 2``) with
``1 <= |k| <= radius`` in Fourier pixels (``|k| * D`` cycles per box): DC is left out (an image's mean offset
carries no pose information) and only the half-plane ``kx > 0 | (kx == 0, ky > 0)`` is kept.  For real images
every term of a comparison is the same at ``k`` and ``-k``, so a sum over the full disc is twice the sum over
these points (:attr:`FourierPoints.weight` = 2).  A radius in Fourier pixels relates to a resolution ``d`` (Å)
as ``radius = D * pixel_size / d``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

HERMITIAN_WEIGHT = 2.0


@dataclass(frozen=True)
class FourierPoints:
    """Half-plane pixels of a (D, D) centred spectrum within ``radius`` Fourier pixels (DC excluded)."""

    box: int
    radius: float
    flat: Tensor  # (M,) int64 flat indices ``iy * D + ix`` into the (D, D) centred layout
    coords: Tensor  # (2, M) float (kx, ky) in Fourier pixels
    shell: Tensor  # (M,) int64 shell number round(|k|), 1 .. floor(radius)

    @property
    def size(self) -> int:
        """Number of points M."""
        return int(self.flat.shape[0])

    @property
    def weight(self) -> float:
        """Factor turning a sum over these points into the sum over the full disc (Hermitian pairs)."""
        return HERMITIAN_WEIGHT

    def gather(self, spectra: Tensor) -> Tensor:
        """Values (..., M) of centred spectra or CTF images (..., D, D) at the points."""
        return spectra.reshape(*spectra.shape[:-2], self.box * self.box)[..., self.flat]


@lru_cache(maxsize=64)
def _points(box: int, radius: float, device: torch.device) -> FourierPoints:
    k = torch.arange(box, dtype=torch.float64) - box // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    kx, ky = kx.reshape(-1), ky.reshape(-1)
    r = torch.sqrt(kx**2 + ky**2)
    keep = (r <= radius + 1e-9) & (r > 0) & ((kx > 0) | ((kx == 0) & (ky > 0)))
    keep &= (kx > -box / 2) & (ky > -box / 2)  # even boxes: no unpaired -D/2 row or column
    flat = torch.nonzero(keep).squeeze(1)
    coords = torch.stack([kx[flat], ky[flat]]).float()
    shell = torch.round(r[flat]).long()
    return FourierPoints(box, radius, flat.to(device), coords.to(device), shell.to(device))


def fourier_points(box: int, radius: float, device: torch.device | str | None = None) -> FourierPoints:
    """The half-plane points with ``1 <= |k| <= radius`` Fourier pixels, clamped to Nyquist ``box // 2``."""
    if radius < 1:
        raise ValueError(f"the comparison radius must be at least 1 Fourier pixel, got {radius}")
    radius = float(min(radius, box // 2))
    return _points(box, radius, torch.device(device) if device is not None else torch.device("cpu"))


def radius_for_resolution(resolution_A: float, box: int, pixel_size: float) -> float:
    """Fourier radius (pixels) of resolution ``resolution_A`` Å: ``box * pixel_size / resolution_A``."""
    return box * pixel_size / resolution_A


def resolution_for_radius(radius: float, box: int, pixel_size: float) -> float:
    """Resolution (Å) at Fourier radius ``radius`` pixels; inf at 0."""
    return box * pixel_size / radius if radius > 0 else math.inf
