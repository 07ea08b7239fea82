"""In-plane rotations of 2D references in Fourier space: bilinear sampling at rotated Fourier points and its
adjoint (bilinear scatter-add), for 2D classification.

Convention (RELION's, :mod:`vitreous.physics.projection` with rot = tilt = 0): an image at in-plane angle
``psi`` shows the class average ``A`` as ``F_image(k) = F_A(R^T k)`` with ``R`` the upper-left 2 x 2 block of
``euler_to_matrix((0, 0, psi))``; in real space ``image(x) = A(R^T x)``, so a feature at ``x_A`` in the average
appears at ``R x_A`` in the image.  Spectra are (D, D) centred layouts ([ky, kx], DC at ``D // 2``); Fourier
points are :class:`~vitreous.align.points.FourierPoints` (Hermitian half-plane).  Sampling indexes the grid
periodically, as the DFT does; points stay at least one pixel inside Nyquist when the radius is at most
``D // 2 - 1``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vitreous.align.points import FourierPoints
from vitreous.physics.fourier import flip_frequencies
from vitreous.physics.rotations import euler_to_matrix


def inplane_angles(step_deg: float, device: torch.device | str | None = None) -> Tensor:
    """In-plane angles ``0, step, ...`` below 360 degrees, (P,) float32; the step is rounded so P divides 360."""
    if not 0 < step_deg <= 180:
        raise ValueError(f"the in-plane step must be in (0, 180] degrees, got {step_deg}")
    count = max(2, int(round(360.0 / step_deg)))
    return torch.arange(count, dtype=torch.float32, device=device) * (360.0 / count)


def inplane_matrices(psi_deg: Tensor) -> Tensor:
    """The 2 x 2 rotations ``R`` (..., 2, 2) of in-plane angles ``psi`` (degrees), RELION's Euler convention."""
    euler = torch.stack([torch.zeros_like(psi_deg), torch.zeros_like(psi_deg), psi_deg], -1)
    return euler_to_matrix(euler.double())[..., :2, :2].to(psi_deg.dtype)


class RotatedPoints:
    """Bilinear interpolation weights of the points ``R_p^T k`` on the (D, D) grid for each angle ``p``.

    ``index`` (P, M, 4) flat grid indices ``iy * D + ix`` and ``weight`` (P, M, 4) of the four neighbours.
    """

    def __init__(self, points: FourierPoints, angles_deg: Tensor) -> None:
        self.points, self.box = points, points.box
        self.angles = angles_deg.to(points.coords.device)
        rot = inplane_matrices(self.angles)  # (P, 2, 2)
        source = torch.einsum("pji,jm->pim", rot, points.coords.to(rot.dtype))  # R^T k: (P, 2, M) = (x, y)
        position = source + self.box // 2
        base = torch.floor(position)
        frac = position - base
        base = base.long()
        corners, weights = [], []
        for dy in (0, 1):
            for dx in (0, 1):
                ix = (base[:, 0] + dx) % self.box
                iy = (base[:, 1] + dy) % self.box
                corners.append(iy * self.box + ix)
                wx = frac[:, 0] if dx else 1 - frac[:, 0]
                wy = frac[:, 1] if dy else 1 - frac[:, 1]
                weights.append(wx * wy)
        self.index = torch.stack(corners, -1)
        self.weight = torch.stack(weights, -1).float()

    @property
    def n_angles(self) -> int:
        return int(self.angles.shape[0])

    def sample(self, spectra: Tensor) -> Tensor:
        """Rotated references (K, P, M) complex from centred spectra (K, D, D): value ``F_K(R_p^T k_m)``."""
        flat = spectra.reshape(spectra.shape[0], -1)
        values = flat[:, self.index]  # (K, P, M, 4)
        return (values * self.weight.to(values.real.dtype)).sum(-1)

    def sample_at(self, spectra: Tensor, classes: Tensor, angles: Tensor) -> Tensor:
        """One rotated reference per item (B, M): class ``classes[b]`` at angle index ``angles[b]``."""
        flat = spectra.reshape(spectra.shape[0], -1)
        values = flat[classes[:, None, None], self.index[angles]]  # (B, M, 4)
        return (values * self.weight[angles].to(values.real.dtype)).sum(-1)

    def insert(self, target: Tensor, values: Tensor, classes: Tensor, angles: Tensor) -> None:
        """Adjoint of :meth:`sample_at`: scatter-add ``values`` (B, M) (complex or real) into ``target``
        (K, D, D) (same dtype) at class ``classes[b]`` and the grid positions ``R_p^T k`` of angle ``angles[b]``."""
        grid = self.box * self.box
        flat_index = (classes[:, None, None] * grid + self.index[angles]).reshape(-1)
        contribution = (values[..., None] * self.weight[angles].to(values.real.dtype)).reshape(-1)
        out = target.view(-1)
        if out.is_complex():
            torch.view_as_real(out).index_add_(0, flat_index, torch.view_as_real(contribution.contiguous()))
        else:
            out.index_add_(0, flat_index, contribution)


def hermitian_complete(numerator: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Accumulators filled from half-plane points made Hermitian: ``N(k) + conj N(-k)`` and ``W(k) + W(-k)``
    over the last two (centred) dims."""
    return numerator + flip_frequencies(numerator).conj(), weights + flip_frequencies(weights)


def max_radius(box: int) -> float:
    """Largest comparison radius (Fourier pixels) whose rotated points keep their neighbours inside Nyquist."""
    return float(box // 2 - 1)


__all__ = ["RotatedPoints", "hermitian_complete", "inplane_angles", "inplane_matrices", "max_radius"]
