"""Training loop: epochs of shuffled batches, Adam, a checkpoint after every epoch, resume, NaN guard.

Under ``torchrun`` each rank trains on its share of every batch and the gradients are summed over the ranks
(:func:`train`), so a checkpoint holds the whole state and resumes with any number of ranks.

The state after each epoch (:class:`TrainState`: weights, optimiser, noise model, loss history, a fingerprint
of the data) is handed to ``on_epoch`` (the CLI saves it as a checkpoint).  A non-finite loss stops training
with an InputError before the optimiser step, so the last checkpoint (the last finished epoch) stays good.
Mixed precision (bfloat16 autocast of the encoder and coefficient MLPs) is used on CUDA only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vitreous.distributed.ranks import SINGLE, Ranks
from vitreous.errors import InputError
from vitreous.neural.data import ParticleBatches, Step
from vitreous.neural.loss import LossTerms, ShellNoise, negative_elbo
from vitreous.neural.model import VAE, ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    """Optimisation: ``epochs``, ``batch_size`` (images per step), Adam learning rates (``lr`` for the networks,
    ``base_lr`` and ``delta_lr`` for the voxel values of base map and deltas, in units of the initial map's standard
    deviation), KL weight ``beta`` (raised linearly from 0 over the first ``kl_warmup`` epochs, so that the decoder
    learns to use z before the prior pulls on it), ``seed``, ``device``, ``max_seconds`` (stop after this much
    training time, None = no limit)."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    base_lr: float = 1e-3
    delta_lr: float = 3e-2
    beta: float = 1.0
    kl_warmup: float = 1.0
    seed: int = 0
    device: str = "cpu"
    max_seconds: float | None = None


@dataclass
class TrainState:
    """Everything needed to continue training (saved as a plain dict with :meth:`to_dict`)."""

    config: ModelConfig
    fingerprint: str
    scale: float
    model: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    sigma2: torch.Tensor | None = None
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by_time: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TrainState:
        return cls(**{**saved, "config": ModelConfig(**saved["config"])})


