"""Where pose search gets its reference slices: any callable ``(rotations (R, 3, 3), points) -> (R, M) complex``.

A slice source returns the central sections ``F_ref(A^T (kx, ky, 0))`` of a reference at the half-plane
points of :class:`~vitreous.align.points.FourierPoints` for RELION matrices ``A`` (see
:mod:`vitreous.physics.rotations`), in the scale of the centred, unnormalised ``fft2c`` of a projection (as
:meth:`vitreous.physics.projection.Projector.slices`).  Keeping search model-agnostic: a voxel map
(:class:`ProjectorSlices`, which interpolates only the points needed), any full-slice function such as
``Projector.slices`` (:class:`FullSlices`), or a neural model evaluated at the points.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from vitreous.align.points import FourierPoints
from vitreous.physics.projection import Projector

POINTS_PER_CHUNK = 1 << 17  # rotations x points interpolated at once (cache-sized temporaries, ~8 MB)


class SliceSource(Protocol):
    """Reference sections at Fourier points: ``(R, 3, 3) -> (R, M)`` complex, on the rotations' device."""

    def __call__(self, rotations: Tensor, points: FourierPoints) -> Tensor: ...


class ProjectorSlices:
    """Sections of a :class:`Projector`'s padded volume FT by trilinear interpolation at the points only
    (the same values as ``Projector.slices`` there), chunked over rotations to bound memory."""

    def __init__(self, projector: Projector) -> None:
        self.projector = projector
        P = projector.P
        self._index_dtype = torch.int32 if P**3 < 2**31 else torch.int64

    def __call__(self, rotations: Tensor, points: FourierPoints) -> Tensor:
        proj = self.projector
        rot = rotations.reshape(-1, 3, 3).to(device=proj.device, dtype=proj.dtype)
        coords = points.coords.to(device=proj.device, dtype=proj.dtype) * (proj.P / proj.D)
        chunk = max(1, POINTS_PER_CHUNK // max(points.size, 1))
        parts = [self._interpolate(rot[i:i + chunk], coords) for i in range(0, rot.shape[0], chunk)]
        if not parts:
            return torch.zeros(0, points.size, dtype=proj.volume_ft.dtype, device=proj.device)
        return torch.cat(parts)

    def _interpolate(self, rot: Tensor, coords: Tensor) -> Tensor:
        """Trilinear values of the periodic (P, P, P) [z, y, x] FT at ``A^T (kx, ky, 0) + P // 2``."""
        P = self.projector.P
        pos = torch.matmul(rot[:, :2, :].transpose(1, 2), coords).add_(P // 2)  # (R, 3, M): x, y, z rows
        lo_f = torch.floor(pos)
        frac = pos.sub_(lo_f)
        lo = lo_f.to(self._index_dtype).remainder_(P)
        hi = (lo + 1).remainder_(P)
        stride = torch.tensor([1, P, P * P], dtype=lo.dtype, device=lo.device)[None, :, None]
        lo, hi = lo * stride, hi * stride
        volume = self.projector.volume_ft
        out = torch.zeros(rot.shape[0], coords.shape[1], dtype=volume.dtype, device=volume.device)
        ifrac = 1 - frac
        for iz, wz in ((lo[:, 2], ifrac[:, 2]), (hi[:, 2], frac[:, 2])):
            for iy, wy in ((lo[:, 1], ifrac[:, 1]), (hi[:, 1], frac[:, 1])):
                izy, wzy = iz + iy, wz * wy
                for ix, wx in ((lo[:, 0], ifrac[:, 0]), (hi[:, 0], frac[:, 0])):
                    out += volume.index_select(0, (izy + ix).reshape(-1)).view_as(out) * (wzy * wx)
        return out


class FullSlices:
    """Adapter for a full-slice function ``slices(rotations (R, 3, 3)) -> (R, D, D)`` (e.g.
    ``Projector.slices`` or a neural decoder): computes whole slices in chunks and keeps the points."""

    def __init__(self, slices: Callable[[Tensor], Tensor], box: int) -> None:
        self.slices = slices
        self.box = box

    def __call__(self, rotations: Tensor, points: FourierPoints) -> Tensor:
        rot = rotations.reshape(-1, 3, 3)
        chunk = max(1, POINTS_PER_CHUNK // (self.box * self.box))
        parts = [points.gather(self.slices(rot[i:i + chunk])) for i in range(0, rot.shape[0], chunk)]
        return torch.cat(parts) if parts else torch.zeros(0, points.size, dtype=torch.complex64,
                                                          device=rotations.device)
