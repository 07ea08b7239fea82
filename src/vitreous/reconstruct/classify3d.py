"""3D classification of particles with known poses: expectation-maximisation over class assignments, with CTF.

This is RELION's 3D classification without alignment (``relion_refine --skip_align``): orientations and
origins are taken from the metadata and only the class of each particle is estimated.

Model: the centred Fourier transform of image i (pose ``A_i``, origin ``s_i`` px, CTF ``c_i``), moved by
``+s_i`` so the particle sits at pixel ``D // 2``, is ``X_i = c_i S_k(A_i) + N_i`` if it shows class k, where
``S_k(A)`` is the central slice of class map k (:class:`~vitreous.physics.projection.Projector`) and ``N_i``
is complex Gaussian noise with variance ``sigma2(s)`` per Fourier shell ``s`` (``E|N(f)|^2``, unnormalised
``fft2c`` units).

E-step: ``log L_ik = -1/2 sum_f |X_i(f) - c_i(f) S_k(A_i)(f)|^2 / sigma2(shell(f))`` over the full plane (both
members of each Hermitian pair, hence 1/2) for shells ``1 .. limit`` (DC left out); posterior
``p_ik = pi_k L_ik / sum_j pi_j L_ij``.  Each particle is compared with the class maps of the *other* half
set (``rlnRandomSubset``), so that its own noise, part of the map of the class it was in, does not count in
favour of that class: on 400 simulated particles of two proteins at SNR 0.1 (4 seeds), comparing particles
with maps that hold them left 1-3% of them in the wrong class (adjusted Rand index 0.97-0.98, against
0.99-1.0).  The halves go in turn: half-1 particles against the half-2 maps of the last iteration, then
half-2 particles against the half-1 maps just rebuilt from them (Wiener-filtered with the last iteration's
FSC), which keeps the class labels of the two halves one chain.

M-step: for every class and half set, CTF-weighted back-projection with weights ``p_ik`` (numerator
``sum p_ik c_i X_i``, weights ``sum p_ik c_i^2``; weights below ``MIN_POSTERIOR`` are skipped), regularised
by the FSC-derived Wiener filter of :class:`~vitreous.reconstruct.backproject.HalfSetBackprojector`;
``pi_k = mean_i p_ik``; ``sigma2(s)`` is the posterior-weighted mean residual power per shell; the next
E-step uses shells up to the best class resolution (FSC 0.143 of its half maps) plus ``LIMIT_MARGIN``.

Start: K maps from the reference, low-passed to ``initial_lowpass`` Å and scaled to the images (least
squares), each plus an independent random perturbation (white noise low-passed to the same resolution,
``perturbation`` times the reference's norm); noise spectrum from the residuals of a sample of particles
against the scaled reference.  The first E-step is limited to ``initial_lowpass``.  Iterations stop when
at most ``tolerance`` of the particles change their most probable class, or after ``iterations``.

Under ``torchrun`` (``ranks``) each process handles its shard of each half set (and of the noise sample); the
back-projection accumulators (each half as soon as it is complete), the noise sums and the posteriors are summed
over the processes, so every rank holds the same state, which covers all particles (checkpoints resume with any
number of processes).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vitreous.analysis.fsc import fsc_curve, resolution_at
from vitreous.data.particles import ParticleSet
from vitreous.distributed.ranks import SINGLE, Ranks
from vitreous.errors import InputError
from vitreous.physics.ctf import CTFParams, compute_ctf
from vitreous.physics.fourier import (
    fft2c,
    fourier_crop,
    fourier_pad,
    lowpass,
    radius_grid,
    shell_index_2d,
    shell_sum,
    translate_ft,
    window,
)
from vitreous.physics.projection import Backprojector, Projector, padded_to_volume
from vitreous.reconstruct.backproject import (
    MIN_SNR,
    HalfSetBackprojector,
    all_reduce_accumulators,
    assign_halves,
    batches,
)

log = logging.getLogger(__name__)

MIN_POSTERIOR = 1e-3  # posteriors below this are not back-projected (at most K x 0.001 of a weight is lost)
LIMIT_MARGIN = 2  # Fourier shells beyond the best class resolution used by the E-step
NOISE_SAMPLE = 1000  # particles used for the initial scale and noise spectrum
MIN_PRIOR = 1e-8  # keeps log(pi_k) finite for an emptied class


# ---- input checks and the reference --------------------------------------------------------------------
def check_inputs(particles: ParticleSet, classes: int) -> None:
    """InputError unless ``particles`` can be classified into ``classes`` classes (images, poses, CTF, K)."""
    where = particles.source or None
    if classes < 1:
        raise InputError(None, f"--classes must be at least 1, not {classes}", "ask for 1 or more classes")
    if classes > len(particles):
        raise InputError(where, f"{classes} classes for only {len(particles)} particles",
                         "ask for fewer classes than particles")
    if particles.images is None:
        raise InputError(where, "no particle images", "pass --datadir with the stacks")
    if not particles.has_poses:
        raise InputError(where, "particles have no poses (rlnAngleRot/Tilt/Psi); classification here keeps "
                         "the poses fixed", "run vitreous refine first")
    if not particles.has_ctf:
        raise InputError(where, "particles have no CTF parameters (rlnDefocusU/V, rlnVoltage, "
                         "rlnSphericalAberration)", "add the CTF columns and optics table")
    counts = np.bincount(assign_halves(particles), minlength=2)
    if counts.min() == 0:
        raise InputError(where, f"a half set is empty (particles per half: {counts.tolist()})",
                         "give particles to both halves (rlnRandomSubset 1 and 2) or remove the column")


def check_options(*, iterations: int, initial_lowpass: float, tolerance: float, batch_size: int,
                  oversampling: int = 2, perturbation: float = 0.1) -> None:
    """InputError for option values the classification cannot use."""
    bad = []
    if iterations < 1:
        bad.append(f"--iterations {iterations} (need >= 1)")
    if not initial_lowpass > 0:
        bad.append(f"--initial-lowpass {initial_lowpass:g} Å (need > 0)")
    if not 0 <= tolerance < 1:
        bad.append(f"--tolerance {tolerance:g} (need 0 <= t < 1)")
    if batch_size < 1:
        bad.append(f"--batch-size {batch_size} (need >= 1)")
    if oversampling < 1:
        bad.append(f"--oversampling {oversampling} (need >= 1)")
    if not perturbation >= 0:
        bad.append(f"perturbation {perturbation:g} (need >= 0)")
    if bad:
        raise InputError(None, "invalid " + ", ".join(bad), "fix the options")


def _resample_size(box: int, ref_apix: float, apix: float, tolerance: float = 2e-3) -> tuple[int, int] | None:
    """(padded reference box B >= ``box``, resampled size B * ref_apix / apix) with that size within
    ``tolerance`` (relative) of an integer, trying B = box .. 4 box; None if none is."""
    for padded in range(box, 4 * box + 1):
        size = padded * ref_apix / apix
        if size >= 8 and abs(size - round(size)) <= tolerance * size:
            return padded, int(round(size))
    return None


def match_reference(volume: np.ndarray, ref_apix: float, box: int, apix: float,
                    source: str | None = None) -> tuple[np.ndarray, list[str]]:
    """The reference (D_r, D_r, D_r) at voxel ``ref_apix`` Å resampled to the particles' ``box`` and
    ``apix``: zero-padded, Fourier-cropped or -padded to the pixel size, then windowed to the box (about
    voxel ``D // 2``).  Returns the map and warnings saying what was done; InputError when the pixel sizes
    have no usable ratio.  A voxel size of 0 (unset) is taken to be ``apix``.
    """
    notes = []
    if not ref_apix or ref_apix <= 0:
        notes.append(f"the reference has no voxel size in its header; taken as the particles' {apix:g} Å")
        ref_apix = apix
    vol = torch.as_tensor(np.asarray(volume, np.float32))
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(source, f"the reference must be a cubic map, not {tuple(vol.shape)}",
                         "give a cubic map")
    size = vol.shape[-1]
    if abs(ref_apix - apix) > 1e-3 * apix:
        found = _resample_size(size, ref_apix, apix)
        if found is None:
            raise InputError(source, f"cannot resample the reference from {ref_apix:g} Å to {apix:g} Å per "
                             "voxel by Fourier cropping or padding", "resample it to the particles' pixel size "
                             "first (e.g. relion_image_handler --rescale_angpix)")
        padded, resampled = found
        vol = window(vol, padded, ndim=3)
        vol = (fourier_crop if resampled < padded else fourier_pad)(vol, resampled, ndim=3)
        notes.append(f"the reference ({size} px at {ref_apix:g} Å) was Fourier-resampled to {resampled} px at "
                     f"{padded * ref_apix / resampled:.4g} Å")
        size = resampled
    if size != box:
        notes.append(f"the reference box {size} px was {'cropped' if size > box else 'padded'} to the "
                     f"particles' {box} px")
        vol = window(vol, box, ndim=3)
    return vol.numpy(), notes


# ---- state ------------------------------------------------------------------------------------------------
@dataclass
class ClassificationState:
    """Everything one iteration leaves for the next (and for resuming): CPU tensors / arrays.

    ``iteration`` counts finished iterations (0: initialised).  ``half_maps`` (K, 2, D, D, D) are the
    Wiener-filtered half maps per class, ``maps`` (K, D, D, D) the full maps; ``noise`` (D//2 + 1,) is
    ``sigma2`` per shell; ``posteriors`` (N, K) float32 (None before the first E-step); ``fsc`` (K, D//2+1)
    between each class's half maps; ``history`` one dict per iteration, its ``changed`` the fraction of
    particles whose most probable class changed (NaN in the first iteration).
    """

    iteration: int
    maps: Tensor
    half_maps: Tensor
    noise: Tensor
    priors: Tensor
    limit: int
    posteriors: Tensor | None = None
    fsc: np.ndarray | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    converged: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassificationState:
        return cls(**data)


@dataclass
class ClassificationResult:
    """Final class maps (K, D, D, D) float32, half maps (K, 2, D, D, D), posteriors (N, K), the 1-based most
    probable class (N,) and its posterior (N,), half-map FSC per class (K, D//2+1) at ``frequency`` (1/Å),
    and the per-iteration history."""

    maps: np.ndarray
    half_maps: np.ndarray
    posteriors: np.ndarray
    class_number: np.ndarray
    max_probability: np.ndarray
    frequency: np.ndarray
    fsc: np.ndarray
    history: list[dict[str, Any]]
    voxel_size: float
    converged: bool


# ---- the algorithm ----------------------------------------------------------------------------------------
class _Data:
    """Per-particle tensors and batched image reads (the images stay on disk)."""

    def __init__(self, particles: ParticleSet, device: torch.device, seed: int) -> None:
        self.particles = particles
        self.device = device
        self.box = particles.box
        self.apix = particles.single_pixel_size()
        self.rotations = torch.as_tensor(particles.rotations, dtype=torch.float32)
        self.shifts = torch.as_tensor(particles.shifts_px, dtype=torch.float32)
        self.halves = torch.as_tensor(assign_halves(particles, seed))
        self.ctf = CTFParams.from_table(particles.ctf_table())
        self.shells = shell_index_2d(self.box, device)
        self.n_shells = self.box // 2 + 1

    def __len__(self) -> int:
        return len(self.particles)

    def batch(self, idx: np.ndarray) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Centred image transforms ``X`` (B, D, D) complex (moved by +origin), CTFs (B, D, D), rotations,
        half indices, on the device."""
        images = torch.as_tensor(self.particles.images.read(idx), device=self.device)
        spectra = translate_ft(fft2c(images), self.shifts[idx].to(self.device))
        ctf = compute_ctf(self.ctf[idx].to(self.device), self.box, self.apix)
        return spectra, ctf, self.rotations[idx].to(self.device), self.halves[idx].to(self.device)


def _shell_weights(data: _Data, noise: Tensor, limit: int) -> Tensor:
    """(D, D) ``1/sigma2(shell)`` for shells 1 .. ``limit``, 0 elsewhere."""
    inverse = torch.where(noise > 0, 1.0 / noise.clamp_min(1e-30), torch.zeros_like(noise))
    inverse[0] = 0.0
    inverse[limit + 1:] = 0.0
    return inverse.to(data.device, torch.float32)[data.shells.clamp(max=data.n_shells - 1)] * (
        data.shells < data.n_shells)


def _initial_state(data: _Data, reference: np.ndarray, classes: int, initial_lowpass: float,
                   perturbation: float, seed: int, batch_size: int, ranks: Ranks) -> ClassificationState:
    """Scaled, low-passed reference plus independent perturbations; noise from a sample's residuals."""
    box, apix, device = data.box, data.apix, data.device
    ref = lowpass(torch.as_tensor(reference, dtype=torch.float32, device=device), initial_lowpass, apix, ndim=3)
    limit = max(1, min(box // 2, int(math.floor(box * apix / initial_lowpass))))
    sample = np.sort(np.random.default_rng(seed).choice(len(data), min(len(data), NOISE_SAMPLE), replace=False))
    projector = Projector(ref)
    sums = torch.zeros(3, data.n_shells, dtype=torch.float64, device=device)  # |X|^2, Re(X* M), |M|^2 per shell
    mine = ranks.shard(sample)
    for part in batches(len(mine), batch_size):
        spectra, ctf, rotations, _ = data.batch(mine[part])
        model = ctf * projector.slices(rotations)
        terms = torch.stack([spectra.abs() ** 2, (spectra.conj() * model).real, model.abs() ** 2], dim=1)
        sums += shell_sum(terms, data.shells, data.n_shells).sum(0).double()
    ranks.all_reduce(sums)
    shells = torch.arange(data.n_shells, device=device)
    used = (shells >= 1) & (shells <= limit)
    cross, power = float(sums[1, used].sum()), float(sums[2, used].sum())
    if power <= 0:
        raise InputError(None, f"the reference has no signal below {initial_lowpass:g} Å",
                         "give a reference map of the particles (or a larger --initial-lowpass)")
    scale = cross / power
    if scale <= 0:
        log.warning("the reference anti-correlates with the images (scale %.3g): is its contrast inverted?",
                    scale)
        scale = abs(scale)
    counts = shell_sum(torch.ones_like(data.shells, dtype=torch.float64), data.shells, data.n_shells)
    total = sums[0] - 2 * scale * sums[1] + scale**2 * sums[2]
    noise = (total / (counts * len(sample))).cpu()
    log.info("reference scaled by %.4g to the images; first E-step to %.1f Å (shell %d)", scale, initial_lowpass,
             limit)
    generator = torch.Generator().manual_seed(seed)
    maps = []
    ref = (scale * ref).cpu()
    for _ in range(classes):
        if classes == 1 or perturbation == 0:
            maps.append(ref.clone())
            continue
        noise_map = lowpass(torch.randn(ref.shape, generator=generator), initial_lowpass, apix, ndim=3)
        maps.append(ref + noise_map * (perturbation * ref.norm() / noise_map.norm()))
    maps_t = torch.stack(maps)
    return ClassificationState(iteration=0, maps=maps_t, half_maps=torch.stack([maps_t, maps_t], dim=1),
                               noise=noise, priors=torch.full((classes,), 1.0 / classes, dtype=torch.float64),
                               limit=limit)


def _wiener_map(backprojector: Backprojector, fsc: np.ndarray, box: int, oversampling: int) -> Tensor:
    """``N / (W + <W>_shell / SNR_shell)`` of one finished half-set accumulator, ``SNR = FSC / (1 - FSC)``
    (at least ``MIN_SNR``), as a real (D, D, D) map on the accumulator's device."""
    numerator, weights = backprojector.result(inplace=True)
    device = numerator.device
    shells = torch.round(radius_grid(numerator.shape[-1], 3, device) / oversampling).long()
    inside = shells <= box // 2
    fsc_t = torch.as_tensor(np.clip(fsc, 0.0, 0.999), dtype=weights.dtype, device=device)
    snr = torch.clamp(fsc_t / (1 - fsc_t), min=MIN_SNR)
    index = shells.clamp(max=len(snr) - 1)
    total = torch.zeros(len(snr), dtype=weights.dtype, device=device).index_add_(0, index[inside], weights[inside])
    count = torch.bincount(index[inside], minlength=len(snr)).to(weights.dtype)
    regulariser = (total / count.clamp(min=1) / snr)[index]
    spectrum = torch.where(inside, numerator / (weights + regulariser), torch.zeros_like(numerator))
    return padded_to_volume(spectrum, box, oversampling).float()


def _iterate(data: _Data, state: ClassificationState, batch_size: int, oversampling: int,
             progress: Callable[[int], None] | None, ranks: Ranks) -> ClassificationState:
    """One E-step (posteriors) and M-step (new maps, priors, noise, E-step limit), half set by half set:
    half-1 particles against the half-2 maps of the last iteration, then half-2 particles against the
    half-1 maps just rebuilt from them (regularised with the last iteration's FSC)."""
    K, device = state.maps.shape[0], data.device
    weights2d = _shell_weights(data, state.noise, state.limit)
    log_prior = torch.log(state.priors.clamp_min(MIN_PRIOR)).to(device)
    accumulators = [HalfSetBackprojector(data.box, oversampling, device) for _ in range(K)]
    posteriors = torch.zeros(len(data), K, dtype=torch.float32)
    noise_total = torch.zeros(data.n_shells, dtype=torch.float64, device=device)
    compare = [state.half_maps[k, 1].to(device) for k in range(K)]  # what half-1 particles are compared with
    if state.fsc is not None:
        fsc = state.fsc
    else:  # before the first M-step: trust the start up to the first E-step's resolution
        fsc = np.where(np.arange(data.n_shells) <= state.limit, 1.0, 0.0)[None].repeat(K, 0)
    rows = []
    for h in range(2):
        projectors = [Projector(volume) for volume in compare]
        members = ranks.shard(np.nonzero(data.halves.numpy() == h)[0])
        rows.append(members)
        for batch in batches(len(members), batch_size):
            idx = members[batch]
            spectra, ctf, rotations, _ = data.batch(idx)
            loglik = torch.zeros(len(idx), K, dtype=torch.float64, device=device)
            residual_power = torch.zeros(len(idx), K, data.n_shells, dtype=torch.float64, device=device)
            for k in range(K):
                power = (spectra - ctf * projectors[k].slices(rotations)).abs() ** 2
                loglik[:, k] = -0.5 * (power * weights2d).sum(dim=(-2, -1), dtype=torch.float64)
                residual_power[:, k] = shell_sum(power, data.shells, data.n_shells).double()
            post = torch.softmax(loglik + log_prior, dim=1)
            noise_total += (post[:, :, None] * residual_power).sum(dim=(0, 1))
            posteriors[idx] = post.float().cpu()
            for k in range(K):
                w = post[:, k].float()
                sel = torch.nonzero(w >= MIN_POSTERIOR).squeeze(1)
                if len(sel) > 0:
                    wk, ck = w[sel, None, None], ctf[sel]
                    accumulators[k].halves[h].insert(spectra[sel] * (wk * ck), wk * ck**2, rotations[sel])
            if progress is not None:
                progress(len(idx))
        for acc in accumulators:
            all_reduce_accumulators(acc.halves[h], ranks)
        if h == 0:  # half-2 particles are compared with the new half-1 maps
            compare = [_wiener_map(accumulators[k].halves[0], fsc[k], data.box, oversampling)
                       if accumulators[k].halves[0].count > 0 else state.half_maps[k, 0].to(device)
                       for k in range(K)]
    ranks.all_reduce(noise_total)
    posteriors = torch.from_numpy(ranks.gather_rows(posteriors.numpy(), np.concatenate(rows)))
    counts = shell_sum(torch.ones_like(data.shells, dtype=torch.float64), data.shells, data.n_shells)
    noise = (noise_total / (counts * len(data))).cpu()
    results = [None if min(h.count for h in acc.halves) == 0 else acc.reconstruct(data.apix)
               for acc in accumulators]
    maps, half_maps = state.maps.clone(), state.half_maps.clone()
    fsc = np.zeros((K, data.n_shells)) if state.fsc is None else state.fsc.copy()
    resolutions = []
    for k, result in enumerate(results):
        if result is None:
            log.warning("class %d is empty in a half set: its map is kept from the previous iteration", k + 1)
            resolutions.append(math.nan)
            continue
        maps[k] = torch.from_numpy(result.full)
        half_maps[k] = torch.from_numpy(np.stack([result.half1, result.half2]))
        fsc[k] = result.fsc
        resolutions.append(resolution_at(result.frequency, result.fsc, 0.143))
    best = [data.box * data.apix / r for r in resolutions if math.isfinite(r) and r > 0]
    limit = min(data.box // 2, int(math.floor(max(best, default=state.limit))) + LIMIT_MARGIN)
    new_class = posteriors.argmax(1)
    changed = math.nan if state.posteriors is None else float((new_class != state.posteriors.argmax(1)).float().mean())
    sizes = posteriors.sum(0)
    record = {"iteration": state.iteration + 1, "changed": changed, "estep_limit_A": data.box * data.apix /
              state.limit, "sizes": sizes.tolist(), "counts": torch.bincount(new_class, minlength=K).tolist(),
              "resolution_A": resolutions}
    log.info("iteration %d: %s; sizes %s; class resolutions %s Å; E-step used %.1f Å", record["iteration"],
             "first assignment" if math.isnan(changed) else f"{100 * changed:.2f}% changed class",
             ", ".join(f"{s:.0f}" for s in sizes.tolist()), ", ".join(f"{r:.2f}" for r in resolutions),
             record["estep_limit_A"])
    return ClassificationState(iteration=state.iteration + 1, maps=maps, half_maps=half_maps, noise=noise,
                               priors=(sizes / len(data)).double(), limit=limit, posteriors=posteriors, fsc=fsc,
                               history=[*state.history, record])


def classify3d(particles: ParticleSet, reference: np.ndarray, classes: int, *, iterations: int = 25,
               initial_lowpass: float = 30.0, perturbation: float = 0.1, tolerance: float = 0.002,
               batch_size: int = 512, oversampling: int = 2, device: str | torch.device = "cpu", seed: int = 0,
               state: ClassificationState | dict[str, Any] | None = None,
               on_state: Callable[[ClassificationState], None] | None = None,
               progress: Callable[[int], None] | None = None, ranks: Ranks = SINGLE) -> ClassificationResult:
    """Classify particles (poses and CTF known) into ``classes`` 3D classes; see the module docstring.

    ``reference`` is a (D, D, D) map at the particles' box and pixel size (:func:`match_reference`).
    ``state`` resumes from a saved :class:`ClassificationState` (or its ``to_dict()``); ``on_state`` is
    called with the state after initialisation and after every iteration (to checkpoint it);
    ``progress(n)`` after every batch of n particles (this rank's, under ``torchrun``: see the module
    docstring; every rank returns the same result).
    """
    check_inputs(particles, classes)
    check_options(iterations=iterations, initial_lowpass=initial_lowpass, tolerance=tolerance,
                  batch_size=batch_size, oversampling=oversampling, perturbation=perturbation)
    box = particles.box
    if tuple(np.shape(reference)) != (box,) * 3:
        raise ValueError(f"reference of shape {np.shape(reference)} for particles of box {box}: use "
                         "match_reference first")
    data = _Data(particles, torch.device(device), seed)
    if isinstance(state, dict):
        state = ClassificationState.from_dict(state)
    if state is None:
        state = _initial_state(data, reference, classes, initial_lowpass, perturbation, seed, batch_size, ranks)
        if on_state is not None:
            on_state(state)
    elif state.maps.shape != (classes, box, box, box) or (
            state.posteriors is not None and state.posteriors.shape != (len(data), classes)):
        raise InputError(None, "the checkpoint does not match these particles and classes",
                         "rerun with --overwrite")
    while state.iteration < iterations and not state.converged:
        state = _iterate(data, state, batch_size, oversampling, progress, ranks)
        state.converged = state.iteration > 1 and state.history[-1]["changed"] <= tolerance
        if on_state is not None:
            on_state(state)
    if state.converged:
        log.info("converged after %d iterations (at most %.2f%% of the particles changed class)", state.iteration,
                 100 * tolerance)
    assert state.posteriors is not None and state.fsc is not None
    posteriors = state.posteriors.numpy()
    frequency = np.arange(data.n_shells) / (box * data.apix)
    return ClassificationResult(
        maps=state.maps.numpy(), half_maps=state.half_maps.numpy(), posteriors=posteriors,
        class_number=posteriors.argmax(1) + 1, max_probability=posteriors.max(1), frequency=frequency,
        fsc=state.fsc, history=state.history, voxel_size=data.apix, converged=state.converged)


def class_fsc(maps: np.ndarray, voxel_size: float) -> dict[tuple[int, int], np.ndarray]:
    """FSC between every pair of class maps (K, D, D, D): ``{(j, k): fsc}`` for 1-based j < k."""
    out = {}
    for j in range(len(maps)):
        for k in range(j + 1, len(maps)):
            out[(j + 1, k + 1)] = fsc_curve(maps[j], maps[k], voxel_size)[1]
    return out


__all__ = ["ClassificationResult", "ClassificationState", "check_inputs", "check_options", "class_fsc",
           "classify3d", "match_reference"]
