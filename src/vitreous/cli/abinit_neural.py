"""``vitreous abinit-neural``: poses, classes and conformations from particles without poses: the ab initio
stages of ``vitreous abinit`` (same pose-search engine), then a mixture of K neural fields (Hydra-style).
Runs under ``torchrun --nproc-per-node N``: the neural stage is data-parallel, see :func:`run_abinit_neural`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vitreous.cli import console
from vitreous.cli.options import Apix, Datadir, OutDir, Overwrite, Resume
from vitreous.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from vitreous.cli.abinit import AbinitResult
    from vitreous.data.particles import ParticleSet
    from vitreous.distributed.ranks import Ranks
    from vitreous.neural.data import ParticleBatches
    from vitreous.neural.mixture import MixtureOptions, MixtureState
    from vitreous.reconstruct.abinit import AbinitOptions
    from vitreous.report import Report

CHECKPOINT = "mixture"
DEFAULT_EPOCHS, DEFAULT_EPOCHS_LATENT = 10, 20  # homogeneous classes; with latents (see --epochs)
DEFAULT_CONFORMATIONS = 3  # with latents: classes of each class's realignment (see realigned_poses)
REALIGN_RESOLUTION_A = 30.0  # where the realignment's stochastic EM starts (as classify3d --realign)
MIN_REALIGN = 100  # members per conformation below which a class keeps its consensus poses


def _class_name(k: int, suffix: str = ".mrc") -> str:
    return f"class_{k + 1:03d}{suffix}"


def realigned_poses(job, particles: ParticleSet, result: AbinitResult, options: AbinitOptions, conformations: int,
                    ) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Each class's members realigned as ``vitreous classify3d --realign``: ``conformations`` classes started from
    the class's refined map plus noise, global pose search, each refined; returns per class its members' poses
    (RELION matrices, origins in px of the particles' box), each from its conformation's refinement (None: the
    class keeps its consensus poses, having fewer than ``MIN_REALIGN`` members per conformation).

    Refinement against one consensus map misaligns the conformations far from it, and a latent cannot learn
    a motion from misaligned images: for the 2.4k adenylate kinase particles of a three-protein mix, the closed
    frames' median rotation error fell from 43° to 22° and the class latent's Spearman correlation with the
    frame rose from -0.02 to 0.69 (``vitreous train-vae --zdim 1``).  Results and checkpoints of class k go to
    ``conformations_00k/`` (its conformations' stage-1 maps ``class_00j_initial.mrc``)."""
    from dataclasses import replace

    import numpy as np

    from vitreous.cli.abinit import abinit_stages

    labels = result.assignment.labels
    realigned: list[tuple[np.ndarray, np.ndarray] | None] = []
    for k, refined in enumerate(result.refined):
        members = np.nonzero(labels == k)[0]
        if refined is None or conformations < 2 or len(members) < MIN_REALIGN * conformations:
            realigned.append(None)
            continue
        console.err.print(f"class {k + 1}: realigning its {len(members)} particles as {conformations} "
                          "conformations", markup=False)
        start_A = max(min(options.initial_resolution_A, REALIGN_RESOLUTION_A), options.final_resolution_A)
        sub_options = replace(options, classes=conformations, balance=False, initial_resolution_A=start_A,
                              seed=options.seed + k + 1)
        sub = abinit_stages(job.scope(f"conformations_{k + 1:03d}"),
                            particles.subset(members), sub_options, start=refined.full_map)
        realigned.append(sub.poses())
    return realigned


