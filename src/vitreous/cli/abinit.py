"""``vitreous abinit``: K maps and poses from particles without poses or reference (stochastic EM, refinement)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vitreous.cli import console
from vitreous.cli.options import Apix, Datadir, OutDir, Overwrite, Resume
from vitreous.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from vitreous.data.particles import ParticleSet
    from vitreous.reconstruct.abinit import AbinitOptions, Assignment, SGDState
    from vitreous.reconstruct.refine import RefineState
    from vitreous.report import Report

SGD_CHECKPOINT = "sgd"
CLASSES_CHECKPOINT = "classes"
RESOLVE_CHECKPOINT = "resolve"


def _map_name(k: int, classes: int, suffix: str = "") -> str:
    return f"map{suffix}.mrc" if classes == 1 else f"class_{k + 1:03d}{suffix}.mrc"


@dataclass
class AbinitResult:
    """The three stages' outcome: stage-1 state, stage-2 assignment, stage-3 refinement per class (None for
    a class with fewer than 2 particles)."""

    state: SGDState
    assignment: Assignment
    refined: list[RefineState | None]

    def poses(self) -> tuple[np.ndarray, np.ndarray]:
        """Every particle's pose in its most probable class: from that class's refinement, else from the stage-2
        search (RELION matrices (N, 3, 3), origins (N, 2) px of the particles' box)."""
        import numpy as np

        rotations, shifts = self.assignment.best_poses()
        labels = self.assignment.labels
        for k, refined in enumerate(self.refined):
            if refined is not None:
                members = np.nonzero(labels == k)[0]
                rotations[members], shifts[members] = refined.rotations, refined.shifts_px
        return rotations, shifts


def abinit_stages(job, particles: ParticleSet, options: AbinitOptions, start: np.ndarray | None = None,
                  ) -> AbinitResult:
    """Run (or resume from the checkpoints of ``job``) the three ab initio stages; writes the stage-1 maps."""
    import numpy as np

    from vitreous.cli.progress import progress_bar
    from vitreous.io.mrc import write_map
    from vitreous.reconstruct.abinit import (
        Assignment,
        SGDState,
        initial_sgd_state,
        refine_options,
        run_sgd,
    )
    from vitreous.reconstruct.refine import RefineState, initial_state, refine

    box, pixel_size = particles.box, particles.single_pixel_size()
    K = options.classes
    if particles.has_poses:
        console.err.print(f"warning: the poses in {particles.source} (rlnAngleRot/Tilt/Psi, origins) are ignored: "
                          "every pose is searched afresh", markup=False, soft_wrap=True)
    saved = job.load_checkpoint(SGD_CHECKPOINT) if job.resumed else None
    state = SGDState.from_dict(saved) if saved is not None else initial_sgd_state(particles, options, start)
    if state.iteration:
        console.err.print(f"resuming after mini-batch {state.iteration}", markup=False)
    with progress_bar(options.iterations - state.iteration, "ab initio (stochastic EM)") as advance:
        state = run_sgd(particles, state, options, lambda s: job.save_checkpoint(SGD_CHECKPOINT, s.to_dict()),
                        advance)
    saved = job.load_checkpoint(CLASSES_CHECKPOINT) if job.resumed else None
    if saved is None:
        state, assignment = _assign_and_resolve(job, particles, state, options, start is None)
        if K > 1 and start is None and options.merge_duplicates:
            assignment = _merge_duplicates(state, assignment)
        job.save_checkpoint(CLASSES_CHECKPOINT, {"assignment": assignment.to_dict(), "state": state.to_dict()})
    else:
        state, assignment = SGDState.from_dict(saved["state"]), Assignment.from_dict(saved["assignment"])
    initial = state.full_maps(box)
    for k in range(K):
        write_map(job.path(_map_name(k, K, "_initial")), initial[k], pixel_size)
    rotations, shifts_px = assignment.best_poses()
    refined: list[RefineState | None] = []
    for k in range(K):
        members = np.nonzero(assignment.labels == k)[0]
        if len(members) < 2:
            refined.append(None)
            continue
        subset = particles.subset(members).with_poses(rotations=rotations[members],
                                                      shifts_angst=shifts_px[members] * pixel_size)
        name = f"refine_class_{k + 1:03d}"
        saved = job.load_checkpoint(name) if job.resumed else None
        refine_opts = refine_options(options, float(state.mask_diameters_A[k]))
        begin = RefineState.from_dict(saved) if saved is not None else initial_state(subset, initial[k], refine_opts)
        refined.append(refine(subset, begin, refine_opts,
                              on_iteration=lambda s, name=name: job.save_checkpoint(name, s.to_dict()),
                              progress=lambda text, n, k=k: progress_bar(n, f"class {k + 1}: {text}")))
    return AbinitResult(state, assignment, refined)


def _assign_and_resolve(job, particles: ParticleSet, state: SGDState, options: AbinitOptions, from_noise: bool,
                        ) -> tuple[SGDState, Assignment]:
    """Stage 2, then (several classes from noise) the re-solve rounds, each checkpointed."""
    from vitreous.cli.progress import progress_bar
    from vitreous.reconstruct.abinit import Resolved, assign_classes, resolve_rounds

    saved = job.load_checkpoint(RESOLVE_CHECKPOINT) if job.resumed else None
    if saved is not None:
        resolved = Resolved.from_dict(saved)
    else:
        with progress_bar(len(particles), "class and pose assignment") as advance:
            resolved = Resolved(0, 1.0, state, assign_classes(particles, state, options, advance))
    rounds = options.resolve_rounds if options.classes > 1 and from_noise else 0
    resolved = resolve_rounds(particles, resolved, options, rounds,
                              lambda r: job.save_checkpoint(RESOLVE_CHECKPOINT, r.to_dict()),
                              lambda text, n: progress_bar(n, text))
    return resolved.state, resolved.assignment


def _merge_duplicates(state: SGDState, assignment: Assignment) -> Assignment:
    """Stage-2 assignment with classes of one structure merged into the largest (see
    :mod:`vitreous.analysis.duplicate_classes`)."""
    import numpy as np

    from vitreous.analysis.duplicate_classes import ClassMap, find_duplicates
    from vitreous.reconstruct.abinit import class_resolutions

    resolutions = class_resolutions(state)
    maps = [None if r is None else ClassMap(state.maps[k], r) for k, r in enumerate(resolutions)]
    sizes = np.bincount(assignment.labels, minlength=len(maps))
    duplicates = find_duplicates(maps, sizes, state.small_pixel_size)
    for d in duplicates:
        console.err.print(f"class {d.duplicate + 1} is the structure of class {d.kept + 1} (maps agree to "
                          f"{d.cross_resolution_A:.1f} Å, each determined to {d.own_resolution_A:.1f} Å): merged, "
                          f"class {d.duplicate + 1} left empty", markup=False)
    return assignment.merged([(d.kept, d.duplicate) for d in duplicates])


def run_abinit(particles_path: Path, out: Path, options: AbinitOptions, *, datadir: Path | None = None,
               apix: float | None = None, resume: bool = False, overwrite: bool = False,
               reference: Path | None = None) -> Path:
    """Ab initio into the job folder ``out``; returns the folder.  Inputs are checked first.

    With a ``reference`` map, the classes start from it (``vitreous classify3d --realign``) instead of noise."""
    from dataclasses import asdict

    from vitreous.io.formats import read_particles
    from vitreous.jobs import Job
    from vitreous.reconstruct.refine import check_particles

    particles = read_particles(particles_path, datadir=datadir, apix=apix)
    box, pixel_size = check_particles(particles)
    options.check(particles)
    start = None
    if reference is not None:
        from vitreous.cli.refine import load_reference

        start = load_reference(reference, box, pixel_size)
    command, inputs = ("abinit", [particles_path]) if reference is None else ("classify3d", [particles_path, reference])
    with Job.open(out, command=command, params={**asdict(options), "apix": apix, "realign": reference is not None},
                  inputs=inputs, overwrite=overwrite, resume=resume) as job:
        result = abinit_stages(job, particles, options, start)
        _write_results(job, particles, result.state, result.assignment.posteriors, result.refined, options,
                       pixel_size)
    return out


def _write_results(job, particles: ParticleSet, state: SGDState, posteriors: np.ndarray,
                   refined: list[RefineState | None], options: AbinitOptions, pixel_size: float) -> None:
    import numpy as np
    import pandas as pd

    from vitreous.analysis.fsc import resolution_at
    from vitreous.io.atomic import atomic_path
    from vitreous.io.mrc import write_map
    from vitreous.io.star import write_star

    K, n = options.classes, len(particles)
    labels = posteriors.argmax(1)
    rotations = np.tile(np.eye(3, dtype=np.float32), (n, 1, 1))
    shifts = np.zeros((n, 2), np.float32)
    max_weight, halves = np.zeros(n, np.float32), np.zeros(n, np.int64)
    table: dict[str, np.ndarray] = {}
    rows = []
    for k, result in enumerate(refined):
        members = np.nonzero(labels == k)[0]
        row = {"class": k + 1, "particles": len(members), "fraction": len(members) / n,
               "stage-1 mask (Å)": round(float(state.mask_diameters_A[k]))}
        if result is not None:  # its poses: refined, or from stage 2 with --refine-iterations 0
            write_map(job.path(_map_name(k, K)), result.full_map, pixel_size)
            rotations[members], shifts[members] = result.rotations, result.shifts_px
            max_weight[members], halves[members] = result.max_weight, result.halves
        if result is not None and result.iteration > 0:
            write_map(job.path(_map_name(k, K, "_half_map_1")), result.references[0], pixel_size)
            write_map(job.path(_map_name(k, K, "_half_map_2")), result.references[1], pixel_size)
            table.setdefault("frequency_invA", result.frequency)
            table[f"fsc_class_{k + 1}"] = result.fsc[-1]
            row["FSC=0.143 (Å)"] = resolution_at(result.frequency, result.fsc[-1], 0.143)
            row["FSC=0.5 (Å)"] = resolution_at(result.frequency, result.fsc[-1], 0.5)
            row["refine iterations"] = result.iteration
        rows.append(row)
    out = particles.with_poses(rotations=rotations, shifts_angst=shifts * pixel_size)
    columns = {"rlnClassNumber": labels + 1, "rlnRandomSubset": halves + 1, "rlnMaxValueProbDistribution": max_weight}
    out = out.with_columns(**columns).with_class_probabilities(posteriors if K > 1 else None)
    write_star(job.path("particles.star"), out)
    if table:
        with atomic_path(job.path("fsc.csv")) as tmp:
            pd.DataFrame(table).to_csv(tmp, index=False)
    classes = pd.DataFrame(rows)
    job.write_report(_report(particles, state, refined, classes, rotations, pixel_size))
    for row in rows:
        console.err.print("  ".join(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}"
                                    for key, value in row.items()), markup=False)


