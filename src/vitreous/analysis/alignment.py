"""Global alignment of an unreferenced result to the truth: poses (rotation errors) and maps (either hand).

Ab initio methods fix the orientation of their map (and its hand) arbitrarily.  If the estimated map is the
truth rotated, ``V_est(x) = V_true(R x)`` (coordinates x, y, z in Å about the box centre, RELION matrices), then
the poses satisfy ``A_true = A_est R^T`` for every particle; if it is also mirrored through z
(``F = diag(1, 1, -1)``), ``A_true = (F A_est F) R^T``, because a projection along z cannot tell the two apart.

:func:`align_rotations` finds ``R`` (and the hand) from the poses: the chordal mean of the per-particle
``A_est^T A_true`` (transposed), refitted on the better half of the particles, so outliers do not pull it.
:func:`align_map` finds the rotation, hand and whole-voxel shift that best overlay a map on a reference by
exhaustive search on an SO(3) grid at low resolution (cross-correlation over all shifts by FFT), refined
locally at full size, and returns the overlaid map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vitreous.physics import so3_grid
from vitreous.physics.fourier import fourier_crop, lowpass
from vitreous.physics.rotations import angular_distance

MIRROR = np.diag([1.0, 1.0, -1.0])


@dataclass
class RotationAlignment:
    """``rotation`` R (3, 3) with ``A_true ~ H A_est H R^T`` (``H`` = F if ``mirrored`` else I), and the
    per-particle angular errors (degrees) after alignment."""

    rotation: np.ndarray
    mirrored: bool
    errors_deg: np.ndarray

    @property
    def median_deg(self) -> float:
        return float(np.median(self.errors_deg))


def _chordal_mean(rotations: np.ndarray) -> np.ndarray:
    """The rotation closest (Frobenius) to the mean of ``rotations`` (N, 3, 3)."""
    u, _, vt = np.linalg.svd(rotations.mean(0))
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def _fit(estimated: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    relative = np.swapaxes(estimated, 1, 2) @ true  # R^T per particle
    rt = _chordal_mean(relative)
    for _ in range(3):  # refit on the better half
        errors = angular_distance(estimated @ rt, true)
        rt = _chordal_mean(relative[errors <= np.median(errors)])
    return rt.T, angular_distance(estimated @ rt, true)


def align_rotations(estimated: np.ndarray, true: np.ndarray) -> RotationAlignment:
    """Best global rotation (and hand) taking estimated poses (N, 3, 3) to the true ones (N, 3, 3)."""
    estimated, true = np.asarray(estimated, np.float64), np.asarray(true, np.float64)
    best = None
    for mirrored in (False, True):
        est = MIRROR @ estimated @ MIRROR if mirrored else estimated
        rotation, errors = _fit(est, true)
        if best is None or np.median(errors) < best.median_deg:
            best = RotationAlignment(rotation, mirrored, errors)
    assert best is not None
    return best


# ---- maps --------------------------------------------------------------------------------------------------
@dataclass
class MapAlignment:
    """``aligned`` = the moving map (mirrored first if ``mirrored``) rotated by ``rotation`` and shifted by
    ``shift_px`` (z, y, x voxels) onto the reference; ``correlation`` its real-space correlation with it."""

    aligned: np.ndarray
    rotation: np.ndarray
    mirrored: bool
    shift_px: np.ndarray
    correlation: float


def rotate_volume(volume: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Volumes (R, D, D, D) with ``out[r](x) = volume(rotations[r] x)``, x = (x, y, z) about voxel D // 2
    (trilinear; zero outside)."""
    D = volume.shape[-1]
    coords = (torch.arange(D, dtype=volume.dtype, device=volume.device) - D // 2)
    z, y, x = torch.meshgrid(coords, coords, coords, indexing="ij")
    xyz = torch.stack([x, y, z], -1).reshape(-1, 3)  # (V, 3)
    moved = torch.einsum("rij,vj->rvi", rotations.to(volume), xyz)
    grid = (moved + D // 2) * (2.0 / (D - 1)) - 1.0  # align_corners=True: -1 .. 1 spans voxel 0 .. D-1
    grid = grid.reshape(-1, D, D, D, 3)
    source = volume.expand(grid.shape[0], 1, D, D, D)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]


def _best_shift(rotated: torch.Tensor, reference_ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max cross-correlation over cyclic shifts of each rotated map (R, D, D, D) with the reference (its
    ``rfftn``): (values (R,), flat index)."""
    a = torch.fft.rfftn(rotated, dim=(-3, -2, -1))
    cc = torch.fft.irfftn(reference_ft.conj() * a, s=rotated.shape[-3:], dim=(-3, -2, -1))
    return cc.flatten(1).max(1)


def _normalised(volume: torch.Tensor) -> torch.Tensor:
    volume = volume - volume.mean()
    return volume / volume.norm().clamp(min=1e-12)


def _search(moving: torch.Tensor, reference: torch.Tensor, rotations: torch.Tensor,
            chunk: int = 64) -> tuple[float, torch.Tensor, int]:
    """Best (correlation, rotation, flat shift index) of ``moving`` over ``rotations`` against ``reference``."""
    best = (-np.inf, rotations[0], 0)
    reference_ft = torch.fft.rfftn(reference, dim=(-3, -2, -1))
    for start in range(0, rotations.shape[0], chunk):
        part = rotations[start:start + chunk]
        values, index = _best_shift(rotate_volume(moving, part), reference_ft)
        i = int(values.argmax())
        if float(values[i]) > best[0]:
            best = (float(values[i]), part[i], int(index[i]))
    return best


def _unflatten_shift(index: int, D: int) -> np.ndarray:
    shift = np.array(np.unravel_index(index, (D, D, D)), np.float64)
    return np.where(shift > D // 2, shift - D, shift)


def align_map(moving: np.ndarray, reference: np.ndarray, pixel_size: float, *, resolution_A: float = 12.0,
              coarse_box: int = 32, level: int = 2) -> MapAlignment:
    """Overlay ``moving`` on ``reference`` (both (D, D, D), voxel ``pixel_size`` Å), trying both hands.

    Exhaustive search over the ``level`` SO(3) grid (level 2: 15°) of maps low-passed to ``resolution_A``
    and Fourier-cropped to ``coarse_box``, then two local refinements (steps of 5° and 1.5°) at full size."""
    D = moving.shape[-1]
    ref = torch.as_tensor(reference, dtype=torch.float32)
    small = min(coarse_box, D)

    def prepared(volume: torch.Tensor, size: int) -> torch.Tensor:
        filtered = lowpass(volume, resolution_A, pixel_size, ndim=3)
        return _normalised(fourier_crop(filtered, size, ndim=3) if size < D else filtered)

    grid = so3_grid.grid_matrices(level, torch.arange(so3_grid.grid_size(level)), dtype=torch.float32)
    best: tuple[float, torch.Tensor, bool] | None = None
    for mirrored in (False, True):
        vol = torch.as_tensor(np.ascontiguousarray(moving[::-1] if mirrored else moving), dtype=torch.float32)
        score, rotation, _ = _search(prepared(vol, small), prepared(ref, small), grid)
        if best is None or score > best[0]:
            best = (score, rotation, mirrored)
    assert best is not None
    _, rotation, mirrored = best
    vol = torch.as_tensor(np.ascontiguousarray(moving[::-1] if mirrored else moving), dtype=torch.float32)
    fine_moving, fine_ref = _normalised(vol), _normalised(ref)
    index = 0
    for range_deg, step_deg in ((10.0, 5.0), (3.0, 1.5)):
        candidates = so3_grid.local_perturbations(range_deg, step_deg).to(torch.float32) @ rotation
        _, rotation, index = _search(fine_moving, fine_ref, candidates, chunk=16)
    shift = _unflatten_shift(index, D)
    rotated = rotate_volume(vol[None], rotation[None])[0]
    aligned = torch.roll(rotated, tuple(int(-s) for s in shift), dims=(0, 1, 2)).numpy()
    correlation = float((_normalised(torch.as_tensor(aligned)) * fine_ref).sum())
    return MapAlignment(aligned.astype(np.float32), rotation.numpy().astype(np.float64), mirrored, -shift,
                        correlation)


__all__ = ["MapAlignment", "RotationAlignment", "align_map", "align_rotations", "rotate_volume"]