def starting_mixture(particles: ParticleSet, result: AbinitResult, data: ParticleBatches, zdim: int,
                     seed: int, realigned: list[tuple[np.ndarray, np.ndarray] | None] | None = None,
                     ) -> MixtureState:
    """The mixture's start: each class's base map from its refined (else stage-1) map, each particle's pose in
    its assigned class from ``realigned`` (see :func:`realigned_poses`), else from refinement, and in the other
    classes from the stage-2 search; stage-2 responsibilities."""
    import numpy as np
    import torch

    from vitreous.neural.mixture import initial_mixture
    from vitreous.neural.model import ModelConfig
    from vitreous.physics.fourier import fourier_crop

    box = particles.box
    assignment = result.assignment
    rotations, shifts = assignment.rotations.copy(), assignment.shifts_px.copy()
    rows, labels = np.arange(len(particles)), assignment.labels
    rotations[rows, labels], shifts[rows, labels] = result.poses()
    initial = result.state.full_maps(box)
    volumes = []
    for k, refined in enumerate(result.refined):
        if realigned is not None and realigned[k] is not None:
            members = np.nonzero(labels == k)[0]
            rotations[members, k], shifts[members, k] = realigned[k]
        volume = torch.as_tensor(refined.full_map if refined is not None else initial[k])
        if data.box != box:
            volume = fourier_crop(volume, data.box, ndim=3) * (box / data.box)
        volumes.append(volume / data.scale)
    return initial_mixture(data, ModelConfig(box=data.box, zdim=zdim), volumes, rotations,
                           shifts * (data.box / box), assignment.posteriors, seed)


def run_abinit_neural(particles_path: Path, out: Path, options: AbinitOptions, neural: MixtureOptions, *,
                      zdim: int = 0, conformations: int = DEFAULT_CONFORMATIONS, downsample: int | None = None,
                      datadir: Path | None = None, apix: float | None = None, resume: bool = False,
                      overwrite: bool = False) -> Path:
    """Ab initio + neural mixture into the job folder ``out``; returns the folder.  Inputs are checked first.

    Under ``torchrun`` (see :mod:`vitreous.distributed.ranks`) rank 0 runs the classical ab initio stages while
    the other ranks wait; the neural stage (training, pose search, encoding) is shared by all ranks; rank 0
    writes the job.
    """
    from vitreous.distributed.ranks import process_group

    with process_group(neural.train.device) as (ranks, device):
        return _run_abinit_neural(particles_path, out, options, neural, ranks, device, zdim=zdim,
                                  conformations=conformations, downsample=downsample, datadir=datadir, apix=apix,
                                  resume=resume, overwrite=overwrite)


def _run_abinit_neural(particles_path: Path, out: Path, options: AbinitOptions, neural: MixtureOptions,
                       ranks: Ranks, device: str, *, zdim: int, conformations: int, downsample: int | None,
                       datadir: Path | None, apix: float | None, resume: bool, overwrite: bool) -> Path:
    import contextlib
    from dataclasses import asdict, replace

    import numpy as np

    from vitreous.cli.train_vae import training_progress
    from vitreous.distributed.ranks import rank_failures
    from vitreous.io.formats import read_particles
    from vitreous.jobs import Job
    from vitreous.neural.data import ParticleBatches
    from vitreous.neural.mixture import encode_classes, train_mixture
    from vitreous.reconstruct.refine import check_particles

    particles = read_particles(particles_path, datadir=datadir, apix=apix)
    box, _ = check_particles(particles)
    options.check(particles)
    if zdim < 0:
        raise InputError(None, f"--zdim must be 0 or more, not {zdim}", "give 0 (homogeneous classes) or more")
    if conformations < 0:
        raise InputError(None, f"--conformations must be 0 or more, not {conformations}",
                         "give 0 (keep the consensus poses) or more")
    if downsample is not None and not 8 <= downsample <= box:
        raise InputError(None, f"--downsample {downsample} for {box}-px particles", f"give 8 .. {box}")
    params = {**asdict(options), "neural": asdict(neural), "zdim": zdim,
              "conformations": conformations if zdim else 0, "downsample": downsample, "apix": apix}
    # under torchrun: this rank's GPU for a plain "cuda"
    neural, options = replace(neural, train=replace(neural.train, device=device)), replace(options, device=device)
    n = len(particles)
    unposed = particles.with_poses(rotations=np.tile(np.eye(3), (n, 1, 1)), shifts_angst=np.zeros((n, 2)))
    data = ParticleBatches(unposed, box=downsample, device=neural.train.device)
    with Job.open(out, command="abinit-neural", params=params, inputs=[particles_path], overwrite=overwrite,
                  resume=resume, ranks=ranks) as job, rank_failures(ranks):
        state = ranks.on_main(lambda: _classical_stages(job, particles, data, options, zdim, conformations,
                                                        neural.train.seed))
        remaining = (neural.train.epochs - state.epoch) * n
        with training_progress(remaining) if ranks.is_main else contextlib.nullcontext() as update:
            models, state = train_mixture(
                data, state, neural, lambda s: job.save_checkpoint(CHECKPOINT, s.to_dict()),
                None if update is None else lambda images, loss: update(images, _Terms(loss), 0.0), ranks=ranks)
        latents = encode_classes(models, data, ranks=ranks)
        if ranks.is_main:
            _write_results(job, particles, data, models, state, latents)
    return out


