"""Fourier shell (ring) correlation, resolution at a threshold, and a soft spherical mask.

Shells are 1 voxel wide in the centred FFT: a Fourier voxel with integer frequency indices ``k`` belongs to
shell ``round(|k|)``; shells ``0 .. D//2`` are reported (the corners beyond Nyquist are left out), shell ``i``
at spatial frequency ``i / (D * voxel_size)`` in 1/Å.  ``FSC_i = sum Re(F1 F2*) / sqrt(sum |F1|^2 sum |F2|^2)``
over the shell; a shell where either map has no power gets 0.  Works for square images (FRC) and cubic
volumes, NumPy arrays or torch tensors (on any device); results are NumPy float64 arrays.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import pandas as pd

ArrayLike = Any  # numpy.ndarray or torch.Tensor


def _tensor(x: ArrayLike, device: torch.device | None = None) -> torch.Tensor:
    t = torch.as_tensor(x) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(device=device if device is not None else t.device, dtype=torch.float64)


def _shells_rfft(shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Shell index and Hermitian weight (1 or 2) of each voxel of the ``rfftn`` of a square/cubic array."""
    box, ndim = shape[0], len(shape)
    full = torch.fft.fftfreq(box, d=1.0 / box, device=device, dtype=torch.float64) ** 2
    half = torch.fft.rfftfreq(box, d=1.0 / box, device=device, dtype=torch.float64) ** 2
    radius2 = half
    for axis in range(ndim - 1):
        radius2 = radius2 + full.reshape((box,) + (1,) * (ndim - 1 - axis))
    shells = torch.round(torch.sqrt(radius2)).long()
    weight = torch.full_like(half, 2.0)
    weight[0] = 1.0
    if box % 2 == 0:
        weight[-1] = 1.0  # the Nyquist plane is its own Hermitian partner
    return shells, weight.expand_as(radius2)


def fsc_curve(map1: ArrayLike, map2: ArrayLike, voxel_size: float = 1.0,
              mask: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """FSC of two cubic maps (or FRC of two square images): ``(frequency 1/Å, fsc)``, each (D//2 + 1,).

    ``mask`` (same shape, real space, e.g. :func:`soft_spherical_mask`) multiplies both maps first.
    """
    a = _tensor(map1)
    b = _tensor(map2, a.device)
    if a.shape != b.shape or a.ndim not in (2, 3) or len(set(a.shape)) != 1:
        raise ValueError(f"need two square images or cubic maps of one shape, got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    if mask is not None:
        m = _tensor(mask, a.device)
        a, b = a * m, b * m
    box = a.shape[0]
    fa, fb = torch.fft.rfftn(a), torch.fft.rfftn(b)
    shells, weight = _shells_rfft(tuple(a.shape), a.device)
    n_shells = box // 2 + 1
    index = shells.clamp(max=n_shells).reshape(-1)  # corners beyond Nyquist go to a discarded extra bin

    def shell_sum(values: torch.Tensor) -> torch.Tensor:
        return torch.bincount(index, weights=(weight * values).reshape(-1), minlength=n_shells + 1)[:n_shells]

    ra, rb = torch.view_as_real(fa), torch.view_as_real(fb)  # (..., 2): real and imaginary parts
    cross = shell_sum(torch.einsum("...i,...i->...", ra, rb))
    power = shell_sum(torch.einsum("...i,...i->...", ra, ra)) * shell_sum(torch.einsum("...i,...i->...", rb, rb))
    fsc = torch.where(power > 0, cross / torch.sqrt(power.clamp(min=1e-300)), torch.zeros_like(cross))
    frequency = torch.arange(n_shells, dtype=torch.float64) / (box * voxel_size)
    return frequency.numpy(), fsc.cpu().numpy()


def resolution_at(frequency: np.ndarray, fsc: np.ndarray, threshold: float = 0.143) -> float:
    """Resolution (Å) where the FSC first falls below ``threshold`` (from shell 1 on), linearly interpolated
    in frequency between the two shells around the crossing; the highest frequency's (Nyquist for even
    boxes) if it never does."""
    frequency, fsc = np.asarray(frequency, np.float64), np.asarray(fsc, np.float64)
    below = np.nonzero(fsc[1:] < threshold)[0]
    if len(below) == 0:
        return float(1.0 / frequency[-1])
    i = int(below[0]) + 1
    f0, f1, c0, c1 = frequency[i - 1], frequency[i], fsc[i - 1], fsc[i]
    crossing = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0) if np.isfinite(c0) and c0 >= threshold else f1
    return float(1.0 / crossing) if crossing > 0 else math.inf


def fsc_table(frequency: np.ndarray, fsc: np.ndarray) -> pd.DataFrame:
    """The curve as a table for CSV: ``frequency_invA``, ``resolution_A`` (inf at shell 0), ``fsc``."""
    import pandas as pd

    frequency = np.asarray(frequency, np.float64)
    with np.errstate(divide="ignore"):
        resolution = np.where(frequency > 0, 1.0 / np.where(frequency > 0, frequency, 1.0), np.inf)
    return pd.DataFrame({"frequency_invA": frequency, "resolution_A": resolution,
                         "fsc": np.asarray(fsc, np.float64)})


def soft_spherical_mask(box: int, radius: float, edge: float = 6.0, ndim: int = 3) -> np.ndarray:
    """Spherical (circular for ``ndim=2``) mask, float32: 1 within ``radius`` px of voxel ``D//2``, a raised
    cosine down to 0 at ``radius + edge`` px."""
    coords = np.arange(box, dtype=np.float64) - box // 2
    r = np.sqrt(sum(g**2 for g in np.meshgrid(*([coords] * ndim), indexing="ij")))
    if edge <= 0:
        return (r <= radius).astype(np.float32)
    t = np.clip((r - radius) / edge, 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)
