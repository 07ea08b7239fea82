"""Ground-truth states (vitreous.sim.truth): model mixtures, trajectories, boxes and state draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from vitreous.errors import InputError
from vitreous.sim.atoms import box_size, centred, load_atoms, radius
from vitreous.sim.truth import draw_states, models_truth, trajectory_truth

APIX = 2.5
PROTEASE = "proteins/4E43.pdb"
BPTI = "proteins/5PTI.cif.gz"


def centroid_voxels(volume: np.ndarray) -> np.ndarray:
    """Centroid (x, y, z) of a [z, y, x] map in voxels from D//2."""
    grid = np.arange(volume.shape[0]) - volume.shape[0] // 2
    total = volume.sum()
    return np.array([(volume.sum((0, 1)) * grid).sum(), (volume.sum((0, 2)) * grid).sum(),
                     (volume.sum((1, 2)) * grid).sum()]) / total


def test_models_truth_one_centred_state_per_model(structures: Path) -> None:
    paths = [structures / PROTEASE, structures / BPTI]
    truth = models_truth(paths, None, APIX)
    needed = [box_size(radius(centred(load_atoms(p))), APIX) for p in paths]
    assert truth.box == max(needed) and truth.volumes.shape == (2, truth.box, truth.box, truth.box)
    assert truth.names == ["4E43", "5PTI"] and not truth.continuous
    for volume in truth.volumes.numpy():
        assert np.abs(centroid_voxels(volume)).max() < 0.5  # each model on its own centre
    # BPTI (58 residues) carries far less potential than the protease dimer (~200 residues)
    small, large = truth.volumes.sum((1, 2, 3)).tolist()[::-1]
    assert 2.5 < large / small < 5


def test_box_must_hold_the_model(structures: Path) -> None:
    path = structures / PROTEASE
    tight = box_size(radius(centred(load_atoms(path))), APIX, margin_A=0.0)
    assert models_truth([path], tight, APIX).box == tight
    with pytest.raises(InputError, match=f"use --box {tight} or more"):
        models_truth([path], tight - 2, APIX)


def test_trajectory_frames_share_one_frame_of_reference(structures: Path, tmp_path: Path) -> None:
    atoms = load_atoms(structures / BPTI)
    step = np.array([2 * APIX, 0.0, 0.0])  # frame 2 is frame 1 moved by 2 voxels along x
    path = tmp_path / "two_frames.npz"
    np.savez(path, coords_A=np.stack([atoms.coords, atoms.coords + step]), elements=atoms.elements)
    truth = trajectory_truth(path, None, APIX)
    assert truth.continuous and truth.names == ["frame_000", "frame_001"]
    first, second = truth.volumes.numpy()
    # one common centre: the move survives (each frame centred on its own would give two equal maps)
    np.testing.assert_allclose(second, np.roll(first, 2, axis=2), atol=1e-5 * first.max())
    np.testing.assert_allclose(centroid_voxels(second) - centroid_voxels(first), [2, 0, 0], atol=0.01)
    assert np.abs(centroid_voxels(first + second)).max() < 0.5


def test_draw_states_follows_proportions() -> None:
    n = 20000
    states = draw_states(n, np.arange(3), [1.0, 3.0, 0.0], seed=1)  # unnormalised; a zero proportion: none
    counts = np.bincount(states, minlength=3)
    assert counts[2] == 0
    assert abs(counts[0] - n / 4) < 4 * np.sqrt(n * 0.25 * 0.75)  # 4 binomial standard deviations
    np.testing.assert_array_equal(states, draw_states(n, np.arange(3), [1.0, 3.0, 0.0], seed=1))
    uniform = np.bincount(draw_states(n, np.arange(5), None, seed=2), minlength=5)
    assert stats.chisquare(uniform).pvalue > 1e-4


def test_draw_states_spreads_a_component_over_its_states() -> None:
    n = 20000  # a model (state 0) and a 4-frame trajectory (states 1-4), 1 : 1
    counts = np.bincount(draw_states(n, np.array([0, 1, 1, 1, 1]), [1.0, 1.0], seed=3), minlength=5)
    assert abs(counts[0] - n / 2) < 4 * np.sqrt(n * 0.25)
    assert stats.chisquare(counts[1:]).pvalue > 1e-4


@pytest.mark.parametrize("proportions", [[0.5], [0.5, 0.3, 0.2], [1.0, -0.5], [0.0, 0.0], [float("nan"), 1.0]])
def test_draw_states_refuses_bad_proportions(proportions: list[float]) -> None:
    with pytest.raises(InputError, match="--proportions needs 2 non-negative numbers"):
        draw_states(10, np.arange(2), proportions, seed=0)
