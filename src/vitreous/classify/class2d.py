"""2D classification (RELION's ``relion_refine`` without a 3D reference): expectation-maximisation over K
class averages, in-plane rotations and origin shifts, with CTF.

Model: the centred spectrum of image i is ``X_i(k) = CTF_i(k) A_c(R_psi^T k) exp(+2 pi i k.s / D) + N_i(k)``
for class ``c``, in-plane angle ``psi`` (:mod:`~vitreous.classify.inplane`) and origin ``s`` = (rlnOriginX,
rlnOriginY) px; ``N`` is Gaussian with variance ``sigma2`` per Fourier shell.  The class averages ``A_c`` are
CTF-free (contrast as the particles: white on dark).

E-step, per image: the log-likelihood of every (class, angle on a ``psi_step`` grid) at its best shift over the
Fourier points ``1 <= |k| <= radius`` (:func:`vitreous.align.scoring.best_shift_shared`, ``"likelihood"``
mode), plus ``log pi_c`` and a Gaussian prior on that origin (standard deviation ``sigma_offset`` px,
re-estimated); the posterior runs over classes and angles, each at its most likely shift (as refinement's
shift search does).  Shifts are a square grid around the image's current origin, within ``offset_range`` px
during the first ``global_iterations`` and ``local_range`` px afterwards, of step ``offset_step`` px or the
coarser ``D / (6 radius)`` (:func:`~vitreous.align.shifts.shift_step_for_radius`) while the radius is small.
The (B, shifts, K x angles) data term is bounded by ``score_budget`` elements per batch.  Only the ``keep``
most probable poses of each image are kept (their posteriors renormalised; ``keep = 1``: maximum-a-posteriori,
``--hard``); as RELION's significant weights, this bounds the M-step's cost.  Before the last
``full_iterations``, each E-step sees a random subset of ``subset_per_class x K`` particles (as cryoSPARC's
2D batches; the others keep their last best pose), the last ones see every particle.

M-step: the Wiener-like average ``A_c = sum w CTF X_unrotated,centred / (sum w CTF^2 + sigma2 / tau2_c)``,
accumulated per pose (class x angle) at all frequencies up to ``D // 2 - 1`` and rotated into each class's
(D, D) grid once per iteration by bilinear scatter-add (:meth:`~vitreous.classify.inplane.RotatedPoints.insert`,
the adjoint of the sampling);
``tau2_c = tau_fudge * S_c`` with ``S_c`` the per-shell signal power of the unregularised average (its power
minus its noise variance ``sigma2 / sum w CTF^2``); ``sigma2`` is the residual power at each image's best pose;
``pi_c`` the mean posterior; the class resolution is the last shell where ``tau2_c sum w CTF^2 / sigma2 >= 1``
(RELION's SSNR = 1 criterion).  The averages are masked by a soft circle (``diameter``) and centred on their
centre of mass (of their positive part), the particles' origins moving with them.  The next E-step uses
shells up to the best class resolution plus ``RADIUS_MARGIN`` (at most ``MAX_RADIUS_GROWTH`` times the last
radius), at least ``initial_resolution`` and at most ``max_resolution`` (frequency marching: early iterations
are cheap and cannot overfit noise).

Start: each particle is given a random class and in-plane angle (seeded), and the M-step of those assignments
gives the first averages (rotationally blurred random subsets, differing by their noise).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vitreous.align import ResidualShells, fourier_points, shift_grid, shift_phases, shift_step_for_radius
from vitreous.align.scoring import best_shift_shared, image_spectra, prepare
from vitreous.classify.inplane import RotatedPoints, hermitian_complete, inplane_angles, inplane_matrices, max_radius
from vitreous.data.particles import ParticleSet
from vitreous.errors import InputError
from vitreous.physics.fourier import (
    fft2c,
    ifft2c,
    radius_grid,
    shell_index_2d,
    shell_sum,
    soft_circular_mask,
    translate_ft,
)
from vitreous.reconstruct.backproject import batches
from vitreous.reconstruct.images import CroppedImages, noise_spectrum
from vitreous.reconstruct.refine import ProgressFactory

log = logging.getLogger(__name__)

RADIUS_MARGIN = 2  # Fourier shells searched beyond the best class resolution
MAX_RADIUS_GROWTH = 1.5  # the search radius grows by at most this factor per iteration
NOISE_SAMPLE = 1000  # particles used for the first noise spectrum
MIN_PRIOR = 1e-6  # keeps log(pi_c) finite for an emptied class
MASK_EDGE_PX = 3.0  # width of the cosine edge of the circular mask


@dataclass
class Class2DOptions:
    """Settings of a 2D classification (Å, degrees, pixels of the particle box)."""

    classes: int
    iterations: int = 25
    diameter_A: float | None = None  # soft circular mask on the averages (default 90 % of the box)
    psi_step_deg: float = 10.0
    offset_range_px: float = 5.0
    offset_step_px: float = 1.0
    local_range_px: float = 2.0
    global_iterations: int = 3
    initial_resolution_A: float = 25.0
    max_resolution_A: float | None = 10.0  # None: up to Nyquist
    subset_per_class: int = 100  # particles per class in the E-steps before the last full_iterations (0: all)
    full_iterations: int = 5
    keep: int = 8
    tau_fudge: float = 2.0
    center: bool = True
    use_ctf: bool = True
    batch_size: int = 256
    score_budget: int = 1 << 23
    device: str = "cpu"
    seed: int = 0

    def members(self, iteration: int, n: int) -> np.ndarray:
        """The particles (sorted indices) of the E-step of 0-based ``iteration``: a random subset of
        ``subset_per_class x classes`` before the last ``full_iterations``, all of them afterwards."""
        size = self.subset_per_class * self.classes
        if self.subset_per_class <= 0 or size >= n or iteration >= self.iterations - self.full_iterations:
            return np.arange(n)
        return np.sort(np.random.default_rng([self.seed, iteration]).choice(n, size, replace=False))


@dataclass
class Class2DState:
    """Everything a classification carries from one iteration to the next (numpy; a checkpoint)."""

    iteration: int
    references: np.ndarray  # (K, D, D) float32 class averages, real space, masked and centred
    sigma2: np.ndarray  # (D // 2 + 1,) noise power per shell
    tau2: np.ndarray  # (K, D // 2 + 1) prior signal power per class and shell
    priors: np.ndarray  # (K,) class proportions
    sigma_offset_px: float
    radius: float  # Fourier radius (px) of the next E-step
    classes: np.ndarray  # (N,) int64, 0-based most probable class
    psi_deg: np.ndarray  # (N,) in-plane angle of the best pose
    origins_px: np.ndarray  # (N, 2) origin (x, y) of the best pose
    max_posterior: np.ndarray  # (N,) posterior of the best pose (rlnMaxValueProbDistribution)
    resolution_A: np.ndarray  # (K,) SSNR = 1 resolution of each class
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Class2DState:
        return cls(**data)

    @property
    def sizes(self) -> np.ndarray:
        """Particles whose most probable class is each class (K,)."""
        return np.bincount(self.classes, minlength=len(self.references))


# ---- inputs -----------------------------------------------------------------------------------------------
def check_inputs(particles: ParticleSet, options: Class2DOptions) -> None:
    """InputError unless the particles can be classified with these options (checked before any work)."""
    where = particles.source or None
    bad = []
    if options.classes < 1:
        raise InputError(None, f"--classes must be at least 1, not {options.classes}", "ask for 1 or more classes")
    if options.classes > len(particles):
        raise InputError(where, f"{options.classes} classes for only {len(particles)} particles",
                         "ask for fewer classes than particles")
    if options.iterations < 1:
        bad.append(f"--iterations {options.iterations} (need >= 1)")
    if not 0 < options.psi_step_deg <= 90:
        bad.append(f"--psi-step {options.psi_step_deg:g} (need 0 < step <= 90 degrees)")
    if options.offset_range_px < 0 or options.offset_step_px <= 0 or options.local_range_px < 0:
        bad.append("--offset-range/--offset-step (need range >= 0, step > 0)")
    if options.diameter_A is not None and not options.diameter_A > 0:
        bad.append(f"--diameter {options.diameter_A:g} Å (need > 0)")
    if options.max_resolution_A is not None and not options.max_resolution_A > 0:
        bad.append(f"--max-resolution {options.max_resolution_A:g} Å (need > 0)")
    if options.batch_size < 1 or options.keep < 1:
        bad.append("--batch-size/--keep (need >= 1)")
    if options.global_iterations < 0 or options.subset_per_class < 0 or options.full_iterations < 0:
        bad.append("--global-iterations/--subset/--full-iterations (need >= 0)")
    if bad:
        raise InputError(None, "invalid " + ", ".join(bad), "fix the options")
    if particles.images is None:
        raise InputError(where, "no particle images", "pass --datadir with the stacks")
    if options.use_ctf and not particles.has_ctf:
        raise InputError(where, "particles have no CTF parameters (rlnDefocusU/V, rlnVoltage, "
                         "rlnSphericalAberration)", "add the CTF columns, or pass --no-ctf for CTF-free images")
    if particles.box < 16:
        raise InputError(where, f"the particle box is {particles.box} px", "use boxes of at least 16 px")
    particles.single_pixel_size()


class _CTFFreeImages(CroppedImages):
    """Particle spectra with a CTF of one (``--no-ctf``)."""

    def __init__(self, particles: ParticleSet, device: torch.device | str = "cpu") -> None:
        self.particles, self.device = particles, torch.device(device)
        self.full_box = self.box = particles.box
        self.pixel_size = particles.single_pixel_size()

    def read(self, idx: np.ndarray) -> tuple[Tensor, Tensor]:
        images = torch.as_tensor(self.particles.images.read(idx), dtype=torch.float32, device=self.device)
        spectra = image_spectra(images)
        return spectra, torch.ones(spectra.shape, dtype=torch.float32, device=self.device)


def particle_images(particles: ParticleSet, options: Class2DOptions) -> CroppedImages:
    """The reader of the particles' spectra and CTFs (all-ones CTFs without ``use_ctf``)."""
    if options.use_ctf:
        return CroppedImages(particles, device=options.device)
    return _CTFFreeImages(particles, options.device)


