"""``vitreous select2d``: keep the particles of chosen 2D classes of a ``vitreous class2d`` job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vitreous.cli import console
from vitreous.cli.options import Datadir, OutDir, Overwrite
from vitreous.errors import InputError


def parse_classes(text: str) -> list[int]:
    """1-based class numbers from ``"1,4,7"`` (ranges ``"2-5"`` allowed); InputError for anything else."""
    numbers: list[int] = []
    try:
        for item in filter(None, (part.strip() for part in text.split(","))):
            low, _, high = item.partition("-")
            numbers.extend(range(int(low), int(high or low) + 1))
    except ValueError:
        raise InputError(None, f"--classes {text!r} is not a list of class numbers",
                         "write e.g. --classes 1,4,7-9") from None
    if not numbers:
        raise InputError(None, "--classes names no class", "write e.g. --classes 1,4,7-9")
    return sorted(set(numbers))


def chosen_classes(sizes, classes: str | None, min_size: int | None, top: int | None) -> list[int]:
    """1-based classes kept: those listed, those with at least ``min_size`` particles, or the ``top`` largest
    (exactly one rule)."""
    import numpy as np

    if sum(rule is not None for rule in (classes, min_size, top)) != 1:
        raise InputError(None, "give exactly one of --classes, --min-size and --top", "choose one selection rule")
    sizes = np.asarray(sizes)
    if classes is not None:
        numbers = parse_classes(classes)
        outside = [c for c in numbers if not 1 <= c <= len(sizes)]
        if outside:
            raise InputError(None, f"classes {outside} do not exist (the job has {len(sizes)})",
                             f"choose classes 1 to {len(sizes)}")
        return numbers
    if min_size is not None:
        return [int(c) + 1 for c in np.nonzero(sizes >= min_size)[0]]
    if top is None or top < 1:
        raise InputError(None, f"--top {top} (need >= 1)", "ask for 1 or more classes")
    order = np.argsort(-sizes, kind="stable")[:top]
    return sorted(int(c) + 1 for c in order if sizes[c] > 0)


def run_select2d(job_dir: Path, out: Path, *, classes: str | None = None, min_size: int | None = None,
                 top: int | None = None, datadir: Path | None = None, overwrite: bool = False) -> Path:
    """Write the kept particles and averages into the job folder ``out``; returns its ``particles.star``."""
    import numpy as np
    import pandas as pd

    from vitreous.cli.class2d import AVERAGES, CLASS_TABLE, class_gallery
    from vitreous.io.formats import read_particles, write_particles
    from vitreous.io.mrc import write_map
    from vitreous.jobs import Job
    from vitreous.report import Report

    star, averages_path, table_path = (job_dir / "particles.star", job_dir / AVERAGES, job_dir / CLASS_TABLE)
    for path in (star, averages_path, table_path):
        if not path.is_file():
            raise InputError(job_dir, f"no {path.name}: not a finished vitreous class2d job",
                             "give the output folder of vitreous class2d")
    particles = read_particles(star, datadir=datadir, load_images=False)
    if particles.classes is None:
        raise InputError(star, "no rlnClassNumber column", "give the output folder of vitreous class2d")
    table = pd.read_csv(table_path)
    kept = chosen_classes(table["particles"].to_numpy(), classes, min_size, top)
    mask = np.isin(particles.classes, kept)
    if not mask.any():
        raise InputError(job_dir, f"the chosen classes {kept} hold no particles", "choose populated classes")
    averages, voxel = read_averages(averages_path)
    params = {"job": str(job_dir), "classes": classes, "min_size": min_size, "top": top}
    with Job.open(out, command="select2d", params=params, inputs=[star, averages_path], overwrite=overwrite) as job:
        selected = read_particles(star, datadir=datadir).subset(np.nonzero(mask)[0])
        write_particles(job.path("particles.star"), selected)
        write_map(job.path(AVERAGES), averages[np.asarray(kept) - 1], voxel)
        chosen = table[table["class"].isin(kept)]
        with_sizes = chosen.assign(particles=[int((particles.classes == c).sum()) for c in chosen["class"]])
        report = Report("2D class selection", str(job_dir))
        report.section("Summary").key_values({
            "classes kept": ", ".join(map(str, kept)), "particles kept": int(mask.sum()),
            "particles in the job": len(particles), "fraction kept": float(mask.mean())})
        class_gallery(report, averages, with_sizes, "kept classes, by size")
        job.write_report(report)
        console.err.print(f"kept {int(mask.sum())} of {len(particles)} particles in {len(kept)} classes",
                          markup=False)
    return job.path("particles.star")


def read_averages(path: Path):
    """Class averages (K, D, D) float32 of an MRC stack (K = 1 included) and their pixel size (Å)."""
    import mrcfile
    import numpy as np

    with mrcfile.open(path, permissive=True) as mrc:
        return np.asarray(mrc.data, np.float32).reshape(-1, *mrc.data.shape[-2:]), float(mrc.voxel_size.x)


def register(app: typer.Typer) -> None:
    """Add ``select2d`` to the app."""

    @app.command(help="Keep the particles of chosen classes of a vitreous class2d job (by number, by size or "
                      "the largest): writes OUT/particles.star and OUT/class_averages.mrcs (the kept averages, "
                      "voxel size in Å as the particles').")
    def select2d(
        job: Annotated[Path, typer.Argument(metavar="CLASS2D_JOB", help="Output folder of vitreous class2d.")],
        out: OutDir,
        classes: Annotated[str | None, typer.Option(
            "--classes", metavar="LIST", help="1-based class numbers to keep, e.g. 1,4,7-9.")] = None,
        min_size: Annotated[int | None, typer.Option(
            "--min-size", metavar="N", help="Keep every class with at least N particles.")] = None,
        top: Annotated[int | None, typer.Option("--top", metavar="N", help="Keep the N largest classes.")] = None,
        datadir: Datadir = None,
        overwrite: Overwrite = False,
    ) -> None:
        run_select2d(job, out, classes=classes, min_size=min_size, top=top, datadir=datadir, overwrite=overwrite)
