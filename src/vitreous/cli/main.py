"""The ``vitreous`` app: commands from the modules in COMMANDS, and ``run()``, the console script."""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

import vitreous
from vitreous.errors import InputError

# modules of vitreous.cli, each with register(app); order of --help
COMMANDS = ("info", "convert", "simulate", "backproject", "refine", "abinit", "classify3d", "fsc", "demo")

app = typer.Typer(
    name="vitreous",
    help="Cryo-EM particles to 3D maps.  Units: Å (pixel sizes, shifts, defocus, resolution), degrees "
         "(RELION ZYZ Euler angles rot/tilt/psi), pixels (box sizes); particle and image numbers are 1-based.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vitreous {vitreous.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Cryo-EM particles to 3D maps (RELION, cryoSPARC and cryoDRGN files in and out)."""


for _name in COMMANDS:
    importlib.import_module(f"vitreous.cli.{_name}").register(app)


def run() -> None:
    """Entry point: run the app; bad input (InputError) ends as one line on stderr with exit code 2."""
    try:
        app(prog_name="vitreous")
    except InputError as exc:
        print(f"vitreous: error: {exc.one_line()}", file=sys.stderr)
        sys.exit(2)
