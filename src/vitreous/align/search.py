"""Pose search: coarse-to-fine global search over SO(3) x shifts, and local refinement around given poses.

Global search scores every rotation of the ``start_level`` grid of :mod:`vitreous.physics.so3_grid` at every
shift of a disc-shaped grid, comparing frequencies up to a radius that suits the level's angular spacing
(frequency marching: ``radius_L = min(radius, arc_px / spacing_L)``, spacing in radians), keeps the ``keep``
best (rotation, shift) poses per image, then replaces them by their 8 children at the next level, each at the
parent's shift refined on a 3 x 3 grid of half the previous shift step, with a larger radius, down to
``end_level``.  Local search scores ``P @ A`` for the small rotations ``P`` of
:func:`~vitreous.physics.so3_grid.local_perturbations` around each image's pose ``A`` at shifts around its
shift.  Both return, per image, the ``keep`` best poses (each rotation at its best shift), their scores
(:mod:`vitreous.align.scoring`; log-likelihoods up to a per-image constant) and posterior weights
``softmax(scores)`` over the kept poses, for soft assignment.

Rotations are RELION matrices ``A``; shifts RELION origins (x, y) in pixels (:mod:`vitreous.align.shifts`).
Everything runs on the device of the given spectra; memory is bounded by splitting each call's images and
rotations into pieces of at most ``budget`` score entries.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from vitreous.align.points import FourierPoints, fourier_points
from vitreous.align.reference import SliceSource
from vitreous.align.scoring import Mode, PreparedImages, best_shift_candidates, best_shift_shared, prepare
from vitreous.align.shifts import shift_grid, shift_phases, shift_step_for_radius, square_offsets
from vitreous.physics import so3_grid

DEFAULT_BUDGET = 1 << 23  # score / slice entries per piece (~32-64 MB of float32 temporaries)
MIN_ROTATION_CHUNK = 512  # rotations scored together in the exhaustive stage (matrix-product width)
CACHE_ENTRIES = 1 << 24  # the exhaustive stage's slices are kept between calls up to this many (128 MB)


@dataclass
class PoseResult:
    """The kept poses of B images, best first: RELION matrices (B, K, 3, 3), origins (B, K, 2) px, scores
    (B, K) and posterior weights (B, K) (softmax of the scores, summing to 1 per image)."""

    rotations: Tensor
    shifts: Tensor
    scores: Tensor
    weights: Tensor

    @property
    def best_rotations(self) -> Tensor:
        """(B, 3, 3) the highest-scoring rotation of each image."""
        return self.rotations[:, 0]

    @property
    def best_shifts(self) -> Tensor:
        """(B, 2) px its shift."""
        return self.shifts[:, 0]

    @property
    def max_weight(self) -> Tensor:
        """(B,) posterior weight of the best pose (RELION's rlnMaxValueProbDistribution over kept poses)."""
        return self.weights[:, 0]


@dataclass(frozen=True)
class GlobalOptions:
    """Global search settings: ``radius_px`` the final comparison radius (Fourier pixels), grid levels
    ``start_level`` .. ``end_level`` (spacing ``60 / 2**level`` degrees), ``keep`` poses per image, shifts up to
    ``max_shift_px`` pixels, and ``arc_px``: a level of spacing ``t`` radians compares frequencies up to
    ``arc_px / t`` Fourier pixels (at least ``min_radius_px``)."""

    radius_px: float
    start_level: int = 2
    end_level: int = 4
    keep: int = 10
    max_shift_px: float = 5.0
    arc_px: float = 2.0
    min_radius_px: float = 4.0

    def level_radius(self, level: int, box: int) -> float:
        """Comparison radius (Fourier pixels) at grid ``level``."""
        arc = self.arc_px / math.radians(so3_grid.grid_spacing_deg(level))
        return min(self.radius_px, max(arc, self.min_radius_px), box // 2)


@dataclass(frozen=True)
class LocalOptions:
    """Local search settings: rotations within ``range_deg`` of the current one on a lattice of spacing
    ``step_deg``, shifts within ``shift_range_px`` of the current shift on a lattice of ``shift_step_px``, up
    to ``radius_px`` Fourier pixels; ``keep`` poses per image."""

    radius_px: float
    step_deg: float
    range_deg: float
    shift_step_px: float
    shift_range_px: float
    keep: int = 10


class PoseSearch:
    """Pose search of images against one reference (a :class:`~vitreous.align.reference.SliceSource`).

    ``sigma2`` (D // 2 + 1,) is the per-shell noise power of the image spectra (:mod:`vitreous.align.noise`);
    ``mode`` and the reference's ``scale`` (a positive float) as in :mod:`vitreous.align.scoring`.  ``timings``
    accumulates seconds spent per stage (``prepare``, ``slices``, ``scores``, ``select``; synchronised on CUDA).
    """

    def __init__(self, reference: SliceSource, sigma2: Tensor, box: int, *, mode: Mode = "likelihood",
                 scale: float = 1.0, budget: int = DEFAULT_BUDGET) -> None:
        if sigma2.shape != (box // 2 + 1,):
            raise ValueError(f"sigma2 must have {box // 2 + 1} shells for box {box}, got {tuple(sigma2.shape)}")
        if not bool((sigma2[1:] > 0).all()) or not scale > 0:
            raise ValueError("sigma2 and scale must be positive")
        self.reference = reference
        self.sigma2 = sigma2
        self.box = box
        self.mode = mode
        self.scale = scale
        self.budget = budget
        self.timings: dict[str, float] = defaultdict(float)
        self._grid_slices: dict[tuple[int, float, torch.device], Tensor] = {}

    @contextmanager
    def _timed(self, stage: str, device: torch.device) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.timings[stage] += time.perf_counter() - start

    def _prepare(self, spectra: Tensor, ctf: Tensor | None, radius: float) -> PreparedImages:
        with self._timed("prepare", spectra.device):
            points = fourier_points(self.box, radius, spectra.device)
            return prepare(spectra, ctf, self.sigma2, points)

    def _slices(self, rotations: Tensor, points: FourierPoints) -> Tensor:
        with self._timed("slices", rotations.device):
            return self.reference(rotations.reshape(-1, 3, 3), points)

    # ---- global ------------------------------------------------------------------------------------------
    def global_search(self, spectra: Tensor, ctf: Tensor | None, options: GlobalOptions) -> PoseResult:
        """Coarse-to-fine search of centred spectra (B, D, D) with CTF images (B, D, D) (or None)."""
        o = options
        if not 0 <= o.start_level <= o.end_level:
            raise ValueError("need 0 <= start_level <= end_level")
        device = spectra.device
        radius = o.level_radius(o.start_level, self.box)
        step = shift_step_for_radius(self.box, radius)
        grid = shift_grid(o.max_shift_px, step, device)
        keep = min(o.keep, so3_grid.grid_size(o.start_level))
        per_image = grid.shape[0] * MIN_ROTATION_CHUNK
        parts = [self._exhaustive(spectra[part], _part(ctf, part), radius, grid, o.start_level, keep)
                 for part in _pieces(spectra.shape[0], per_image, self.budget)]
        index, shifts, scores = (torch.cat(columns) for columns in zip(*parts, strict=True))
        for level in range(o.start_level + 1, o.end_level + 1):
            radius = o.level_radius(level, self.box)
            step = step / 2
            offsets = square_offsets(step, 1, device)
            children = so3_grid.children(level - 1, index)  # (B, K, 8)
            rotations = so3_grid.grid_matrices(level, children, dtype=torch.float32)
            best, shifts, scores = self._candidates(spectra, ctf, radius, rotations, shifts, offsets, o.keep)
            index = children.flatten(1).gather(1, best)
        rotations = so3_grid.grid_matrices(o.end_level, index, dtype=torch.float32)
        return _result(rotations, shifts, scores)

    def _exhaustive(self, spectra: Tensor, ctf: Tensor | None, radius: float, grid: Tensor, level: int,
                    keep: int) -> tuple[Tensor, Tensor, Tensor]:
        """Best ``keep`` (grid index, shift, score) per image over the whole ``level`` grid x ``grid`` shifts."""
        images = self._prepare(spectra, ctf, radius)
        B, device = images.batch, spectra.device
        phases = shift_phases(images.points, grid)
        best_scores = torch.full((B, 0), -math.inf, device=device)
        best_index = torch.zeros((B, 0), dtype=torch.int64, device=device)
        best_shift = torch.zeros((B, 0), dtype=torch.int64, device=device)
        n = so3_grid.grid_size(level)
        chunk = max(keep, self.budget // max(B * grid.shape[0], 1))
        cached = self._cached_grid_slices(level, images.points)
        for start in range(0, n, chunk):
            index = torch.arange(start, min(start + chunk, n), device=device)
            if cached is not None:
                slices = cached[start:start + chunk]
            else:
                slices = self._slices(so3_grid.grid_matrices(level, index, dtype=torch.float32), images.points)
            with self._timed("scores", device):
                value, shift = best_shift_shared(images, slices, phases, self.mode, self.scale)  # (B, R)
            with self._timed("select", device):
                value = torch.cat([best_scores, value], 1)
                top, order = value.topk(min(keep, value.shape[1]), dim=1)
                best_index = torch.cat([best_index, index.expand(B, -1)], 1).gather(1, order)
                best_shift = torch.cat([best_shift, shift], 1).gather(1, order)
                best_scores = top
        return best_index, grid[best_shift], best_scores

    def _cached_grid_slices(self, level: int, points: FourierPoints) -> Tensor | None:
        """All slices of the ``level`` grid at ``points``, computed once per search object (None if too big)."""
        n = so3_grid.grid_size(level)
        if n * points.size > CACHE_ENTRIES:
            return None
        key = (level, points.radius, points.flat.device)
        if key not in self._grid_slices:
            index = torch.arange(n, device=points.flat.device)
            self._grid_slices[key] = self._slices(so3_grid.grid_matrices(level, index, dtype=torch.float32), points)
        return self._grid_slices[key]

    # ---- candidates (hierarchy and local) ----------------------------------------------------------------
    def _candidates(self, spectra: Tensor, ctf: Tensor | None, radius: float, rotations: Tensor,
                    centres: Tensor, offsets: Tensor, keep: int) -> tuple[Tensor, Tensor, Tensor]:
        """Score candidates ``rotations`` (B, K, C, 3, 3) at shifts ``centres`` (B, K, 2) + ``offsets`` (T, 2);
        returns the best ``keep`` per image as (flat candidate index into K * C, shift (B, keep, 2), score)."""
        B, K, C = rotations.shape[:3]
        M = fourier_points(self.box, radius).size
        per_image = K * C * max(M, offsets.shape[0])
        parts = [self._candidate_part(spectra[p], _part(ctf, p), radius, rotations[p], centres[p], offsets, keep)
                 for p in _pieces(B, per_image, self.budget)]
        order, shifts, scores = zip(*parts, strict=True)
        return torch.cat(order), torch.cat(shifts), torch.cat(scores)

    def _candidate_part(self, spectra: Tensor, ctf: Tensor | None, radius: float, rotations: Tensor,
                        centres: Tensor, offsets: Tensor, keep: int) -> tuple[Tensor, Tensor, Tensor]:
        images = self._prepare(spectra, ctf, radius)
        B, K, C = rotations.shape[:3]
        device = spectra.device
        slices = self._slices(rotations, images.points).view(B, K, C, -1)
        with self._timed("scores", device):
            value, t = best_shift_candidates(images, slices, shift_phases(images.points, centres),
                                             shift_phases(images.points, offsets), self.mode, self.scale)
        with self._timed("select", device):
            top, order = value.flatten(1).topk(min(keep, K * C), dim=1)
            group = torch.div(order, C, rounding_mode="floor")
            shift = centres.gather(1, group[..., None].expand(-1, -1, 2)) + offsets[t.flatten(1).gather(1, order)]
        return order, shift, top

    def local_search(self, spectra: Tensor, ctf: Tensor | None, rotations: Tensor, shifts: Tensor,
                     options: LocalOptions) -> PoseResult:
        """Search around each image's pose: rotations (B, 3, 3), shifts (B, 2) px."""
        o = options
        device = spectra.device
        perturbations = so3_grid.local_perturbations(o.range_deg, o.step_deg, device=device)
        candidates = (perturbations[None] @ rotations.to(device=device, dtype=torch.float32)[:, None])[:, None]
        offsets = shift_grid(o.shift_range_px, o.shift_step_px, device)
        order, new_shifts, scores = self._candidates(spectra, ctf, o.radius_px, candidates,
                                                     shifts.to(device=device, dtype=torch.float32)[:, None],
                                                     offsets, o.keep)
        chosen = candidates[:, 0].gather(1, order[..., None, None].expand(-1, -1, 3, 3))
        return _result(chosen, new_shifts, scores)


def _result(rotations: Tensor, shifts: Tensor, scores: Tensor) -> PoseResult:
    return PoseResult(rotations, shifts, scores, torch.softmax(scores.double(), dim=1).to(scores.dtype))


def _part(ctf: Tensor | None, part: slice) -> Tensor | None:
    return None if ctf is None else ctf[part]


def _pieces(n: int, per_item: int, budget: int) -> Iterator[slice]:
    """Consecutive slices of ``n`` items with at most ``budget // per_item`` (at least 1) items each."""
    size = max(1, budget // max(per_item, 1))
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
