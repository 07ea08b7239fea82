"""Embeddings of latent coordinates ``z`` (N, Z), one row per particle: PCA, UMAP and k-means clusters.

As cryoDRGN's ``analyze`` does them: PCA of the centred z (scikit-learn), a 2D UMAP (umap-learn, seeded, so
the same z gives the same embedding), and k-means whose centres are moved onto the data: each cluster's
centre is the particle of that cluster nearest its centroid, so the volume decoded there is one the model
was trained to explain (the centroid of a curved cluster may lie off the manifold).  Clusters are numbered
0..K-1 in the order of a hierarchical clustering of their centres (average linkage, optimal leaf order,
cryoDRGN's ``reorder``), so that neighbouring numbers tend to be similar volumes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

UMAP_MIN_PARTICLES = 10  # fewer points than this give no meaningful UMAP (its spectral start fails)


def check_latents(z: np.ndarray, minimum: int = 2) -> np.ndarray:
    """``z`` as a finite float64 (N, Z) array with N >= ``minimum`` and Z >= 1; ValueError otherwise."""
    z = np.asarray(z, np.float64)
    if z.ndim != 2 or z.shape[1] < 1:
        raise ValueError(f"latent coordinates must be an (N, Z) array with Z >= 1, not shape {z.shape}")
    if len(z) < minimum:
        raise ValueError(f"{len(z)} latent points; at least {minimum} are needed")
    if not np.isfinite(z).all():
        raise ValueError("latent coordinates contain NaN or infinite values")
    return z


@dataclass(frozen=True)
class PCAResult:
    """Principal components of z: ``coords = (z - mean) @ components.T``."""

    coords: np.ndarray  # (N, P) coordinates of each particle along the components
    components: np.ndarray  # (P, Z) orthonormal rows, by decreasing variance
    mean: np.ndarray  # (Z,)
    explained: np.ndarray  # (P,) fraction of the total variance of z along each component

    def to_latent(self, coords: np.ndarray) -> np.ndarray:
        """Latent points (M, Z) at PCA coordinates (M, P') with P' <= P (missing components are 0)."""
        coords = np.atleast_2d(np.asarray(coords, np.float64))
        return self.mean + coords @ self.components[: coords.shape[1]]


def principal_components(z: np.ndarray) -> PCAResult:
    """PCA of z (N >= 2) with all min(N, Z) components (scikit-learn, full SVD: deterministic signs)."""
    from sklearn.decomposition import PCA

    z = check_latents(z)
    pca = PCA(n_components=min(z.shape), svd_solver="full").fit(z)
    return PCAResult(coords=pca.transform(z), components=pca.components_, mean=pca.mean_,
                     explained=pca.explained_variance_ratio_)


def umap_embedding(z: np.ndarray, *, seed: int = 0, neighbours: int = 15, min_dist: float = 0.1) -> np.ndarray:
    """2D UMAP embedding (N, 2) of z; seeded (single-threaded, so reproducible); ValueError for N < 10.

    The ``neighbours`` nearest neighbours (capped at N - 1) are found exactly by scikit-learn and handed to
    umap-learn, which skips its own search (approximate for large N) and the numba compilation of it (about
    10 s of a first call).  umap-learn is imported here and downloads nothing.
    """
    from sklearn.neighbors import NearestNeighbors

    z = check_latents(z, UMAP_MIN_PARTICLES)
    k = min(neighbours, len(z) - 1)
    distances, indices = NearestNeighbors(n_neighbors=k).fit(z).kneighbors(z)  # each point first, as umap wants
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba/umap chatter (TBB, deprecations): the result is what counts
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=k, min_dist=min_dist, random_state=seed, n_jobs=1,
                            precomputed_knn=(indices, distances, None))
        return np.asarray(reducer.fit_transform(z), np.float64)


@dataclass(frozen=True)
class Clusters:
    """k-means clusters of z, numbered 0..K-1 (see the module docstring for the order)."""

    labels: np.ndarray  # (N,) int64 cluster of each particle
    center_indices: np.ndarray  # (K,) int64 row of z (0-based) of each cluster's centre particle
    centers: np.ndarray  # (K, Z) z of those particles
    centroids: np.ndarray  # (K, Z) k-means means (may lie off the data)

    @property
    def sizes(self) -> np.ndarray:
        """Particles per cluster (K,)."""
        return np.bincount(self.labels, minlength=len(self.centers))


def kmeans_clusters(z: np.ndarray, k: int, *, seed: int = 0) -> Clusters:
    """k-means (scikit-learn, k-means++ start, 4 restarts) of z into ``k`` clusters, centres on the data."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from sklearn.cluster import KMeans

    z = check_latents(z, 1)
    if not 1 <= k <= len(z):
        raise ValueError(f"cannot make {k} clusters of {len(z)} particles")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning when z has fewer distinct points than k
        fit = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(z)
    labels, centroids = fit.labels_.astype(np.int64), fit.cluster_centers_
    order = leaves_list(linkage(centroids, "average", optimal_ordering=True)) if k > 2 else np.arange(k)
    centroids = centroids[order]
    labels = np.argsort(order)[labels]
    indices = np.empty(k, np.int64)
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:  # only when z has fewer distinct points than k
            members = np.arange(len(z))
        indices[c] = members[np.argmin(((z[members] - centroids[c]) ** 2).sum(axis=1))]
    return Clusters(labels=labels, center_indices=indices, centers=z[indices], centroids=centroids)


def nearest_particles(z: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Row of z (0-based) nearest to each of ``points`` (M, Z), Euclidean."""
    from scipy.spatial import cKDTree

    return cKDTree(np.asarray(z, np.float64)).query(np.atleast_2d(points))[1].astype(np.int64)