def data_fingerprint(data: ParticleBatches) -> str:
    """A hash of what training depends on: image names, poses, CTF, pixel size and training box."""
    table = data.particles.particles
    columns = [c for c in ("rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                           "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle") if c in table]
    digest = hashlib.sha256(table[columns].to_csv(index=False).encode())
    digest.update(f"{len(table)} {data.original_box} {data.box} {data.pixel_size:.6f}".encode())
    return digest.hexdigest()[:16]


def initial_volume(data: ParticleBatches, batch_size: int = 512, ranks: Ranks = SINGLE) -> torch.Tensor:
    """The backprojection of the particles at the training box, in the units of the normalised images (under
    ``torchrun`` each rank backprojects its shard and every rank gets the map)."""
    from vitreous.physics.fourier import fourier_crop
    from vitreous.reconstruct.backproject import backproject

    maps = backproject(data.particles, batch_size=batch_size, device=str(data.device), ranks=ranks)
    volume = torch.as_tensor(maps.full)
    if data.box != data.original_box:
        volume = fourier_crop(volume, data.box, ndim=3) * (data.original_box / data.box)
    return volume / data.scale


def initial_state(data: ParticleBatches, config: ModelConfig, options: TrainOptions,
                  ranks: Ranks = SINGLE) -> TrainState:
    """A fresh model whose base map is :func:`initial_volume` (the deltas start small and random); under
    ``torchrun`` the ranks share the backprojection and all get rank 0's state."""
    volume = initial_volume(data, ranks=ranks)
    torch.manual_seed(options.seed)
    model = VAE(config, volume)
    return ranks.broadcast(TrainState(config, data_fingerprint(data), data.scale, model.state_dict()))


def check_resumable(state: TrainState, data: ParticleBatches, source: str) -> None:
    """InputError when a checkpoint was made from other particles (or another box) than ``data``."""
    if state.fingerprint != data_fingerprint(data):
        raise InputError(source, "the checkpoint was trained on different particles (image names, poses, CTF or "
                         "box differ)", "resume with the original particles, or use --overwrite to start again")


def parameter_groups(model: VAE, options: TrainOptions) -> list[dict[str, Any]]:
    """Adam groups: the networks at ``lr``, the base map at ``base_lr`` (it starts from the backprojection),
    the delta volumes at ``delta_lr`` (they start from zero and must grow to the size of the differences)."""
    decoder = model.decoder
    volumes = {id(p) for p in decoder.base.parameters()} | ({id(p) for p in decoder.deltas.parameters()}
                                                           if decoder.rank else set())
    groups = [{"params": list(decoder.base.parameters()), "lr": options.base_lr}]
    if decoder.rank:
        groups.append({"params": list(decoder.deltas.parameters()), "lr": options.delta_lr})
    networks = [p for p in model.parameters() if id(p) not in volumes]
    if networks:
        groups.append({"params": networks, "lr": options.lr})
    return groups


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sum_over_ranks(parameters: list[torch.nn.Parameter], stats: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Sum the gradients of ``parameters`` (in place; a missing gradient counts as zero) and the 1-D ``stats``
    over the ranks in one all-reduce; returns the summed ``stats`` (unchanged in a single process)."""
    if not ranks.distributed:
        return stats
    flat = torch.cat([*(p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in parameters),
                      stats.to(parameters[0].device, torch.float32)])
    ranks.all_reduce(flat)
    offset = 0
    for p in parameters:
        summed = flat[offset:offset + p.numel()].view_as(p)
        if p.grad is None:
            p.grad = summed.clone()
        else:
            p.grad.copy_(summed)
        offset += p.numel()
    return flat[offset:]


def reparameterisation_noise(generator: torch.Generator, step: Step, shape: tuple[int, ...],
                             device: torch.device) -> torch.Tensor:
    """The standard normal draws (rows, *shape) of this rank's particles in ``step``: drawn for the whole batch
    from ``generator`` (the same on every rank), so they do not depend on the number of ranks."""
    return torch.randn((len(step.index), *shape), generator=generator)[step.rows].to(device)


def train(data: ParticleBatches, state: TrainState, options: TrainOptions,
          on_epoch: Callable[[TrainState], None] | None = None,
          on_step: Callable[[int, LossTerms, float], None] | None = None,
          ranks: Ranks = SINGLE) -> tuple[VAE, TrainState]:
    """Train from ``state`` until ``options.epochs`` (or ``max_seconds``); returns the model and final state.

    ``on_step(images, terms, images_per_second)`` follows every batch, ``on_epoch(state)`` every finished epoch.
    Under ``torchrun`` (``ranks``) every rank trains on its share of each batch (:meth:`ParticleBatches.steps`)
    from the same ``state``; the gradients (of the batch-mean loss, each rank's share weighted by its number of
    images), the noise model and the statistics are summed over the ranks, so every rank takes the step that one
    process would take on the whole batch and the ranks stay identical.  The gradients go through one all-reduce
    per step with the statistics (:func:`sum_over_ranks`) rather than torch's DistributedDataParallel wrapper:
    the statistics and the mixture's per-particle responsibilities must be summed in step with them, the shares
    of the last batch are uneven, and a rank without images in a step must still take part.
    """
    device = torch.device(options.device)
    model = VAE(state.config).to(device)
    model.load_state_dict(state.model)
    parameters = list(model.parameters())
    optimizer = torch.optim.Adam(parameter_groups(model, options), lr=options.lr)
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
    noise = ShellNoise(data.points, state.sigma2, ranks)
    nothing = torch.zeros((0, len(data.points.shell)), device=device)
    started = time.perf_counter() - state.seconds
    model.train()
    for epoch in range(state.epoch, options.epochs):
        rng = np.random.default_rng([options.seed, epoch])
        draws = torch.Generator().manual_seed(options.seed * 1000 + epoch)
        sums = np.zeros(3)
        images = 0
        for step in data.steps(options.batch_size, rng, ranks):
            t0 = time.perf_counter()
            n = len(step.index)
            beta = options.beta * min(1.0, (epoch + images / len(data)) / options.kl_warmup) if options.kl_warmup \
                else options.beta
            eps = reparameterisation_noise(draws, step, (state.config.zdim,), device)
            optimizer.zero_grad(set_to_none=True)
            local = torch.zeros(4)
            if step.batch is not None:
                with _autocast(device):
                    predicted, posterior = model(step.batch, eps=eps)
                terms = negative_elbo(predicted, step.batch.spectra, posterior, noise, data.points, beta)
                share = len(step.rows) / n
                (terms.total * share).backward()
                local[:3] = torch.stack([terms.total, terms.error, terms.kl]).detach().float().cpu() * share
            else:  # no images on this rank in this step: take part in the noise model's sums
                noise.per_point(nothing)
                noise.update(nothing)
            out_of_time = options.max_seconds is not None and time.perf_counter() - started > options.max_seconds
            local[3] = float(out_of_time)
            total, error, kl, stop = sum_over_ranks(parameters, local, ranks).tolist()
            if not np.isfinite(total):
                raise InputError(None, f"the loss became {total} in epoch {epoch + 1}; stopped, the checkpoint of "
                                 f"epoch {state.epoch} is kept",
                                 "resume with a lower --lr (or --beta), or check the images for extreme values")
            optimizer.step()
            images += n
            sums += n * np.array([total, error, kl])
            if on_step is not None:
                terms = LossTerms(*(torch.tensor(value) for value in (total, error, kl)))
                on_step(n, terms, n / max(time.perf_counter() - t0, 1e-9))
            if stop:
                state.stopped_by_time = True
                break
        state.seconds = time.perf_counter() - started
        loss, error, kl = sums / max(images, 1)
        state.history.append({"epoch": epoch + 1, "images": images, "loss": loss, "error_per_point": error,
                              "kl": kl, "seconds": state.seconds})
        log.info("epoch %d: loss %.6g, error per point %.4f, KL %.4g, %d images, %.0f s", epoch + 1, loss, error,
                 kl, images, state.seconds)
        state.model, state.optimizer, state.sigma2 = model.state_dict(), optimizer.state_dict(), noise.sigma2
        state.epoch = epoch + 1 if not state.stopped_by_time else state.epoch
        if state.stopped_by_time:
            break
        if on_epoch is not None:
            on_epoch(state)
    return model, state


@torch.no_grad()
def encode_all(model: VAE, data: ParticleBatches, batch_size: int = 256, ranks: Ranks = SINGLE) -> np.ndarray:
    """The mean of q(z | x) for every particle in STAR order (N, Z) float32; (N, 0) for zdim 0.  Under
    ``torchrun`` each rank encodes its shard and every rank gets all the latents."""
    model.eval()
    if model.encoder is None:
        return np.zeros((len(data), 0), np.float32)
    out = np.zeros((len(data), model.config.zdim), np.float32)
    for batch in data.shard(batch_size, ranks):
        with _autocast(data.device):
            mean, _ = model.encode(batch)
        out[batch.index] = mean.float().cpu().numpy()
    out = ranks.gather_rows(out, ranks.shard(len(data)))
    if not np.isfinite(out).all():
        raise InputError(None, "the encoder returned non-finite latents", "train again with a lower --lr")
    return out
