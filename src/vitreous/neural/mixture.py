"""A mixture of K neural fields (Hydra-style compositional heterogeneity), each with its own conformations.

Every particle i is explained by every class k, with its own pose ``(A_ik, s_ik)`` and latent ``z_ik`` in each
class: class k is a :class:`~vitreous.neural.model.VAE` (image encoder -> ``q(z | x)``, latent-conditioned
voxel decoder), and the image likelihood is the mixture::

    log p(x_i) = logsumexp_k [ log pi_k + log p(x_i | k, A_ik, s_ik, z_ik) ]
    log p(x_i | k, ...) = - weight * sum_f |X_i(f) phi(s_ik) - CTF_i(f) S_k(z_ik, A_ik)(f)|^2 / sigma2(shell)

(half-plane Fourier points within the band limit, each standing for its Hermitian mirror; ``phi`` centres
the image by its origin; ``sigma2`` the running per-shell noise of :class:`~vitreous.neural.loss.ShellNoise`).
The loss per image is ``-log p(x_i) + beta sum_k r_ik KL(q(z_ik | x_i) || N(0, I))`` with the class
responsibilities ``r_ik = softmax_k(...)`` (held fixed in the KL term), so every class learns from the
particles it explains; ``pi_k`` is the mean of every particle's latest responsibilities (an EM update, not a
gradient), so a class that explains nothing empties instead of splitting a protein.

Poses come from the global search of :mod:`vitreous.reconstruct.abinit` (the pose-search engine of
:mod:`vitreous.align`), one best pose per class; every ``search_every`` epochs they are refreshed by a local
search of each class against its decoded map (homogeneous classes), or with latents against the maps decoded at
``LATENT_GROUPS`` latent cluster centres, each particle against the map of its own cluster: one map at the prior
mean ``z = 0`` would pull the poses of conformations far from it towards the consensus.  Each particle is searched
once per class whatever the latent dimension, so the search cost grows with K but not with Z.  Rotations are
RELION matrices; origins in pixels of the training box.

Under ``torchrun`` (``ranks``) each rank trains on its share of every batch, as :func:`vitreous.neural.train.train`
(gradients, noise model, the batch's responsibilities and statistics summed over the ranks in one all-reduce per
step, so the per-particle tables and the priors stay the same on every rank), searches the poses of its shard
of the particles, and the searched poses are summed into the full tables on every rank.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vitreous.align import LocalOptions, PoseSearch, ProjectorSlices, shift_phases, shift_step_for_radius
from vitreous.distributed.ranks import SINGLE, Ranks
from vitreous.errors import InputError
from vitreous.neural.data import ParticleBatches
from vitreous.neural.encoder import sample
from vitreous.neural.loss import ShellNoise, kl_divergence
from vitreous.neural.model import VAE, ModelConfig
from vitreous.neural.train import TrainOptions, parameter_groups, reparameterisation_noise, sum_over_ranks
from vitreous.physics.projection import Projector

log = logging.getLogger(__name__)

MIN_PRIOR = 1e-6  # keeps log(pi_k) finite for an emptied class
LATENT_GROUPS = 4  # with latents, the poses of each class are refreshed against maps at this many latent centres


@dataclass(frozen=True)
class MixtureOptions:
    """Training of the mixture: the optimiser settings of :class:`~vitreous.neural.train.TrainOptions`, plus a
    local pose search every ``search_every`` epochs (0: never) with angular step ``search_step_deg``."""

    train: TrainOptions = TrainOptions(epochs=10)
    search_every: int = 2
    search_step_deg: float = 1.875


@dataclass
class MixtureState:
    """Everything needed to continue training; poses (N, K, 3, 3), origins (N, K, 2) px of the training box,
    responsibilities (N, K), class priors (K,)."""

    config: ModelConfig
    scale: float
    models: list[dict[str, Any]]
    rotations: np.ndarray
    shifts_px: np.ndarray
    responsibilities: np.ndarray
    priors: np.ndarray
    optimizer: dict[str, Any] | None = None
    sigma2: Tensor | None = None
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    search_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MixtureState:
        data = dict(data)
        config = data.pop("config")
        return cls(config=config if isinstance(config, ModelConfig) else ModelConfig(**config), **data)


def initial_mixture(data: ParticleBatches, config: ModelConfig, volumes: list[Tensor], rotations: np.ndarray,
                    shifts_px: np.ndarray, responsibilities: np.ndarray, seed: int = 0) -> MixtureState:
    """K fresh models whose base maps are ``volumes`` (K maps at the training box, in normalised-image units),
    with per-class poses (shifts in pixels of the training box) and starting responsibilities."""
    torch.manual_seed(seed)
    models = [VAE(config, volume).state_dict() for volume in volumes]
    priors = np.maximum(responsibilities.mean(0), MIN_PRIOR)
    return MixtureState(config, data.scale, models, rotations.astype(np.float32), shifts_px.astype(np.float32),
                        responsibilities.astype(np.float32), priors / priors.sum())


def _models(state: MixtureState, device: torch.device) -> torch.nn.ModuleList:
    models = torch.nn.ModuleList(VAE(state.config) for _ in state.models).to(device)
    for model, weights in zip(models, state.models, strict=True):
        model.load_state_dict(weights)
    return models


def mixture_terms(models: torch.nn.ModuleList, batch, rotations: Tensor, shifts: Tensor, log_priors: Tensor,
                  noise: ShellNoise, beta: float, eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(loss (scalar), responsibilities (B, K), squared residuals in the most probable class (B, M)) of a batch
    with poses ``rotations`` (B, K, 3, 3) and origins ``shifts`` (B, K, 2) px; ``eps`` (B, K, Z) the standard
    normal draws of the latents (default: drawn here)."""
    points = batch.points
    log_likelihoods, kls, residuals = [], [], []
    for k, model in enumerate(models):
        posterior = model.encode(batch)
        z = None if posterior is None else sample(*posterior, None if eps is None else eps[:, k])
        predicted = batch.ctf * model.decoder.slices(z, rotations[:, k], points)
        observed = batch.spectra * shift_phases(points, shifts[:, k])
        residual2 = (observed - predicted).abs().pow(2)
        residuals.append(residual2)
        log_likelihoods.append(-points.weight * (residual2 / noise.per_point(residual2)).sum(1))
        kls.append(kl_divergence(*posterior) if posterior is not None else torch.zeros_like(log_likelihoods[-1]))
    joint = torch.stack(log_likelihoods, 1) + log_priors[None]
    responsibilities = torch.softmax(joint.detach(), 1)
    kl = (responsibilities * torch.stack(kls, 1)).sum(1)
    loss = (-torch.logsumexp(joint, 1) + beta * kl).mean()
    best = responsibilities.argmax(1)
    residual = torch.stack(residuals, 1)[torch.arange(len(best), device=best.device), best]
    return loss, responsibilities, residual.detach()


