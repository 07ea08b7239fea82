"""Latent-space paths (vitreous.analysis.latent_paths): PC trajectories, nearest-neighbour graph paths and
their resampling, on synthetic z with a known 1D manifold."""

from __future__ import annotations

import numpy as np
import pytest

from vitreous.analysis.latent_embedding import principal_components
from vitreous.analysis.latent_paths import (
    graph_path,
    neighbour_graph,
    path_trajectory,
    pc_trajectory,
    resample_path,
)


def _spiral(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points on a 3D helix in shuffled order (z, parameter t): a curved 1D manifold."""
    t = np.random.default_rng(seed).permutation(np.linspace(0, 3 * np.pi, n))
    return np.stack([np.cos(t), np.sin(t), 0.3 * t], axis=1), t


def test_pc_trajectory_spans_the_percentiles_in_order_along_the_component() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(1000, 4)) * np.array([5.0, 2.0, 0.5, 0.1]) + 3.0
    pca = principal_components(z)
    for pc in (1, 2):
        trajectory = pc_trajectory(pca, pc, n_points=10)
        assert trajectory.z.shape == (10, 4) and trajectory.indices is None
        low, high = np.percentile(pca.coords[:, pc - 1], [5, 95])
        np.testing.assert_allclose(trajectory.position, np.linspace(low, high, 10))
        coords = (trajectory.z - pca.mean) @ pca.components.T
        np.testing.assert_allclose(coords[:, pc - 1], trajectory.position, atol=1e-9)  # increasing along PCk
        others = np.delete(coords, pc - 1, axis=1)
        np.testing.assert_allclose(others, 0.0, atol=1e-9)  # the other components stay at the mean
        steps = np.linalg.norm(np.diff(trajectory.z, axis=0), axis=1)
        np.testing.assert_allclose(steps, steps[0])  # evenly spaced


def test_pc_trajectory_on_data_uses_the_nearest_particles() -> None:
    z, _ = _spiral()
    pca = principal_components(z)
    free = pc_trajectory(pca, 1, n_points=8, low=10, high=90)
    snapped = pc_trajectory(pca, 1, n_points=8, low=10, high=90, z=z)
    assert snapped.indices is not None
    np.testing.assert_array_equal(snapped.z, z[snapped.indices])
    for point, index in zip(free.z, snapped.indices, strict=True):
        assert np.linalg.norm(z[index] - point) == pytest.approx(np.linalg.norm(z - point, axis=1).min())
    with pytest.raises(ValueError, match="PC4 does not exist"):
        pc_trajectory(pca, 4)


def test_graph_path_walks_a_curved_manifold_monotonically_through_neighbours() -> None:
    z, t = _spiral()
    start, end = int(np.argmin(t)), int(np.argmax(t))
    path = graph_path(z, start, end, neighbours=6)
    assert path[0] == start and path[-1] == end
    assert len(set(path.tolist())) == len(path)
    assert np.all(np.diff(t[path]) > 0)  # along the helix, never cutting across its turns
    graph = neighbour_graph(z, 6)
    assert all(graph[a, b] > 0 for a, b in zip(path[:-1], path[1:], strict=True))  # each step is an edge
    # the straight chord is far shorter than the path: it would have crossed empty space
    along = path_trajectory(z, path)
    assert along.position[-1] > 2 * np.linalg.norm(z[end] - z[start])


def test_graph_path_refuses_disconnected_endpoints() -> None:
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(size=(50, 2)), 100 + rng.normal(size=(50, 2))])
    with pytest.raises(ValueError, match="not connected"):
        graph_path(z, 0, 99, neighbours=5)
    with pytest.raises(ValueError, match="same particle"):
        graph_path(z, 3, 3)


def test_resample_path_spaces_points_evenly_by_arc_length() -> None:
    points = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 3.0]])  # length 4, with a repeated point
    resampled = resample_path(points, 5)
    np.testing.assert_allclose(resampled.z, [[0, 0], [1, 0], [1, 1], [1, 2], [1, 3]], atol=1e-12)
    np.testing.assert_allclose(resampled.position, [0, 1, 2, 3, 4])
    assert resampled.indices is None
