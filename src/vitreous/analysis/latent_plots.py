"""Report figures of latent-space analyses (matplotlib Figures on the Agg backend, no pyplot).

``coords`` are 2D embeddings of the particles (N, 2): PCA coordinates (PC1, PC2) or UMAP; with a single
column (a 1D latent space) the density is a histogram instead.  At most ``MAX_SCATTER`` points are drawn in
scatter plots (a fixed random subset); hexbin densities use every particle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from vitreous.report.figures import MAX_SCATTER
from vitreous.report.imaging import new_figure


def _shown(n: int) -> np.ndarray:
    """A fixed subset of at most MAX_SCATTER of n points (all when fewer)."""
    if n <= MAX_SCATTER:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, MAX_SCATTER, replace=False))


def _labels(ax, names: Sequence[str]) -> None:
    ax.set_xlabel(names[0])
    if len(names) > 1:
        ax.set_ylabel(names[1])


def density_figure(coords: np.ndarray, names: Sequence[str], title: str = "") -> Figure:
    """Scatter and hexbin density (log counts) of an embedding side by side; a histogram for 1D coords."""
    coords = np.asarray(coords, np.float64)
    if coords.shape[1] == 1:
        fig = new_figure(5, 3.4)
        ax = fig.subplots()
        ax.hist(coords[:, 0], bins=min(100, max(10, len(coords) // 20)), color="#446")
        ax.set_xlabel(names[0])
        ax.set_ylabel("particles")
    else:
        fig = new_figure(10, 4.4)
        scatter, hexbin = fig.subplots(1, 2)
        shown = _shown(len(coords))
        scatter.scatter(coords[shown, 0], coords[shown, 1], s=2, alpha=0.3, color="#446", linewidths=0)
        cells = hexbin.hexbin(coords[:, 0], coords[:, 1], gridsize=40, bins="log", mincnt=1, cmap="viridis")
        fig.colorbar(cells, ax=hexbin, label="particles (log scale)")
        for ax in (scatter, hexbin):
            _labels(ax, names)
    if title:
        fig.suptitle(title)
    return fig


def variance_figure(explained: np.ndarray) -> Figure:
    """Fraction of the latent variance along each principal component (bars) and cumulated (line)."""
    fig = new_figure(6, 3.2)
    ax = fig.subplots()
    pcs = np.arange(1, len(explained) + 1)
    ax.bar(pcs, explained, color="#446", label="per component")
    ax.plot(pcs, np.cumsum(explained), marker="o", color="#c44", label="cumulative")
    ax.set_xlabel("principal component")
    ax.set_ylabel("fraction of variance")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(pcs)
    ax.legend(fontsize=8)
    return fig


def _cluster_colours(labels: np.ndarray) -> np.ndarray:
    """RGBA per label: tab20's dark shades first, then its light ones (20 distinct colours, then repeats)."""
    from matplotlib import colormaps

    palette = np.asarray(colormaps["tab20"].colors)[np.r_[0:20:2, 1:20:2]]
    return palette[labels % len(palette)]


def clusters_figure(coords: np.ndarray, labels: np.ndarray, centers: np.ndarray, names: Sequence[str]) -> Figure:
    """Particles coloured by cluster with each cluster's number at its centre particle (``centers``: (K, 2)
    coordinates of the centre particles)."""
    fig = new_figure(6.4, 5.4)
    ax = fig.subplots()
    shown = _shown(len(coords))
    ax.scatter(coords[shown, 0], coords[shown, 1], c=_cluster_colours(labels[shown]), s=3, alpha=0.5, linewidths=0)
    for k, (x, y) in enumerate(centers):
        ax.annotate(str(k), (x, y), fontsize=8, ha="center", va="center", weight="bold",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.8, "lw": 0.5})
    _labels(ax, names)
    return fig


def paths_figure(coords: np.ndarray, paths: Mapping[str, np.ndarray], names: Sequence[str]) -> Figure:
    """Hexbin density of an embedding with paths (name -> (M, 2) points in the same coordinates) drawn as
    numbered lines from point 0."""
    fig = new_figure(6.4, 5.4)
    ax = fig.subplots()
    ax.hexbin(coords[:, 0], coords[:, 1], gridsize=40, bins="log", mincnt=1, cmap="Greys")
    for name, points in paths.items():
        line = ax.plot(points[:, 0], points[:, 1], marker="o", markersize=4, lw=1.5, label=name)[0]
        for i in (0, len(points) - 1):
            ax.annotate(str(i), points[i], fontsize=7, color=line.get_color(), xytext=(3, 3),
                        textcoords="offset points")
    ax.legend(fontsize=8)
    _labels(ax, names)
    return fig


def sizes_figure(sizes: np.ndarray) -> Figure:
    """Particles per cluster (bars), cluster numbers from 0."""
    fig = new_figure(7, 3.0)
    ax = fig.subplots()
    ax.bar(np.arange(len(sizes)), sizes, color="#446")
    ax.set_xlabel("cluster")
    ax.set_ylabel("particles")
    ax.set_xticks(np.arange(len(sizes)))
    return fig
