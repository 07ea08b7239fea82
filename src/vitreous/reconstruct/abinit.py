"""Ab initio reconstruction of K maps from particles without poses or reference: stochastic EM, then refinement.

Stage 1, stochastic expectation-maximisation on mini-batches (online EM, as cryoSPARC's ab initio and RELION's
SGD initial model do in spirit), on images Fourier-cropped to a small box that holds the final resolution of
the stage.  Start: K maps of random white noise low-passed to ``initial_resolution_A`` inside the mask.
Iteration t (0-based) draws a random mini-batch (its size grows linearly from ``initial_batch`` to
``final_batch``) and:

1. searches every image against every class map globally over SO(3) x shifts
   (:class:`~vitreous.align.PoseSearch`, coarse to fine), comparing frequencies up to the iteration's
   resolution, which marches geometrically from ``initial_resolution_A`` to ``final_resolution_A`` over the
   first ``march_fraction`` of the iterations; scores are the scale-free ``ncc`` log-likelihoods (the
   Gaussian log-likelihood maximised over the map's scale; default: on 600 simulated adenylate kinase
   particles it reached 10.5 Å against 13.4 Å) or the Gaussian log-likelihoods of the maps as they are
   (``score="likelihood"``, where a map's scale, e.g. a protein's mass, counts; the random start at t = 0 is
   always scored by ``ncc``), whitened by the image power spectrum;
2. class posteriors ``p_k ~ pi_k sum_poses exp(score)`` (at t = 0, a random class per image), pose posteriors
   softmax(score) within each class.  With ``balance`` (K > 1), the class posteriors of each batch are
   rescaled per class (Sinkhorn, :func:`balanced_posteriors`) so that every class receives an equal share:
   otherwise the class whose map sharpens first takes the images of the others (on 1000 + 1000 particles of
   4E43 and 8zpm, K = 2: 92 % in one class, ARI 0.02, against ARI 0.66 balanced);
3. decays each class's Fourier accumulators (numerator ``sum w c X``, weights ``sum w c^2``, per half set) by
   ``t / (t + memory)`` (t = 0 forgets the random start) and inserts the batch with weights ``p_k * p_pose``;
4. rebuilds each class map with the FSC-derived Wiener filter of its two half-set accumulators and its soft
   spherical mask; ``pi_k`` follows the decayed class weights.  A class that received no particle keeps its map.

Each class has its own mask (unless ``mask_diameter_A`` fixes one for all).  It starts tight
(``MASK_START_FRACTION`` of the box; from a given map, ``MASK_MARGIN`` times that map's support), then follows
``MASK_MARGIN`` times the support of the class's unmasked map (where its rotational mean falls below
``MASK_SUPPORT_LEVEL`` of its peak), by at most a factor ``MASK_STEP`` per mini-batch.  The unmasked map holds
the class's particles' full extent even while their poses are wrong, so a large protein's mask grows to hold
it while a small protein's stays tight.  A mask that holds a 192 Å box lets so much noise into the map of a
63 Å protein (4E43, 1000 particles at SNR 0.1) that its poses never lock (FSC = 0.5 against the truth 20.2 Å;
fixed 90 / 110 / 140 Å masks: 12.4 / 13.2 / 20.4 Å; adaptive, which settles at 101 Å: 11.9 Å).

Stage 2 (:func:`assign_classes`): every particle searched globally against every class map at the final
resolution; its class is the most probable one, its pose the best pose in that class.  Then (K > 1, from noise;
:func:`resolve_rounds`) up to ``resolve_rounds`` times, until at most ``RESOLVE_TOLERANCE`` of the particles
change class: each class's members solved again alone from noise (stage 1 with one class,
:func:`resolve_classes`), which gives maps free of the balanced assignment's forced members, and stage 2 again
(three proteins, 1000 particles each: ARI 0.58 after stage 2, then 0.66 / 0.74 / 0.87 after rounds 1-3).  With
``merge_duplicates`` (``abinit-neural``, where one class is one protein and its conformations are latent),
classes started from noise that converged to one structure are then merged (:mod:`vitreous.analysis.duplicate_classes`,
:meth:`Assignment.merged`): a surplus class is left empty rather than splitting a protein.  Stage 3: each class's
particles refined with :mod:`vitreous.reconstruct.refine` (gold-standard halves, local searches from the
stage-2 poses with steps of 7.5° halved down to the finest) from its stage-1 map, which gives the final maps
and poses.  Maps are [z, y, x], poses RELION matrices and origins (px of the
particles' box).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from vitreous.align import GlobalOptions, PoseSearch, ProjectorSlices
from vitreous.align.points import radius_for_resolution
from vitreous.align.scoring import Mode
from vitreous.data.particles import ParticleSet
from vitreous.errors import InputError
from vitreous.physics.fourier import (
    fourier_crop,
    fourier_pad,
    lowpass,
    radial_average,
    soft_spherical_mask,
    translate_ft,
)
from vitreous.physics.projection import Backprojector, Projector
from vitreous.reconstruct.backproject import MASK_EDGE_PX, HalfMaps, HalfSetBackprojector, assign_halves, batches
from vitreous.reconstruct.images import CroppedImages, noise_spectrum
from vitreous.reconstruct.refine import ProgressFactory, RefineOptions, check_particles

log = logging.getLogger(__name__)

NOISE_SAMPLE = 1000  # images used for the whitening spectrum
MIN_CLASS_WEIGHT = 1e-3  # class posteriors below this are not inserted
MIN_POSE_WEIGHT = 0.01  # nor are pose posteriors below this (the rest renormalised)
EMPTY_CLASS = 1.0  # a class with less accumulated weight than this keeps its previous map
RESOLVE_STARTS = 2  # one-class ab initio runs per class and re-solve round; the best is kept
MIN_RESOLVE = 100  # a class re-solved alone needs this many members
RESOLVE_TOLERANCE = 0.01  # re-solving stops once at most this fraction of the particles changes class
MIN_SEARCH_SHELLS = 2  # Fourier shells the first (coarsest) comparison must hold
START_PERTURBATION = 0.2  # relative noise added to a given start map, per class
MASK_START_FRACTION = 0.4  # adaptive class masks start at this fraction of the box
MASK_SUPPORT_LEVEL = 0.1  # a map's support: where its rotational mean stays below this fraction of its peak
MASK_MARGIN = 1.4  # adaptive mask diameter / support diameter
MASK_STEP = 1.25  # an adaptive mask changes by at most this factor per mini-batch
MASK_MAX_FRACTION = 0.9  # nor grows beyond this fraction of the box (edge included)


@dataclass(frozen=True)
class AbinitOptions:
    """Ab initio settings (Å, px and degrees as named); see the module docstring."""

    classes: int = 1
    iterations: int = 40
    initial_batch: int = 200
    final_batch: int = 800
    initial_resolution_A: float = 35.0
    final_resolution_A: float = 12.0
    march_fraction: float = 0.6
    memory: float = 3.0
    mask_diameter_A: float | None = None  # default: one adaptive mask per class (module docstring)
    keep: int = 10
    max_shift_A: float | None = None  # default: 8 % of the box
    refine_iterations: int = 6
    batch_size: int = 256
    device: str = "cpu"
    seed: int = 0
    score: Mode = "ncc"
    merge_duplicates: bool = False  # merge classes from noise that converged to one structure (after stage 2)
    resolve_rounds: int = 3  # K > 1 from noise: rounds (at most) of each class re-solved alone, then stage 2
    balance: bool = True  # K > 1 from noise: stage-1 class posteriors balanced to equal class sizes

    def check(self, particles: ParticleSet) -> None:
        """InputError for options that cannot work with these particles."""
        if self.classes < 1 or self.classes > len(particles):
            raise InputError(particles.source or None, f"--classes {self.classes} for {len(particles)} particles",
                             "ask for at least 1 class and at most as many classes as particles")
        if min(self.iterations, self.initial_batch, self.final_batch, self.keep, self.batch_size) < 1:
            raise InputError(None, "--iterations, batch sizes and --keep must be at least 1", "fix the options")
        if not 0 < self.final_resolution_A <= self.initial_resolution_A:
            raise InputError(None, f"resolutions must satisfy 0 < final ({self.final_resolution_A:g} Å) <= initial "
                             f"({self.initial_resolution_A:g} Å)", "fix --initial-resolution/--final-resolution")
        box, pixel_size = particles.box, particles.single_pixel_size()
        shells = box * pixel_size / self.initial_resolution_A
        if shells < MIN_SEARCH_SHELLS:
            raise InputError(particles.source or None, f"a {box}-px box at {pixel_size:g} Å/px holds {shells:.1f} "
                             f"Fourier shells up to the initial {self.initial_resolution_A:g} Å, too few for the pose "
                             f"search (at least {MIN_SEARCH_SHELLS})",
                             "extract particles in a larger box or give a coarser --initial-resolution")

    def resolution(self, iteration: int) -> float:
        """Resolution (Å) compared at ``iteration`` (geometric marching, then constant)."""
        done = min(1.0, iteration / max(1.0, self.march_fraction * (self.iterations - 1)))
        return self.initial_resolution_A * (self.final_resolution_A / self.initial_resolution_A) ** done

    def batch(self, iteration: int) -> int:
        """Mini-batch size at ``iteration``."""
        done = iteration / max(1, self.iterations - 1)
        return int(round(self.initial_batch + done * (self.final_batch - self.initial_batch)))


@dataclass
class SGDState:
    """Stage 1 after ``iteration`` finished mini-batches: maps (K, d, d, d) on the small box, the per-class
    half-set accumulators, class priors, whitening spectrum; what a checkpoint holds."""

    iteration: int
    small_box: int
    small_pixel_size: float
    maps: np.ndarray
    numerators: np.ndarray  # (K, 2, d, d, d) complex64, raw half-plane accumulators
    weights: np.ndarray  # (K, 2, d, d, d) float32
    counts: np.ndarray  # (K, 2) images inserted
    priors: np.ndarray  # (K,)
    sigma2: np.ndarray  # (d // 2 + 1,)
    mask_diameters_A: np.ndarray  # (K,) each class's spherical mask
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SGDState:
        return cls(**data)

    def full_maps(self, box: int) -> np.ndarray:
        """The class maps (K, D, D, D) on the particles' box (Fourier-padded)."""
        maps = torch.as_tensor(self.maps)
        if self.small_box == box:
            return maps.numpy()
        return np.stack([fourier_pad(m, box, ndim=3).numpy() for m in maps])


