"""cryoDRGN pose and CTF pickles <-> ParticleSet.

Poses: a pickled tuple ``(rot, trans)``: ``rot`` (N, 3, 3) is RELION's matrix ``A`` (cryoDRGN's
``R_from_relion``), ``trans`` (N, 2) is ``rlnOriginX/Y`` in pixels divided by the box size D.
CTF: a pickled (N, 9) float array: D (px), pixel size (Å), defocus U, V (Å), defocus angle (deg),
voltage (kV), Cs (mm), amplitude contrast, phase shift (deg).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from vitreous.data.particles import EULER, SHIFTS, ParticleSet
from vitreous.errors import InputError
from vitreous.io.atomic import atomic_path
from vitreous.io.optics import split_optics
from vitreous.physics.rotations import matrix_to_euler

CTF_COLUMNS = ["rlnImageSize", "rlnImagePixelSize", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
               "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnPhaseShift"]


# What a pickle of NumPy arrays refers to; anything else (code a crafted pickle could run) is refused.
ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    *((module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds NumPy arrays, tuples, lists and numbers."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in ALLOWED_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refers to {module}.{name}, not a NumPy array")


def _load(path: str | Path) -> object:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", "check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(path, "rb") as fh:
                return _ArrayUnpickler(fh).load()
    except Exception as exc:
        raise InputError(path, f"not a readable cryoDRGN pickle ({type(exc).__name__}: {exc})",
                         "give a cryoDRGN .pkl of NumPy arrays") from None


def _as_array(obj: object, path: str | Path, what: str) -> np.ndarray:
    try:
        return np.asarray(obj, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"{what} are not a numeric array ({type(exc).__name__})",
                         "give a cryoDRGN .pkl") from None


def read_pose_pkl(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(rot (N,3,3), trans (N,2) as a fraction of the box or None)`` from a cryoDRGN pose pickle."""
    obj = _load(path)
    rot, trans = (obj[0], obj[1]) if isinstance(obj, tuple | list) and len(obj) == 2 else (obj, None)
    rot = _as_array(rot, path, "rotations")
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise InputError(path, f"rotations have shape {rot.shape}, expected (N, 3, 3)", "give a pose pickle")
    if trans is not None:
        trans = _as_array(trans, path, "translations")
        if trans.shape != (len(rot), 2):
            raise InputError(path, f"translations have shape {trans.shape}, expected ({len(rot)}, 2)",
                             "give a pose pickle (rot, trans) of the same particles")
    if not np.isfinite(rot).all() or (trans is not None and not np.isfinite(trans).all()):
        raise InputError(path, "poses contain NaN or infinite values", "regenerate the poses")
    return rot, trans


def read_ctf_pkl(path: str | Path) -> np.ndarray:
    """The (N, 9) CTF array of a cryoDRGN CTF pickle."""
    ctf = _as_array(_load(path), path, "CTF parameters")
    if ctf.ndim != 2 or ctf.shape[1] != 9:
        raise InputError(path, f"CTF array has shape {ctf.shape}, expected (N, 9)", "give a cryoDRGN ctf.pkl")
    if not np.isfinite(ctf).all():
        raise InputError(path, "CTF parameters contain NaN or infinite values", "regenerate the CTF pickle")
    return ctf


def _dump(path: str | Path, obj: object) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(obj, fh)


def cryodrgn_poses(particles: ParticleSet) -> tuple[np.ndarray, np.ndarray]:
    """``(rot, trans)`` as cryoDRGN expects them: RELION matrices and shifts in units of the box."""
    if not particles.has_poses:
        raise InputError(particles.source or None, "no poses (rlnAngleRot/Tilt/Psi)",
                         "run vitreous refine or vitreous abinit first")
    if not particles.box:
        raise InputError(particles.source or None, "box size unknown", "give the particle images")
    return particles.rotations, particles.shifts_px / particles.box


def cryodrgn_ctf(particles: ParticleSet) -> np.ndarray:
    """The (N, 9) cryoDRGN CTF array."""
    ctf = particles.ctf_table()
    return np.column_stack([
        np.full(len(particles), particles.box, np.float64), ctf["pixel_size"], ctf["defocus_u"],
        ctf["defocus_v"], ctf["defocus_angle"], ctf["voltage"], ctf["cs"], ctf["amplitude_contrast"],
        ctf["phase_shift"],
    ])


def write_pose_pkl(path: str | Path, particles: ParticleSet) -> None:
    """Write a cryoDRGN pose pickle ``(rot, trans)`` atomically."""
    rot, trans = cryodrgn_poses(particles)
    _dump(path, (rot.astype(np.float32), trans.astype(np.float32)))


def write_ctf_pkl(path: str | Path, particles: ParticleSet) -> None:
    """Write a cryoDRGN CTF pickle (N, 9) atomically."""
    _dump(path, cryodrgn_ctf(particles).astype(np.float32))


def particles_from_pkl(pose_path: str | Path | None, ctf_path: str | Path | None, images=None,
                       box: int | None = None, apix: float | None = None) -> ParticleSet:
    """A ParticleSet from cryoDRGN pickles (at least one given) and optionally an image source.

    The box comes from ``box``, the images or the CTF pickle; the pixel size from ``apix`` or the CTF pickle.
    """
    source = str(pose_path or ctf_path)
    columns: dict[str, np.ndarray] = {}
    if ctf_path is not None:
        ctf = read_ctf_pkl(ctf_path)
        columns = {label: ctf[:, k] for k, label in enumerate(CTF_COLUMNS)}
    rot, trans = read_pose_pkl(pose_path) if pose_path is not None else (None, None)
    n = len(rot) if rot is not None else len(ctf)
    if columns and len(columns["rlnDefocusU"]) != n:
        raise InputError(pose_path, f"{n} poses but {len(ctf)} CTF rows in {ctf_path}",
                         "use pose and CTF pickles of the same particles")
    box = box or (images.box if images is not None else None) or (
        int(columns["rlnImageSize"][0]) if columns else None)
    if apix is not None:
        columns["rlnImagePixelSize"] = np.full(n, float(apix))
    if box is None or "rlnImagePixelSize" not in columns:
        raise InputError(source, "box or pixel size unknown", "pass --ctf ctf.pkl, or --box and --apix")
    columns["rlnImageSize"] = np.full(n, int(box))
    if rot is not None:
        columns.update(dict(zip(EULER, matrix_to_euler(rot).T, strict=True)))
        if trans is not None:
            shifts = trans * box * columns["rlnImagePixelSize"][:, None]
            columns.update(dict(zip(SHIFTS, shifts.T, strict=True)))
    table = pd.DataFrame(columns)
    if images is not None:
        if len(images) != n:
            raise InputError(source, f"{n} rows in the pickles but {len(images)} images",
                             "use pickles made for this particle stack")
        table.insert(0, "rlnImageName", images.references())
    particles, optics = split_optics(table)
    return ParticleSet(particles, optics, images, source=source)
