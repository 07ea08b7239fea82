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
                    use_ctf: bool = True, compare: Path | None = None, symmetry: str = "C1",
                    mask_diameter: float | None = None, batch_size: int = 1024, oversampling: int = 2,
                    device: str = "cpu", seed: int = 0, overwrite: bool = False) -> Path:
    """Reconstruct into the job folder ``out``; returns the path of ``map.mrc``.

    ``map.mrc`` is the Wiener-filtered full map times the soft spherical solvent mask of ``mask_diameter`` Å
    (default: 90 % of the box); the half maps are unfiltered and unmasked.  FSC curves: between the half
    maps and against ``compare``, each without and with the mask.  Under ``torchrun`` every process
    back-projects its shard of the particles and rank 0 writes the job.
    """
    from contextlib import nullcontext

    from vitreous.cli.progress import progress_bar
    from vitreous.distributed.ranks import process_group, rank_failures
    from vitreous.io.formats import read_particles
    from vitreous.jobs import Job
    from vitreous.physics.symmetry import parse_symmetry
    from vitreous.reconstruct.backproject import backproject, check_particles

    if batch_size < 1 or oversampling < 1:
        raise InputError(None, f"need --batch-size >= 1 and --oversampling >= 1 (got {batch_size}, {oversampling})",
                         "fix the options")
    if mask_diameter is not None and not mask_diameter > 0:
        raise InputError(None, f"--mask-diameter must be positive (got {mask_diameter:g} Å)", "give it in Å")
    symmetry = parse_symmetry(symmetry)
    particles = read_particles(particles_path, datadir=datadir, apix=apix)
    check_particles(particles, use_ctf)  # before the job folder is touched
    voxel = particles.single_pixel_size()
    if compare is not None:
        check_comparable(compare, particles.box, voxel)
    params = {"use_ctf": use_ctf, "symmetry": symmetry, "mask_diameter_A": mask_diameter, "batch_size": batch_size,
              "oversampling": oversampling, "device": device, "seed": seed, "apix": apix,
              "compare": str(compare) if compare else None}
    inputs = [particles_path, *([compare] if compare else [])]
    with (process_group(device) as (ranks, device),
          Job.open(out, command="backproject", params=params, inputs=inputs, overwrite=overwrite, ranks=ranks) as job,
          rank_failures(ranks)):
        mine = len(ranks.shard(len(particles)))
        with progress_bar(mine, "backprojecting") if ranks.is_main else nullcontext(None) as advance:
            maps = backproject(particles, use_ctf=use_ctf, batch_size=batch_size, oversampling=oversampling,
                               device=device, seed=seed, symmetry=symmetry, filtered_halves=False,
                               progress=advance, ranks=ranks)
        if ranks.is_main:
            _write_results(job, particles, maps, compare, symmetry, mask_diameter)
    return job.path("map.mrc")


def _write_results(job, particles, maps, compare: Path | None, symmetry: str, mask_diameter: float | None) -> None:
    """map.mrc (masked), the half maps, fsc.csv, report.html and the summary on the console."""
    from vitreous.analysis.fsc import fsc_curve, resolution_at
    from vitreous.io.mrc import read_map, write_map
    from vitreous.reconstruct.backproject import MASK_EDGE_PX, mask_radius_px, solvent_mask

    voxel = maps.voxel_size
    mask = solvent_mask(particles.box, voxel, mask_diameter)
    masked = maps.full * mask
    write_map(job.path("map.mrc"), masked, voxel)
    write_map(job.path("half_map_1.mrc"), maps.half1_unfiltered, voxel)
    write_map(job.path("half_map_2.mrc"), maps.half2_unfiltered, voxel)
    curves = {"fsc_half_maps": maps.fsc,
              "fsc_half_maps_masked": fsc_curve(maps.half1_unfiltered, maps.half2_unfiltered, voxel, mask)[1]}
    if compare is not None:
        reference = read_map(compare)[0]
        curves["fsc_vs_reference"] = fsc_curve(maps.full, reference, voxel)[1]
        curves["fsc_vs_reference_masked"] = fsc_curve(masked, reference * mask, voxel)[1]
    summary: dict[str, object] = {
        "particles": len(particles), "box (px)": particles.box, "pixel size (Å)": voxel,
        "symmetry": symmetry,
        f"mask diameter (Å, + {MASK_EDGE_PX:g} px soft edge)": 2 * voxel * mask_radius_px(
            mask_diameter, particles.box, voxel)}
    for column, curve in curves.items():
        what = column.removeprefix("fsc_").replace("_", " ")
        for threshold in (0.143, 0.5):
            summary[f"FSC={threshold} ({what}, Å)"] = resolution_at(maps.frequency, curve, threshold)
    _write_table(job.path("fsc.csv"), maps.frequency, curves)
    job.write_report(_report(particles, maps, masked, curves, summary))
    for key, value in summary.items():
        console.err.print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}",
                          markup=False, soft_wrap=True)