def search_maps(models: torch.nn.ModuleList, data: ParticleBatches, state: MixtureState, ranks: Ranks = SINGLE,
                ) -> tuple[list[Tensor], np.ndarray]:
    """The maps each class's poses are searched against: per class k a stack (G, D, D, D) and every particle's map
    in it (N, K).  Homogeneous classes: the one map.  With latents: the maps decoded at the centres of
    ``LATENT_GROUPS`` k-means clusters of the particles' mean latents in that class, each particle against its
    cluster's map, so a conformation far from the mean is aligned to a map of its own kind (see the module
    docstring)."""
    from sklearn.cluster import KMeans

    n, zdim = len(data), state.config.zdim
    groups = np.zeros((n, len(models)), np.int64)
    latents = encode_classes(models, data, ranks=ranks) if zdim else None
    stacks = []
    with torch.no_grad():
        for k, model in enumerate(models):
            if latents is None:
                stacks.append(model.decoder.volumes(None, 1).float())
                continue
            fit = KMeans(n_clusters=min(LATENT_GROUPS, n), n_init=4, random_state=0).fit(latents[:, k])
            groups[:, k] = fit.labels_
            centres = torch.as_tensor(fit.cluster_centers_, dtype=torch.float32, device=data.device)
            stacks.append(model.decoder.volumes(centres, len(centres)).float())
    return stacks, groups


