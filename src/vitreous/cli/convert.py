"""``vitreous convert IN OUT``: particle metadata between RELION STAR, cryoSPARC .cs and cryoDRGN .pkl.

Everything is read and checked before anything is written; each output file is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vitreous.cli import console
from vitreous.cli.loading import load_particles
from vitreous.cli.options import Apix, CtfPickle, Datadir, Stack
from vitreous.data.particles import ParticleSet
from vitreous.errors import InputError
from vitreous.io.formats import SUFFIXES, ctf_pickle_path, write_particles


def output_files(out: Path, ctf_out: Path | None) -> list[Path]:
    """The files a conversion to ``out`` may write (a .pkl output also writes the CTF pickle)."""
    kind = out.suffix.lower()
    if kind not in SUFFIXES:
        raise InputError(out, f"unknown output type '{out.suffix}'", f"name it with one of {', '.join(SUFFIXES)}")
    if kind != ".pkl":
        if ctf_out is not None:
            raise InputError(ctf_out, "--ctf-out is only for .pkl output", "leave out --ctf-out")
        return [out]
    ctf_path = ctf_out if ctf_out is not None else ctf_pickle_path(out)
    if ctf_path.resolve() == out.resolve():
        raise InputError(ctf_path, "the CTF pickle would overwrite the pose pickle", "give another --ctf-out")
    return [out, ctf_path]


def check_targets(targets: list[Path], inputs: list[Path | None], overwrite: bool) -> None:
    """Refuse to write over an input, or over an existing file without ``overwrite``."""
    sources = {p.resolve() for p in inputs if p is not None}
    for target in targets:
        if target.resolve() in sources:
            raise InputError(target, "is also an input", "write to another file")
        if target.exists() and not overwrite:
            raise InputError(target, "already exists", "pass --overwrite to replace it, or choose another name")


def check_writable(particles: ParticleSet, out: Path) -> None:
    """What the output format needs that the input may lack (before anything is written)."""
    kind = out.suffix.lower()
    if kind in (".cs", ".pkl") and not particles.box:
        raise InputError(particles.source or None, f"box size unknown, and {kind} files need it",
                         "pass --datadir (or --stack) so the particle images can be found")
    if kind == ".pkl" and not (particles.has_poses or particles.has_ctf):
        raise InputError(particles.source or None, "neither poses nor CTF to write to a cryoDRGN pickle",
                         "convert a file with poses or CTF parameters")


def convert(
    src: Annotated[Path, typer.Argument(
        metavar="IN", help="Particles to read: .star (RELION), .cs (cryoSPARC) or .pkl (cryoDRGN poses, "
                           "with --ctf and optionally --stack).", show_default=False)],
    dst: Annotated[Path, typer.Argument(
        metavar="OUT", help="File to write, type by extension: .star, .cs or .pkl (cryoDRGN poses; the CTF "
                            "goes to --ctf-out).", show_default=False)],
    datadir: Datadir = None,
    apix: Apix = None,
    ctf: CtfPickle = None,
    stack: Stack = None,
    ctf_out: Annotated[Path | None, typer.Option(
        "--ctf-out", metavar="CTF.pkl",
        help="Where a .pkl output writes the CTF pickle (default: OUT_stem_ctf.pkl beside OUT).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace output files that exist.")] = False,
) -> None:
    """Convert particle metadata between RELION STAR, cryoSPARC .cs and cryoDRGN .pkl.

    Conventions are translated, not copied: Euler angles (degrees, RELION ZYZ) <-> cryoSPARC Rodrigues
    vectors <-> cryoDRGN matrices; shifts in Å (rlnOriginXAngst) <-> pixels (.cs) <-> fractions of the box
    (.pkl); defocus stays in Å, angles in degrees (radians in .cs).  Image names 'N@file' are 1-based and
    rewritten relative to OUT's folder when the stacks are found.
    """
    targets = output_files(dst, ctf_out)
    check_targets(targets, [src, ctf, stack], overwrite)
    particles, problem = load_particles(src, datadir=datadir, apix=apix, ctf=ctf, stack=stack)
    check_writable(particles, dst)
    if problem is not None and dst.suffix.lower() != ".pkl":
        console.err.print(f"warning: images not found ({problem}); image names are copied unchanged",
                          markup=False, soft_wrap=True)
    written = write_particles(dst, particles, ctf=targets[-1] if len(targets) > 1 else None)
    console.out.print(f"wrote {len(particles)} particles: {', '.join(str(p) for p in written)}", markup=False,
                      soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``convert`` to the app."""
    app.command("convert")(convert)