def _classical_stages(job, particles: ParticleSet, data: ParticleBatches, options: AbinitOptions, zdim: int,
                      conformations: int, seed: int) -> MixtureState:
    """The ab initio stages of ``vitreous abinit`` (or their checkpoints) and the refined maps, then the
    mixture's start: its checkpoint when the job resumes, else :func:`starting_mixture` (with latents, from
    :func:`realigned_poses`)."""
    from vitreous.cli.abinit import abinit_stages
    from vitreous.io.mrc import write_map
    from vitreous.neural.mixture import MixtureState

    result = abinit_stages(job, particles, options)
    for k, refined in enumerate(result.refined):  # the classical maps, before the neural stage
        if refined is not None and refined.iteration > 0:
            write_map(job.path(_class_name(k, "_refined.mrc")), refined.full_map, particles.single_pixel_size())
    saved = job.load_checkpoint(CHECKPOINT) if job.resumed else None
    if saved is not None:
        return MixtureState.from_dict(saved)
    realigned = realigned_poses(job, particles, result, options, conformations) if zdim else None
    return starting_mixture(particles, result, data, zdim, seed, realigned)


class _Terms:
    """What the training progress bar reads from a batch (the loss; no per-point error or KL here)."""

    def __init__(self, loss: float) -> None:
        import torch

        self.total = self.error = torch.tensor(loss)


def _write_results(job, particles: ParticleSet, data: ParticleBatches, models, state: MixtureState,
                   latents: np.ndarray) -> None:
    import numpy as np
    import torch

    from vitreous.io.mrc import write_map
    from vitreous.io.star import write_star
    from vitreous.neural.trained import intensity_factor, save_weights

    K, n = len(models), len(particles)
    labels = state.responsibilities.argmax(1)
    rows = np.arange(n)
    factor = data.pixel_size  # Å per training-box pixel
    out = particles.with_poses(rotations=state.rotations[rows, labels],
                               shifts_angst=state.shifts_px[rows, labels] * factor)
    out = out.with_columns(rlnClassNumber=labels + 1).with_class_probabilities(state.responsibilities)
    if state.config.zdim:
        out = out.with_latents(latents[rows, labels])
    write_star(job.path("particles.star"), out)
    _save_npy(job.path("z.npy"), latents)
    for k in range(K):  # per class, what `vitreous analyze OUT --class k` reads
        members = np.nonzero(labels == k)[0]
        write_star(job.path(_class_name(k, "_particles.star")), out.subset(members))
        _save_npy(job.path(_class_name(k, "_z.npy")), latents[members, k])
    intensity = intensity_factor(state.scale, data.box, data.original_box)
    zero = torch.zeros((1, state.config.zdim)) if state.config.zdim else None
    with torch.no_grad():
        for k, model in enumerate(models):
            model = model.cpu().eval()
            field = model.decoder.volumes(zero, 1)[0].float().numpy() * intensity
            write_map(job.path(_class_name(k, "_field.mrc")), field, data.pixel_size)
            save_weights(job.path(_class_name(k, "_weights.pt")), model, scale=state.scale,
                         pixel_size=data.pixel_size, original_box=data.original_box)
    consensus = [_consensus(job, out.subset(np.nonzero(labels == k)[0]), k) for k in range(K)]
    sizes = np.bincount(labels, minlength=K)
    job.write_report(_report(particles, state, consensus, sizes, particles.single_pixel_size()))
    for k in range(K):
        console.err.print(f"class {k + 1}: {sizes[k]} particles ({100 * sizes[k] / n:.1f}%)", markup=False)


