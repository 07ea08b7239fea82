"""Read and write particle metadata by file extension: ``.star`` (RELION), ``.cs`` (cryoSPARC),
``.pkl`` (cryoDRGN poses, with the CTF in a second pickle)."""

from __future__ import annotations

from pathlib import Path

from vitreous.data.particles import ParticleSet
from vitreous.errors import InputError
from vitreous.io.cryodrgn import particles_from_pkl, write_ctf_pkl, write_pose_pkl
from vitreous.io.cryosparc import read_cs, write_cs
from vitreous.io.stack import ImageStack
from vitreous.io.star import read_star, write_star

SUFFIXES = (".star", ".cs", ".pkl")


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(path, f"unknown particle file type '{suffix}'", f"use one of {', '.join(SUFFIXES)}")
    return suffix


def read_particles(path: str | Path, *, datadir: str | Path | None = None, apix: float | None = None,
                   ctf: str | Path | None = None, stack: str | Path | None = None,
                   load_images: bool = True) -> ParticleSet:
    """Particles from a STAR, .cs or cryoDRGN pose .pkl file (``ctf`` and ``stack`` complete a .pkl)."""
    path = Path(path)
    kind = _kind(path)
    if kind == ".star":
        return read_star(path, datadir, apix=apix, load_images=load_images)
    if kind == ".cs":
        return read_cs(path, datadir, load_images=load_images, apix=apix)
    images = ImageStack.from_file(stack) if stack is not None and load_images else None
    return particles_from_pkl(path, ctf, images=images, apix=apix)


def ctf_pickle_path(pose_path: Path) -> Path:
    """Where the CTF pickle goes beside a pose pickle by default: ``NAME_ctf.pkl``."""
    return pose_path.with_name(f"{pose_path.stem}_ctf.pkl")


def write_particles(path: str | Path, particles: ParticleSet, *, ctf: str | Path | None = None) -> list[Path]:
    """Write particles as STAR / .cs / cryoDRGN pickles (poses to ``path``, CTF to ``ctf``); returns files."""
    path = Path(path)
    kind = _kind(path)
    if kind == ".star":
        write_star(path, particles)
        return [path]
    if kind == ".cs":
        write_cs(path, particles)
        return [path]
    written = []
    if particles.has_poses:
        write_pose_pkl(path, particles)
        written.append(path)
    if particles.has_ctf:
        ctf_path = Path(ctf) if ctf is not None else ctf_pickle_path(path)
        write_ctf_pkl(ctf_path, particles)
        written.append(ctf_path)
    if not written:
        raise InputError(particles.source or None, "neither poses nor CTF to write to a cryoDRGN pickle",
                         "convert a file with poses or CTF parameters")
    return written
