"""Gold-standard 3D refinement: poses of particles against a reference, then reconstruction, iterated.

The particles' two half sets (``rlnRandomSubset``, else a random balanced split) are refined independently,
each against its own reference; both start from the given reference low-passed to ``initial_lowpass_A``.
Each iteration, for each half:

1. pose search (:mod:`vitreous.align`) against the half's reference (soft spherical mask of diameter
   ``mask_diameter_A``), comparing frequencies up to the current gold-standard resolution (FSC = 0.143
   between the half maps) plus a margin (frequency marching): a global coarse-to-fine search in the first
   ``global_iterations`` iterations (unless ``local_only``), then local searches with the angular step halved
   every iteration down to ``min_step_deg``;
2. scores: noise-whitened CTF-weighted Gaussian log-likelihood with the per-shell noise power and the
   reference scale re-estimated from the residuals at the best poses (:class:`~vitreous.align.ResidualShells`);
   before any residual exists, the image power spectrum is the noise estimate and the scale-free ``ncc`` mode
   is used;
3. reconstruction with :class:`~vitreous.reconstruct.backproject.HalfSetBackprojector` (FSC-derived Wiener
   filter), each image inserted at its kept poses weighted by their posterior probabilities (``soft``; poses
   below ``min_weight`` dropped and the rest renormalised) or at its best pose only (``soft=False``).

It stops after ``max_iterations``, when an iteration at the finest local step improved the resolution by
less than 1 %, or when a local iteration lowered the half-map FSC (:func:`lost_ground`): that iteration is
discarded, so the result is the last iteration that did not lose ground.  With a point group (``symmetry``),
every pose is inserted at its equivalent orientations (:class:`~vitreous.physics.symmetry.SymmetricBackprojector`);
the search still covers all of SO(3).  Poses are RELION matrices ``A`` and origins (px); maps are [z, y, x] with
voxel size ``pixel_size`` Å.

Under ``torchrun`` (``ranks``) each process searches and inserts its shard of each half set; the accumulators,
the residual sums and the per-particle poses are summed over the processes, so every rank holds the same maps
and state (the state, and so a checkpoint, covers all particles whatever the number of processes).  The first
noise estimate (at most ``NOISE_SAMPLE`` images per half) is computed by every rank from the same sample.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from vitreous.align import (
    GlobalOptions,
    LocalOptions,
    PoseResult,
    PoseSearch,
    ProjectorSlices,
    ResidualShells,
    fourier_points,
    prepare,
    radius_for_resolution,
    shift_phases,
    shift_step_for_radius,
)
from vitreous.align.scoring import Mode
from vitreous.analysis.fsc import fsc_curve, resolution_at
from vitreous.data.particles import ParticleSet
from vitreous.distributed.ranks import SINGLE, Ranks
from vitreous.errors import InputError
from vitreous.physics.fourier import fourier_crop, fourier_pad, lowpass, soft_spherical_mask, translate_ft, window
from vitreous.physics.projection import Projector
from vitreous.physics.rotations import angular_distance
from vitreous.physics.so3_grid import grid_spacing_deg
from vitreous.reconstruct.backproject import (
    MASK_EDGE_PX,
    HalfMaps,
    HalfSetBackprojector,
    assign_halves,
    batches,
)
from vitreous.reconstruct.backproject import mask_radius_px as solvent_mask_radius
from vitreous.reconstruct.images import CroppedImages, noise_spectrum

log = logging.getLogger(__name__)

NOISE_SAMPLE = 2000  # images per half used for the first noise estimate
RESOLUTION_GAIN = 0.01  # relative resolution improvement that still counts as progress
FSC_TOLERANCE = 0.005  # drop of the mean half-map FSC that counts as lost ground (beyond its noise)
ProgressFactory = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


@dataclass(frozen=True)
class RefineOptions:
    """Refinement settings (Å, degrees, pixels as named); see the module docstring."""

    initial_lowpass_A: float = 30.0
    mask_diameter_A: float | None = None  # default: 90 % of the box
    max_iterations: int = 10
    global_iterations: int = 3
    local_only: bool = False
    start_level: int = 2
    end_level: int = 4
    min_step_deg: float = 0.9375
    keep: int = 5
    soft: bool = True
    min_weight: float = 0.02
    max_shift_A: float | None = None  # default: 8 % of the box
    margin_shells: float = 3.0
    margin_fraction: float = 0.25
    batch_size: int = 256
    device: str = "cpu"
    symmetry: str = "C1"
    seed: int = 0


@dataclass
class RefineState:
    """Where a refinement stands after ``iteration`` finished iterations (0: the initial references); what a
    checkpoint holds.  Arrays are float32 NumPy; ``halves`` 0/1 per particle."""

    iteration: int
    references: np.ndarray  # (2, D, D, D) half maps used as the next references (unmasked)
    full_map: np.ndarray  # (D, D, D)
    rotations: np.ndarray  # (N, 3, 3) best pose per particle
    shifts_px: np.ndarray  # (N, 2) origins, px
    max_weight: np.ndarray  # (N,) posterior of the best pose among the kept ones
    significant: np.ndarray  # (N,) poses inserted per particle
    halves: np.ndarray  # (N,) int64
    resolution_A: float  # gold-standard FSC = 0.143 resolution of the last reconstruction
    sigma2: np.ndarray | None = None  # (2, D // 2 + 1) noise power per half
    scale: np.ndarray | None = None  # (2,) reference scale per half
    step_deg: float | None = None  # last local angular step
    converged: bool = False
    frequency: np.ndarray | None = None  # (D // 2 + 1,) 1/Å
    fsc: list[np.ndarray] = field(default_factory=list)  # half-map FSC after each iteration
    history: list[dict[str, Any]] = field(default_factory=list)  # one summary per iteration

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for ``job.save_checkpoint``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefineState:
        return cls(**data)


# ---- inputs ------------------------------------------------------------------------------------------------
def check_particles(particles: ParticleSet) -> tuple[int, float]:
    """(box, pixel size Å) of particles that can be refined; InputError otherwise."""
    if particles.images is None:
        raise InputError(particles.source or None, "no particle images", "pass --datadir with the stacks")
    if not particles.has_ctf:
        raise InputError(particles.source or None, "particles have no CTF parameters (rlnDefocusU/V, rlnVoltage, "
                         "rlnSphericalAberration)", "estimate the CTF first (e.g. CTFFIND) and add its columns")
    if len(particles) < 2:
        raise InputError(particles.source or None, f"{len(particles)} particle(s): refinement needs two half sets",
                         "give at least two particles")
    return particles.box, particles.single_pixel_size()


def match_reference(volume: np.ndarray, voxel_size: float, box: int, pixel_size: float,
                    source: str | None = None) -> tuple[np.ndarray, list[str]]:
    """The reference on the particles' grid (box, pixel size), and warnings describing what was changed.

    A different voxel size is matched by Fourier cropping/padding (:func:`~vitreous.physics.fourier.fourier_crop`)
    to the nearest whole box, refused when that box leaves a voxel size more than 1 % off; a different box by
    real-space cropping/padding around voxel ``D // 2``.  A voxel size of 0 (not set) is taken as the particles'.
    """
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise InputError(source, f"reference is {'x'.join(map(str, volume.shape))}, not a cubic map",
                         "give a cubic (D x D x D) map")
    warnings = []
    vol = torch.as_tensor(np.asarray(volume, np.float32))
    if voxel_size <= 0:
        warnings.append(f"reference has no voxel size; assuming the particles' {pixel_size:g} Å")
        voxel_size = pixel_size
    if abs(voxel_size - pixel_size) > 1e-3 * pixel_size:
        size = vol.shape[-1]
        new_size = int(round(size * voxel_size / pixel_size))
        achieved = voxel_size * size / max(new_size, 1)
        if new_size < 2 or abs(achieved - pixel_size) > 0.01 * pixel_size:
            raise InputError(source, f"reference voxel size {voxel_size:g} Å cannot be resampled to the particles' "
                             f"{pixel_size:g} Å (a {size}-voxel box would need {size * voxel_size / pixel_size:.2f} "
                             "voxels)", "resample the reference to the particles' pixel size (e.g. "
                             "relion_image_handler --rescale_angpix --new_box)")
        vol = fourier_crop(vol, new_size, ndim=3) if new_size < size else fourier_pad(vol, new_size, ndim=3)
        warnings.append(f"reference resampled from {voxel_size:g} Å ({size} voxels) to {achieved:.4g} Å "
                        f"({new_size} voxels)")
    if vol.shape[-1] != box:
        warnings.append(f"reference box {vol.shape[-1]} {'cropped' if vol.shape[-1] > box else 'padded'} to the "
                        f"particles' {box}")
        vol = window(vol, box, ndim=3)
    return vol.numpy(), warnings


def initial_state(particles: ParticleSet, reference: np.ndarray, options: RefineOptions) -> RefineState:
    """Iteration 0: both half references are ``reference`` low-passed to ``initial_lowpass_A``; poses from
    the particles (used only with ``local_only``), half sets assigned."""
    box, apix = check_particles(particles)
    start = lowpass(torch.as_tensor(reference, dtype=torch.float32), options.initial_lowpass_A, apix, ndim=3)
    start = start.numpy()
    n = len(particles)
    rotations = particles.rotations.astype(np.float32) if particles.has_poses else np.tile(np.eye(3, dtype=np.float32),
                                                                                            (n, 1, 1))
    return RefineState(
        iteration=0, references=np.stack([start, start]), full_map=start, rotations=rotations,
        shifts_px=particles.shifts_px.astype(np.float32), max_weight=np.ones(n, np.float32),
        significant=np.ones(n, np.int64), halves=assign_halves(particles, options.seed),
        resolution_A=float(options.initial_lowpass_A))


# ---- the iteration -----------------------------------------------------------------------------------------
def comparison_radius(resolution_A: float, box: int, pixel_size: float, options: RefineOptions) -> float:
    """Fourier radius (px) compared in search: the resolution's radius plus ``margin_fraction`` of it plus
    ``margin_shells``, at most Nyquist."""
    r = radius_for_resolution(resolution_A, box, pixel_size)
    return float(min(box // 2, r * (1 + options.margin_fraction) + options.margin_shells))


def mask_radius_px(options: RefineOptions, box: int, pixel_size: float) -> float:
    """Radius (px) of the reference mask's flat part (backproject's solvent mask of ``mask_diameter_A``)."""
    return solvent_mask_radius(options.mask_diameter_A, box, pixel_size)


@dataclass(frozen=True)
class _Plan:
    """What one iteration does: global or local search (with its step), the comparison radius (Fourier px),
    the score mode and the reference mask (D, D, D)."""

    box: int
    apix: float
    is_global: bool
    step: float | None
    radius: float
    mode: Mode
    mask: torch.Tensor


@dataclass
class _Poses:
    """The per-particle outcome of an iteration, filled half by half (arrays as in :class:`RefineState`)."""

    rotations: np.ndarray
    shifts_px: np.ndarray
    max_weight: np.ndarray
    significant: np.ndarray


def _search_half(particles: ParticleSet, state: RefineState, options: RefineOptions, half: int, mine: np.ndarray,
                 accumulator: HalfSetBackprojector, poses: _Poses, plan: _Plan, timings: dict[str, float],
                 advance: Callable[[int], None] | None, ranks: Ranks) -> tuple[float, np.ndarray]:
    """Search this rank's particles ``mine`` of ``half`` against its reference and insert them; returns the
    fitted reference scale and the residual noise power (D // 2 + 1,) of the whole half for the next iteration."""
    box, apix, device = plan.box, plan.apix, torch.device(options.device)
    members = np.nonzero(state.halves == half)[0]
    images = CroppedImages(particles, device=device)
    sigma2 = (torch.as_tensor(state.sigma2[half], device=device) if state.sigma2 is not None
              else noise_spectrum(images, members, NOISE_SAMPLE, options.seed + half, options.batch_size))
    scale = float(state.scale[half]) if plan.mode == "likelihood" else 1.0
    reference = torch.as_tensor(state.references[half], device=device) * plan.mask
    slicer = ProjectorSlices(Projector(reference))
    search = PoseSearch(slicer, sigma2, box, mode=plan.mode, scale=scale)
    residuals = ResidualShells(box, device)
    full_points = fourier_points(box, box // 2, device)
    for part in batches(len(mine), options.batch_size):
        idx = mine[part]
        spectra, ctf = images.read(idx)
        if plan.is_global:
            result = search.global_search(spectra, ctf, _global_options(plan.radius, box, apix, options))
        else:
            result = search.local_search(spectra, ctf, torch.as_tensor(state.rotations[idx], device=device),
                                         torch.as_tensor(state.shifts_px[idx], device=device),
                                         _local_options(plan.radius, plan.step or options.min_step_deg, box, options))
        tick = time.perf_counter()
        prepared = prepare(spectra, ctf, sigma2, full_points)
        residuals.add(prepared.values, prepared.ctf, slicer(result.best_rotations, full_points),
                      shift_phases(full_points, result.best_shifts), full_points)
        timings["residuals"] = timings.get("residuals", 0.0) + time.perf_counter() - tick
        tick = time.perf_counter()
        poses.significant[idx] = _insert(accumulator, half, spectra, ctf, result, options)
        timings["insertion"] = timings.get("insertion", 0.0) + time.perf_counter() - tick
        poses.rotations[idx] = result.best_rotations.cpu().numpy()
        poses.shifts_px[idx] = result.best_shifts.cpu().numpy()
        poses.max_weight[idx] = result.max_weight.float().cpu().numpy()
        if advance is not None:
            advance(len(idx))
    for key, value in search.timings.items():
        timings[key] = timings.get(key, 0.0) + value
    ranks.all_reduce(residuals.sums)
    fitted = residuals.scale(sigma2, int(plan.radius))
    return fitted, residuals.noise(fitted).cpu().numpy()


def refine_iteration(particles: ParticleSet, state: RefineState, options: RefineOptions,
                     progress: ProgressFactory | None = None, ranks: Ranks = SINGLE) -> tuple[RefineState, HalfMaps]:
    """One iteration (search both halves, reconstruct); returns the new state and the half maps (the same on
    every rank; ``progress`` counts this rank's particles)."""
    started = time.perf_counter()
    box, apix = check_particles(particles)
    iteration = state.iteration + 1
    is_global = iteration <= options.global_iterations and not options.local_only
    step = None if is_global else _local_step(state, options)
    plan = _Plan(
        box=box, apix=apix, is_global=is_global, step=step,
        radius=comparison_radius(state.resolution_A, box, apix, options),
        # the scale-free mode until a reference scale has been fitted (or when the fit failed, scale <= 0)
        mode="ncc" if state.scale is None or not bool((state.scale > 0).all()) else "likelihood",
        mask=soft_spherical_mask(box, mask_radius_px(options, box, apix), MASK_EDGE_PX, device=options.device))
    accumulator = HalfSetBackprojector(box, 2, options.device, options.symmetry)
    poses = _Poses(state.rotations.copy(), state.shifts_px.copy(), state.max_weight.copy(),
                   state.significant.copy())
    scale, sigma2, timings = np.ones(2, np.float32), np.zeros((2, box // 2 + 1), np.float32), {}
    what = "global" if is_global else f"local {step:.3g}°"
    mine = [ranks.shard(np.nonzero(state.halves == half)[0]) for half in (0, 1)]
    total = sum(len(m) for m in mine)
    context = progress(f"iteration {iteration} ({what})", total) if progress else nullcontext(None)
    with context as advance:
        for half in (0, 1):
            scale[half], sigma2[half] = _search_half(particles, state, options, half, mine[half], accumulator,
                                                     poses, plan, timings, advance, ranks)
    tick = time.perf_counter()
    rows = np.concatenate(mine)  # the other ranks' particles are filled in
    poses = _Poses(*(ranks.gather_rows(values, rows) for values in (
        poses.rotations, poses.shifts_px, poses.max_weight, poses.significant)))
    accumulator.all_reduce(ranks)
    if ranks.distributed:
        timings["all_reduce"] = time.perf_counter() - tick
        tick = time.perf_counter()
    maps = accumulator.reconstruct(apix)
    timings["reconstruction"] = time.perf_counter() - tick
    resolution = resolution_at(maps.frequency, maps.fsc, 0.143)
    change = angular_distance(poses.rotations.astype(np.float64), state.rotations.astype(np.float64))
    summary = {
        "iteration": iteration, "search": "global" if is_global else "local", "step_deg": step,
        "radius_px": plan.radius, "compared_to_A": box * apix / plan.radius, "mode": plan.mode,
        "resolution_0.143_A": resolution, "resolution_0.5_A": resolution_at(maps.frequency, maps.fsc, 0.5),
        "median_rotation_change_deg": float(np.median(change)),
        "median_shift_change_px": float(np.median(np.linalg.norm(poses.shifts_px - state.shifts_px, axis=1))),
        "mean_max_weight": float(poses.max_weight.mean()), "poses_inserted": int(poses.significant.sum()),
        "scale": scale.tolist(), "seconds": time.perf_counter() - started,
        "stage_seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    converged = (not is_global and step is not None and step <= options.min_step_deg * (1 + 1e-6)
                 and resolution >= state.resolution_A * (1 - RESOLUTION_GAIN))
    log.info("iteration %d (%s): %.2f Å (FSC 0.143), %.2f Å (0.5), median change %.2f°, %.1f s", iteration, what,
             resolution, summary["resolution_0.5_A"], summary["median_rotation_change_deg"], summary["seconds"])
    new = RefineState(
        iteration=iteration, references=np.stack([maps.half1, maps.half2]), full_map=maps.full,
        rotations=poses.rotations, shifts_px=poses.shifts_px, max_weight=poses.max_weight,
        significant=poses.significant, halves=state.halves, resolution_A=resolution, sigma2=sigma2, scale=scale,
        step_deg=step if step is not None else state.step_deg, converged=converged, frequency=maps.frequency,
        fsc=[*state.fsc, maps.fsc], history=[*state.history, summary])
    return new, maps


def _local_step(state: RefineState, options: RefineOptions) -> float:
    """Angular step of the next local search: half the last one (the global grid's spacing at first), not
    below ``min_step_deg``."""
    previous = state.step_deg if state.step_deg is not None else grid_spacing_deg(options.end_level)
    return max(options.min_step_deg, previous / 2)


def _global_options(radius: float, box: int, apix: float, options: RefineOptions) -> GlobalOptions:
    max_shift = options.max_shift_A / apix if options.max_shift_A is not None else 0.08 * box
    return GlobalOptions(radius_px=radius, start_level=options.start_level, end_level=options.end_level,
                         keep=options.keep, max_shift_px=max_shift)


def _local_options(radius: float, step: float, box: int, options: RefineOptions) -> LocalOptions:
    """Rotations within 2 steps, shifts within 3 shift steps (the step suits the radius)."""
    shift_step = shift_step_for_radius(box, radius)
    return LocalOptions(radius_px=radius, step_deg=step, range_deg=2 * step, shift_step_px=shift_step,
                        shift_range_px=3 * shift_step, keep=options.keep)


def _insert(accumulator: HalfSetBackprojector, half: int, spectra: torch.Tensor, ctf: torch.Tensor,
            result: PoseResult, options: RefineOptions) -> np.ndarray:
    """Insert a batch of half ``half`` at its kept poses (posterior-weighted, or the best pose); returns the
    number of poses inserted per image."""
    weights = result.weights.float()
    if not options.soft:
        weights = torch.zeros_like(weights)
        weights[:, 0] = 1.0
    weights = torch.where(weights >= options.min_weight, weights, torch.zeros_like(weights))
    weights[:, 0] = torch.where(weights.sum(1) > 0, weights[:, 0], torch.ones_like(weights[:, 0]))
    weights = weights / weights.sum(1, keepdim=True)
    image, pose = torch.nonzero(weights > 0, as_tuple=True)
    w = weights[image, pose][:, None, None]
    c = ctf[image]
    centred = translate_ft(spectra[image], result.shifts[image, pose])
    accumulator.halves[half].insert(centred * (c * w), c * c * w, result.rotations[image, pose])
    return (weights > 0).sum(1).cpu().numpy()


# ---- the loop ----------------------------------------------------------------------------------------------
def refine(particles: ParticleSet, state: RefineState, options: RefineOptions,
           on_iteration: Callable[[RefineState], None] | None = None,
           progress: ProgressFactory | None = None, ranks: Ranks = SINGLE) -> RefineState:
    """Iterate from ``state`` (``initial_state`` or a checkpoint) until convergence or ``max_iterations``;
    ``on_iteration`` receives each finished state (to checkpoint it).  Under ``torchrun`` every rank calls this
    with the same ``state`` and gets the same result (see the module docstring)."""
    check_particles(particles)
    if options.symmetry.upper() != "C1":
        from vitreous.physics.symmetry import parse_symmetry

        parse_symmetry(options.symmetry)
    while state.iteration < options.max_iterations and not state.converged:
        new, _ = refine_iteration(particles, state, options, progress, ranks=ranks)
        if new.history[-1]["search"] == "local" and state.fsc and lost_ground(state, new):
            log.info("iteration %d lowered the half-map FSC (mean up to %.2f Å): discarded, the refinement ends at "
                     "iteration %d", new.iteration, min(state.resolution_A, new.resolution_A), state.iteration)
            new = replace(state, converged=True)
        state = new
        if on_iteration is not None:
            on_iteration(state)
    return state


def lost_ground(before: RefineState, after: RefineState) -> bool:
    """Whether ``after``'s half-map FSC, averaged over the shells up to the finer of the two FSC = 0.143
    resolutions, is more than ``FSC_TOLERANCE`` below ``before``'s (local searches at steps finer than the poses
    are determined, inserting only the ``keep`` best poses of a posterior that spans many, fit noise and blur
    the map)."""
    band = (after.frequency > 0) & (after.frequency <= 1 / min(before.resolution_A, after.resolution_A))
    drop = float(np.mean(np.asarray(before.fsc[-1])[band]) - np.mean(np.asarray(after.fsc[-1])[band]))
    return drop > FSC_TOLERANCE


def masked_fsc(state: RefineState, options: RefineOptions, pixel_size: float) -> np.ndarray:
    """FSC between the final half maps inside the reference mask (soft edge)."""
    box = state.references.shape[-1]
    mask = soft_spherical_mask(box, mask_radius_px(options, box, pixel_size), MASK_EDGE_PX)
    return fsc_curve(state.references[0], state.references[1], pixel_size, mask=mask)[1]


__all__ = ["RefineOptions", "RefineState", "check_particles", "comparison_radius", "initial_state",
           "lost_ground", "mask_radius_px", "masked_fsc", "match_reference", "refine", "refine_iteration"]