def small_box_for(box: int, pixel_size: float, resolution_A: float) -> int:
    """Smallest even box (at most ``box``) whose Nyquist frequency is 1.5 times that of ``resolution_A``."""
    needed = 2 * math.ceil(1.5 * box * pixel_size / resolution_A)
    return int(min(box, max(needed, 16)))


def largest_mask_A(box: int, pixel_size: float) -> float:
    """Diameter (Å) of the largest mask: its soft edge ends at ``MASK_MAX_FRACTION`` of the box (refine's
    default)."""
    return (MASK_MAX_FRACTION * box - 2 * MASK_EDGE_PX * box / 64) * pixel_size


def class_mask(diameter_A: float, box: int, pixel_size: float, device: torch.device) -> torch.Tensor:
    """(d, d, d) soft spherical mask of ``diameter_A`` on a ``box`` of ``pixel_size``."""
    return soft_spherical_mask(box, diameter_A / (2 * pixel_size), MASK_EDGE_PX * box / 64, device=device)


def class_masks(diameters_A: np.ndarray, box: int, pixel_size: float, device: torch.device) -> torch.Tensor:
    """(K, d, d, d) the masks of :func:`class_mask` for each class's diameter."""
    return torch.stack([class_mask(d, box, pixel_size, device) for d in diameters_A])


