"""Ground-truth states of a simulation: maps of several atomic models (composition), of the frames of a
trajectory (conformation), or both (models and one trajectory: composition plus conformation), and the state
each particle is drawn from.

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
    """Maps (S, D, D, D) of S states with their names and the component (0-based: each model, then the
    trajectory) each state belongs to; ``continuous`` when the states are only trajectory frames."""

    volumes: torch.Tensor
    names: list[str]
    components: np.ndarray
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
    return mixture_truth(paths, None, box, apix)


def trajectory_truth(path: Path, box: int | None, apix: float) -> GroundTruth:
    """One state per trajectory frame (npz with ``coords_A`` and ``elements``), one common centre."""
    return mixture_truth([], path, box, apix)


def mixture_truth(paths: list[Path], trajectory: Path | None, box: int | None, apix: float) -> GroundTruth:
    """One state per model (each centred on its centre of mass), then one per frame of ``trajectory`` (centred
    once on the mean centre of its frames), all on the box that fits the largest (or ``box``)."""
    models = [centred(load_atoms(p)) for p in paths]
    sizes = [_checked_box(box, radius(m), apix, p) for m, p in zip(models, paths, strict=True)]
    frames = centred(load_trajectory(trajectory)) if trajectory is not None else None
    if frames is not None:
        sizes.append(_checked_box(box, radius(frames), apix, trajectory))
    box = max(sizes)
    volumes = [density_map(m, box, apix)[None] for m in models]
    names = [Path(p).name.split(".")[0] for p in paths]
    components = list(range(len(models)))
    if frames is not None:
        volumes.append(trajectory_maps(frames, box, apix))
        prefix = f"{Path(trajectory).name.split('.')[0]}_" if models else ""
        names += [f"{prefix}frame_{i:03d}" for i in range(len(frames))]
        components += [len(models)] * len(frames)
    return GroundTruth(torch.cat(volumes), names, np.array(components), continuous=not models)


def draw_states(n: int, components: np.ndarray, proportions: list[float] | None, seed: int) -> np.ndarray:
    """State index (0-based) of each particle: a component (model or trajectory, ``components`` gives each
    state's) with the given proportions (uniform by default), then one of its states uniformly."""
    n_components = int(components.max()) + 1
    if proportions is None:
        p = np.full(n_components, 1.0 / n_components)
    else:
        p = np.asarray(proportions, dtype=np.float64)
        if len(p) != n_components or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
            raise InputError(None, f"--proportions needs {n_components} non-negative numbers (one per model, then "
                             f"one for the trajectory), got {proportions}", "give one proportion each, e.g. 0.5,0.5")
        p = p / p.sum()
    per_state = p[components] / np.bincount(components)[components]
    return np.random.default_rng(seed).choice(len(components), size=n, p=per_state)
