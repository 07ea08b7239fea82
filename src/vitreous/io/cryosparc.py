"""cryoSPARC particle ``.cs`` files (NumPy structured arrays) <-> ParticleSet.

cryoSPARC conventions: ``alignments3D/pose`` is a Rodrigues vector with RELION matrix ``A = expmap(v)^T``;
``alignments3D/shift`` is in pixels (same sign as ``rlnOriginX``); ``blob/idx`` is 0-based; defocus in Å,
angles in radians, ``alignments3D/split`` is the 0-based half set.  Values are stored as float32, as
cryoSPARC does, so a STAR -> .cs -> STAR round trip keeps every field to float32 precision.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from vitreous.data.particles import EULER, SHIFTS, ParticleSet
from vitreous.errors import InputError
from vitreous.io.atomic import atomic_path
from vitreous.io.optics import split_optics
from vitreous.io.stack import ImageStack
from vitreous.physics.rotations import cryosparc_pose_to_matrix, matrix_to_cryosparc_pose, matrix_to_euler

REQUIRED = ("blob/path", "blob/idx", "blob/shape", "blob/psize_A")
CTF_FIELDS = {  # cryoSPARC field -> (RELION label, factor)
    "ctf/df1_A": ("rlnDefocusU", 1.0),
    "ctf/df2_A": ("rlnDefocusV", 1.0),
    "ctf/df_angle_rad": ("rlnDefocusAngle", 180.0 / math.pi),
    "ctf/phase_shift_rad": ("rlnPhaseShift", 180.0 / math.pi),
    "ctf/accel_kv": ("rlnVoltage", 1.0),
    "ctf/cs_mm": ("rlnSphericalAberration", 1.0),
    "ctf/amp_contrast": ("rlnAmplitudeContrast", 1.0),
    "ctf/bfactor": ("rlnCtfBfactor", 1.0),
    "ctf/scale": ("rlnCtfScalefactor", 1.0),
}
UID = "vtsCryosparcUid"


def load_cs_array(path: str | Path) -> np.ndarray:
    """The structured array of a .cs file, checked for the blob fields every particle file has."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", "check the path")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(path, f"not a readable cryoSPARC .cs file ({type(exc).__name__})",
                         "export the particles again from cryoSPARC") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        data.close()
        raise InputError(path, "an .npz archive, not a cryoSPARC .cs file", "give a particles .cs file")
    if not isinstance(data, np.ndarray) or data.dtype.names is None or data.ndim != 1:
        raise InputError(path, "not a cryoSPARC .cs file (no table of named fields)", "give a particles .cs file")
    missing = [f for f in REQUIRED if f not in data.dtype.names]
    if missing:
        raise InputError(path, f"missing fields {', '.join(missing)}", "give a particle .cs file (with blob/*)")
    return data


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def read_cs(path: str | Path, datadir: str | Path | None = None, *, load_images: bool = True,
            apix: float | None = None) -> ParticleSet:
    """Read particles, CTF and (when present) 3D alignments from a cryoSPARC .cs file.

    ``apix`` overrides ``blob/psize_A`` (Å); shifts stay the same in pixels.
    """
    path = Path(path)
    data = load_cs_array(path)
    for field in ("blob/psize_A", "alignments3D/pose", "alignments3D/shift", *CTF_FIELDS):
        if field in data.dtype.names and data[field].dtype.kind == "f":
            bad = ~np.isfinite(data[field]).reshape(len(data), -1).all(axis=1)
            if bad.any():
                raise InputError(path, f"{field} of particle {int(np.argmax(bad)) + 1} is NaN or infinite",
                                 "re-export the particles, or remove that particle")
    try:
        table, files, index = _table_from_cs(data, apix)
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"malformed cryoSPARC fields ({type(exc).__name__}: {exc})",
                         "export the particles again from cryoSPARC") from None
    numbers = table.select_dtypes("number")
    bad = ~np.isfinite(numbers.to_numpy(np.float64))
    if bad.any():
        row, col = (int(k[0]) for k in np.nonzero(bad))
        raise InputError(path, f"{numbers.columns[col]} of particle {row + 1} is not finite (NaN or infinite "
                         "pose, shift or CTF value)", "re-export the particles")
    if (table["rlnImagePixelSize"] <= 0).any() or (table["rlnImageSize"] <= 0).any():
        raise InputError(path, "blob/psize_A or blob/shape is not positive", "pass --apix, or re-export")
    particles, optics = split_optics(table)
    images = None
    if load_images:
        dirs = ([Path(datadir)] if datadir is not None else []) + [path.parent, *list(path.resolve().parents)[:3]]
        dirs = list(dict.fromkeys(d.resolve() for d in dirs))
        images = ImageStack.from_references(files, index, dirs, path)
    return ParticleSet(particles, optics, images, source=str(path))