def support_diameter_A(volume: torch.Tensor, pixel_size: float) -> float:
    """Diameter (Å) of the sphere around the box centre outside which the rotational mean of ``volume`` stays
    below ``MASK_SUPPORT_LEVEL`` times its peak."""
    profile = radial_average(volume, ndim=3)
    inside = torch.nonzero(profile >= MASK_SUPPORT_LEVEL * profile.max()).flatten()
    return float(2 * (int(inside.max()) + 1) * pixel_size)


def adapted_diameter_A(volume: torch.Tensor, pixel_size: float, previous_A: float) -> float:
    """A class's next mask diameter (Å): ``MASK_MARGIN`` times the support of its unmasked map, moving at most
    a factor ``MASK_STEP`` from ``previous_A`` and at most :func:`largest_mask_A`."""
    wanted = MASK_MARGIN * support_diameter_A(volume, pixel_size)
    stepped = min(max(wanted, previous_A / MASK_STEP), previous_A * MASK_STEP)
    return min(stepped, largest_mask_A(volume.shape[-1], pixel_size))


def initial_sgd_state(particles: ParticleSet, options: AbinitOptions, start: np.ndarray | None = None) -> SGDState:
    """K random maps (white noise low-passed to the initial resolution, masked), empty accumulators.

    With a ``start`` map (D, D, D) on the particles' grid (3D classification with alignment), each class is
    instead that map plus its own noise of ``START_PERTURBATION`` times the map's norm, both low-passed."""
    options.check(particles)
    box, apix = check_particles(particles)
    small = small_box_for(box, apix, options.final_resolution_A)
    device = torch.device(options.device)
    data = CroppedImages(particles, small, device)
    generator = torch.Generator().manual_seed(options.seed)
    noise = torch.randn((options.classes, small, small, small), generator=generator)
    K = options.classes
    reference = None if start is None else torch.as_tensor(np.asarray(start, np.float32))
    if options.mask_diameter_A is not None:
        diameter = options.mask_diameter_A
    elif reference is None:
        diameter = MASK_START_FRACTION * box * apix
    else:
        diameter = min(MASK_MARGIN * support_diameter_A(reference, apix), largest_mask_A(box, apix))
    diameters = np.full(K, diameter, np.float64)
    mask = class_masks(diameters, small, data.pixel_size, torch.device("cpu"))
    maps = torch.stack([lowpass(v, options.initial_resolution_A, data.pixel_size, ndim=3) for v in noise]) * mask
    if reference is not None:
        reference = lowpass(fourier_crop(reference, small, ndim=3) if small < box else reference,
                            options.initial_resolution_A, data.pixel_size, ndim=3) * mask[0]
        maps = reference + START_PERTURBATION * reference.norm() * maps / maps.flatten(1).norm(dim=1)[:, None, None,
                                                                                                        None]
    return SGDState(
        iteration=0, small_box=small, small_pixel_size=data.pixel_size, maps=maps.numpy(),
        numerators=np.zeros((K, 2, small, small, small), np.complex64),
        weights=np.zeros((K, 2, small, small, small), np.float32), counts=np.zeros((K, 2), np.int64),
        priors=np.full(K, 1.0 / K),
        sigma2=noise_spectrum(data, np.arange(len(particles)), NOISE_SAMPLE, options.seed).cpu().numpy(),
        mask_diameters_A=diameters)


