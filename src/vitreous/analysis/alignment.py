"""Global alignment of an unreferenced result to the truth: poses (rotation errors) and maps (either hand).

Ab initio methods fix the orientation of their map (and its hand) arbitrarily.  If the estimated map is the
truth rotated, ``V_est(x) = V_true(R x)`` (coordinates x, y, z in Å about the box centre, RELION matrices), then
the poses satisfy ``A_true = A_est R^T`` for every particle; if it is also mirrored through z
(``F = diag(1, 1, -1)``), ``A_true = (F A_est F) R^T``, because a projection along z cannot tell the two apart.

:func:`align_rotations` finds ``R`` (and the hand) from the poses: the chordal mean of the per-particle
``A_est^T A_true`` (transposed), refitted on the better half of the particles, so outliers do not pull it.
:func:`align_map` finds the rotation, hand and shift that best overlay a map on a reference: an exhaustive
search on an SO(3) grid at low resolution (cross-correlation over all shifts by FFT) keeps several distinct
candidates, each refined locally (an elongated molecule's best grid point can be 25° from the answer while the
grid point nearest to it scores lower), the best is refined at full size and then polished continuously
(rotation and sub-voxel shift) on cubic-spline resamplings, which also give the overlaid map: trilinear
resampling blurs the map near Nyquist and a whole-voxel shift is up to half a voxel off, both of which lower the
FSC against the reference at high resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, optimize

from vitreous.physics import so3_grid
from vitreous.physics.fourier import fourier_crop, lowpass
from vitreous.physics.rotations import angular_distance, rotvec_to_matrix

MIRROR = np.diag([1.0, 1.0, -1.0])
FULL_SIZE_CANDIDATES = 3  # coarse results refined at full size


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


def _scores(moving: torch.Tensor, reference: torch.Tensor, rotations: torch.Tensor,
            chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Best correlation over cyclic shifts (R,) and its flat shift index (R,) of ``moving`` rotated by each of
    ``rotations`` against ``reference``."""
    reference_ft = torch.fft.rfftn(reference, dim=(-3, -2, -1))
    parts = [_best_shift(rotate_volume(moving, rotations[start:start + chunk]), reference_ft)
             for start in range(0, rotations.shape[0], chunk)]
    return torch.cat([v for v, _ in parts]), torch.cat([i for _, i in parts])


def _search(moving: torch.Tensor, reference: torch.Tensor, rotations: torch.Tensor,
            chunk: int = 64) -> tuple[float, torch.Tensor, int]:
    """Best (correlation, rotation, flat shift index) of ``moving`` over ``rotations`` against ``reference``."""
    values, index = _scores(moving, reference, rotations, chunk)
    i = int(values.argmax())
    return float(values[i]), rotations[i], int(index[i])


def _distinct_best(values: torch.Tensor, rotations: torch.Tensor, count: int, separation_deg: float) -> list[int]:
    """Indices of up to ``count`` best-scoring rotations, each at least ``separation_deg`` from those before."""
    chosen: list[int] = []
    matrices = rotations.double().numpy()
    for i in torch.argsort(values, descending=True).tolist():
        if all(float(angular_distance(matrices[i], matrices[j])) >= separation_deg for j in chosen):
            chosen.append(i)
            if len(chosen) == count:
                break
    return chosen


def _local(moving: torch.Tensor, reference: torch.Tensor, rotation: torch.Tensor,
           steps: tuple[tuple[float, float], ...], chunk: int = 64) -> tuple[float, torch.Tensor, int]:
    """Local refinement of ``rotation`` over ``(range, step)`` lattices in turn (degrees)."""
    best = (-np.inf, rotation, 0)
    for range_deg, step_deg in steps:
        candidates = so3_grid.local_perturbations(range_deg, step_deg).to(torch.float32) @ best[1]
        best = _search(moving, reference, candidates, chunk)
    return best


def _spline_resample(coefficients: np.ndarray, rotation: np.ndarray, shift_px: np.ndarray) -> np.ndarray:
    """``out(x) = volume(rotation (x - shift_px))`` (x about voxel D // 2; ``shift_px`` z, y, x) by cubic B-spline
    from the volume's ``ndimage.spline_filter`` coefficients; zero outside."""
    D = coefficients.shape[-1]
    zyx = np.indices((D, D, D), dtype=np.float64).reshape(3, -1) - D // 2 - np.asarray(shift_px)[:, None]
    source = (rotation @ zyx[::-1])[::-1] + D // 2
    return ndimage.map_coordinates(coefficients, source, order=3, prefilter=False,
                                   mode="grid-constant").reshape(D, D, D)


