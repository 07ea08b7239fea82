"""``vitreous extract``: particle boxes from micrographs at picked coordinates, with per-particle CTF."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vitreous.cli import console
from vitreous.cli.options import OutDir, Overwrite
from vitreous.errors import InputError

if TYPE_CHECKING:
    from vitreous.io.micrographs import MicrographTable
    from vitreous.preprocess.extract import Extraction, ExtractOptions
    from vitreous.report import Report

log = logging.getLogger(__name__)
GALLERY = 24  # particles shown in the report


def load_coordinates(path: Path, options: ExtractOptions) -> MicrographTable:
    """The coordinates STAR with its micrographs checked (exist, 2D, one pixel size, CTF columns), and the
    box options checked against the micrographs; InputError otherwise (before any job folder is touched)."""
    import numpy as np

    from vitreous.io.micrographs import COORDINATES, read_micrograph_star
    from vitreous.io.mrc import read_header
    from vitreous.preprocess.extract import box_corners

    if not path.is_file():
        raise InputError(path, "no such file", "check the path")
    coordinates = read_micrograph_star(path, block="particles")
    if len(coordinates) == 0:
        raise InputError(path, "no coordinates in data_particles", "pick particles first")
    coordinates.pixel_size()
    missing = [c for c in ("rlnDefocusU", "rlnDefocusV") if c not in coordinates.table]
    if missing:
        raise InputError(path, f"no per-particle CTF ({', '.join(missing)})",
                         "give coordinates with the CTF columns of their micrographs (as `vitreous pick` writes)")
    box, size = options.box, options.size
    if box < 8 or box % 2 or size < 8 or size % 2 or size > box:
        raise InputError(None, f"--box and --downsample must be even, at least 8, with --downsample <= --box "
                         f"(got {box}, {size})", "RELION extracts even boxes: fix the options")
    if not 0 < options.radius < size / 2:
        raise InputError(None, f"--bg-radius {options.radius:g} px leaves no background in a {size}-px box",
                         f"give a radius between 0 and {size / 2:g} output pixels")
    shapes = {}
    for micrograph in dict.fromkeys(coordinates.paths()):
        if not micrograph.is_file():
            raise InputError(path, f"micrograph {micrograph} does not exist", "fix rlnMicrographName or the path")
        header = read_header(micrograph)
        if header.n != 1:
            raise InputError(micrograph, f"expected one 2D micrograph, got {header.n} frames",
                             "give summed micrographs")
        shapes[micrograph] = (header.ny, header.nx)
    xy = coordinates.table[COORDINATES].to_numpy(np.float64)
    inside = [box_corners(xy[i:i + 1], box, shapes[p])[2][0] for i, p in enumerate(coordinates.paths())]
    if not any(inside):
        raise InputError(path, f"every {box}-px box reaches beyond its micrograph's edge", "use a smaller --box")
    return coordinates


def run_extract(coordinates_path: Path, out: Path, *, box: int, downsample: int | None = None, invert: bool = True,
                bg_radius: float | None = None, workers: int = 1, scheduler: str | None = None,
                overwrite: bool = False) -> Path:
    """Extract particles into the job folder ``out``; returns the path of ``particles.star``."""
    from vitreous.cli.progress import progress_bar
    from vitreous.io.star import write_star
    from vitreous.jobs import Job
    from vitreous.preprocess.extract import ExtractOptions, extract_particles

    if workers < 0:
        raise InputError(None, f"--workers must be at least 0 (got {workers})", "fix the option")
    options = ExtractOptions(box, downsample, invert, bg_radius)
    coordinates = load_coordinates(coordinates_path, options)
    n_micrographs = coordinates.table["rlnMicrographName"].nunique()
    params = {"box": box, "downsample": downsample, "invert": invert, "bg_radius_px": options.radius,
              "workers": workers, "scheduler": scheduler}
    with Job.open(out, command="extract", params=params, inputs=[coordinates_path], overwrite=overwrite) as job:
        with progress_bar(n_micrographs, "extracting") as advance:
            result = extract_particles(coordinates, options, job.folder, workers, scheduler,
                                       on_micrograph=lambda i, r: advance(1))
        for name in result.empty:
            log.warning("skipped micrograph %s: all zero, constant or not finite", name)
        log.info("extracted %d of %d particles from %d micrographs; dropped %d boxes beyond the micrograph edge",
                 len(result.particles), len(coordinates), n_micrographs - len(result.empty), result.dropped_at_edge)
        if len(result.particles) == 0:
            raise InputError(coordinates_path, "no particle could be extracted (all its micrographs are empty)",
                             "check the micrographs")
        star = job.path("particles.star")
        write_star(star, result.particles)
        job.write_report(_report(result, len(coordinates), n_micrographs, options, job.folder))
        console.err.print(f"wrote {len(result.particles)} particles to {star}", markup=False, soft_wrap=True)
    return star


def _report(result: Extraction, n_coordinates: int, n_micrographs: int, options: ExtractOptions,
            folder: Path) -> Report:
    import numpy as np
    import pandas as pd

    from vitreous.io.stack import ImageStack
    from vitreous.report import Report
    from vitreous.report.figures import particle_gallery

    particles = result.particles
    apix = particles.single_pixel_size()
    report = Report("Extracted particles", f"{len(particles)} particles, box {options.size} px at {apix:.4g} Å/px")
    report.key_values({"coordinates": n_coordinates, "micrographs": n_micrographs,
                       "particles extracted": len(particles),
                       "boxes dropped beyond the micrograph edge": result.dropped_at_edge,
                       "empty micrographs skipped": len(result.empty),
                       "box on the micrograph (px)": options.box, "box written (px)": options.size,
                       "contrast": "inverted (white particles)" if options.invert else "as in the micrographs",
                       "background radius (px)": f"{options.radius:g}"})
    if result.empty:
        report.section("Skipped micrographs (all zero, constant or not finite)")
        report.table(pd.DataFrame({"micrograph": result.empty}))
    first = particles.particles["rlnImageName"].iloc[:GALLERY]
    stacks = {name: ImageStack.from_file(folder / name) for name in first.str.split("@").str[1].unique()}
    images = np.stack([stacks[name.split("@")[1]].read(np.array([int(name.split("@")[0]) - 1]))[0]
                       for name in first])
    report.section("Particles").figure(particle_gallery(images), f"The first {len(images)} particles")
    counts = particles.particles.groupby("rlnMicrographName", sort=False).size()
    report.table(counts.rename("particles").reset_index(), "Particles per micrograph")
    return report


def register(app: typer.Typer) -> None:
    """Add ``extract`` to the app."""

    @app.command(help="Extract particle boxes centred on picked coordinates (a coordinates STAR with per-row CTF, "
                      "as `vitreous pick` writes): integer-pixel cut with the sub-pixel remainder kept as "
                      "rlnOriginXAngst/YAngst (Å), optional Fourier down-sampling (the pixel size in Å grows by "
                      "box/downsample), contrast inversion to white particles and background normalisation (mean "
                      "0, sd 1 outside a circle).  Boxes beyond the micrograph edge are dropped and counted; empty "
                      "micrographs are skipped.  Writes OUT/particles.star (RELION 3.1) and one stack per "
                      "micrograph, OUT/Particles/MICROGRAPH.mrcs.")
    def extract(
        coordinates: Annotated[Path, typer.Argument(metavar="COORDS.star", help="Coordinates STAR file.")],
        out: OutDir,
        box: Annotated[int, typer.Option("--box", help="Box size on the micrograph in pixels (even).")],
        downsample: Annotated[int | None, typer.Option(
            "--downsample", help="Box size written, in pixels (even, <= --box): Fourier cropping; the pixel size "
                                 "grows by box/downsample.")] = None,
        invert: Annotated[bool, typer.Option(
            "--invert/--no-invert", help="Invert the contrast (dark particles of raw micrographs become white).")
        ] = True,
        bg_radius: Annotated[float | None, typer.Option(
            "--bg-radius", help="Radius (output pixels) outside which the background is normalised to mean 0, "
                                "sd 1 (default 3/8 of the output box).")] = None,
        workers: Annotated[int, typer.Option(
            "--workers", help="Dask worker processes of a local cluster (0 or 1: serial in this process).")] = 1,
        scheduler: Annotated[str | None, typer.Option(
            "--scheduler", metavar="ADDRESS", help="Address of a running Dask scheduler (tcp://host:8786); "
                                                   "--workers is ignored.")] = None,
        overwrite: Overwrite = False,
    ) -> None:
        run_extract(coordinates, out, box=box, downsample=downsample, invert=invert, bg_radius=bg_radius,
                    workers=workers, scheduler=scheduler, overwrite=overwrite)