def _search_options(radius: float, box: int, pixel_size: float, options: AbinitOptions) -> GlobalOptions:
    """Global search to ``radius``: from the 15° grid to the first level whose marching radius reaches it."""
    max_shift = (options.max_shift_A / pixel_size) if options.max_shift_A is not None else 0.08 * box
    search = GlobalOptions(radius_px=radius, start_level=2, end_level=2, keep=options.keep, max_shift_px=max_shift)
    level = 2
    while search.level_radius(level, box) < radius and level < 5:
        level += 1
    return GlobalOptions(radius_px=radius, start_level=2, end_level=level, keep=options.keep, max_shift_px=max_shift)


@dataclass
class ClassPoses:
    """Per-class search results of a batch: rotations (K, B, P, 3, 3), shifts (K, B, P, 2) px, pose
    posteriors (K, B, P) and class posteriors (B, K)."""

    rotations: torch.Tensor
    shifts: torch.Tensor
    pose_weights: torch.Tensor
    class_posteriors: torch.Tensor
    evidence: torch.Tensor  # (B, K) float64 log p(image | class) + log pi_k


def search_classes(maps: torch.Tensor, priors: torch.Tensor, spectra: torch.Tensor, ctf: torch.Tensor,
                   sigma2: torch.Tensor, search: GlobalOptions, mode: Mode = "likelihood") -> ClassPoses:
    """Global search of a batch against each class map (K, d, d, d) (already masked), scored by the Gaussian
    log-likelihood of the maps as they are (``likelihood``: a map's scale, e.g. a protein's mass, counts) or
    by the scale-free ``ncc``."""
    box = maps.shape[-1]
    results = [PoseSearch(ProjectorSlices(Projector(m)), sigma2, box, mode=mode).global_search(spectra, ctf, search)
               for m in maps]
    scores = torch.stack([r.scores for r in results])  # (K, B, P)
    evidence = torch.logsumexp(scores.double(), dim=2).T + torch.log(priors.double().clamp(min=1e-12))[None]
    return ClassPoses(torch.stack([r.rotations for r in results]), torch.stack([r.shifts for r in results]),
                      torch.stack([r.weights for r in results]).float(),
                      torch.softmax(evidence, dim=1).float(), evidence)


