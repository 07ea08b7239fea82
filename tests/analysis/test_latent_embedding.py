"""PCA, UMAP and k-means of latent points (vitreous.analysis.latent_embedding) on synthetic z with a known
structure."""

from __future__ import annotations

import numpy as np
import pytest

from vitreous.analysis.latent_embedding import (
    UMAP_MIN_PARTICLES,
    kmeans_clusters,
    nearest_particles,
    principal_components,
    umap_embedding,
)


def _line_in_noise(n: int = 500, zdim: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z = offset + t * direction + small isotropic noise; returns z, t and the unit direction."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=zdim)
    direction /= np.linalg.norm(direction)
    t = rng.uniform(-3, 3, n)
    z = 0.7 + t[:, None] * direction + 0.05 * rng.normal(size=(n, zdim))
    return z, t, direction


def test_pca_recovers_the_direction_of_largest_variance() -> None:
    z, t, direction = _line_in_noise()
    pca = principal_components(z)
    assert pca.components.shape == (6, 6) and pca.coords.shape == (500, 6)
    assert abs(pca.components[0] @ direction) > 0.999
    assert pca.explained[0] > 0.99 and np.all(np.diff(pca.explained) <= 1e-12)
    assert abs(np.corrcoef(pca.coords[:, 0], t)[0, 1]) > 0.999
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(6), atol=1e-10)
    np.testing.assert_allclose(pca.to_latent(pca.coords), z, atol=1e-10)  # all components: exact inverse


def test_pca_refuses_bad_latents() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        principal_components(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        principal_components(np.array([[0.0, 1.0], [np.nan, 2.0]]))


def test_kmeans_centres_are_particles_of_their_own_cluster_near_the_centroid() -> None:
    rng = np.random.default_rng(1)
    blobs = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], float)
    truth = rng.integers(0, 4, 400)
    z = blobs[truth] + rng.normal(size=(400, 3))
    clusters = kmeans_clusters(z, 4, seed=0)
    assert clusters.labels.shape == (400,) and set(clusters.labels) == {0, 1, 2, 3}
    # every found cluster is one true blob
    for c in range(4):
        assert len(set(truth[clusters.labels == c])) == 1
    np.testing.assert_array_equal(clusters.centers, z[clusters.center_indices])
    np.testing.assert_array_equal(clusters.labels[clusters.center_indices], np.arange(4))
    for c in range(4):
        members = np.flatnonzero(clusters.labels == c)
        np.testing.assert_allclose(clusters.centroids[c], z[members].mean(axis=0), atol=1e-6)
        distances = np.linalg.norm(z[members] - clusters.centroids[c], axis=1)
        assert np.linalg.norm(clusters.centers[c] - clusters.centroids[c]) == pytest.approx(distances.min())
    assert clusters.sizes.sum() == 400


def test_kmeans_numbers_clusters_along_a_line_in_order() -> None:
    """Hierarchical reordering: clusters of points spread along a line get consecutive numbers in order."""
    z, t, _ = _line_in_noise(n=600)
    clusters = kmeans_clusters(z, 6, seed=3)
    order = np.array([np.median(t[clusters.labels == c]) for c in range(6)])
    assert np.all(np.diff(order) > 0) or np.all(np.diff(order) < 0)


def test_kmeans_is_reproducible_and_refuses_more_clusters_than_particles() -> None:
    z, _, _ = _line_in_noise(n=100)
    a, b = kmeans_clusters(z, 5, seed=2), kmeans_clusters(z, 5, seed=2)
    np.testing.assert_array_equal(a.labels, b.labels)
    with pytest.raises(ValueError, match="cannot make 101 clusters"):
        kmeans_clusters(z, 101)


def test_nearest_particles() -> None:
    z = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    np.testing.assert_array_equal(nearest_particles(z, np.array([[0.9, 0.2], [4.0, 4.0], [-1.0, 0.0]])), [1, 2, 0])


def test_umap_is_seeded_and_keeps_separated_groups_apart() -> None:
    rng = np.random.default_rng(4)
    truth = np.repeat([0, 1], 60)
    z = np.where(truth[:, None] == 0, 0.0, 8.0) + rng.normal(size=(120, 4))
    first = umap_embedding(z, seed=1)
    assert first.shape == (120, 2) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, umap_embedding(z, seed=1))
    centres = np.array([first[truth == g].mean(axis=0) for g in (0, 1)])
    spread = max(np.linalg.norm(first[truth == g] - centres[g], axis=1).max() for g in (0, 1))
    assert np.linalg.norm(centres[0] - centres[1]) > spread  # no point is nearer the other group's centre


def test_umap_refuses_tiny_sets() -> None:
    with pytest.raises(ValueError, match=f"at least {UMAP_MIN_PARTICLES}"):
        umap_embedding(np.random.default_rng(0).normal(size=(UMAP_MIN_PARTICLES - 1, 3)))