def _polish(coefficients: np.ndarray, reference: np.ndarray, rotation: np.ndarray,
            shift_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Continuous refinement (Nelder-Mead; simplex of 0.5° and 0.25 voxel) of ``rotation`` and ``shift_px`` by
    the correlation with ``reference`` of the moving map resampled from its cubic-spline ``coefficients``."""
    ref = reference.astype(np.float64) - reference.mean()
    ref /= max(float(np.linalg.norm(ref)), 1e-12)

    def transform(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rotation @ rotvec_to_matrix(np.deg2rad(p[:3])), shift_px + p[3:]

    def loss(p: np.ndarray) -> float:
        out = _spline_resample(coefficients, *transform(p))
        out -= out.mean()
        return -float((out * ref).sum() / max(float(np.linalg.norm(out)), 1e-12))

    simplex = np.vstack([np.zeros(6), np.diag([0.5, 0.5, 0.5, 0.25, 0.25, 0.25])])
    result = optimize.minimize(loss, np.zeros(6), method="Nelder-Mead",
                               options={"initial_simplex": simplex, "xatol": 0.02, "fatol": 1e-7, "maxfev": 600})
    return transform(result.x)


def _unflatten_shift(index: int, D: int) -> np.ndarray:
    shift = np.array(np.unravel_index(index, (D, D, D)), np.float64)
    return np.where(shift > D // 2, shift - D, shift)


def align_map(moving: np.ndarray, reference: np.ndarray, pixel_size: float, *, resolution_A: float = 12.0,
              coarse_box: int = 32, level: int = 2, candidates: int = 6, polish: bool = True) -> MapAlignment:
    """Overlay ``moving`` on ``reference`` (both (D, D, D), voxel ``pixel_size`` Å), trying both hands.

    Exhaustive search over the ``level`` SO(3) grid (level 2: 15°) of maps low-passed to ``resolution_A`` and
    Fourier-cropped to ``coarse_box``; the ``candidates`` best distinct rotations of each hand are refined there
    (steps of 5° and 1.5°), the ``FULL_SIZE_CANDIDATES`` best of those at full size (5°, 1.5°, 0.5°), the best
    then (``polish``) continuously with a sub-voxel shift on cubic-spline resamplings.  Without ``polish``
    (faster; for comparisons at low resolution) the overlaid map is a trilinear resampling with a whole-voxel
    shift."""
    D = moving.shape[-1]
    ref = torch.as_tensor(reference, dtype=torch.float32)
    small = min(coarse_box, D)

    def prepared(volume: torch.Tensor, size: int) -> torch.Tensor:
        filtered = lowpass(volume, resolution_A, pixel_size, ndim=3)
        return _normalised(fourier_crop(filtered, size, ndim=3) if size < D else filtered)

    def hand(mirrored: bool) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(moving[::-1] if mirrored else moving), dtype=torch.float32)

    grid = so3_grid.grid_matrices(level, torch.arange(so3_grid.grid_size(level)), dtype=torch.float32)
    small_ref = prepared(ref, small)
    coarse: list[tuple[float, torch.Tensor, bool]] = []
    for mirrored in (False, True):
        small_moving = prepared(hand(mirrored), small)
        values, _ = _scores(small_moving, small_ref, grid)
        for i in _distinct_best(values, grid, candidates, 2 * so3_grid.grid_spacing_deg(level)):
            score, rotation, _ = _local(small_moving, small_ref, grid[i], ((10.0, 5.0), (3.0, 1.5)))
            coarse.append((score, rotation, mirrored))
    fine_ref = _normalised(ref)
    best: tuple[float, torch.Tensor, int, bool] | None = None
    for _, rotation, mirrored in sorted(coarse, key=lambda c: -c[0])[:FULL_SIZE_CANDIDATES]:
        score, rotation, index = _local(_normalised(hand(mirrored)), fine_ref, rotation,
                                        ((10.0, 5.0), (3.0, 1.5), (1.0, 0.5)), chunk=16)
        if best is None or score > best[0]:
            best = (score, rotation, index, mirrored)
    assert best is not None
    _, rotation, index, mirrored = best
    vol = hand(mirrored)
    shift = -_unflatten_shift(index, D)  # aligned(x) = moving(R (x - shift))
    if polish:
        coefficients = ndimage.spline_filter(vol.double().numpy(), order=3, mode="grid-constant")
        matrix, shift = _polish(coefficients, reference, rotation.double().numpy(), shift)
        aligned = _spline_resample(coefficients, matrix, shift).astype(np.float32)
    else:
        matrix = rotation.double().numpy()
        rotated = rotate_volume(vol[None], rotation[None])[0]
        aligned = torch.roll(rotated, tuple(int(s) for s in shift), dims=(0, 1, 2)).numpy()
    correlation = float((_normalised(torch.as_tensor(aligned)) * fine_ref).sum())
    return MapAlignment(aligned.astype(np.float32), matrix, mirrored, shift, correlation)


__all__ = ["MapAlignment", "RotationAlignment", "align_map", "align_rotations", "rotate_volume"]
