"""Reading particles for the command line: with images when they can be found, else metadata alone."""

from __future__ import annotations

from pathlib import Path

from vitreous.data.particles import ParticleSet
from vitreous.errors import InputError
from vitreous.io.formats import read_particles


def load_particles(path: Path, *, datadir: Path | None = None, apix: float | None = None,
                   ctf: Path | None = None, stack: Path | None = None) -> tuple[ParticleSet, str | None]:
    """Particles with their images, or, when only the images fail (stack missing, truncated...), the
    metadata alone and the reason as one line.  Bad metadata raises InputError."""
    if path.suffix.lower() == ".pkl" and ctf is None:
        raise InputError(path, "a cryoDRGN pose pickle has no pixel size or box size",
                         "pass --ctf CTF.pkl (cryoDRGN's CTF pickle of the same particles)")
    try:
        return read_particles(path, datadir=datadir, apix=apix, ctf=ctf, stack=stack), None
    except InputError as image_error:
        metadata = read_particles(path, datadir=datadir, apix=apix, ctf=ctf, load_images=False)
        return metadata, image_error.one_line()