def _consensus(job, members: ParticleSet, k: int) -> np.ndarray | None:
    """Class k's consensus map: the gold-standard reconstruction of its particles with their poses in that class
    (FSC-Wiener filtered, solvent-masked, as ``vitreous backproject``); writes class_00k.mrc and its unfiltered
    half maps; None (nothing written) for a class with fewer than two particles."""
    from vitreous.io.mrc import write_map
    from vitreous.reconstruct.backproject import backproject, solvent_mask

    if len(members) < 2:
        return None
    maps = backproject(members, filtered_halves=False)
    volume = maps.full * solvent_mask(members.box, maps.voxel_size)
    write_map(job.path(_class_name(k)), volume, maps.voxel_size)
    for h, half in enumerate((maps.half1_unfiltered, maps.half2_unfiltered)):
        write_map(job.path(_class_name(k, f"_half_map_{h + 1}.mrc")), half, maps.voxel_size)
    return volume


def _save_npy(path: Path, array: np.ndarray) -> None:
    import numpy as np

    from vitreous.io.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def _report(particles: ParticleSet, state: MixtureState, maps: list, sizes, pixel_size: float) -> Report:
    import numpy as np
    import pandas as pd

    from vitreous.physics.rotations import matrix_to_euler
    from vitreous.report import Report
    from vitreous.report.figures import map_views, orientation_plot
    from vitreous.report.imaging import new_figure

    report = Report("Neural ab initio: mixture of neural fields", particles.source)
    n = int(sizes.sum())
    report.section("Classes").table(pd.DataFrame({"class": np.arange(1, len(sizes) + 1), "particles": sizes,
                                                  "fraction": sizes / n}),
                                    "Particles per class (most probable class of the mixture)")
    fig = new_figure(8, 3.2)
    left, right = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in state.history]
    left.plot(epochs, [h["loss"] for h in state.history], marker="o")
    left.set_xlabel("epoch")
    left.set_ylabel("loss per image")
    fractions = np.array([h["class_fractions"] for h in state.history])
    for k in range(fractions.shape[1]):
        right.plot(epochs, fractions[:, k], marker="o", label=f"class {k + 1}")
    right.set_xlabel("epoch")
    right.set_ylabel("fraction of particles")
    right.legend(fontsize=8)
    report.figure(fig, f"Training: loss and class sizes ({state.seconds:.0f} s, of which pose search "
                       f"{state.search_seconds:.0f} s)")
    for k, volume in enumerate(maps):
        if volume is not None:
            report.section(f"Class {k + 1}").figure(map_views(volume, pixel_size),
                                                    "Consensus map: slices, projections")
    labels = state.responsibilities.argmax(1)
    rotations = state.rotations[np.arange(len(labels)), labels]
    euler = np.asarray(matrix_to_euler(rotations.astype(np.float64)))
    report.section("Orientations").figure(orientation_plot(euler), "Orientations in the most probable class")
    return report


