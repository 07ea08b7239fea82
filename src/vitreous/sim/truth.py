"""Ground-truth states of a simulation: maps of several atomic models (composition) or of the frames of a
trajectory (conformation), and the state each particle is drawn from.

Each model of a mixture is centred on its own centre of mass; a trajectory is centred once on the mean
centre of all its frames, so its frames keep one frame of reference.  Maps are potentials on the
[z, y, x] grid with the origin at voxel D // 2 (see :mod:`vitreous.sim.density`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vitreous.errors import InputError
from vitreous.sim.atoms import box_size, centred, load_atoms, load_trajectory, radius
from vitreous.sim.density import density_map, trajectory_maps


@dataclass
class GroundTruth:
    """Maps (S, D, D, D) of S states with their names; ``continuous`` for trajectory frames."""

    volumes: torch.Tensor
    names: list[str]
    continuous: bool = False

    @property
    def box(self) -> int:
        return int(self.volumes.shape[-1])


def _checked_box(box: int | None, radius_A: float, apix: float, source: Path) -> int:
    needed = box_size(radius_A, apix, margin_A=0.0)
    if box is None:
        return box_size(radius_A, apix)
    if box < needed:
        raise InputError(source, f"the model (radius {radius_A:.0f} Å) does not fit a {box}-px box at {apix} Å/px",
                         f"use --box {needed} or more, or a larger --apix")
    return box


def models_truth(paths: list[Path], box: int | None, apix: float) -> GroundTruth:
    """One state per atomic model (PDB/mmCIF, gzipped or not), each centred on its centre of mass."""
    models = [centred(load_atoms(p)) for p in paths]
    sizes = [_checked_box(box, radius(m), apix, p) for m, p in zip(models, paths, strict=True)]
    box = max(sizes)
    volumes = torch.stack([density_map(m, box, apix) for m in models])
    return GroundTruth(volumes, [Path(p).name.split(".")[0] for p in paths])


def trajectory_truth(path: Path, box: int | None, apix: float) -> GroundTruth:
    """One state per trajectory frame (npz with ``coords_A`` and ``elements``), one common centre."""
    trajectory = centred(load_trajectory(path))
    box = _checked_box(box, radius(trajectory), apix, path)
    names = [f"frame_{i:03d}" for i in range(len(trajectory))]
    return GroundTruth(trajectory_maps(trajectory, box, apix), names, continuous=True)


def draw_states(n: int, n_states: int, proportions: list[float] | None, seed: int) -> np.ndarray:
    """State index (0-based) of each particle, drawn with the given proportions (uniform by default)."""
    if proportions is None:
        p = np.full(n_states, 1.0 / n_states)
    else:
        p = np.asarray(proportions, dtype=np.float64)
        if len(p) != n_states or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
            raise InputError(None, f"--proportions needs {n_states} non-negative numbers, got {proportions}",
                             "give one proportion per model, e.g. 0.5,0.5")
        p = p / p.sum()
    return np.random.default_rng(seed).choice(n_states, size=n, p=p)
