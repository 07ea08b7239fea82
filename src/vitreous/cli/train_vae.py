"""``vitreous train-vae``: conformational heterogeneity with a VAE (image encoder, latent-conditioned voxel decoder).

Also the shared driver of ``vitreous train-field`` (zdim 0, :mod:`vitreous.cli.train_field`): inputs are checked
before the job folder is touched; training checkpoints after every epoch (``--resume``); the results are
``z.npy``, ``particles.star`` (with ``vtsLatent1..Z``), ``weights.pt`` (read by
:func:`vitreous.neural.trained.load_trained`) and ``report.html``.  Both run under ``torchrun --nproc-per-node N``
(data-parallel: each rank trains on its share of every batch; rank 0 writes; checkpoints resume with any number
of ranks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vitreous.cli import console
from vitreous.cli.options import Apix, Datadir, OutDir, Overwrite, Resume
from vitreous.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from vitreous.distributed.ranks import Ranks
    from vitreous.neural.model import VAE
    from vitreous.neural.train import TrainOptions, TrainState
    from vitreous.report import Report

CHECKPOINT = "training"
RATE_MOMENTUM = 0.9  # smoothing of the images/s shown by the progress bar


@contextlib.contextmanager
def training_progress(total: int) -> Iterator[Callable[[int, Any, float], None]]:
    """A progress bar over images with the current loss, error per Fourier point and images/s; yields
    ``update(images, loss_terms, images_per_second)``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    rate = [0.0]
    with Progress(*columns, console=console.err, transient=False) as bar:
        task = bar.add_task("training", total=total, status="")

        def update(images: int, terms: Any, images_per_second: float) -> None:
            rate[0] = images_per_second if rate[0] == 0 else (
                RATE_MOMENTUM * rate[0] + (1 - RATE_MOMENTUM) * images_per_second)
            status = f"loss {terms.total.item():.5g} err/pt {terms.error.item():.4f} {rate[0]:.0f} img/s"
            bar.update(task, advance=images, status=status)

        yield update


def run_training(particles_path: Path, out: Path, command: str, config_options: dict[str, Any],
                 options: TrainOptions, *, downsample: int | None = None, datadir: Path | None = None,
                 apix: float | None = None, resume: bool = False, overwrite: bool = False) -> Path:
    """Train into the job folder ``out`` (``command`` 'train-vae' or 'train-field'); returns ``weights.pt``.

    Under ``torchrun`` (see :mod:`vitreous.distributed.ranks`) every rank trains on its share of each batch
    from the same start (the shared backprojection, or the checkpoint); rank 0 shows progress and writes the job.
    """
    from vitreous.distributed.ranks import process_group

    with process_group(options.device) as (ranks, device):
        return _run_training(particles_path, out, command, config_options, options, ranks, device,
                             downsample=downsample, datadir=datadir, apix=apix, resume=resume, overwrite=overwrite)


def _run_training(particles_path: Path, out: Path, command: str, config_options: dict[str, Any],
                  options: TrainOptions, ranks: Ranks, device: str, *, downsample: int | None,
                  datadir: Path | None, apix: float | None, resume: bool, overwrite: bool) -> Path:
    from dataclasses import replace

    from vitreous.distributed.ranks import rank_failures
    from vitreous.io.formats import read_particles
    from vitreous.jobs import Job
    from vitreous.neural.data import ParticleBatches
    from vitreous.neural.model import ModelConfig
    from vitreous.neural.train import encode_all, train
    from vitreous.neural.trained import WEIGHTS, save_weights

    params = {**config_options, **asdict(options), "downsample": downsample, "apix": apix}
    options = replace(options, device=device)  # under torchrun: this rank's GPU for a plain "cuda"
    particles = read_particles(particles_path, datadir=datadir, apix=apix)
    data = ParticleBatches(particles, downsample, device=options.device)
    config = ModelConfig(box=data.box, **config_options)
    with Job.open(out, command=command, params=params, inputs=[particles_path], overwrite=overwrite,
                  resume=resume, ranks=ranks) as job, rank_failures(ranks):
        state = _starting_state(job, data, config, options, ranks)
        remaining = max(options.epochs - state.epoch, 0) * len(data)
        with training_progress(remaining) if ranks.is_main else contextlib.nullcontext() as update:
            model, state = train(data, state, options, on_step=update,
                                 on_epoch=lambda s: job.save_checkpoint(CHECKPOINT, s.to_dict()), ranks=ranks)
        z = encode_all(model, data, ranks=ranks)
        if ranks.is_main:
            save_weights(job.path(WEIGHTS), model, scale=data.scale, pixel_size=data.pixel_size,
                         original_box=data.original_box)
            _write_results(job, data, model, state, z)
    return job.path(WEIGHTS)