def register(app: typer.Typer) -> None:
    """Add ``abinit-neural`` to the app."""

    @app.command("abinit-neural", help="Poses, classes and conformations without poses or reference: the ab initio "
                                       "stages of `vitreous abinit` (stochastic EM with global pose search, "
                                       "class and pose assignment, refinement per class), then a mixture of K "
                                       "neural fields (one VAE per class: encoder and latent-conditioned voxel "
                                       "decoder) trained on the mixture likelihood, with a pose for every "
                                       "particle in every class refreshed by local search.  Writes OUT/"
                                       "class_001.mrc ... (consensus map of each class: gold-standard "
                                       "reconstruction of its particles with their final poses, Wiener-filtered "
                                       "and masked; its unfiltered half maps class_00k_half_map_1/2.mrc), "
                                       "class_00k_field.mrc (the neural field at z = 0, training box), "
                                       "class_00k_refined.mrc (before the neural stage), class_00k_weights.pt, z.npy "
                                       "(N x K x Z), particles.star (poses, rlnClassNumber, vtsClassProbabilityK, "
                                       "latents vtsLatent* of the most probable class), per class "
                                       "class_00k_particles.star and class_00k_z.npy (its particles), "
                                       "report.html.")
    def abinit_neural(
        particles: Annotated[Path, typer.Argument(help="Particles with CTF (.star, .cs, .pkl); poses ignored.")],
        out: OutDir,
        classes: Annotated[int, typer.Option("--classes", "-K", help="Number of neural fields (classes).")] = 1,
        zdim: Annotated[int, typer.Option("--zdim", help="Latent dimension per class (0: homogeneous).")] = 0,
        epochs: Annotated[int | None, typer.Option(
            "--epochs", help="Epochs of mixture training (default: 10 for homogeneous classes, 20 with --zdim > 0: "
                             "with 10 the latents of 2.6k adenylate kinase particles with their true poses "
                             "followed the frame with Spearman 0.76, with 20 0.91).")] = None,
        downsample: Annotated[int | None, typer.Option(
            "--downsample", metavar="BOX", help="Train at this box (Fourier cropping).")] = None,
        search_every: Annotated[int, typer.Option(
            "--search-every", help="Local pose search every this many epochs (0: never).")] = 2,
        iterations: Annotated[int, typer.Option("--iterations", help="Mini-batches of stochastic EM.")] = 40,
        final_resolution: Annotated[float, typer.Option(
            "--final-resolution", metavar="Å", help="Resolution compared at the end of stochastic EM.")] = 12.0,
        keep_duplicates: Annotated[bool, typer.Option(
            "--keep-duplicates", help="Do not merge classes that converged to the same structure (by default "
                                      "they are merged after stage 2 and the surplus classes left empty: a class "
                                      "is one protein, its conformations are latent).")] = False,
        refine_iterations: Annotated[int, typer.Option(
            "--refine-iterations", help="Refinement iterations per class before the neural stage.")] = 6,
        conformations: Annotated[int, typer.Option(
            "--conformations", help="With --zdim > 0: before the neural stage, realign each class's particles as "
                                    "`classify3d --realign` with this many classes started from the class's map, "
                                    "and start from those poses (0 or 1: the consensus poses).  On 2.4k adenylate "
                                    "kinase particles the latent's Spearman correlation with the frame rose from "
                                    "-0.02 to 0.69.")] = DEFAULT_CONFORMATIONS,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Images per training step.")] = 64,
        max_seconds: Annotated[float | None, typer.Option(
            "--max-seconds", help="Stop the neural training after this many seconds.")] = None,
        datadir: Datadir = None,
        apix: Apix = None,
        device: Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1 ...")] = "cpu",
        seed: Annotated[int, typer.Option("--seed", help="Seed of all random choices.")] = 0,
        resume: Resume = False,
        overwrite: Overwrite = False,
    ) -> None:
        from vitreous.neural.mixture import MixtureOptions
        from vitreous.neural.train import TrainOptions
        from vitreous.reconstruct.abinit import AbinitOptions

        if epochs is None:
            epochs = DEFAULT_EPOCHS if zdim == 0 else DEFAULT_EPOCHS_LATENT
        if min(epochs, batch_size) < 1 or min(search_every, refine_iterations) < 0:
            raise InputError(None, "--epochs and --batch-size must be at least 1, --search-every and "
                             "--refine-iterations 0 or more", "fix the options")
        options = AbinitOptions(classes=classes, iterations=iterations, final_resolution_A=final_resolution,
                                refine_iterations=refine_iterations, device=device, seed=seed,
                                merge_duplicates=not keep_duplicates)
        neural = MixtureOptions(train=TrainOptions(epochs=epochs, batch_size=batch_size, device=device, seed=seed,
                                                   max_seconds=max_seconds), search_every=search_every)
        run_abinit_neural(particles, out, options, neural, zdim=zdim, conformations=conformations,
                          downsample=downsample, datadir=datadir, apix=apix, resume=resume, overwrite=overwrite)
