"""``vitreous classify3d``: 3D classification of particles with known poses (EM over classes, with CTF)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vitreous.cli import console
from vitreous.cli.options import Apix, Datadir, OutDir, Overwrite, Resume

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

    from vitreous.data.particles import ParticleSet
    from vitreous.reconstruct.classify3d import ClassificationResult
    from vitreous.report import Report

POSTERIOR_PREFIX = "vtsClassPosterior"
CHECKPOINT = "state"
MAX_PAIR_CLASSES = 5  # up to this many classes the report plots the FSC of every pair of class maps


def run_classify3d(particles_path: Path, out: Path, *, reference: Path, classes: int, iterations: int = 25,
                   initial_lowpass: float = 30.0, tolerance: float = 0.002, batch_size: int = 512,
                   device: str = "cpu", seed: int = 0, datadir: Path | None = None, apix: float | None = None,
                   overwrite: bool = False, resume: bool = False) -> Path:
    """Classify into the job folder ``out``; returns the path of the output ``particles.star``.

    Under ``torchrun`` every process classifies its shard of the particles and rank 0 writes the job; the
    checkpoint holds all particles, so ``--resume`` works with any number of processes.
    """
    import logging
    from contextlib import nullcontext

    from vitreous.cli.progress import progress_bar
    from vitreous.distributed.ranks import process_group, rank_failures
    from vitreous.io.formats import read_particles
    from vitreous.io.mrc import read_map
    from vitreous.jobs import Job
    from vitreous.reconstruct.classify3d import check_inputs, check_options, classify3d, match_reference

    log = logging.getLogger("vitreous.classify3d")
    check_options(iterations=iterations, initial_lowpass=initial_lowpass, tolerance=tolerance,
                  batch_size=batch_size)
    particles = read_particles(particles_path, datadir=datadir, apix=apix)
    check_inputs(particles, classes)
    voxel = particles.single_pixel_size()
    ref_map, ref_voxel = read_map(reference)
    ref_map, notes = match_reference(ref_map, ref_voxel, particles.box, voxel, str(reference))
    params = {"reference": str(reference), "classes": classes, "iterations": iterations,
              "initial_lowpass_A": initial_lowpass, "tolerance": tolerance, "batch_size": batch_size,
              "device": device, "seed": seed, "apix": apix}
    with (process_group(device) as (ranks, device),
          Job.open(out, command="classify3d", params=params, inputs=[particles_path, reference], overwrite=overwrite,
                   resume=resume, ranks=ranks) as job,
          rank_failures(ranks)):
        state = job.load_checkpoint(CHECKPOINT) if job.resumed else None
        if ranks.is_main:
            for note in notes:
                log.warning(note)
            if state is not None:
                log.info("resuming after iteration %d", state["iteration"])
        total = len(ranks.shard(len(particles))) * iterations
        bar = progress_bar(total, "classifying (particles x iterations)") if ranks.is_main else nullcontext(None)
        with bar as advance:
            result = classify3d(particles, ref_map, classes, iterations=iterations,
                                initial_lowpass=initial_lowpass, tolerance=tolerance, batch_size=batch_size,
                                device=device, seed=seed, state=state,
                                on_state=lambda s: job.save_checkpoint(CHECKPOINT, s.to_dict()),
                                progress=advance, ranks=ranks)
        if ranks.is_main:
            _write_results(job, particles, result)
    return job.path("particles.star")


def _write_results(job, particles: ParticleSet, result: ClassificationResult) -> None:
    """The class maps, particles.star, class_sizes.csv, fsc.csv, report.html and the class sizes on the console."""
    from vitreous.io.mrc import write_map

    classes, voxel = result.maps.shape[0], result.voxel_size
    for k in range(classes):
        write_map(job.path(f"class_{k + 1:03d}.mrc"), result.maps[k], voxel)
    _write_particles(job.path("particles.star"), particles, result)
    _write_table(job.path("class_sizes.csv"), _size_table(result))
    _write_table(job.path("fsc.csv"), _fsc_table(result))
    job.write_report(_report(particles, result))
    for k, n in enumerate(_final_counts(result)):
        console.err.print(f"class {k + 1}: {n} particles ({100 * n / len(particles):.1f}%)", markup=False)


def _final_counts(result: ClassificationResult) -> list[int]:
    import numpy as np

    return np.bincount(result.class_number - 1, minlength=result.maps.shape[0]).tolist()


def _write_particles(path: Path, particles: ParticleSet, result: ClassificationResult) -> None:
    """``particles.star`` with rlnClassNumber (1-based), rlnMaxValueProbDistribution and the posteriors."""
    from dataclasses import replace

    from vitreous.io.formats import write_particles

    table = particles.particles.drop(columns=[c for c in particles.particles if c.startswith(POSTERIOR_PREFIX)])
    table["rlnClassNumber"] = result.class_number
    table["rlnMaxValueProbDistribution"] = result.max_probability.astype("float64")
    for k in range(result.posteriors.shape[1]):
        table[f"{POSTERIOR_PREFIX}{k + 1}"] = result.posteriors[:, k].astype("float64")
    write_particles(path, replace(particles, particles=table))


def _write_table(path: Path, table: pd.DataFrame) -> None:
    from vitreous.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def _size_table(result: ClassificationResult) -> pd.DataFrame:
    """One row per iteration and class: posterior sum, most-probable count, fraction, resolution (Å)."""
    import pandas as pd

    rows = []
    n = float(sum(result.history[0]["sizes"])) if result.history else 1.0
    for record in result.history:
        for k, size in enumerate(record["sizes"]):
            rows.append({"iteration": record["iteration"], "class": k + 1, "particles": size,
                         "most_probable": record["counts"][k], "fraction": size / n,
                         "resolution_A": record["resolution_A"][k], "changed_fraction": record["changed"],
                         "estep_limit_A": record["estep_limit_A"]})
    return pd.DataFrame(rows)


def _pair_curves(result: ClassificationResult) -> dict[str, np.ndarray]:
    """FSC between class maps: every pair for few classes, else each class against its most similar one."""
    from vitreous.reconstruct.classify3d import class_fsc

    pairs = class_fsc(result.maps, result.voxel_size)
    K = result.maps.shape[0]
    if K <= MAX_PAIR_CLASSES:
        chosen = list(pairs)
    else:
        chosen = []
        for k in range(1, K + 1):
            mine = {p: c for p, c in pairs.items() if k in p}
            best = max(mine, key=lambda p: float(mine[p].mean()))
            if best not in chosen:
                chosen.append(best)
    return {f"class {j} vs {k}": pairs[(j, k)] for j, k in chosen}


def _fsc_table(result: ClassificationResult) -> pd.DataFrame:
    """Frequency (1/Å), resolution (Å), each class's half-map FSC and the FSC between every pair of classes."""
    import numpy as np
    import pandas as pd

    from vitreous.reconstruct.classify3d import class_fsc

    frequency = result.frequency
    table = {"frequency_invA": frequency, "resolution_A": 1 / np.maximum(frequency, 1e-12)}
    for k in range(result.maps.shape[0]):
        table[f"fsc_class_{k + 1:03d}_halves"] = result.fsc[k]
    for (j, k), curve in class_fsc(result.maps, result.voxel_size).items():
        table[f"fsc_class_{j:03d}_vs_{k:03d}"] = curve
    return pd.DataFrame(table)


