"""``vitreous refine``: gold-standard 3D refinement of particle poses against a reference map."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vitreous.cli import console
from vitreous.cli.options import Apix, Datadir, OutDir, Overwrite, Resume
from vitreous.errors import InputError

if TYPE_CHECKING:
    from vitreous.data.particles import ParticleSet
    from vitreous.reconstruct.refine import RefineOptions, RefineState
    from vitreous.report import Report

CHECKPOINT = "refine"


def load_reference(path: Path, box: int, pixel_size: float, warn: bool = True) -> Any:
    """The reference map on the particles' grid (resampled, with a warning unless ``warn`` is False)."""
    from vitreous.io.mrc import read_map
    from vitreous.reconstruct.refine import match_reference

    volume, voxel = read_map(path)
    volume, warnings = match_reference(volume, voxel, box, pixel_size, str(path))
    for warning in warnings if warn else ():
        console.err.print(f"warning: {path}: {warning}", markup=False, soft_wrap=True)
    return volume


def run_refine(particles_path: Path, reference_path: Path, out: Path, options: RefineOptions, *,
               datadir: Path | None = None, apix: float | None = None, resume: bool = False,
               overwrite: bool = False) -> Path:
    """Refine into the job folder ``out``; returns the path of ``map.mrc``.  Inputs are checked first.

    Under ``torchrun`` every process refines its shard of the particles and rank 0 writes the job; the
    checkpoint holds all particles, so ``--resume`` works with any number of processes.
    """
    from dataclasses import asdict, replace

    from vitreous.cli.progress import progress_bar
    from vitreous.distributed.ranks import process_group, rank_failures
    from vitreous.io.formats import read_particles
    from vitreous.jobs import Job
    from vitreous.reconstruct.refine import RefineState, check_particles, initial_state, refine

    particles = read_particles(particles_path, datadir=datadir, apix=apix)
    box, pixel_size = check_particles(particles)
    if options.symmetry.upper() != "C1":
        from vitreous.physics.symmetry import parse_symmetry

        parse_symmetry(options.symmetry)
    if options.local_only and not particles.has_poses:
        raise InputError(particles_path, "--local-only needs poses (rlnAngleRot/Tilt/Psi) in the particles",
                         "leave out --local-only for a global search")
    params = {**asdict(options), "apix": apix}
    with process_group(options.device) as (ranks, device):
        reference = load_reference(reference_path, box, pixel_size, warn=ranks.is_main)
        with Job.open(out, command="refine", params=params, inputs=[particles_path, reference_path],
                      overwrite=overwrite, resume=resume, ranks=ranks) as job, rank_failures(ranks):
            saved = job.load_checkpoint(CHECKPOINT) if job.resumed else None
            state = (RefineState.from_dict(saved) if saved is not None
                     else initial_state(particles, reference, options))
            if saved is not None and ranks.is_main:
                console.err.print(f"resuming after iteration {state.iteration}", markup=False)
            state = refine(particles, state, replace(options, device=device),
                           on_iteration=lambda s: job.save_checkpoint(CHECKPOINT, s.to_dict()),
                           progress=(lambda text, n: progress_bar(n, text)) if ranks.is_main else None, ranks=ranks)
            if ranks.is_main:
                _write_results(job, particles, state, options, pixel_size)
    return job.path("map.mrc")