def _report(particles: ParticleSet, state: SGDState, refined: list[RefineState | None], classes,
            rotations, pixel_size: float) -> Report:
    import numpy as np

    from vitreous.physics.rotations import matrix_to_euler
    from vitreous.report import Report
    from vitreous.report.figures import fsc_plot, map_views, orientation_plot

    report = Report("Ab initio reconstruction", particles.source)
    report.section("Classes").table(classes, "Particles per class (most probable class) and the resolution of "
                                             "each class after refinement (gold-standard half maps)")
    report.figure(_history_plot(state.history), "Stochastic EM: compared resolution and class fractions per "
                                                "mini-batch")
    for k, result in enumerate(refined):
        if result is None:
            report.section(f"Class {k + 1}").paragraph("fewer than 2 particles: no map")
            continue
        report.section(f"Class {k + 1}")
        report.figure(map_views(result.full_map, pixel_size), "Refined map: central slices and projections")
        if result.fsc:  # none with --refine-iterations 0
            report.figure(fsc_plot(result.frequency, {"half maps": result.fsc[-1]}), "Half-map FSC")
    euler = np.asarray(matrix_to_euler(rotations.astype(np.float64)))
    report.section("Orientations").figure(orientation_plot(euler), "Orientations (RELION rot/tilt)")
    return report