def _table_from_cs(data: np.ndarray, apix: float | None) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """The flat RELION-labelled table of a .cs array, its stack names and 0-based frame indices."""
    names = data.dtype.names
    boxes = np.asarray(data["blob/shape"]).reshape(len(data), -1)[:, 0]
    cs_apix = data["blob/psize_A"].astype(np.float64)
    apix_out = cs_apix if apix is None else np.full(len(data), float(apix))
    table = pd.DataFrame({"rlnImagePixelSize": apix_out, "rlnImageSize": boxes.astype(np.int64)})
    for field, (label, factor) in CTF_FIELDS.items():
        if field in names:
            table[label] = data[field].astype(np.float64) * factor
    if "alignments3D/pose" in names:
        table[EULER] = matrix_to_euler(cryosparc_pose_to_matrix(data["alignments3D/pose"].astype(np.float64)))
        if "alignments3D/shift" in names:
            table[SHIFTS] = data["alignments3D/shift"].astype(np.float64).reshape(len(data), 2) * apix_out[:, None]
        if "alignments3D/split" in names:
            table["rlnRandomSubset"] = data["alignments3D/split"].astype(np.int64) + 1
    for prefix in ("alignments3D", "alignments2D"):
        if f"{prefix}/class" in names:
            table["rlnClassNumber"] = data[f"{prefix}/class"].astype(np.int64) + 1
            break
    files = _decode(data["blob/path"])
    index = data["blob/idx"].astype(np.int64)
    table.insert(0, "rlnImageName", [f"{i + 1:06d}@{f.lstrip('>')}" for f, i in zip(files, index, strict=True)])
    if "uid" in names:
        table[UID] = data["uid"].astype(np.uint64).astype(str)
    return table, files, index


def write_cs(path: str | Path, particles: ParticleSet) -> None:
    """Write a cryoSPARC particle .cs file (blob, CTF, 3D alignments), atomically; paths relative to it."""
    path = Path(path)
    n = len(particles)
    if particles.images is not None:
        refs = particles.images.references(relative_to=path.parent)
    else:
        refs = particles.particles["rlnImageName"].astype(str).tolist()
    idx_path = [r.split("@", 1) if "@" in r else ["1", r] for r in refs]  # no '@': a single image
    blob_paths = [p for _, p in idx_path]
    width = max([len(p.encode()) for p in blob_paths] + [1])
    fields: list[tuple] = [
        ("uid", "<u8"), ("blob/path", f"S{width}"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"), ("blob/sign", "<f4"),
    ]
    ctf = particles.ctf_table() if particles.has_ctf else None
    if ctf is not None:
        fields += [("ctf/type", "S8"), ("ctf/exp_group_id", "<u4")]
        fields += [(f, "<f4") for f in CTF_FIELDS]
    halves, classes = particles.half_sets, particles.classes
    if particles.has_poses:
        fields += [("alignments3D/shift", "<f4", (2,)), ("alignments3D/pose", "<f4", (3,)),
                   ("alignments3D/psize_A", "<f4")]
        fields += [("alignments3D/split", "<u4")] if halves is not None else []
        fields += [("alignments3D/class", "<u4")] if classes is not None else []
    out = np.zeros(n, dtype=fields)
    table = particles.particles
    if UID in table:
        out["uid"] = table[UID].astype(np.uint64).to_numpy()
    else:
        out["uid"] = np.random.default_rng().integers(1, 2**63, n, dtype=np.uint64)
    out["blob/path"] = [p.encode() for p in blob_paths]
    out["blob/idx"] = [int(i) - 1 for i, _ in idx_path]
    out["blob/shape"] = particles.box
    out["blob/psize_A"] = particles.pixel_size
    out["blob/sign"] = -1.0
    if ctf is not None:
        out["ctf/type"] = b"imported"
        out["ctf/exp_group_id"] = particles.particles["rlnOpticsGroup"].to_numpy() - 1
        columns = {"rlnDefocusU": "defocus_u", "rlnDefocusV": "defocus_v", "rlnDefocusAngle": "defocus_angle",
                   "rlnPhaseShift": "phase_shift", "rlnVoltage": "voltage", "rlnSphericalAberration": "cs",
                   "rlnAmplitudeContrast": "amplitude_contrast", "rlnCtfBfactor": "bfactor",
                   "rlnCtfScalefactor": "scale"}
        for field, (label, factor) in CTF_FIELDS.items():
            out[field] = ctf[columns[label]].to_numpy() / factor
    if particles.has_poses:
        out["alignments3D/pose"] = matrix_to_cryosparc_pose(particles.rotations)
        out["alignments3D/shift"] = particles.shifts_px
        out["alignments3D/psize_A"] = particles.pixel_size
        if halves is not None:
            out["alignments3D/split"] = halves - 1
        if classes is not None:
            out["alignments3D/class"] = classes - 1
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, out)