def _size_figure(result: ClassificationResult) -> Figure:
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    from vitreous.report.imaging import new_figure

    fig = new_figure(7, 3.6)
    ax = fig.subplots()
    iterations = [r["iteration"] for r in result.history]
    sizes = np.array([r["sizes"] for r in result.history])
    for k in range(sizes.shape[1]):
        ax.plot(iterations, sizes[:, k], marker="o", label=f"class {k + 1}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel("particles (sum of posteriors)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return fig


def _report(particles: ParticleSet, result: ClassificationResult) -> Report:
    import pandas as pd

    from vitreous.analysis.fsc import resolution_at
    from vitreous.report import Report
    from vitreous.report.figures import fsc_plot, map_views

    K = result.maps.shape[0]
    counts = _final_counts(result)
    report = Report("3D classification", particles.source)
    report.section("Summary").key_values({
        "particles": len(particles), "classes": K, "iterations": len(result.history),
        "converged": "yes" if result.converged else "no (iteration limit)",
        "box (px)": particles.box, "pixel size (Å)": result.voxel_size,
        "mean max. posterior": float(result.max_probability.mean())})
    report.table(pd.DataFrame({
        "class": range(1, K + 1), "particles (most probable)": counts,
        "fraction": [c / len(particles) for c in counts],
        "resolution FSC=0.143 (Å)": [resolution_at(result.frequency, result.fsc[k]) for k in range(K)]}))
    report.section("Class sizes per iteration").figure(_size_figure(result))
    sizes = _size_table(result).pivot(index="iteration", columns="class", values="particles")
    sizes = sizes.rename(columns=lambda k: f"class {k}").rename_axis(columns=None).reset_index()
    report.table(sizes, "particles per class (sum of posteriors)")
    report.section("Class maps")
    for k in range(K):
        report.figure(map_views(result.maps[k], result.voxel_size, title=f"class {k + 1}"),
                      f"class {k + 1}: {counts[k]} particles; central slices and projections")
    report.section("FSC")
    halves = {f"class {k + 1} (half maps)": result.fsc[k] for k in range(K)}
    report.figure(fsc_plot(result.frequency, halves), "Each class's half-map FSC")
    if K > 1:
        caption = "FSC between class maps (low: the classes differ at that resolution)"
        if K > MAX_PAIR_CLASSES:
            caption += "; each class against the class most similar to it"
        report.figure(fsc_plot(result.frequency, _pair_curves(result)), caption)
    return report


def register(app: typer.Typer) -> None:
    """Add ``classify3d`` to the app."""

    @app.command(help="3D classification of particles with known poses and CTF (poses are not refined, unless "
                      "--realign): "
                      "expectation-maximisation over K classes started from a reference map low-passed to "
                      "--initial-lowpass Å with random perturbations.  Writes OUT/class_001.mrc ..., "
                      "particles.star (rlnClassNumber, 1-based; rlnMaxValueProbDistribution; posteriors "
                      "vtsClassPosterior1..K), class_sizes.csv, fsc.csv (frequency 1/Å, resolution Å), "
                      "report.html.")
    def classify3d(
        particles: Annotated[Path, typer.Argument(help="Particles with poses and CTF (.star, .cs, .pkl).")],
        out: OutDir,
        reference: Annotated[Path, typer.Option(
            "--reference", metavar="REF.mrc",
            help="Starting map, e.g. a consensus refinement of these particles (resampled to their box and "
                 "pixel size if needed).")],
        classes: Annotated[int, typer.Option("--classes", "-K", help="Number of classes K.")],
        iterations: Annotated[int | None, typer.Option(
            "--iterations", help="Maximum number of EM iterations (default 25); with --realign, mini-batches of "
                                 "stochastic EM (default 40).")] = None,
        realign: Annotated[bool, typer.Option(
            "--realign", help="Also search every particle's pose (poses in the input are not needed): "
                              "stochastic EM on mini-batches with global pose search, classes started from the "
                              "reference plus noise, then each class refined (as `vitreous abinit`, which see "
                              "for the outputs).")] = False,
        refine_iterations: Annotated[int, typer.Option(
            "--refine-iterations", help="With --realign: refinement iterations per class.")] = 6,
        final_resolution: Annotated[float, typer.Option(
            "--final-resolution", metavar="Å", help="With --realign: resolution compared at the end of stochastic "
                                                    "EM and in the class assignment.")] = 12.0,
        initial_lowpass: Annotated[float, typer.Option(
            "--initial-lowpass", metavar="Å", help="Low-pass filter of the reference for the start (Å).")] = 30.0,
        tolerance: Annotated[float, typer.Option(
            "--tolerance", help="Stop when at most this fraction of the particles changes class.")] = 0.002,
        batch_size: Annotated[int, typer.Option(
            "--batch-size", help="Images per batch (memory: about 200 bytes x box² per image, besides about "
                                 "50 bytes x (2 box)³ per class).")] = 512,
        device: Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1 ...")] = "cpu",
        seed: Annotated[int, typer.Option("--seed", help="Seed of the perturbations and the random half "
                                                         "split.")] = 0,
        datadir: Datadir = None,
        apix: Apix = None,
        overwrite: Overwrite = False,
        resume: Resume = False,
    ) -> None:
        if realign:
            import os

            from vitreous.cli.abinit import run_abinit
            from vitreous.errors import InputError

            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise InputError(None, "classify3d --realign does not run under torchrun",
                                 "run it as one process (without torchrun)")
            from vitreous.reconstruct.abinit import AbinitOptions

            options = AbinitOptions(classes=classes, iterations=40 if iterations is None else iterations,
                                    initial_resolution_A=initial_lowpass,
                                    final_resolution_A=final_resolution, refine_iterations=refine_iterations,
                                    batch_size=min(batch_size, 256), balance=False,
                                    device=device, seed=seed)
            run_abinit(particles, out, options, datadir=datadir, apix=apix, resume=resume, overwrite=overwrite,
                       reference=reference)
            return
        run_classify3d(particles, out, reference=reference, classes=classes,
                       iterations=25 if iterations is None else iterations,
                       initial_lowpass=initial_lowpass, tolerance=tolerance, batch_size=batch_size, device=device,
                       seed=seed, datadir=datadir, apix=apix, overwrite=overwrite, resume=resume)
