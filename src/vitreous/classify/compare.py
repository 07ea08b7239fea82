"""Best match of 2D images (class averages) among reference images (e.g. clean projections of a map) over
in-plane rotations and shifts, by normalised cross-correlation of their low-passed spectra.

The correlation of image ``a`` with reference ``r`` at in-plane angle ``psi`` and shift ``s`` is
``Re sum conj(r_psi) a phi_s / sqrt(sum |a|^2 sum |r_psi|^2)`` over the Fourier points ``1 <= |k| <= radius``
(:mod:`vitreous.align.points`; DC left out), with ``r_psi`` the reference rotated as a class average is in a
particle image (:class:`~vitreous.classify.inplane.RotatedPoints`) and ``phi_s`` the ramp moving ``a`` by ``+s``
px: the Pearson correlation of the two images low-passed to ``radius`` Fourier pixels, up to the interpolation of
the rotation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vitreous.align import fourier_points, shift_grid, shift_phases
from vitreous.classify.inplane import RotatedPoints, inplane_angles
from vitreous.physics.fourier import fft2c


@dataclass
class Match:
    """Per image (K,): best correlation, reference index, in-plane angle (degrees) and shift (K, 2) px."""

    correlation: Tensor
    reference: Tensor
    psi_deg: Tensor
    shift_px: Tensor


def best_matches(images: Tensor, references: Tensor, radius: float, psi_step_deg: float = 5.0,
                 max_shift_px: float = 2.0, shift_step_px: float = 0.5, chunk: int = 256) -> Match:
    """The best (reference, angle, shift) of each real image (K, D, D) among real references (N, D, D); the
    references are processed ``chunk`` at a time (memory: ``chunk x angles x points`` complex values)."""
    device = images.device
    points = fourier_points(images.shape[-1], radius, device)
    shifts = shift_grid(max_shift_px, shift_step_px, device)
    values = points.gather(fft2c(images.float()))  # (K, M)
    values = values / values.abs().pow(2).sum(-1, keepdim=True).sqrt().clamp(min=1e-30)
    moved = values[:, None, :] * shift_phases(points, shifts)[None]  # (K, T, M)
    stacked = torch.cat([moved.real, moved.imag], -1).reshape(-1, 2 * points.size)  # (K T, 2M)
    rotated = RotatedPoints(points, inplane_angles(psi_step_deg, device))
    n_angles = rotated.n_angles
    best = torch.full((len(images),), -2.0, device=device)
    where = torch.zeros(len(images), dtype=torch.long, device=device)
    for start in range(0, len(references), chunk):
        slices = rotated.sample(fft2c(references[start:start + chunk].float().to(device)))  # (C, P, M)
        slices = slices / slices.abs().pow(2).sum(-1, keepdim=True).sqrt().clamp(min=1e-30)
        flat = torch.cat([slices.real, slices.imag], -1).reshape(-1, 2 * points.size)  # (C P, 2M)
        scores = (stacked @ flat.T).reshape(len(images), -1)  # (K, T C P)
        value, index = scores.max(1)
        better = value > best
        best = torch.where(better, value, best)
        t, pose = index // flat.shape[0], index % flat.shape[0]
        where = torch.where(better, (start * n_angles + pose) * len(shifts) + t, where)
    t = where % len(shifts)
    pose = where // len(shifts)
    return Match(best, pose // n_angles, rotated.angles[pose % n_angles], shifts[t])


__all__ = ["Match", "best_matches"]