def _write_results(job, particles: ParticleSet, state: RefineState, options: RefineOptions,
                   pixel_size: float) -> None:
    import numpy as np
    import pandas as pd

    from vitreous.analysis.fsc import resolution_at
    from vitreous.io.atomic import atomic_path
    from vitreous.io.mrc import write_map
    from vitreous.io.star import write_star
    from vitreous.reconstruct.refine import masked_fsc

    if state.iteration == 0 or state.frequency is None:
        raise InputError(None, "no iteration was run", "give --iterations 1 or more")
    write_map(job.path("map.mrc"), state.full_map, pixel_size)
    write_map(job.path("half_map_1.mrc"), state.references[0], pixel_size)
    write_map(job.path("half_map_2.mrc"), state.references[1], pixel_size)
    refined = particles.with_poses(rotations=state.rotations, shifts_angst=state.shifts_px * pixel_size)
    refined = refined.with_columns(rlnRandomSubset=state.halves + 1, rlnMaxValueProbDistribution=state.max_weight,
                                   rlnNrOfSignificantSamples=state.significant)
    write_star(job.path("particles.star"), refined)
    frequency, final = state.frequency, state.fsc[-1]
    masked = masked_fsc(state, options, pixel_size)
    with np.errstate(divide="ignore"):
        table = {"frequency_invA": frequency, "resolution_A": np.where(frequency > 0, 1 / np.maximum(frequency, 1e-12),
                                                                       np.inf),
                 "fsc_half_maps": final, "fsc_half_maps_masked": masked}
    for k, curve in enumerate(state.fsc, start=1):
        table[f"fsc_iteration_{k}"] = curve
    with atomic_path(job.path("fsc.csv")) as tmp:
        pd.DataFrame(table).to_csv(tmp, index=False)
    summary = {
        "particles": len(particles), "box (px)": particles.box, "pixel size (Å)": pixel_size,
        "symmetry": options.symmetry, "iterations": state.iteration,
        "stopped because": "converged" if state.converged else "iteration limit",
        "FSC=0.143 (half maps, Å)": resolution_at(frequency, final, 0.143),
        "FSC=0.5 (half maps, Å)": resolution_at(frequency, final, 0.5),
        "FSC=0.143 (masked half maps, Å)": resolution_at(frequency, masked, 0.143),
        "mean max posterior (rlnMaxValueProbDistribution)": float(np.mean(state.max_weight)),
        "mean poses inserted per particle": float(np.mean(state.significant)),
    }
    job.write_report(_report(particles, state, summary, frequency, masked, pixel_size))
    for key in ("iterations", "FSC=0.143 (half maps, Å)", "FSC=0.5 (half maps, Å)", "FSC=0.143 (masked half maps, Å)"):
        value = summary[key]
        console.err.print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}", markup=False)


def _report(particles: ParticleSet, state: RefineState, summary: dict, frequency, masked, pixel_size: float) -> Report:
    import numpy as np
    import pandas as pd

    from vitreous.physics.rotations import matrix_to_euler
    from vitreous.report import Report
    from vitreous.report.figures import fsc_plot, map_views, orientation_plot

    report = Report("3D refinement", particles.source)
    report.section("Resolution").key_values(summary)
    curves = {f"iteration {k}": c for k, c in enumerate(state.fsc, start=1)}
    curves["final, masked"] = masked
    report.figure(fsc_plot(frequency, curves), "Half-map FSC after each iteration (gold standard)")
    report.figure(_resolution_plot(state.history), "Resolution per iteration")
    rows = [{k: v for k, v in h.items() if not isinstance(v, dict | list)} for h in state.history]
    report.table(pd.DataFrame(rows), "Iterations (resolutions in Å, changes of the best pose)")
    report.section("Map").figure(map_views(state.full_map, pixel_size), "Central slices and projections")
    euler = np.asarray(matrix_to_euler(state.rotations.astype(np.float64)))
    report.section("Orientations").figure(orientation_plot(euler), "Refined orientations (RELION rot/tilt)")
    return report


