"""Classes that are the same structure: after multi-class ab initio two classes can converge to one protein (in
different orientations, even hands), splitting its particles.  Such pairs are found from the maps themselves.

Criterion (on the maps Fourier-cropped to the resolution compared, for speed): class j's map is overlaid on
class i's (:func:`~vitreous.analysis.alignment.align_map`, both hands) and the FSC between the two maps is
compared with each class's own half-map FSC: maps of one structure agree with each other about as far as
each is determined (cross FSC = 0.5 at a resolution no worse than ``tolerance`` times the worse of the two
half-map FSC = 0.5 resolutions), maps of different proteins only at the low resolution of their common
envelope (on three proteins at 3 Å/px: a duplicate pair at 1.19 times, different proteins at 1.6 - 2.2).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from vitreous.analysis.alignment import align_map
from vitreous.analysis.fsc import fsc_curve, resolution_at
from vitreous.physics.fourier import fourier_crop

log = logging.getLogger(__name__)

TOLERANCE = 1.3


@dataclass(frozen=True)
class ClassMap:
    """A class map (D, D, D) [z, y, x] with its half-map FSC=0.5 resolution (Å)."""

    volume: np.ndarray
    resolution_A: float


@dataclass(frozen=True)
class Duplicate:
    """Class ``duplicate`` (0-based) is the structure of class ``kept``; FSC=0.5 resolutions in Å."""

    kept: int
    duplicate: int
    cross_resolution_A: float
    own_resolution_A: float


def find_duplicates(maps: list[ClassMap | None], sizes: np.ndarray, pixel_size: float,
                    tolerance: float = TOLERANCE) -> list[Duplicate]:
    """Duplicate classes among ``maps`` (None: an empty class); each group of duplicates is kept in its largest
    class (``sizes``: particles per class), every other member is listed once."""
    order = [k for k in np.argsort(-np.asarray(sizes), kind="stable") if maps[k] is not None]
    found: list[Duplicate] = []
    merged: set[int] = set()
    for a, i in enumerate(order):
        if i in merged:
            continue
        for j in order[a + 1:]:
            if j in merged:
                continue
            mi, mj = maps[i], maps[j]
            own = max(mi.resolution_A, mj.resolution_A)
            moving, reference = _coarse(mj.volume, pixel_size, own), _coarse(mi.volume, pixel_size, own)
            voxel = pixel_size * mi.volume.shape[-1] / reference.shape[-1]
            aligned = align_map(moving, reference, voxel, resolution_A=own, coarse_box=reference.shape[-1],
                                polish=False).aligned
            frequency, curve = fsc_curve(aligned, reference, voxel)
            cross = resolution_at(frequency, curve, 0.5)
            log.info("classes %d and %d: maps agree to %.1f Å (FSC 0.5), determined to %.1f Å", i + 1, j + 1, cross,
                     own)
            if cross <= tolerance * own:
                found.append(Duplicate(int(i), int(j), cross, own))
                merged.add(j)
    return found


def _coarse(volume: np.ndarray, pixel_size: float, resolution_A: float) -> np.ndarray:
    """The map Fourier-cropped to the smallest even box whose Nyquist frequency is 1.25 times 1/resolution."""
    box = volume.shape[-1]
    small = min(box, max(16, 2 * math.ceil(1.25 * box * pixel_size / resolution_A)))
    return volume if small == box else fourier_crop(torch.as_tensor(volume), small, ndim=3).numpy()


__all__ = ["ClassMap", "Duplicate", "find_duplicates"]
