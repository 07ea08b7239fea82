"""Global alignment of ab initio results to the truth: poses (rotation and hand) and maps (either hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitreous.analysis.alignment import MIRROR, align_map, align_rotations, rotate_volume
from vitreous.analysis.fsc import fsc_curve, resolution_at
from vitreous.physics.rotations import angular_distance, euler_to_matrix
from vitreous.physics.so3_grid import random_rotations

R = euler_to_matrix(np.array([40.0, 70.0, -120.0]))


@pytest.mark.parametrize("mirrored", [False, True])
def test_poses_are_aligned_in_either_hand(mirrored: bool) -> None:
    true = random_rotations(400, torch.Generator().manual_seed(3), dtype=torch.float64).numpy()
    estimated = true @ R  # A_true = A_est R^T
    if mirrored:
        estimated = MIRROR @ estimated @ MIRROR
    rng = np.random.default_rng(0)
    outliers = rng.choice(400, 60, replace=False)  # 15 % of the poses wrong: the fit must ignore them
    estimated[outliers] = random_rotations(60, torch.Generator().manual_seed(4), dtype=torch.float64).numpy()
    alignment = align_rotations(estimated, true)
    assert alignment.mirrored == mirrored
    assert float(angular_distance(alignment.rotation, R)) < 1e-6
    good = np.setdiff1d(np.arange(400), outliers)
    assert alignment.errors_deg[good].max() < 1e-6 and alignment.median_deg < 1e-6


def _blobs(box: int) -> np.ndarray:
    """An asymmetric (chiral) arrangement of Gaussian blobs of different sizes."""
    centres = np.array([[0, 0, 0], [6, 0, 0], [0, 4, 0], [0, 0, 3], [-3, -4, 2]], np.float64)
    widths = [3.0, 2.0, 1.5, 1.2, 1.8]
    grid = np.stack(np.meshgrid(*(np.arange(box) - box // 2,) * 3, indexing="ij"), -1)[..., ::-1]  # x, y, z
    volume = sum(np.exp(-((grid - c) ** 2).sum(-1) / (2 * w * w)) for c, w in zip(centres, widths, strict=True))
    return volume.astype(np.float32)


@pytest.mark.parametrize("mirrored", [False, True])
@pytest.mark.parametrize("polish", [False, True])
def test_a_rotated_shifted_map_is_overlaid_on_its_reference(mirrored: bool, polish: bool) -> None:
    box = 24
    reference = _blobs(box)
    moved = rotate_volume(torch.as_tensor(reference)[None], torch.as_tensor(R, dtype=torch.float32)[None])[0]
    moved = np.roll(moved.numpy(), (2, -1, 1), axis=(0, 1, 2))
    if mirrored:
        moved = moved[::-1].copy()
    result = align_map(moved, reference, 2.0, resolution_A=6.0, coarse_box=16, polish=polish)
    assert result.mirrored == mirrored
    # aligned(x) = moved(Q x) = reference(R Q x): Q = R^T (the mirrored map is flipped back first)
    error = float(angular_distance(result.rotation, R.T))
    frequency, fsc = fsc_curve(result.aligned, reference, 2.0)
    if polish:  # continuous rotation and sub-voxel shift, cubic-spline resampling: near exact to Nyquist (4 Å)
        assert error < 0.05 and result.correlation > 0.999
        assert resolution_at(frequency, fsc, 0.5) < 4.5 and resolution_at(frequency, fsc, 0.9) < 5.5
    else:  # 0.5° lattice, whole-voxel shift, two trilinear resamplings (measured: 2.5°, 5.5 Å)
        assert error < 3.0 and result.correlation > 0.99
        assert resolution_at(frequency, fsc, 0.5) < 6.0
