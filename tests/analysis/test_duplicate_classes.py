"""Duplicate classes: one structure in two classes (another orientation, the other hand, other noise) is found;
two different proteins at the same resolution are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vitreous.analysis.alignment import rotate_volume
from vitreous.analysis.duplicate_classes import ClassMap, find_duplicates
from vitreous.physics.fourier import lowpass
from vitreous.physics.rotations import euler_to_matrix
from vitreous.sim.truth import models_truth

PROTEINS = Path(__file__).resolve().parents[3] / "shared" / "data" / "structures" / "proteins"
BOX, APIX, RESOLUTION = 24, 5.0, 20.0


def _noisy(volume: torch.Tensor, seed: int) -> np.ndarray:
    noise = torch.randn(volume.shape, generator=torch.Generator().manual_seed(seed)) * 0.1 * volume.std()
    return lowpass(volume + noise, RESOLUTION, APIX, ndim=3).numpy()


def test_one_structure_in_two_classes_is_merged_into_the_larger() -> None:
    if not PROTEINS.is_dir():
        pytest.skip("shared data not available")
    protease, inhibitor = models_truth([PROTEINS / "4E43.pdb", PROTEINS / "5PTI.cif.gz"], BOX, APIX).volumes
    rotation = torch.as_tensor(euler_to_matrix(np.array([30.0, 100.0, -50.0])), dtype=torch.float32)
    turned_mirror = rotate_volume(protease.flip(0)[None], rotation[None])[0]  # same protein, other hand and pose
    maps = [ClassMap(_noisy(protease, 1), RESOLUTION), ClassMap(_noisy(inhibitor, 2), RESOLUTION), None,
            ClassMap(_noisy(turned_mirror, 3), RESOLUTION)]
    duplicates = find_duplicates(maps, np.array([100, 300, 0, 200]), APIX)
    assert [(d.kept, d.duplicate) for d in duplicates] == [(3, 0)]  # kept in the larger class (200 > 100)
    assert duplicates[0].cross_resolution_A <= 1.3 * RESOLUTION
