"""Paths through latent space whose decoded volumes make a movie: along principal components, and along
a nearest-neighbour graph between two particles.

* :func:`pc_trajectory` follows cryoDRGN's ``get_pc_traj``: ``n_points`` evenly spaced values of PC k from
  its ``low``-th to its ``high``-th percentile over the particles (5 to 95 by default), all other components
  0, i.e. the straight line ``mean + t * component_k``.  The points are not snapped to particles by default
  (a straight, evenly spaced line gives a smooth series); ``on_data=True`` replaces each by the nearest
  particle's z instead, which keeps every volume on the learnt manifold at the cost of uneven steps.
* :func:`graph_path` follows cryoDRGN's ``graph_traversal``: the shortest path (Dijkstra, Euclidean edge
  lengths) on the symmetrised k-nearest-neighbour graph of the particles, so every step goes from a particle
  to one of its neighbours and the path stays where the data is.  :func:`resample_path` spaces M points
  evenly by arc length along it (linear interpolation between consecutive particles).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitreous.analysis.latent_embedding import PCAResult, check_latents, nearest_particles


@dataclass(frozen=True)
class Trajectory:
    """Points of a latent-space path: ``z`` (M, Z), the 0-based particle rows when the points are particles
    (else None), and ``position`` (M,): the PC value (PC trajectories) or arc length (graph paths)."""

    z: np.ndarray
    indices: np.ndarray | None
    position: np.ndarray


def pc_trajectory(pca: PCAResult, pc: int, *, n_points: int = 10, low: float = 5.0, high: float = 95.0,
                  z: np.ndarray | None = None) -> Trajectory:
    """``n_points`` along principal component ``pc`` (1-based) between its ``low``/``high`` percentiles;
    with ``z`` (the particles' latents) each point is snapped to the nearest particle (``on_data``)."""
    if not 1 <= pc <= pca.components.shape[0]:
        raise ValueError(f"PC{pc} does not exist: there are {pca.components.shape[0]} components")
    if n_points < 2 or not 0.0 <= low < high <= 100.0:
        raise ValueError(f"need n_points >= 2 and 0 <= low < high <= 100, not {n_points}, {low}, {high}")
    start, end = np.percentile(pca.coords[:, pc - 1], [low, high])
    values = np.linspace(start, end, n_points)
    coords = np.zeros((n_points, pc))
    coords[:, pc - 1] = values
    points = pca.to_latent(coords)
    if z is None:
        return Trajectory(z=points, indices=None, position=values)
    indices = nearest_particles(z, points)
    snapped = np.asarray(z, np.float64)[indices]
    return Trajectory(z=snapped, indices=indices, position=pca.coords[indices, pc - 1])


def neighbour_graph(z: np.ndarray, neighbours: int = 10):
    """Symmetric sparse (N, N) graph joining each particle to its ``neighbours`` nearest others; edge weight
    = Euclidean distance in z (duplicates get a tiny positive length so that they stay joined)."""
    from sklearn.neighbors import NearestNeighbors

    z = check_latents(z)
    k = min(neighbours, len(z) - 1)
    if k < 1:
        raise ValueError(f"need at least 1 neighbour, not {neighbours}")
    graph = NearestNeighbors(n_neighbors=k).fit(z).kneighbors_graph(mode="distance")
    graph.data = np.maximum(graph.data, 1e-12 * max(float(np.ptp(z)), 1e-300))
    return graph.maximum(graph.T).tocsr()


def graph_path(z: np.ndarray, start: int, end: int, *, neighbours: int = 10) -> np.ndarray:
    """0-based rows of z along the shortest k-nearest-neighbour-graph path from ``start`` to ``end``
    (both included); ValueError when they are not connected (raise ``neighbours``)."""
    from scipy.sparse.csgraph import dijkstra

    z = check_latents(z)
    for index in (start, end):
        if not 0 <= index < len(z):
            raise ValueError(f"particle row {index} is outside 0..{len(z) - 1}")
    if start == end:
        raise ValueError("the path starts and ends at the same particle")
    distances, predecessors = dijkstra(neighbour_graph(z, neighbours), directed=False, indices=start,
                                       return_predecessors=True)
    if not np.isfinite(distances[end]):
        raise ValueError(f"particles {start} and {end} are not connected in the {neighbours}-nearest-neighbour "
                         "graph")
    path = [end]
    while path[-1] != start:
        path.append(int(predecessors[path[-1]]))
    return np.array(path[::-1], np.int64)


def path_trajectory(z: np.ndarray, path: np.ndarray) -> Trajectory:
    """The particles of ``path`` (0-based rows) as a Trajectory; position = arc length in z."""
    z = np.asarray(z, np.float64)
    points = z[path]
    return Trajectory(z=points, indices=np.asarray(path, np.int64), position=_arc_length(points))


def resample_path(points: np.ndarray, n_points: int) -> Trajectory:
    """``n_points`` (>= 2) evenly spaced by arc length along the polyline through ``points`` (L, Z),
    interpolated linearly between consecutive points (so generally not particles: ``indices`` is None)."""
    if n_points < 2:
        raise ValueError(f"need at least 2 points, not {n_points}")
    points = np.asarray(points, np.float64)
    keep = np.concatenate([[True], np.linalg.norm(np.diff(points, axis=0), axis=1) > 0])  # drop repeats
    points = points[keep]
    arc = _arc_length(points)
    target = np.linspace(0.0, arc[-1], n_points)
    resampled = np.stack([np.interp(target, arc, points[:, k]) for k in range(points.shape[1])], axis=1)
    return Trajectory(z=resampled, indices=None, position=target)


def _arc_length(points: np.ndarray) -> np.ndarray:
    """Cumulative Euclidean length (L,) of the polyline through ``points`` (L, Z), 0 at the first."""
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(steps)])