def balanced_posteriors(evidence: torch.Tensor, rounds: int = 300) -> torch.Tensor:
    """Class posteriors (B, K) whose class totals are equal (B / K each): Sinkhorn scaling of
    ``exp(evidence)``, per-class factors found by alternating normalisation (log domain)."""
    log_p = evidence.double()
    column = math.log(evidence.shape[0] / evidence.shape[1])
    for _ in range(rounds):
        log_p = log_p - torch.logsumexp(log_p, dim=0, keepdim=True) + column
        log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True)
    return log_p.exp()


def _insert(accumulators: list[list[Backprojector]], spectra: torch.Tensor, ctf: torch.Tensor, poses: ClassPoses,
            halves: torch.Tensor) -> None:
    """Insert a batch into every class and half with weights class posterior x pose posterior."""
    for k, class_accumulators in enumerate(accumulators):
        weights = poses.pose_weights[k] * poses.class_posteriors[:, k:k + 1]  # (B, P)
        weights = torch.where(poses.pose_weights[k] >= MIN_POSE_WEIGHT, weights, torch.zeros_like(weights))
        weights = torch.where(poses.class_posteriors[:, k:k + 1] >= MIN_CLASS_WEIGHT, weights,
                              torch.zeros_like(weights))
        weights = weights * (poses.class_posteriors[:, k:k + 1] / weights.sum(1, keepdim=True).clamp(min=1e-12))
        for h, accumulator in enumerate(class_accumulators):
            image, pose = torch.nonzero((weights > 0) & (halves[:, None] == h), as_tuple=True)
            if image.numel() == 0:
                continue
            w = weights[image, pose][:, None, None]
            c = ctf[image]
            centred = translate_ft(spectra[image], poses.shifts[k, image, pose])
            accumulator.insert(centred * (c * w), c * c * w, poses.rotations[k, image, pose])


def _accumulators(state: SGDState, device: torch.device) -> list[list[Backprojector]]:
    out = []
    for k in range(state.maps.shape[0]):
        row = []
        for h in range(2):
            b = Backprojector(state.small_box, 1, device=device)
            b.load_accumulators(torch.as_tensor(state.numerators[k, h]), torch.as_tensor(state.weights[k, h]),
                                int(state.counts[k, h]))
            row.append(b)
        out.append(row)
    return out


def _rebuild(accumulators: list[Backprojector], pixel_size: float) -> tuple[np.ndarray, float] | None:
    """Wiener-filtered full map and FSC=0.143 resolution from a class's two half accumulators (None if empty)."""
    maps = _half_maps(accumulators, pixel_size)
    if maps is None:
        return None
    from vitreous.analysis.fsc import resolution_at

    return maps.full, resolution_at(maps.frequency, maps.fsc, 0.143)


def _half_maps(accumulators: list[Backprojector], pixel_size: float) -> HalfMaps | None:
    if min(float(b.accumulators()[1].sum()) for b in accumulators) < EMPTY_CLASS:
        return None
    halves = HalfSetBackprojector(accumulators[0].D, 1, accumulators[0].device)
    for h, b in enumerate(accumulators):
        halves.halves[h].load_accumulators(*b.accumulators(), b.count)
    return halves.reconstruct(pixel_size)


def class_resolutions(state: SGDState, threshold: float = 0.5) -> list[float | None]:
    """Each stage-1 class's half-map FSC resolution (Å) at ``threshold`` (None for an empty class)."""
    from vitreous.analysis.fsc import resolution_at

    out: list[float | None] = []
    for row in _accumulators(state, torch.device("cpu")):
        maps = _half_maps(row, state.small_pixel_size)
        out.append(None if maps is None else resolution_at(maps.frequency, maps.fsc, threshold))
    return out