def refresh_poses(models: torch.nn.ModuleList, data: ParticleBatches, state: MixtureState, sigma2: Tensor,
                  step_deg: float, batch_size: int = 256, ranks: Ranks = SINGLE) -> None:
    """Local search of every particle in every class around its current pose, against that class's map from
    :func:`search_maps` (all shells up to the band limit, scale-free ``ncc`` scores); updates ``state`` in place.
    Under ``torchrun`` each rank searches its shard and every rank gets all the poses."""
    from vitreous.reconstruct.images import CroppedImages

    box, device = data.box, data.device
    radius = float(data.points.radius)
    shift_step = shift_step_for_radius(box, radius)
    options = LocalOptions(radius_px=radius, step_deg=step_deg, range_deg=2 * step_deg, shift_step_px=shift_step,
                           shift_range_px=2 * shift_step, keep=1)
    shells = sigma2.new_full((box // 2 + 1,), float(sigma2[-1]))  # shells beyond the band limit: the last one's
    shells[:len(sigma2)] = sigma2[:box // 2 + 1]
    stacks, groups = search_maps(models, data, state, ranks)
    searches = [[PoseSearch(ProjectorSlices(Projector(volume)), shells.clamp_min(1e-12), box, mode="ncc")
                 for volume in stack] for stack in stacks]
    images = CroppedImages(data.particles, box, device)
    mine = ranks.shard(len(data))
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        spectra, ctf = images.read(idx)
        spectra = spectra / data.scale  # the units of the models and of sigma2
        for k, class_searches in enumerate(searches):
            for g, search in enumerate(class_searches):
                rows = np.nonzero(groups[idx, k] == g)[0]
                if not len(rows):
                    continue
                chosen = idx[rows]
                at = torch.as_tensor(rows, device=device)
                result = search.local_search(spectra[at], ctf[at],
                                             torch.as_tensor(state.rotations[chosen, k], device=device),
                                             torch.as_tensor(state.shifts_px[chosen, k], device=device), options)
                state.rotations[chosen, k] = result.best_rotations.cpu().numpy()
                state.shifts_px[chosen, k] = result.best_shifts.cpu().numpy()
    state.rotations[:] = ranks.gather_rows(state.rotations, mine)
    state.shifts_px[:] = ranks.gather_rows(state.shifts_px, mine)


def train_mixture(data: ParticleBatches, state: MixtureState, options: MixtureOptions,
                  on_epoch: Callable[[MixtureState], None] | None = None,
                  on_step: Callable[[int, float], None] | None = None,
                  ranks: Ranks = SINGLE) -> tuple[torch.nn.ModuleList, MixtureState]:
    """Train from ``state`` to ``options.train.epochs`` (or ``max_seconds``); ``on_step(images, loss)`` after
    every batch, ``on_epoch(state)`` after every finished epoch (a checkpoint); ``ranks``: see the module
    docstring (every rank starts from the same ``state`` and ends with the same)."""
    o = options.train
    device = torch.device(o.device)
    models = _models(state, device)
    K, zdim = len(models), state.config.zdim
    parameters = list(models.parameters())
    groups = [group for model in models for group in parameter_groups(model, o)]
    optimizer = torch.optim.Adam(groups, lr=o.lr)
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
    noise = ShellNoise(data.points, state.sigma2, ranks)
    nothing = torch.zeros((0, len(data.points.shell)), device=device)
    started = time.perf_counter() - state.seconds
    for epoch in range(state.epoch, o.epochs):
        if options.search_every and epoch > 0 and epoch % options.search_every == 0 and noise.sigma2 is not None:
            tick = time.perf_counter()
            refresh_poses(models, data, state, noise.sigma2, options.search_step_deg, ranks=ranks)
            state.search_seconds += time.perf_counter() - tick
        rng = np.random.default_rng([o.seed, epoch])
        draws = torch.Generator().manual_seed(o.seed * 1000 + epoch)
        total, images = 0.0, 0
        models.train()
        for step in data.steps(o.batch_size, rng, ranks):
            n = len(step.index)
            eps = reparameterisation_noise(draws, step, (K, zdim), device)
            beta = o.beta * min(1.0, (epoch + images / len(data)) / o.kl_warmup) if o.kl_warmup else o.beta
            optimizer.zero_grad(set_to_none=True)
            stats = torch.zeros(n * K + 2, device=device)  # the batch's responsibilities (n, K), loss, stop
            residual = nothing
            if step.batch is not None:
                idx = step.batch.index
                rotations = torch.as_tensor(state.rotations[idx], device=device)
                shifts = torch.as_tensor(state.shifts_px[idx], device=device)
                log_priors = torch.log(torch.as_tensor(state.priors, device=device).clamp_min(MIN_PRIOR))
                loss, responsibilities, residual = mixture_terms(models, step.batch, rotations, shifts, log_priors,
                                                                 noise, beta, eps)
                share = len(step.rows) / n
                (loss * share).backward()
                rows = torch.as_tensor(step.rows, device=device)
                stats[:-2].view(n, K)[rows] = responsibilities.float()
                stats[-2] = loss.detach() * share
            else:  # no images on this rank in this step: take part in the noise model's sums
                noise.per_point(nothing)
            stats[-1] = float(o.max_seconds is not None and time.perf_counter() - started > o.max_seconds)
            stats = sum_over_ranks(parameters, stats, ranks)
            loss_value = float(stats[-2])
            if not np.isfinite(loss_value):
                raise InputError(None, f"the loss became {loss_value} in epoch {epoch + 1}; stopped, the checkpoint "
                                 f"of epoch {state.epoch} is kept", "resume with a lower --lr")
            optimizer.step()
            noise.update(residual)
            state.responsibilities[step.index] = stats[:-2].view(n, K).cpu().numpy()
            state.priors = np.maximum(state.responsibilities.mean(0), MIN_PRIOR)  # EM: the latest r of everyone
            state.priors /= state.priors.sum()
            images += n
            total += loss_value * n
            if on_step is not None:
                on_step(n, loss_value)
            if stats[-1]:
                break
        stopped = bool(stats[-1])
        state.seconds = time.perf_counter() - started
        sizes = np.bincount(state.responsibilities.argmax(1), minlength=K) / len(data)
        state.history.append({"epoch": epoch + 1, "images": images, "loss": total / max(images, 1),
                              "class_fractions": sizes.tolist(), "seconds": state.seconds,
                              "search_seconds": state.search_seconds})
        log.info("mixture epoch %d: loss %.6g, classes %s, %.0f s (search %.0f s)", epoch + 1,
                 total / max(images, 1), np.round(sizes, 3).tolist(), state.seconds, state.search_seconds)
        state.models = [model.state_dict() for model in models]
        state.optimizer, state.sigma2 = optimizer.state_dict(), noise.sigma2
        if stopped:
            break
        state.epoch = epoch + 1
        if on_epoch is not None:
            on_epoch(state)
    return models, state


@torch.no_grad()
def encode_classes(models: torch.nn.ModuleList, data: ParticleBatches, batch_size: int = 256,
                   ranks: Ranks = SINGLE) -> np.ndarray:
    """Mean latents (N, K, Z) of every particle in every class (Z = 0 for homogeneous classes); under
    ``torchrun`` each rank encodes its shard and every rank gets all the latents."""
    zdim = models[0].config.zdim
    if not zdim:
        return np.zeros((len(data), len(models), 0), np.float32)
    models.eval()
    out = np.zeros((len(data), len(models), zdim), np.float32)
    for batch in data.shard(batch_size, ranks):
        for k, model in enumerate(models):
            out[batch.index, k] = model.encode(batch)[0].float().cpu().numpy()
    return ranks.gather_rows(out, ranks.shard(len(data)))


__all__ = ["MixtureOptions", "MixtureState", "encode_classes", "initial_mixture", "mixture_terms",
           "refresh_poses", "search_maps", "train_mixture"]
