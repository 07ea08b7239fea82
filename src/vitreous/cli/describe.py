"""What ``info`` says about a particle set: counts, optics, poses, CTF, classes, half sets, latents, images.

Summaries are plain dicts (JSON-able after :func:`jsonable`); keys end in a unit where they have one:
``_A`` Å, ``_px`` pixels, ``_deg`` degrees, ``_kV``, ``_mm``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from vitreous.cli.stats import sample_indices, statistics
from vitreous.data.particles import SHIFTS, ParticleSet

FORMATS = {".star": "RELION STAR", ".cs": "cryoSPARC .cs", ".pkl": "cryoDRGN pickle"}
MAX_LISTED = 10
MAX_FILES = 5
OPTICS_KEYS = {  # optics-table label -> summary key (unit suffix as in the module docstring)
    "rlnOpticsGroup": "group", "rlnOpticsGroupName": "name", "rlnImagePixelSize": "pixel_size_A",
    "rlnImageSize": "box_px", "rlnVoltage": "voltage_kV", "rlnSphericalAberration": "cs_mm",
    "rlnAmplitudeContrast": "amplitude_contrast",
}
MAX_CLASSES = 20
TILT_BINS = np.arange(0, 181, 30)


def jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars as Python numbers, non-finite floats as None, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def spread(values: np.ndarray) -> dict[str, float | None]:
    """min / median / max of an array (None for an empty one)."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return {"min": None, "median": None, "max": None}
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


def distinct(values: np.ndarray) -> list[float]:
    """The distinct values (rounded to 6 digits), at most MAX_LISTED."""
    return np.unique(np.round(np.asarray(values, np.float64), 6))[:MAX_LISTED].tolist()


def counts(values: np.ndarray) -> dict[str, int]:
    """How many times each (integer) value occurs."""
    keys, n = np.unique(values, return_counts=True)
    return {str(k): int(c) for k, c in zip(keys.tolist(), n.tolist(), strict=True)}


def particle_summary(ps: ParticleSet, path: Path, images_problem: str | None, sample: int) -> dict[str, Any]:
    """Everything ``info`` reports about a particle file."""
    optics = ps.optics[[c for c in OPTICS_KEYS if c in ps.optics]].rename(columns=OPTICS_KEYS)
    sizes = ps.particles["rlnOpticsGroup"].value_counts()
    optics["particles"] = optics["group"].map(sizes).fillna(0).astype(int)
    images = images_summary(ps, path, images_problem)
    summary: dict[str, Any] = {
        "path": str(path),
        "format": FORMATS.get(path.suffix.lower(), path.suffix),
        "particles": len(ps),
        "box_px": ps.box or None,
        "pixel_size_A": distinct(ps.optics["rlnImagePixelSize"]),
        "optics_groups": optics.to_dict("records"),
        "columns": list(ps.particles.columns),
        "optics_columns": list(ps.optics.columns),
        "poses": poses_summary(ps),
        "ctf": ctf_summary(ps),
        "classes": classes_summary(ps),
        "half_sets": {"present": ps.half_sets is not None,
                      **({"sizes": counts(ps.half_sets)} if ps.half_sets is not None else {})},
        "latents": latents_summary(ps),
        "files_referenced": referenced_files(ps),
        "images": images,
        "notes": [],
    }
    if ps.images is None:
        summary["notes"].append("metadata only: the images could not be used (see 'images' above)")
    elif sample > 0 and len(ps.images):
        indices = sample_indices(len(ps.images), sample)
        summary["image_statistics"] = statistics(
            lambda idx: ps.images.read(idx, check_finite=False),
            indices, ps.box * ps.box, item="particle")
    return summary


def poses_summary(ps: ParticleSet) -> dict[str, Any]:
    """Tilt angle spread and 30° histogram (RELION tilt in [0, 180]), largest shift (Å)."""
    if not ps.has_poses:
        return {"present": False}
    tilt = ps.euler[:, 1]
    histogram, _ = np.histogram(np.clip(tilt, 0, 180), bins=TILT_BINS)
    bins = [f"{a}-{b}" for a, b in zip(TILT_BINS[:-1], TILT_BINS[1:], strict=True)]
    result = {"present": True, "tilt_deg": spread(tilt),
              "tilt_histogram_deg": dict(zip(bins, histogram.tolist(), strict=True))}
    if all(c in ps.particles for c in SHIFTS) and len(ps):
        result["shift_max_abs_A"] = float(np.abs(ps.shifts_angst).max())
    return result


def ctf_summary(ps: ParticleSet) -> dict[str, Any]:
    """Mean defocus and astigmatism spread (Å), voltages, Cs, amplitude contrasts, phase shifts (°)."""
    if not ps.has_ctf:
        return {"present": False}
    ctf = ps.ctf_table()
    u, v = ctf["defocus_u"].to_numpy(), ctf["defocus_v"].to_numpy()
    result = {"present": True, "defocus_A": spread((u + v) / 2), "astigmatism_A": spread(np.abs(u - v)),
              "voltage_kV": distinct(ctf["voltage"]), "cs_mm": distinct(ctf["cs"]),
              "amplitude_contrast": distinct(ctf["amplitude_contrast"])}
    if (ctf["phase_shift"] != 0).any():
        result["phase_shift_deg"] = spread(ctf["phase_shift"])
    return result


def classes_summary(ps: ParticleSet) -> dict[str, Any]:
    """Number of (1-based) classes and their sizes."""
    classes = ps.classes
    if classes is None:
        return {"present": False}
    sizes = counts(classes)
    result: dict[str, Any] = {"present": True, "count": len(sizes)}
    if len(sizes) <= MAX_CLASSES:
        result["sizes"] = sizes
    else:
        result["size_range"] = [min(sizes.values()), max(sizes.values())]
    return result


def latents_summary(ps: ParticleSet) -> dict[str, Any]:
    """Dimension and per-dimension range of the latent coordinates (vtsLatent1..Z)."""
    z = ps.latents
    if z is None:
        return {"present": False}
    if len(z) == 0:
        return {"present": True, "dimension": z.shape[1]}
    return {"present": True, "dimension": z.shape[1], "min": z.min(axis=0)[:MAX_LISTED].tolist(),
            "max": z.max(axis=0)[:MAX_LISTED].tolist()}


def referenced_files(ps: ParticleSet) -> dict[str, Any]:
    """The stack files named in the metadata (``N@file`` names)."""
    if "rlnImageName" not in ps.particles:
        return {"count": 0, "first": []}
    names = ps.particles["rlnImageName"].astype(str).str.rsplit("@", n=1).str[-1].unique()
    return {"count": len(names), "first": names[:MAX_FILES].tolist()}


def images_summary(ps: ParticleSet, path: Path, problem: str | None) -> dict[str, Any]:
    """Whether the images can be read (else why not), from how many stacks, with which header voxel size."""
    images = ps.images
    if images is None:
        if problem is None:
            problem = ("no image stack given (--stack)" if path.suffix.lower() == ".pkl"
                       else "the metadata names no images (no rlnImageName)")
        return {"found": False, "problem": problem}
    return {"found": True, "stack_files": len(images.paths),
            "header_voxel_size_A": distinct(images.header_voxel_sizes)}