def sgd_iteration(particles: ParticleSet, state: SGDState, options: AbinitOptions, halves: np.ndarray) -> SGDState:
    """One mini-batch of stage 1; returns the new state."""
    started = time.perf_counter()
    device = torch.device(options.device)
    t = state.iteration
    data = CroppedImages(particles, state.small_box, device)
    rng = np.random.default_rng([options.seed, t])
    idx = np.sort(rng.choice(len(particles), min(len(particles), options.batch(t)), replace=False))
    resolution = options.resolution(t)
    radius = min(radius_for_resolution(resolution, state.small_box, data.pixel_size), state.small_box // 2)
    search = _search_options(radius, state.small_box, data.pixel_size, options)
    maps = torch.as_tensor(state.maps, device=device) * class_masks(state.mask_diameters_A, state.small_box,
                                                                     data.pixel_size, device)
    priors = torch.as_tensor(state.priors, device=device)
    sigma2 = torch.as_tensor(state.sigma2, device=device)
    accumulators = _accumulators(state, device)
    forget = t / (t + options.memory)
    for row in accumulators:
        for b in row:
            b.decay(forget)
    class_totals = torch.zeros(options.classes, dtype=torch.float64)
    for part in batches(len(idx), options.batch_size):
        spectra, ctf = data.read(idx[part])
        # the random start has no meaningful scale: scale-free scores until maps come from the data
        poses = search_classes(maps, priors, spectra, ctf, sigma2, search, options.score if t else "ncc")
        if t == 0 and options.classes > 1:  # random classes against the random start
            pick = torch.as_tensor(rng.integers(options.classes, size=len(part)), device=device)
            poses.class_posteriors = torch.nn.functional.one_hot(pick, options.classes).float()
        elif options.classes > 1 and options.balance:
            poses.class_posteriors = balanced_posteriors(poses.evidence).float()
        _insert(accumulators, spectra, ctf, poses, torch.as_tensor(halves[idx[part]], device=device))
        class_totals += poses.class_posteriors.sum(0).double().cpu()
    new_maps, resolutions, diameters = state.maps.copy(), [], state.mask_diameters_A.copy()
    for k, row in enumerate(accumulators):
        rebuilt = _rebuild(row, data.pixel_size)
        if rebuilt is not None:
            unmasked = torch.as_tensor(rebuilt[0])
            if options.mask_diameter_A is None:
                diameters[k] = adapted_diameter_A(unmasked, data.pixel_size, diameters[k])
            new_maps[k] = (unmasked * class_mask(diameters[k], state.small_box, data.pixel_size,
                                                 unmasked.device)).numpy()
        resolutions.append(rebuilt[1] if rebuilt is not None else float("nan"))
    priors_new = np.maximum(state.priors * forget * len(idx) + class_totals.numpy(), 1e-12)
    priors_new = priors_new / priors_new.sum()
    summary = {"iteration": t + 1, "batch": len(idx), "resolution_A": resolution, "radius_px": radius,
               "end_level": search.end_level, "class_fractions": (class_totals / len(idx)).tolist(),
               "half_map_resolution_A": resolutions, "mask_diameter_A": diameters.tolist(),
               "seconds": time.perf_counter() - started}
    log.info("ab initio iteration %d: %d images at %.1f Å, classes %s, masks %s Å, %.1f s", t + 1, len(idx),
             resolution, np.round(summary["class_fractions"], 3).tolist(), np.round(diameters).astype(int).tolist(),
             summary["seconds"])
    return SGDState(
        iteration=t + 1, small_box=state.small_box, small_pixel_size=state.small_pixel_size, maps=new_maps,
        numerators=np.stack([np.stack([b.accumulators()[0].cpu().numpy() for b in row]) for row in accumulators]),
        weights=np.stack([np.stack([b.accumulators()[1].cpu().numpy() for b in row]) for row in accumulators]),
        counts=np.array([[b.count for b in row] for row in accumulators], np.int64), priors=priors_new,
        sigma2=state.sigma2, mask_diameters_A=diameters, history=[*state.history, summary])


def run_sgd(particles: ParticleSet, state: SGDState, options: AbinitOptions,
            on_iteration: Callable[[SGDState], None] | None = None,
            progress: Callable[[int], None] | None = None) -> SGDState:
    """Stage 1 from ``state`` to ``options.iterations`` mini-batches; ``on_iteration`` gets each state."""
    halves = assign_halves(particles, options.seed)
    while state.iteration < options.iterations:
        state = sgd_iteration(particles, state, options, halves)
        if on_iteration is not None:
            on_iteration(state)
        if progress is not None:
            progress(1)
    return state


@dataclass
class Assignment:
    """Stage 2 for every particle: class posteriors (N, K) and the best pose in each class: RELION matrices
    (N, K, 3, 3) and origins (N, K, 2) in pixels of the particles' box."""

    posteriors: np.ndarray
    rotations: np.ndarray
    shifts_px: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Assignment:
        return cls(**data)

    @property
    def labels(self) -> np.ndarray:
        """(N,) the most probable class, 0-based."""
        return self.posteriors.argmax(1)

    def merged(self, pairs: list[tuple[int, int]]) -> Assignment:
        """The assignment with each ``(kept, duplicate)`` class pair merged: the duplicate's posterior mass moves
        to the kept class (whose poses every particle already has), the duplicate class is left empty."""
        posteriors = self.posteriors.copy()
        for kept, duplicate in pairs:
            posteriors[:, kept] += posteriors[:, duplicate]
            posteriors[:, duplicate] = 0.0
        return Assignment(posteriors, self.rotations, self.shifts_px)

    def best_poses(self) -> tuple[np.ndarray, np.ndarray]:
        """Rotations (N, 3, 3) and origins (N, 2) px in each particle's most probable class."""
        rows = np.arange(len(self.posteriors))
        return self.rotations[rows, self.labels], self.shifts_px[rows, self.labels]


def assign_classes(particles: ParticleSet, state: SGDState, options: AbinitOptions,
                   progress: Callable[[int], None] | None = None) -> Assignment:
    """Stage 2: every particle searched globally against the stage-1 maps at the final resolution."""
    device = torch.device(options.device)
    data = CroppedImages(particles, state.small_box, device)
    radius = min(radius_for_resolution(options.final_resolution_A, state.small_box, data.pixel_size),
                 state.small_box // 2)
    search = _search_options(radius, state.small_box, data.pixel_size, options)
    maps = torch.as_tensor(state.maps, device=device) * class_masks(state.mask_diameters_A, state.small_box,
                                                                     data.pixel_size, device)
    priors, sigma2 = torch.as_tensor(state.priors, device=device), torch.as_tensor(state.sigma2, device=device)
    n, K = len(particles), options.classes
    out = Assignment(np.zeros((n, K), np.float32), np.zeros((n, K, 3, 3), np.float32), np.zeros((n, K, 2), np.float32))
    for part in batches(n, options.batch_size):
        spectra, ctf = data.read(part)
        poses = search_classes(maps, priors, spectra, ctf, sigma2, search, options.score)
        out.posteriors[part] = poses.class_posteriors.cpu().numpy()
        out.rotations[part] = poses.rotations[:, :, 0].transpose(0, 1).cpu().numpy()
        out.shifts_px[part] = (poses.shifts[:, :, 0].transpose(0, 1) * (data.full_box / data.box)).cpu().numpy()
        if progress is not None:
            progress(len(part))
    return out


def resolve_classes(particles: ParticleSet, state: SGDState, assignment: Assignment, options: AbinitOptions,
                    round_: int, progress: Callable[[int], None] | None = None) -> SGDState:
    """Stage 1 again for each class on its own: its stage-2 members solved from noise as a one-class ab initio
    ``RESOLVE_STARTS`` times (own mask, seeds ``seed + 1 + 10 round_ + k + 1000 start``), keeping the start whose
    half-map FSC = 0.5 resolution is best: one start can settle in a wrong map (8zpm's members: 16.2 Å against
    the truth with one seed, 8.5 Å with another; half-map FSC 15.2 and 11.9 Å).  Returns ``state`` with these
    maps, masks, accumulators and the class sizes as priors; a class with fewer than ``MIN_RESOLVE`` members
    keeps its map."""
    labels = assignment.labels
    maps, diameters = state.maps.copy(), state.mask_diameters_A.copy()
    numerators, weights, counts = state.numerators.copy(), state.weights.copy(), state.counts.copy()
    for k in range(options.classes):
        members = np.nonzero(labels == k)[0]
        if len(members) >= MIN_RESOLVE:
            subset = particles.subset(members)
            starts = []
            for start in range(RESOLVE_STARTS):
                one = replace(options, classes=1, seed=options.seed + 1 + 10 * round_ + k + 1000 * start)
                alone = run_sgd(subset, initial_sgd_state(subset, one), one)
                starts.append((class_resolutions(alone)[0] or np.inf, alone))
            _, alone = min(starts, key=lambda s: s[0])
            maps[k], diameters[k] = alone.maps[0], alone.mask_diameters_A[0]
            numerators[k], weights[k], counts[k] = alone.numerators[0], alone.weights[0], alone.counts[0]
            log.info("class %d re-solved alone from its %d particles (mask %.0f Å; best of %d starts, half-map "
                     "FSC = 0.5 at %s Å)", k + 1, len(members), diameters[k], RESOLVE_STARTS,
                     " / ".join(f"{r:.1f}" for r, _ in starts))
        if progress is not None:
            progress(1)
    sizes = np.bincount(labels, minlength=options.classes) + 1e-3
    return replace(state, maps=maps, mask_diameters_A=diameters, numerators=numerators, weights=weights,
                   counts=counts, priors=sizes / sizes.sum())


@dataclass
class Resolved:
    """Stage 2 after ``round`` re-solve rounds: the class maps (``state``), the assignment against them, and the
    fraction of the particles whose class the last round changed (1 before any); what a checkpoint holds."""

    round: int
    changed: float
    state: SGDState
    assignment: Assignment

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "changed": self.changed, "state": self.state.to_dict(),
                "assignment": self.assignment.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resolved:
        return cls(data["round"], data["changed"], SGDState.from_dict(data["state"]),
                   Assignment.from_dict(data["assignment"]))


def resolve_rounds(particles: ParticleSet, resolved: Resolved, options: AbinitOptions, rounds: int,
                   on_round: Callable[[Resolved], None] | None = None,
                   progress: ProgressFactory | None = None) -> Resolved:
    """Up to ``rounds`` rounds from ``resolved``, stopping once at most ``RESOLVE_TOLERANCE`` of the particles
    change class: each class re-solved alone (:func:`resolve_classes`), then stage 2 against the new maps;
    ``on_round`` gets each round's result."""
    while resolved.round < rounds and resolved.changed > RESOLVE_TOLERANCE:
        done = resolved.round + 1
        with (progress(f"round {done}: each class re-solved alone", options.classes) if progress
              else nullcontext(None)) as advance:
            state = resolve_classes(particles, resolved.state, resolved.assignment, options, done - 1, advance)
        with (progress(f"round {done}: class and pose assignment", len(particles)) if progress
              else nullcontext(None)) as advance:
            assignment = assign_classes(particles, state, options, advance)
        changed = float(np.mean(assignment.labels != resolved.assignment.labels))
        log.info("re-solve round %d: %.1f %% of the particles changed class", done, 100 * changed)
        resolved = Resolved(done, changed, state, assignment)
        if on_round is not None:
            on_round(resolved)
    return resolved


def refine_options(options: AbinitOptions, mask_diameter_A: float) -> RefineOptions:
    """Stage 3 settings for a class: local refinement from the stage-2 poses (first step 7.5°, the spacing
    after the 15° grid's first halving) against the stage-1 map low-passed to the stage's final resolution,
    inside the class's stage-1 mask."""
    return RefineOptions(initial_lowpass_A=options.final_resolution_A, mask_diameter_A=mask_diameter_A,
                         max_iterations=options.refine_iterations, local_only=True, end_level=2, keep=5,
                         max_shift_A=options.max_shift_A, batch_size=options.batch_size, device=options.device,
                         seed=options.seed)


__all__ = ["AbinitOptions", "Assignment", "ClassPoses", "Resolved", "SGDState", "assign_classes",
           "initial_sgd_state", "refine_options", "resolve_classes", "resolve_rounds", "run_sgd", "search_classes",
           "sgd_iteration", "small_box_for"]