def _write_table(path: Path, frequency, curves: dict) -> None:
    """fsc.csv: frequency (1/Å), resolution (Å) and one column per FSC curve."""
    import numpy as np
    import pandas as pd

    from vitreous.io.atomic import atomic_path

    table = {"frequency_invA": frequency, "resolution_A": 1 / np.maximum(frequency, 1e-12), **curves}
    with atomic_path(path) as tmp:
        pd.DataFrame(table).to_csv(tmp, index=False)


def _report(particles, maps, masked, curves: dict, summary: dict):
    from vitreous.report import Report
    from vitreous.report.figures import fsc_plot, map_views, orientation_plot

    report = Report("Backprojection", particles.source)
    report.section("Resolution").key_values(summary).figure(fsc_plot(maps.frequency, curves))
    report.section("Map").figure(map_views(masked, maps.voxel_size, projections=False), "Central slices (masked)")
    report.section("Orientations").figure(orientation_plot(particles.euler))
    return report


def register(app: typer.Typer) -> None:
    """Add ``backproject`` to the app."""

    @app.command(help="Reconstruct a map from particles with poses (STAR/.cs/.pkl): CTF-weighted Fourier "
                      "backprojection of two half sets (rlnRandomSubset, else random), optional point-group "
                      "symmetry, FSC-based Wiener filter, gold-standard FSC.  Writes OUT/map.mrc (filtered, "
                      "solvent-masked), half_map_1/2.mrc (unfiltered, unmasked), fsc.csv (frequency in 1/Å, "
                      "resolution in Å, FSC without and with the mask), report.html.")
    def backproject(
        particles: Annotated[Path, typer.Argument(help="Particles with poses and CTF (.star, .cs, .pkl).")],
        out: OutDir,
        datadir: Datadir = None,
        apix: Apix = None,
        no_ctf: Annotated[bool, typer.Option("--no-ctf", help="Ignore the CTF (particles without CTF).")] = False,
        symmetry: Annotated[str, typer.Option(
            "--symmetry", help="Point group (C1, Cn, Dn, T, O, I as RELION names them).")] = "C1",
        mask_diameter: Annotated[float | None, typer.Option(
            "--mask-diameter", metavar="Å", help="Diameter in Å of the soft spherical mask on map.mrc (RELION's "
            "particle diameter; a 4 px cosine edge lies outside it).  Default: the mask ends at 90 % of the "
            "box.")] = None,
        compare: Annotated[Path | None, typer.Option(
            "--compare", help="A reference map (same box and voxel size) to report the FSC against.")] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Images per batch (memory).")] = 1024,
        oversampling: Annotated[int, typer.Option("--oversampling", help="Fourier padding factor.")] = 2,
        device: Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1 ...")] = "cpu",
        seed: Annotated[int, typer.Option("--seed", help="Seed of the random half split.")] = 0,
        overwrite: Overwrite = False,
    ) -> None:
        run_backproject(particles, out, datadir=datadir, apix=apix, use_ctf=not no_ctf, compare=compare,
                        symmetry=symmetry, mask_diameter=mask_diameter, batch_size=batch_size,
                        oversampling=oversampling, device=device, seed=seed, overwrite=overwrite)