def _history_plot(history: list[dict]):
    import numpy as np

    from vitreous.report.imaging import new_figure

    fig = new_figure(8, 3.2)
    left, right = fig.subplots(1, 2)
    steps = [h["iteration"] for h in history]
    left.plot(steps, [h["resolution_A"] for h in history], label="compared")
    left.plot(steps, [h["half_map_resolution_A"][0] for h in history], label="class 1 half maps (0.143)")
    left.set_xlabel("mini-batch")
    left.set_ylabel("resolution (Å)")
    left.legend(fontsize=8)
    fractions = np.array([h["class_fractions"] for h in history])
    for k in range(fractions.shape[1]):
        right.plot(steps, fractions[:, k], label=f"class {k + 1}")
    right.set_xlabel("mini-batch")
    right.set_ylabel("fraction of the batch")
    right.legend(fontsize=8)
    return fig


def register(app: typer.Typer) -> None:
    """Add ``abinit`` to the app."""

    @app.command(help="Ab initio 3D reconstruction without poses or reference: stochastic EM on mini-batches "
                      "from random maps (global pose search, resolution marching from --initial-resolution to "
                      "--final-resolution on Fourier-cropped images), then class and pose assignment of every "
                      "particle (global search) and local gold-standard refinement of each class.  Writes "
                      "OUT/map.mrc (K = 1) or OUT/class_001.mrc ..., half maps, *_initial.mrc (before "
                      "refinement), particles.star (poses, rlnClassNumber), fsc.csv, report.html.")
    def abinit(
        particles: Annotated[Path, typer.Argument(help="Particles with CTF (.star, .cs, .pkl); poses ignored.")],
        out: OutDir,
        classes: Annotated[int, typer.Option("--classes", "-K", help="Number of maps (classes).")] = 1,
        datadir: Datadir = None,
        apix: Apix = None,
        iterations: Annotated[int, typer.Option("--iterations", help="Mini-batches of stochastic EM.")] = 40,
        initial_batch: Annotated[int, typer.Option("--initial-batch", help="First mini-batch size.")] = 200,
        final_batch: Annotated[int, typer.Option("--final-batch", help="Last mini-batch size.")] = 800,
        initial_resolution: Annotated[float, typer.Option(
            "--initial-resolution", metavar="Å", help="Resolution compared at the start.")] = 35.0,
        final_resolution: Annotated[float, typer.Option(
            "--final-resolution", metavar="Å", help="Resolution compared at the end of stochastic EM.")] = 12.0,
        mask_diameter: Annotated[float | None, typer.Option(
            "--mask-diameter", metavar="Å", help="Diameter of one soft spherical mask for every class (default: "
                                                 "each class its own, following its map's extent).")] = None,
        merge_duplicates: Annotated[bool, typer.Option(
            "--merge-duplicates", help="Merge classes that converged to the same structure after stage 2 "
                                       "(maps that agree to their own resolution), leaving the surplus classes "
                                       "empty: for mixtures of different proteins.")] = False,
        resolve_rounds: Annotated[int, typer.Option(
            "--resolve-rounds", help="With several classes: at most this many rounds of each class re-solved "
                                     "alone from its particles, then every particle assigned again (stops once "
                                     "at most 1 % change class).")] = 3,
        refine_iterations: Annotated[int, typer.Option(
            "--refine-iterations", help="Refinement iterations per class after stochastic EM (0: none).")] = 6,
        max_shift: Annotated[float | None, typer.Option(
            "--max-shift", metavar="Å", help="Largest shift searched in Å (default 8 % of the box).")] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Images per batch (memory).")] = 256,
        device: Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1 ...")] = "cpu",
        seed: Annotated[int, typer.Option("--seed", help="Seed of the random start and mini-batches.")] = 0,
        resume: Resume = False,
        overwrite: Overwrite = False,
    ) -> None:
        from vitreous.reconstruct.abinit import AbinitOptions

        for name, value in (("--refine-iterations", refine_iterations), ("--resolve-rounds", resolve_rounds)):
            if value < 0:
                raise InputError(None, f"{name} must be 0 or more, not {value}", "fix it")
        if mask_diameter is not None and mask_diameter <= 0:
            raise InputError(None, "--mask-diameter must be positive", "fix the option")
        options = AbinitOptions(
            classes=classes, iterations=iterations, initial_batch=initial_batch, final_batch=final_batch,
            initial_resolution_A=initial_resolution, final_resolution_A=final_resolution,
            mask_diameter_A=mask_diameter, refine_iterations=refine_iterations, max_shift_A=max_shift,
            merge_duplicates=merge_duplicates, resolve_rounds=resolve_rounds,
            batch_size=batch_size, device=device, seed=seed)
        run_abinit(particles, out, options, datadir=datadir, apix=apix, resume=resume, overwrite=overwrite)
