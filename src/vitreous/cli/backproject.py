"""``vitreous backproject``: gold-standard reconstruction from particles with known poses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vitreous.cli import console
from vitreous.cli.options import Apix, Datadir, OutDir, Overwrite
from vitreous.errors import InputError


def check_comparable(reference: Path, box: int, apix: float) -> None:
    """Refuse a comparison map whose box or voxel size differs from the reconstruction's."""
    from vitreous.io.mrc import read_header

    header = read_header(reference)
    if (header.n, header.ny, header.nx) != (box, box, box):
        raise InputError(reference, f"map is {header.n}x{header.ny}x{header.nx}, the particles give {box}^3",
                         "resample the map to the particles' box")
    if header.voxel_size and abs(header.voxel_size - apix) > 0.01 * apix:
        raise InputError(reference, f"voxel size {header.voxel_size:g} Å differs from the particles' {apix:g} Å",
                         "resample the map or fix its header")


def run_backproject(particles_path: Path, out: Path, *, datadir: Path | None = None, apix: float | None = None,
                    use_ctf: bool = True, compare: Path | None = None, batch_size: int = 1024,
                    oversampling: int = 2, device: str = "cpu", seed: int = 0, overwrite: bool = False) -> Path:
    """Reconstruct into the job folder ``out``; returns the path of ``map.mrc``."""
    import numpy as np

    from vitreous.analysis.fsc import fsc_curve, resolution_at
    from vitreous.cli.progress import progress_bar
    from vitreous.io.atomic import atomic_path
    from vitreous.io.formats import read_particles
    from vitreous.io.mrc import read_map, write_map
    from vitreous.jobs import Job
    from vitreous.reconstruct.backproject import backproject, check_particles

    if batch_size < 1 or oversampling < 1:
        raise InputError(None, f"need --batch-size >= 1 and --oversampling >= 1 (got {batch_size}, {oversampling})",
                         "fix the options")
    particles = read_particles(particles_path, datadir=datadir, apix=apix)
    check_particles(particles, use_ctf)  # before the job folder is touched
    voxel = particles.single_pixel_size()
    if compare is not None:
        check_comparable(compare, particles.box, voxel)
    params = {"use_ctf": use_ctf, "batch_size": batch_size, "oversampling": oversampling, "device": device,
              "seed": seed, "apix": apix, "compare": str(compare) if compare else None}
    inputs = [particles_path, *([compare] if compare else [])]
    with Job.open(out, command="backproject", params=params, inputs=inputs, overwrite=overwrite) as job:
        with progress_bar(len(particles), "backprojecting") as advance:
            maps = backproject(particles, use_ctf=use_ctf, batch_size=batch_size, oversampling=oversampling,
                               device=device, seed=seed, progress=advance)
        write_map(job.path("map.mrc"), maps.full, voxel)
        write_map(job.path("half_map_1.mrc"), maps.half1, voxel)
        write_map(job.path("half_map_2.mrc"), maps.half2, voxel)
        table = {"frequency_invA": maps.frequency, "resolution_A": 1 / np.maximum(maps.frequency, 1e-12),
                 "fsc_half_maps": maps.fsc}
        summary = {"particles": len(particles), "box (px)": particles.box, "pixel size (Å)": voxel,
                   "FSC=0.143 (half maps, Å)": resolution_at(maps.frequency, maps.fsc, 0.143),
                   "FSC=0.5 (half maps, Å)": resolution_at(maps.frequency, maps.fsc, 0.5)}
        if compare is not None:
            _, against = fsc_curve(maps.full, read_map(compare)[0], voxel)
            table["fsc_vs_reference"] = against
            summary["FSC=0.5 vs reference (Å)"] = resolution_at(maps.frequency, against, 0.5)
            summary["FSC=0.143 vs reference (Å)"] = resolution_at(maps.frequency, against, 0.143)
        import pandas as pd

        with atomic_path(job.path("fsc.csv")) as tmp:
            pd.DataFrame(table).to_csv(tmp, index=False)
        job.write_report(_report(particles, maps, table, summary))
        for key, value in summary.items():
            console.err.print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}",
                              markup=False, soft_wrap=True)
    return job.path("map.mrc")


def _report(particles, maps, table: dict, summary: dict):
    from vitreous.report import Report
    from vitreous.report.figures import fsc_plot, map_views, orientation_plot

    curves = {k: v for k, v in table.items() if k.startswith("fsc")}
    report = Report("Backprojection", particles.source)
    report.section("Resolution").key_values(summary).figure(fsc_plot(maps.frequency, curves))
    report.section("Map").figure(map_views(maps.full, maps.voxel_size), "Central slices and projections")
    report.section("Orientations").figure(orientation_plot(particles.euler))
    return report


def _freeze_after_imports() -> None:
    """Import what the command needs, then exempt the objects that exist from the cyclic garbage collector.

    torch, pandas and matplotlib leave ~250 000 long-lived objects that each full collection, and the one at
    interpreter exit, traverses again: about 0.9 s of a 5 s run (3000 particles, box 64, 2 cores).  Frozen
    objects are still freed by reference counting; results are unchanged.  A second freeze at exit (``atexit``)
    spares the final collection the objects made since.  Only the command (not ``run_backproject``) does this.
    """
    import atexit
    import gc

    enabled = gc.isenabled()
    gc.disable()  # no collections while importing (they would only traverse the new modules' objects)
    try:
        import vitreous.reconstruct.backproject  # noqa: F401  (torch)
        import vitreous.report.figures  # noqa: F401  (matplotlib)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    atexit.unregister(gc.freeze)  # registered once per process
    atexit.register(gc.freeze)


def register(app: typer.Typer) -> None:
    """Add ``backproject`` to the app."""

    @app.command(help="Reconstruct a map from particles with poses (STAR/.cs/.pkl): CTF-weighted Fourier "
                      "backprojection of two half sets (rlnRandomSubset, else random), FSC-based Wiener "
                      "filter, gold-standard FSC.  Writes OUT/map.mrc, half_map_1/2.mrc, fsc.csv (frequency "
                      "in 1/Å, resolution in Å), report.html.")
    def backproject(
        particles: Annotated[Path, typer.Argument(help="Particles with poses and CTF (.star, .cs, .pkl).")],
        out: OutDir,
        datadir: Datadir = None,
        apix: Apix = None,
        no_ctf: Annotated[bool, typer.Option("--no-ctf", help="Ignore the CTF (particles without CTF).")] = False,
        compare: Annotated[Path | None, typer.Option(
            "--compare", help="A reference map (same box and voxel size) to report the FSC against.")] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Images per batch (memory).")] = 1024,
        oversampling: Annotated[int, typer.Option("--oversampling", help="Fourier padding factor.")] = 2,
        device: Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1 ...")] = "cpu",
        seed: Annotated[int, typer.Option("--seed", help="Seed of the random half split.")] = 0,
        overwrite: Overwrite = False,
    ) -> None:
        _freeze_after_imports()
        run_backproject(particles, out, datadir=datadir, apix=apix, use_ctf=not no_ctf, compare=compare,
                        batch_size=batch_size, oversampling=oversampling, device=device, seed=seed,
                        overwrite=overwrite)
