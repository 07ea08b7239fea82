"""Options shared by several commands (typer ``Annotated`` aliases), with their units in the help."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _positive(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be a positive number of Å per pixel, not {value}")
    return value


Datadir = Annotated[Path | None, typer.Option(
    "--datadir", metavar="DIR",
    help="Folder holding the particle stacks named in the metadata (rlnImageName 'N@file', N 1-based; "
         "cryoSPARC blob/path).  Searched first, then the metadata file's folder and its parents.")]
Apix = Annotated[float | None, typer.Option(
    "--apix", metavar="Å", callback=_positive,
    help="Pixel size in Å/px; overrides the value in the metadata and the stack headers.")]
CtfPickle = Annotated[Path | None, typer.Option(
    "--ctf", metavar="CTF.pkl",
    help="cryoDRGN CTF pickle (N x 9: box px, pixel size Å, defocus U/V Å, angle °, kV, Cs mm, "
         "amplitude contrast, phase shift °) for a cryoDRGN pose .pkl input.")]
Stack = Annotated[Path | None, typer.Option(
    "--stack", metavar="STACK.mrcs",
    help="Particle image stack for a cryoDRGN .pkl input (image i is frame i of the stack).")]
OutDir = Annotated[Path, typer.Option(
    "--out", "-o", metavar="DIR", help="Job folder for the results (job.json, run.log, report.html).")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace an earlier job in the output folder (deleting its files).")]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Continue an unfinished job in the output folder from its checkpoints "
                     "(same options and inputs).")]