def _starting_state(job, data, config, options: TrainOptions, ranks: Ranks) -> TrainState:
    """The checkpoint of a resumed job (if any; read by every rank), else a fresh model started from the
    backprojection (computed by all ranks together)."""
    from vitreous.neural.train import TrainState, check_resumable, initial_state

    saved = job.load_checkpoint(CHECKPOINT) if job.resumed else None
    if saved is None:
        return initial_state(data, config, options, ranks)
    state = TrainState.from_dict(saved)
    check_resumable(state, data, str(job.folder))
    if ranks.is_main:
        console.err.print(f"resuming after epoch {state.epoch}", markup=False)
    return state


def _write_results(job, data, model: VAE, state: TrainState, z: np.ndarray) -> None:
    import numpy as np
    import torch

    from vitreous.io.mrc import write_map
    from vitreous.io.star import write_star
    from vitreous.neural.trained import LATENTS, PARTICLES, intensity_factor

    zdim, particles, pixel_size = model.config.zdim, data.particles, data.pixel_size
    if zdim:
        np.save(job.path(LATENTS), z)
    write_star(job.path(PARTICLES), particles.with_latents(z) if zdim else particles)
    with torch.no_grad():
        latent = torch.as_tensor(z.mean(0, keepdims=True), device=data.device) if zdim else None
        volume = model.decoder.volumes(latent)[0].cpu().numpy() * intensity_factor(data.scale, data.box,
                                                                                    data.original_box)
    if not zdim:
        write_map(job.path("map.mrc"), volume, pixel_size)
    summary = {"particles": len(particles), "training box (px)": data.box, "pixel size (Å)": pixel_size,
               "zdim": zdim, "epochs": state.epoch, "training time (s)": state.seconds,
               "stopped because": "time limit" if state.stopped_by_time else "epoch limit"}
    if state.history:
        last = state.history[-1]
        summary.update({"final loss": last["loss"], "final error per Fourier point": last["error_per_point"],
                        "images/s (training)": sum(h["images"] for h in state.history) / max(state.seconds, 1e-9)})
    job.write_report(_report(state, z, volume, pixel_size, summary))
    for key in ("epochs", "final loss", "images/s (training)"):
        if key in summary:
            value = summary[key]
            console.err.print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}", markup=False)


def _report(state: TrainState, z: np.ndarray, volume: np.ndarray, pixel_size: float, summary: dict) -> Report:
    import pandas as pd

    from vitreous.report import Report, map_views

    zdim = z.shape[1]
    report = Report("Neural field (homogeneous)" if not zdim else f"Variational autoencoder (zdim {zdim})")
    report.section("Training").key_values(summary)
    if state.history:
        report.figure(_loss_plot(state.history), "Loss per epoch: negative ELBO per image, error per Fourier "
                                                 "point (1 = noise level) and KL divergence")
        report.table(pd.DataFrame(state.history), "Epochs")
    if zdim:
        report.section("Latent space")
        report.figure(_latent_histograms(z), "Histogram of each latent coordinate (means of q(z|x))")
        report.figure(_latent_scatter(z), "Latent means projected on their first two principal components")
    caption = "Map" if not zdim else "Map decoded at the mean latent"
    report.section(caption).figure(map_views(volume, pixel_size), "Central slices and projections")
    return report


def _loss_plot(history: list[dict]):
    from vitreous.report.imaging import new_figure

    fig = new_figure(9, 3)
    epochs = [h["epoch"] for h in history]
    for ax, key, label in zip(fig.subplots(1, 3), ("loss", "error_per_point", "kl"),
                              ("negative ELBO per image", "error per Fourier point", "KL per image"), strict=True):
        ax.plot(epochs, [h[key] for h in history], marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=9)
    return fig


def _latent_histograms(z: np.ndarray):
    from vitreous.report.imaging import new_figure

    shown = min(z.shape[1], 8)
    fig = new_figure(2.2 * shown, 2.2)
    for k, ax in enumerate(fig.subplots(1, shown, squeeze=False)[0]):
        ax.hist(z[:, k], bins=50)
        ax.set_title(f"z{k + 1}", fontsize=9)
        ax.tick_params(labelsize=7)
    return fig


