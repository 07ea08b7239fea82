"""``vitreous train-field``: the homogeneous model (zdim 0) of ``train-vae``, trained by the same code, for
comparison with ``vitreous backproject``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vitreous.cli.options import Apix, Datadir, OutDir, Overwrite, Resume
from vitreous.cli.train_vae import (
    BatchSize,
    Device,
    Downsample,
    Epochs,
    LearningRate,
    MaxMinutes,
    Seed,
    check_training_options,
    run_training,
    training_options,
)


def register(app: typer.Typer) -> None:
    """Add ``train-field`` to the app."""

    @app.command("train-field", help="Homogeneous reconstruction by gradient descent on the images' Gaussian "
                                     "likelihood (the zdim-0 model of train-vae: one map, sliced at each pose, "
                                     "times the CTF).  Needs poses (vitreous refine).  Writes OUT/map.mrc, "
                                     "particles.star, weights.pt, report.html; checkpoints every epoch (--resume).")
    def train_field(
        particles: Annotated[Path, typer.Argument(help="Particles with poses and CTF (.star, .cs, .pkl).")],
        out: OutDir,
        datadir: Datadir = None,
        apix: Apix = None,
        downsample: Downsample = None,
        epochs: Epochs = 5,
        batch_size: BatchSize = 128,
        lr: LearningRate = 1e-3,
        max_minutes: MaxMinutes = None,
        device: Device = "cpu",
        seed: Seed = 0,
        resume: Resume = False,
        overwrite: Overwrite = False,
    ) -> None:
        check_training_options(epochs, batch_size, lr, max_minutes, downsample)
        options = training_options(epochs, batch_size, lr, 1.0, seed, device, max_minutes)
        run_training(particles, out, "train-field", {"zdim": 0}, options, downsample=downsample, datadir=datadir,
                     apix=apix, resume=resume, overwrite=overwrite)
