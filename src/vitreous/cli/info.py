"""``vitreous info PATH``: what a particle file (STAR, .cs, cryoDRGN .pkl) or an MRC file holds.

Reads metadata and at most ``--sample`` images (at random), never the whole stack, and never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from vitreous.cli import console
from vitreous.cli.describe import FORMATS, jsonable, particle_summary
from vitreous.cli.describe_map import SUFFIXES as MAP_SUFFIXES
from vitreous.cli.describe_map import map_summary
from vitreous.cli.loading import load_particles
from vitreous.cli.options import Apix, CtfPickle, Datadir, Stack
from vitreous.cli.render import render
from vitreous.errors import InputError


def summarise(path: Path, *, datadir: Path | None = None, apix: float | None = None, ctf: Path | None = None,
              stack: Path | None = None, sample: int = 1000) -> dict[str, Any]:
    """The JSON-able summary ``info`` prints for ``path``."""
    suffix = path.suffix.lower()
    if suffix in MAP_SUFFIXES:
        return jsonable(map_summary(path, sample))
    if suffix not in FORMATS:
        known = ", ".join([*FORMATS, *MAP_SUFFIXES])
        raise InputError(path, f"unknown file type '{suffix}'", f"give one of {known}")
    particles, problem = load_particles(path, datadir=datadir, apix=apix, ctf=ctf, stack=stack)
    summary = particle_summary(particles, path, problem, sample)
    if apix is not None:
        summary["notes"].append(f"pixel size set by --apix to {apix:g} Å")
    return jsonable(summary)


def info(
    path: Annotated[Path, typer.Argument(
        metavar="PATH", show_default=False,
        help="Particle metadata (.star RELION, .cs cryoSPARC, .pkl cryoDRGN poses with --ctf) or an MRC "
             "map/stack (.mrc, .mrcs, .map).")],
    datadir: Datadir = None,
    apix: Apix = None,
    ctf: CtfPickle = None,
    stack: Stack = None,
    sample: Annotated[int, typer.Option(
        "--sample", min=0, metavar="N",
        help="Read at most N images, chosen at random, for the image statistics (0: none).")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON object instead.")] = False,
) -> None:
    """Summarise particles or a map: count, box (px), pixel size (Å), optics groups, poses (Euler angles in
    degrees), CTF (defocus in Å), classes, half sets, latents, referenced stacks and image statistics.

    Metadata whose stacks are missing is still summarised (exit code 0), with a note on how to point to the
    images (--datadir).  Particle numbers in messages are 1-based, like RELION's N@file image names.
    """
    summary = summarise(path, datadir=datadir, apix=apix, ctf=ctf, stack=stack, sample=sample)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        render(summary, console.out)


def register(app: typer.Typer) -> None:
    """Add ``info`` to the app."""
    app.command("info")(info)
