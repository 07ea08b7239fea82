"""``vitreous class2d``: 2D classification (EM over class averages, in-plane rotations and shifts, with CTF)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vitreous.cli import console
from vitreous.cli.options import Apix, Datadir, OutDir, Overwrite, Resume

if TYPE_CHECKING:
    import pandas as pd

    from vitreous.classify.class2d import Class2DOptions, Class2DState
    from vitreous.data.particles import ParticleSet
    from vitreous.report import Report

CHECKPOINT = "class2d"
AVERAGES = "class_averages.mrcs"
CLASS_TABLE = "classes.csv"


def run_class2d(particles_path: Path, out: Path, options: Class2DOptions, *, datadir: Path | None = None,
                apix: float | None = None, resume: bool = False, overwrite: bool = False) -> Path:
    """Classify into the job folder ``out``; returns the path of ``particles.star``.  Inputs are checked first."""
    import logging
    from dataclasses import asdict

    from vitreous.classify.class2d import Class2DState, check_images, check_inputs, classify
    from vitreous.cli.progress import progress_bar
    from vitreous.io.formats import read_particles
    from vitreous.jobs import Job

    log = logging.getLogger("vitreous.class2d")
    particles = read_particles(particles_path, datadir=datadir, apix=apix)
    check_inputs(particles, options)
    check_images(particles)
    params = {**asdict(options), "apix": apix}
    with Job.open(out, command="class2d", params=params, inputs=[particles_path], overwrite=overwrite,
                  resume=resume) as job:
        saved = job.load_checkpoint(CHECKPOINT) if job.resumed else None
        state = Class2DState.from_dict(saved) if saved is not None else None
        if state is not None:
            log.info("resuming after iteration %d", state.iteration)
        state = classify(particles, options, state,
                         on_iteration=lambda s: job.save_checkpoint(CHECKPOINT, s.to_dict()),
                         progress=lambda text, n: progress_bar(n, text))
        _write_results(job, particles, state)
    return job.path("particles.star")


def class_table(state: Class2DState) -> pd.DataFrame:
    """One row per class: class (1-based), particles (most probable), fraction, resolution (Å, SSNR = 1)."""
    import pandas as pd

    sizes = state.sizes
    return pd.DataFrame({"class": range(1, len(sizes) + 1), "particles": sizes,
                         "fraction": sizes / max(sizes.sum(), 1), "resolution_A": state.resolution_A})


def _write_results(job, particles: ParticleSet, state: Class2DState) -> None:
    from vitreous.classify.class2d import classified_particles
    from vitreous.io.atomic import atomic_path
    from vitreous.io.formats import write_particles
    from vitreous.io.mrc import write_map

    pixel_size = particles.single_pixel_size()
    write_map(job.path(AVERAGES), state.references, pixel_size)
    write_particles(job.path("particles.star"), classified_particles(particles, state))
    table = class_table(state)
    with atomic_path(job.path(CLASS_TABLE)) as tmp:
        table.to_csv(tmp, index=False)
    job.write_report(_report(particles, state, table))
    populated = table[table["particles"] > 0]
    console.err.print(f"{len(populated)} of {len(table)} classes populated; largest: "
                      + ", ".join(f"class {c} ({n})" for c, n in
                                  populated.sort_values("particles", ascending=False)[["class", "particles"]]
                                  .head(5).itertuples(index=False)), markup=False)


def class_gallery(report: Report, averages, table: pd.DataFrame, caption: str) -> None:
    """The class averages as a gallery sorted by class size (largest first), labelled with size and resolution."""
    ordered = table.sort_values("particles", ascending=False, kind="stable")
    labels = [f"class {c}: {n} ({r:.0f} Å)" for c, n, r in
              ordered[["class", "particles", "resolution_A"]].itertuples(index=False)]
    report.gallery([averages[c - 1] for c in ordered["class"]], labels, caption)


def _report(particles: ParticleSet, state: Class2DState, table: pd.DataFrame) -> Report:
    import numpy as np
    import pandas as pd

    from vitreous.report import Report

    report = Report("2D classification", particles.source)
    report.section("Summary").key_values({
        "particles": len(particles), "classes": len(table), "populated classes": int((table["particles"] > 0).sum()),
        "iterations": state.iteration, "box (px)": particles.box, "pixel size (Å)": particles.single_pixel_size(),
        "best class resolution (Å)": float(table.loc[table["particles"] > 0, "resolution_A"].min()),
        "mean max. posterior": float(np.mean(state.max_posterior))})
    report.section("Class averages")
    class_gallery(report, state.references, table, "sorted by size: class number, particles, resolution "
                                                   "(SSNR = 1)")
    report.table(table.sort_values("particles", ascending=False), "classes by size", max_rows=len(table))
    report.section("Iterations").table(pd.DataFrame(state.history), "search limit and best class resolution "
                                                                   "in Å, fraction of particles changing class")
    return report


def register(app: typer.Typer) -> None:
    """Add ``class2d`` to the app."""

    @app.command(help="2D classification: EM over K class averages, in-plane rotations and origin shifts with "
                      "CTF (noise-whitened Gaussian likelihood, posterior-weighted Wiener averages, frequency "
                      "marching, centred and masked averages).  Writes OUT/class_averages.mrcs, particles.star "
                      "(rlnClassNumber, rlnAnglePsi, rlnOriginX/YAngst, rlnMaxValueProbDistribution), "
                      "classes.csv and report.html with the averages sorted by class size.")
    def class2d(
        particles: Annotated[Path, typer.Argument(help="Particles (.star, .cs, .pkl), with CTF unless --no-ctf.")],
        classes: Annotated[int, typer.Option("--classes", "-K", help="Number of classes K.")],
        out: OutDir,
        datadir: Datadir = None,
        apix: Apix = None,
        iterations: Annotated[int, typer.Option("--iterations", help="Number of EM iterations.")] = 25,
        diameter: Annotated[float | None, typer.Option(
            "--diameter", metavar="Å", help="Diameter of the soft circular mask on the averages (default 90 % "
                                            "of the box).")] = None,
        psi_step: Annotated[float, typer.Option("--psi-step", metavar="DEG",
                                                help="In-plane angular step in degrees.")] = 10.0,
        offset_range: Annotated[float, typer.Option(
            "--offset-range", metavar="PX", help="Shift search range in pixels around each image's origin (the "
                                                 "first --global-iterations; then --local-range).")] = 5.0,
        offset_step: Annotated[float, typer.Option("--offset-step", metavar="PX",
                                                   help="Shift search step in pixels.")] = 1.0,
        local_range: Annotated[float, typer.Option("--local-range", metavar="PX",
                                                   help="Shift range of the later iterations.")] = 2.0,
        global_iterations: Annotated[int, typer.Option(
            "--global-iterations", help="Iterations searching the whole --offset-range.")] = 3,
        subset: Annotated[int, typer.Option(
            "--subset", metavar="N", help="Particles per class seen by each E-step before the last "
                                          "--full-iterations (random subsets; 0: all particles always).")] = 100,
        full_iterations: Annotated[int, typer.Option(
            "--full-iterations", help="Final iterations over all particles.")] = 5,
        max_resolution: Annotated[float, typer.Option(
            "--max-resolution", metavar="Å", help="Highest resolution compared in the E-step (0: Nyquist); the "
                                                  "averages use all frequencies.")] = 10.0,
        keep: Annotated[int, typer.Option("--keep", help="Most probable poses kept per particle.")] = 8,
        hard: Annotated[bool, typer.Option("--hard", help="Maximum-a-posteriori: each particle goes to its "
                                                          "best pose only.")] = False,
        no_center: Annotated[bool, typer.Option("--no-center", help="Do not centre the averages on their centre "
                                                                    "of mass.")] = False,
        no_ctf: Annotated[bool, typer.Option("--no-ctf", help="Images without CTF (CTF = 1).")] = False,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Images per batch (memory).")] = 256,
        device: Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1 ...")] = "cpu",
        seed: Annotated[int, typer.Option("--seed", help="Seed of the random initial classes.")] = 0,
        resume: Resume = False,
        overwrite: Overwrite = False,
    ) -> None:
        from vitreous.classify.class2d import Class2DOptions

        options = Class2DOptions(
            classes=classes, iterations=iterations, diameter_A=diameter, psi_step_deg=psi_step,
            offset_range_px=offset_range, offset_step_px=offset_step, local_range_px=local_range,
            global_iterations=global_iterations, subset_per_class=subset, full_iterations=full_iterations,
            max_resolution_A=max_resolution if max_resolution != 0 else None, keep=1 if hard else keep,
            center=not no_center, use_ctf=not no_ctf, batch_size=batch_size, device=device, seed=seed)
        run_class2d(particles, out, options, datadir=datadir, apix=apix, resume=resume, overwrite=overwrite)