def check_images(particles: ParticleSet, batch_size: int = 1024) -> None:
    """Read every image once, so that unreadable stacks and NaN or infinite pixels (refused by the stack
    reader with the particle's number) stop the run before it starts."""
    for part in batches(len(particles), batch_size):
        particles.images.read(np.arange(len(particles))[part])


# ---- one M-step's accumulators ------------------------------------------------------------------------
class _Sums:
    """Per pose (class x angle) rows of ``sum w CTF X`` (centred, unrotated) and ``sum w CTF^2`` at the update
    points, rotated into the classes' grids once per iteration (:meth:`grids`); plus the class posteriors and
    the residual noise at the best poses."""

    def __init__(self, classes: int, rotated: RotatedPoints, device: torch.device) -> None:
        rows, m = classes * rotated.n_angles, rotated.points.size
        self.classes, self.rotated = classes, rotated
        self.numerator = torch.zeros(rows, m, dtype=torch.complex64, device=device)
        self.weight = torch.zeros(rows, m, dtype=torch.float32, device=device)
        self.class_weight = torch.zeros(classes, dtype=torch.float64, device=device)
        self.residual = ResidualShells(rotated.box, device)

    def add(self, values: Tensor, ctf: Tensor, poses: Tensor, weights: Tensor) -> None:
        """Add centred image values and CTFs (B, M) at the update points, at ``poses`` (B,) = class x P +
        angle, with ``weights`` (B,)."""
        w = weights[:, None].to(ctf.dtype)
        self.numerator.index_add_(0, poses, values * (w * ctf))
        self.weight.index_add_(0, poses, w * ctf * ctf)
        self.class_weight.index_add_(0, poses // self.rotated.n_angles, weights.to(torch.float64))

    def grids(self) -> tuple[Tensor, Tensor]:
        """(numerator (K, D, D) complex, weight (K, D, D)) on the classes' grids, Hermitian-completed."""
        box, p = self.rotated.box, self.rotated.n_angles
        poses = torch.arange(self.numerator.shape[0], device=self.numerator.device)
        numerator = torch.zeros(self.classes, box, box, dtype=torch.complex64, device=poses.device)
        weight = torch.zeros(self.classes, box, box, dtype=torch.float32, device=poses.device)
        self.rotated.insert(numerator, self.numerator, poses // p, poses % p)
        self.rotated.insert(weight, self.weight, poses // p, poses % p)
        return hermitian_complete(numerator, weight)


@dataclass
class _Geometry:
    """The fixed grids of a run: angles, update points and their rotations, shells, mask."""

    angles: Tensor  # (P,) degrees
    update: RotatedPoints
    shells: Tensor  # (D, D) shell index
    mask: Tensor  # (D, D) soft circular mask
    pixel_size: float
    box: int

    @classmethod
    def of(cls, particles: ParticleSet, options: Class2DOptions) -> _Geometry:
        device = torch.device(options.device)
        box, pixel_size = particles.box, particles.single_pixel_size()
        angles = inplane_angles(options.psi_step_deg, device)
        update = RotatedPoints(fourier_points(box, max_radius(box), device), angles)
        diameter_px = 0.9 * box if options.diameter_A is None else options.diameter_A / pixel_size
        radius = min(diameter_px / 2, box / 2 - 1) - MASK_EDGE_PX
        mask = soft_circular_mask(box, max(radius, 1.0), MASK_EDGE_PX, device=device)
        return cls(angles, update, shell_index_2d(box, device), mask, pixel_size, box)

    def radius_for(self, resolution_A: float) -> float:
        return self.box * self.pixel_size / resolution_A


# ---- the M-step -------------------------------------------------------------------------------------------
def _shell_mean(values: Tensor, shells: Tensor, box: int) -> Tensor:
    """Mean over each shell 0 .. D // 2 of (K, D, D) values -> (K, D // 2 + 1)."""
    n = box // 2 + 1
    counts = shell_sum(torch.ones_like(values[0]), shells, n).clamp(min=1)
    return shell_sum(values, shells, n) / counts


def _centre_of_mass(images: Tensor) -> Tensor:
    """Centre of mass (K, 2) = (x, y) px from pixel ``D // 2`` of the positive part of real images (K, D, D)."""
    box = images.shape[-1]
    c = torch.arange(box, dtype=images.dtype, device=images.device) - box // 2
    positive = images.clamp(min=0)
    total = positive.sum((-2, -1)).clamp(min=torch.finfo(images.dtype).tiny)
    return torch.stack([(positive.sum(-2) * c).sum(-1) / total, (positive.sum(-1) * c).sum(-1) / total], -1)


@dataclass
class _Update:
    references: Tensor  # (K, D, D) real, masked, centred
    tau2: Tensor  # (K, n_shells)
    resolution_A: Tensor  # (K,)
    ssnr_radius: Tensor  # (K,) last shell with SSNR >= 1
    centring: Tensor  # (K, 2) px the averages were moved by (content at c now at 0)


def _maximise(sums: _Sums, sigma2: Tensor, tau2: Tensor | None, geometry: _Geometry, options: Class2DOptions,
              ) -> _Update:
    """New class averages from the accumulators (module docstring); ``tau2`` None: no regularisation."""
    box, shells = geometry.box, geometry.shells
    numerator, weight = sums.grids()
    inside = (radius_grid(box, 2, numerator.device) <= max_radius(box)) & (shells > 0)
    noise = sigma2.to(weight)[shells.clamp(max=box // 2)]  # (D, D)
    filled = weight > 1e-6 * weight.amax((-2, -1), keepdim=True).clamp(min=1e-30)
    raw = torch.where(filled, numerator / weight.clamp(min=1e-30), torch.zeros_like(numerator))
    excess = torch.where(filled & inside, raw.abs() ** 2 - noise / weight.clamp(min=1e-30), torch.zeros_like(weight))
    signal = _shell_mean(excess, shells, box).clamp(min=0)
    mean_weight = _shell_mean(torch.where(inside, weight, torch.zeros_like(weight)), shells, box)
    ssnr = signal * mean_weight / sigma2.to(signal)[None]
    below = (ssnr < 1.0) & (torch.arange(ssnr.shape[1], device=ssnr.device) > 0)
    first_below = torch.where(below.any(1), below.float().argmax(1), torch.full_like(below[:, 0], ssnr.shape[1],
                                                                                   dtype=torch.long))
    ssnr_radius = (first_below - 1).clamp(min=0)
    if tau2 is None:
        regulariser = torch.zeros_like(weight)
    else:
        regulariser = noise / tau2.to(weight).clamp(min=1e-20)[:, shells.clamp(max=box // 2)]
    spectra = torch.where(inside, numerator / (weight + regulariser).clamp(min=1e-30), torch.zeros_like(numerator))
    images = ifft2c(spectra).real * geometry.mask
    centring = _centre_of_mass(images) if options.center else torch.zeros(len(images), 2, device=images.device)
    if options.center:
        images = ifft2c(translate_ft(fft2c(images), -centring)).real * geometry.mask
    resolution = box * geometry.pixel_size / ssnr_radius.clamp(min=1).to(torch.float64)
    return _Update(images, (options.tau_fudge * signal).float(), resolution, ssnr_radius, centring)


# ---- start ----------------------------------------------------------------------------------------------
def initial_state(particles: ParticleSet, images: CroppedImages, options: Class2DOptions,
                  progress: ProgressFactory | None = None) -> Class2DState:
    """Random class and in-plane angle per particle, averaged (module docstring); first noise estimate."""
    geometry = _Geometry.of(particles, options)
    n, k = len(particles), options.classes
    rng = np.random.default_rng(options.seed)
    classes = rng.permutation(np.arange(n) % k)
    angle_index = rng.integers(0, len(geometry.angles), n)
    origins = particles.shifts_px.astype(np.float64)
    sigma2 = noise_spectrum(images, np.arange(n), NOISE_SAMPLE, options.seed, options.batch_size)
    device = geometry.mask.device
    sums = _Sums(k, geometry.update, device)
    points = geometry.update.points
    with progress("initial averages", n) if progress else nullcontext(None) as step:
        for part in batches(n, options.batch_size):
            idx = np.arange(n)[part]
            spectra, ctf = images.read(idx)
            centred = translate_ft(spectra, torch.as_tensor(origins[idx], dtype=torch.float32, device=device))
            poses = classes[idx] * len(geometry.angles) + angle_index[idx]
            sums.add(points.gather(centred), points.gather(ctf), torch.as_tensor(poses, device=device),
                     torch.ones(len(idx), device=device))
            if step:
                step(len(idx))
    update = _maximise(sums, sigma2, None, geometry, options)
    radius = geometry.radius_for(options.initial_resolution_A)
    return Class2DState(
        iteration=0, references=update.references.cpu().numpy(), sigma2=sigma2.cpu().numpy(),
        tau2=update.tau2.cpu().numpy(), priors=np.full(k, 1.0 / k), sigma_offset_px=max(options.offset_range_px / 2,
                                                                                       1.0),
        radius=_clamp_radius(radius, geometry, options), classes=classes.astype(np.int64),
        psi_deg=geometry.angles.cpu().numpy()[angle_index].astype(np.float64), origins_px=origins,
        max_posterior=np.zeros(n), resolution_A=update.resolution_A.cpu().numpy())


def _clamp_radius(radius: float, geometry: _Geometry, options: Class2DOptions) -> float:
    low = geometry.radius_for(options.initial_resolution_A)
    high = max_radius(geometry.box) if options.max_resolution_A is None else geometry.radius_for(
        options.max_resolution_A)
    return float(min(max(radius, low, 2.0), high, max_radius(geometry.box)))


# ---- one iteration -----------------------------------------------------------------------------------------
@dataclass
class _Search:
    """What the E-step of one iteration compares: rotated references at the search points, shift grid and its
    phase ramps (search and update points), priors."""

    spectra: Tensor  # (K, D, D) class averages' centred spectra
    rotated: RotatedPoints  # at the search points
    slices: Tensor  # (K P, M) rotated references, index class * P + angle
    offsets: Tensor  # (T, 2) px
    phases: Tensor  # (T, M)
    phases_update: Tensor  # (T, M_update)
    sigma2: Tensor
    log_prior: Tensor  # (K P,)
    variance_offset: float
    keep: int


def _search(state: Class2DState, geometry: _Geometry, options: Class2DOptions) -> _Search:
    device, k, p = geometry.mask.device, options.classes, len(geometry.angles)
    spectra = fft2c(torch.as_tensor(state.references, device=device))
    rotated = RotatedPoints(fourier_points(geometry.box, state.radius, device), geometry.angles)
    wide = state.iteration < options.global_iterations
    step = max(options.offset_step_px, shift_step_for_radius(geometry.box, state.radius))
    offsets = shift_grid(options.offset_range_px if wide else min(options.local_range_px, options.offset_range_px),
                         step, device)
    log_prior = torch.log(torch.as_tensor(state.priors, device=device).clamp(min=MIN_PRIOR)).float()
    return _Search(spectra, rotated, rotated.sample(spectra).reshape(k * p, -1), offsets,
                   shift_phases(rotated.points, offsets), shift_phases(geometry.update.points, offsets),
                   torch.as_tensor(state.sigma2, device=device), log_prior.repeat_interleave(p),
                   state.sigma_offset_px**2, min(options.keep, k * p))


@dataclass
class _BestPoses:
    """Per particle: most probable class (0-based), in-plane angle (degrees), origin (px), its posterior."""

    classes: np.ndarray
    psi_deg: np.ndarray
    origins_px: np.ndarray
    max_posterior: np.ndarray



def _expect(spectra: Tensor, ctf: Tensor, origins: Tensor, search: _Search, geometry: _Geometry, sums: _Sums,
            ) -> tuple[Tensor, Tensor, Tensor]:
    """E-step of one batch (B images at their current ``origins`` (B, 2) px), adding its kept poses to ``sums``;
    returns the best pose (class x P + angle), its origin (B, 2) and posterior."""
    centred = translate_ft(spectra, origins)
    images = prepare(centred, ctf, search.sigma2, search.rotated.points)
    scores, shift = best_shift_shared(images, search.slices, search.phases, "likelihood")  # (B, K P)
    total = origins[:, None, :] + search.offsets[shift]  # (B, K P, 2)
    scores = scores + search.log_prior - (total**2).sum(-1) / (2 * search.variance_offset)
    top, pose = scores.topk(search.keep, dim=1)
    best = torch.exp(top[:, 0] - torch.logsumexp(scores, 1))
    shift = shift.gather(1, pose)
    points = geometry.update.points
    values, ctf_values = points.gather(centred), points.gather(ctf)
    sums.add((values[:, None, :] * search.phases_update[shift]).reshape(-1, values.shape[-1]),
             ctf_values.repeat_interleave(search.keep, 0), pose.reshape(-1), torch.softmax(top, 1).reshape(-1))
    p = len(geometry.angles)
    model = geometry.update.sample_at(search.spectra, pose[:, 0] // p, pose[:, 0] % p)
    sums.residual.add(values, ctf_values, model, search.phases_update[shift[:, 0]], points)
    rows = torch.arange(len(spectra), device=total.device)
    return pose[:, 0], total[rows, pose[:, 0]], best


def iterate(particles: ParticleSet, images: CroppedImages, state: Class2DState, options: Class2DOptions,
            progress: ProgressFactory | None = None) -> Class2DState:
    """One E- and M-step (over :meth:`Class2DOptions.members`); returns the next state."""
    started = time.perf_counter()
    geometry = _Geometry.of(particles, options)
    device, box, k, p = geometry.mask.device, geometry.box, options.classes, len(geometry.angles)
    members = options.members(state.iteration, len(particles))
    search = _search(state, geometry, options)
    batch = max(1, min(options.batch_size, options.score_budget // (len(search.offsets) * search.slices.shape[0])))
    sums = _Sums(k, geometry.update, device)
    poses = _BestPoses(state.classes.copy(), state.psi_deg.copy(), state.origins_px.copy(), state.max_posterior.copy())
    with progress(f"iteration {state.iteration + 1}", len(members)) if progress else nullcontext(None) as step:
        for part in batches(len(members), batch):
            idx = members[part]
            spectra, ctf = images.read(idx)
            origins = torch.as_tensor(state.origins_px[idx], dtype=torch.float32, device=device)
            pose, origin, best = _expect(spectra, ctf, origins, search, geometry, sums)
            poses.classes[idx] = (pose // p).cpu().numpy()
            poses.psi_deg[idx] = geometry.angles[pose % p].cpu().numpy()
            poses.origins_px[idx] = origin.cpu().numpy()
            poses.max_posterior[idx] = best.cpu().numpy()
            if step:
                step(len(idx))
    new_sigma2 = sums.residual.noise(1.0)
    update = _maximise(sums, new_sigma2, torch.as_tensor(state.tau2, device=device), geometry, options)
    if options.center:
        poses.origins_px -= _rotate(update.centring.cpu().numpy()[poses.classes], poses.psi_deg)
    populated = np.bincount(poses.classes[members], minlength=k) > 0
    best_radius = float(update.ssnr_radius.cpu().numpy()[populated].max())
    changed = float(np.mean(poses.classes[members] != state.classes[members]))
    history = [*state.history, {
        "iteration": state.iteration + 1, "particles": len(members),
        "search_resolution_A": box * geometry.pixel_size / state.radius, "shifts": len(search.offsets),
        "best_class_resolution_A": box * geometry.pixel_size / max(best_radius, 1.0), "changed_class": changed,
        "mean_max_posterior": float(poses.max_posterior[members].mean()),
        "populated_classes": int(populated.sum()), "seconds": time.perf_counter() - started}]
    log.info("iteration %d: %d particles, search to %.1f Å, %d shifts, %.1f%% changed class, %d populated classes, "
             "%.1f s", state.iteration + 1, len(members), history[-1]["search_resolution_A"], len(search.offsets),
             100 * changed, populated.sum(), history[-1]["seconds"])
    rms_origin = float(np.sqrt(np.mean(np.sum(poses.origins_px[members] ** 2, 1)) / 2))
    radius = min(best_radius + RADIUS_MARGIN, MAX_RADIUS_GROWTH * state.radius)
    return Class2DState(
        iteration=state.iteration + 1, references=update.references.cpu().numpy(),
        sigma2=new_sigma2.cpu().numpy(), tau2=update.tau2.cpu().numpy(),
        priors=(sums.class_weight / sums.class_weight.sum()).cpu().numpy(), sigma_offset_px=max(rms_origin, 1.0),
        radius=_clamp_radius(radius, geometry, options), classes=poses.classes, psi_deg=poses.psi_deg,
        origins_px=poses.origins_px, max_posterior=poses.max_posterior,
        resolution_A=update.resolution_A.cpu().numpy(), history=history)


def _rotate(vectors: np.ndarray, psi_deg: np.ndarray) -> np.ndarray:
    """``R_psi v`` (N, 2) for in-plane angles (N,) (:func:`~vitreous.classify.inplane.inplane_matrices`)."""
    rot = inplane_matrices(torch.as_tensor(psi_deg, dtype=torch.float64)).numpy()
    return np.einsum("nij,nj->ni", rot, vectors)


def classify(particles: ParticleSet, options: Class2DOptions, state: Class2DState | None = None,
             on_iteration: Callable[[Class2DState], None] | None = None,
             progress: ProgressFactory | None = None) -> Class2DState:
    """Run (or continue from ``state``) the classification to ``options.iterations`` iterations."""
    check_inputs(particles, options)
    images = particle_images(particles, options)
    if state is None:
        state = initial_state(particles, images, options, progress)
    while state.iteration < options.iterations:
        state = iterate(particles, images, state, options, progress)
        if on_iteration is not None:
            on_iteration(state)
    return state


def classified_particles(particles: ParticleSet, state: Class2DState) -> ParticleSet:
    """The particles with rlnClassNumber (1-based), rlnAnglePsi, rlnOriginX/YAngst and
    rlnMaxValueProbDistribution of their best pose; other columns kept."""
    pixel = particles.pixel_size
    return particles.with_columns(
        rlnClassNumber=state.classes + 1, rlnAnglePsi=state.psi_deg, rlnOriginXAngst=state.origins_px[:, 0] * pixel,
        rlnOriginYAngst=state.origins_px[:, 1] * pixel, rlnMaxValueProbDistribution=state.max_posterior)


__all__ = ["Class2DOptions", "Class2DState", "check_images", "check_inputs", "classified_particles", "classify",
           "initial_state", "iterate", "particle_images"]
