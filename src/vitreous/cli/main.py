"""The ``vitreous`` app: commands from the modules in COMMANDS, and ``run()``, the console script."""

from __future__ import annotations

import atexit
import gc
import importlib
import sys
from typing import Annotated

import typer

import vitreous
from vitreous.errors import InputError

# modules of vitreous.cli, each with register(app) adding the command of the same name with '-' for '_';
# order of --help
COMMANDS = ("info", "convert", "preprocess", "simulate", "simulate_micrographs", "ctf", "pick", "extract",
            "backproject", "refine", "abinit", "classify3d", "class2d", "select2d", "train_vae", "train_field",
            "abinit_neural", "eval_vol", "analyze", "fsc", "demo")

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


GC_THRESHOLD = (50_000, 20, 20)  # while a command runs (Python's default: 700, 10, 10); see run()


def run() -> None:
    """Entry point: run the app; bad input (InputError) ends as one line on stderr with exit code 2.

    Garbage collection: importing torch, pandas and matplotlib leaves ~250 000 long-lived objects that the
    cyclic collector traverses again and again at Python's default thresholds, and once more at interpreter
    exit: ~0.8 s of a 5 s ``vitreous backproject`` (3000 particles, box 64, 2 busy cores).  So the objects alive
    when the command starts are frozen (not traversed), collections wait for 50 000 new container objects
    instead of 700, and the objects alive at exit are frozen so that the final collection skips them: 0.35 s
    left there.  Reference counting frees memory as usual and cyclic garbage is still collected, later; the
    thresholds are restored and the objects unfrozen when ``run`` returns (for in-process callers such as tests).
    """
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    atexit.unregister(gc.freeze)  # once per process, however often run() is called
    atexit.register(gc.freeze)
    try:
        app(prog_name="vitreous")
    except InputError as exc:
        print(f"vitreous: error: {exc.one_line()}", file=sys.stderr)
        sys.exit(2)
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()