def _resolution_plot(history: list[dict]):
    from vitreous.report.imaging import new_figure

    fig = new_figure(6, 3.5)
    ax = fig.subplots()
    iterations = [h["iteration"] for h in history]
    for key, label in (("resolution_0.143_A", "FSC = 0.143"), ("resolution_0.5_A", "FSC = 0.5"),
                       ("compared_to_A", "search limit")):
        ax.plot(iterations, [h[key] for h in history], marker="o", label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("resolution (Å)")
    ax.set_xticks(iterations)
    ax.legend(fontsize=8)
    return fig


def register(app: typer.Typer) -> None:
    """Add ``refine`` to the app."""

    @app.command(help="Gold-standard 3D refinement: the two half sets (rlnRandomSubset, else random) are "
                      "aligned independently against their own reference (both start from REF low-passed), "
                      "global pose search first, then local searches with finer steps, CTF-weighted "
                      "noise-whitened likelihood, posterior-weighted backprojection.  Writes OUT/map.mrc, "
                      "half_map_1/2.mrc, particles.star (refined poses), fsc.csv, report.html.")
    def refine(
        particles: Annotated[Path, typer.Argument(help="Particles with CTF (.star, .cs, .pkl).")],
        reference: Annotated[Path, typer.Option(
            "--reference", metavar="REF.mrc", help="Initial reference map (resampled to the particles' box and "
                                                   "pixel size if needed).")],
        out: OutDir,
        datadir: Datadir = None,
        apix: Apix = None,
        initial_lowpass: Annotated[float, typer.Option(
            "--initial-lowpass", metavar="Å", help="Low-pass of the initial reference in Å.")] = 30.0,
        mask_diameter: Annotated[float | None, typer.Option(
            "--mask-diameter", metavar="Å", help="Diameter in Å of the soft spherical mask on the references "
                                                 "(default 90 % of the box).")] = None,
        iterations: Annotated[int, typer.Option("--iterations", help="Maximum number of iterations.")] = 10,
        global_iterations: Annotated[int, typer.Option(
            "--global-iterations", help="Iterations with a global pose search before local searches "
                                        "(ignored with --local-only).")] = 3,
        local_only: Annotated[bool, typer.Option(
            "--local-only", help="Only local searches around the poses in the input.")] = False,
        min_step: Annotated[float, typer.Option(
            "--min-step", metavar="DEG", help="Finest angular step of local searches in degrees.")] = 0.9375,
        keep: Annotated[int, typer.Option("--keep", help="Poses kept per particle (soft assignment).")] = 5,
        hard: Annotated[bool, typer.Option("--hard", help="Insert each particle at its best pose only.")] = False,
        max_shift: Annotated[float | None, typer.Option(
            "--max-shift", metavar="Å", help="Largest shift of the global search in Å (default 8 % of the "
                                             "box).")] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Images per batch (memory).")] = 256,
        device: Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1 ...")] = "cpu",
        symmetry: Annotated[str, typer.Option(
            "--symmetry", help="Point group (C1, Cn, Dn, T, O, I as RELION names them).")] = "C1",
        seed: Annotated[int, typer.Option("--seed", help="Seed of the random half split.")] = 0,
        resume: Resume = False,
        overwrite: Overwrite = False,
    ) -> None:
        from vitreous.reconstruct.refine import RefineOptions

        if min(iterations, keep, batch_size, global_iterations) < 1:
            raise InputError(None, "--iterations, --global-iterations, --keep and --batch-size must be at least 1",
                             "fix the options (use --local-only to skip the global search)")
        if initial_lowpass <= 0 or min_step <= 0 or (mask_diameter is not None and mask_diameter <= 0):
            raise InputError(None, "--initial-lowpass, --min-step and --mask-diameter must be positive",
                             "fix the options")
        options = RefineOptions(
            initial_lowpass_A=initial_lowpass, mask_diameter_A=mask_diameter, max_iterations=iterations,
            global_iterations=global_iterations, local_only=local_only, min_step_deg=min_step, keep=keep,
            soft=not hard, max_shift_A=max_shift, batch_size=batch_size, device=device, symmetry=symmetry,
            seed=seed)
        run_refine(particles, reference, out, options, datadir=datadir, apix=apix, resume=resume,
                   overwrite=overwrite)