def _latent_scatter(z: np.ndarray):
    import numpy as np

    from vitreous.report.figures import MAX_SCATTER
    from vitreous.report.imaging import new_figure

    centred = z - z.mean(0)
    if z.shape[1] > 1:
        _, _, vt = np.linalg.svd(centred[:: max(1, len(z) // MAX_SCATTER)], full_matrices=False)
        xy = centred @ vt[:2].T
    else:
        xy = np.stack([centred[:, 0], np.zeros(len(z))], axis=1)
    step = max(1, len(z) // MAX_SCATTER)
    fig = new_figure(5, 4.5)
    ax = fig.subplots()
    ax.scatter(xy[::step, 0], xy[::step, 1], s=2, alpha=0.3, linewidths=0)
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    return fig


def check_training_options(epochs: int, batch_size: int, lr: float, max_minutes: float | None,
                           downsample: int | None) -> None:
    """InputError for options no training can use (before the job folder is touched)."""
    if min(epochs, batch_size) < 1:
        raise InputError(None, "--epochs and --batch-size must be at least 1", "fix the options")
    if not lr > 0 or (max_minutes is not None and not max_minutes > 0):
        raise InputError(None, "--lr and --max-minutes must be positive", "fix the options")
    if downsample is not None and (downsample < 8 or downsample % 2):
        raise InputError(None, f"--downsample {downsample} is not an even box of at least 8 px", "fix the option")


# ---- options shared with train-field ------------------------------------------------------------------------
Epochs = Annotated[int, typer.Option("--epochs", "-n", help="Passes over the particles.")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="Images per optimiser step.")]
LearningRate = Annotated[float, typer.Option("--lr", help="Adam learning rate.")]
Downsample = Annotated[int | None, typer.Option(
    "--downsample", metavar="PX", help="Train at this box (px, even) by Fourier cropping the images (pixel size "
                                       "grows by box / PX); default: the images' box.")]
MaxMinutes = Annotated[float | None, typer.Option(
    "--max-minutes", metavar="MIN", help="Stop training after this many minutes (then write the results).")]
Device = Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1 ... (bfloat16 autocast "
                                                      "on CUDA).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the initial weights and the batch order.")]


def register(app: typer.Typer) -> None:
    """Add ``train-vae`` to the app."""

    @app.command("train-vae", help="Conformational heterogeneity: a variational autoencoder whose encoder maps each "
                                   "(centred, phase-flipped) image to a latent z and whose decoder gives a map per "
                                   "z (a base map plus latent-modulated low-rank deltas), sliced at the particle's "
                                   "pose and multiplied by its CTF.  Needs poses (vitreous refine).  Writes "
                                   "OUT/z.npy (N x Z, STAR order), particles.star (+ vtsLatent1..Z), weights.pt, "
                                   "report.html; checkpoints every epoch (--resume).")
    def train_vae(
        particles: Annotated[Path, typer.Argument(help="Particles with poses and CTF (.star, .cs, .pkl).")],
        zdim: Annotated[int, typer.Option("--zdim", help="Dimension of the latent space (1 or more).")],
        out: OutDir,
        datadir: Datadir = None,
        apix: Apix = None,
        downsample: Downsample = None,
        epochs: Epochs = 20,
        batch_size: BatchSize = 128,
        lr: LearningRate = 1e-3,
        beta: Annotated[float, typer.Option("--beta", help="Weight of the KL term.")] = 1.0,
        rank: Annotated[int, typer.Option("--rank", help="Number K of delta volumes the latent mixes.")] = 16,
        delta_box: Annotated[int | None, typer.Option(
            "--delta-box", metavar="PX", help="Box of the delta volumes (their band limit is PX/2 Fourier pixels "
                                              "of the training box; default half the training box).")] = None,
        enc_dim: Annotated[int, typer.Option("--enc-dim", help="Width of the encoder's hidden layers.")] = 256,
        enc_layers: Annotated[int, typer.Option("--enc-layers", help="Hidden layers of the encoder.")] = 2,
        dec_dim: Annotated[int, typer.Option("--dec-dim", help="Width of the decoder's coefficient MLP.")] = 128,
        dec_layers: Annotated[int, typer.Option("--dec-layers", help="Hidden layers of the coefficient MLP.")] = 2,
        max_minutes: MaxMinutes = None,
        device: Device = "cpu",
        seed: Seed = 0,
        resume: Resume = False,
        overwrite: Overwrite = False,
    ) -> None:
        if zdim < 1:
            raise InputError(None, f"--zdim {zdim}: a VAE needs a latent space of dimension 1 or more",
                             "give --zdim 1 or more (vitreous train-field trains the homogeneous zdim-0 model)")
        if min(rank, enc_dim, enc_layers, dec_dim) < 1 or dec_layers < 0:
            raise InputError(None, "--rank, --enc-dim, --enc-layers and --dec-dim must be at least 1",
                             "fix the options")
        check_training_options(epochs, batch_size, lr, max_minutes, downsample)
        options = training_options(epochs, batch_size, lr, beta, seed, device, max_minutes)
        config = {"zdim": zdim, "rank": rank, "delta_box": delta_box, "enc_dim": enc_dim, "enc_layers": enc_layers,
                  "dec_dim": dec_dim, "dec_layers": dec_layers}
        run_training(particles, out, "train-vae", config, options, downsample=downsample, datadir=datadir,
                     apix=apix, resume=resume, overwrite=overwrite)


def training_options(epochs: int, batch_size: int, lr: float, beta: float, seed: int, device: str,
                     max_minutes: float | None) -> TrainOptions:
    """:class:`TrainOptions` from command-line values."""
    from vitreous.neural.train import TrainOptions

    return TrainOptions(epochs=epochs, batch_size=batch_size, lr=lr, beta=beta, seed=seed, device=device,
                        max_seconds=None if max_minutes is None else 60.0 * max_minutes)
