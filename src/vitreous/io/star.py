"""RELION STAR particle files (3.0 without optics, 3.1 and 5 with optics groups) <-> ParticleSet.

Read: the particle block (``data_particles``, or the single loop of a 3.0 file), the optics block (or optics
groups built from per-particle voltage / Cs / amplitude contrast / pixel size in 3.0 files), legacy pixel
shifts ``rlnOriginX/Y`` converted to ``rlnOriginXAngst/YAngst``.  Write: 3.1-style files that RELION reads
(``data_optics`` + ``data_particles``, ``# version 30001``).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from vitreous.data.particles import DEFAULT_AMPLITUDE_CONTRAST, DEFOCUS, EULER, SHIFTS, ParticleSet
from vitreous.errors import InputError
from vitreous.io.atomic import atomic_path
from vitreous.io.optics import split_optics
from vitreous.io.stack import ImageStack

log = logging.getLogger(__name__)

NUMERIC_LABELS = EULER + SHIFTS + DEFOCUS + ["rlnOriginX", "rlnOriginY", "rlnPhaseShift", "rlnCtfBfactor",
                                              "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]
PIXEL_SIZE_MISMATCH = 0.01  # relative


def read_star_blocks(path: str | Path) -> dict[str, pd.DataFrame]:
    """All loop blocks of a STAR file as DataFrames, or a one-line InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", "check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise InputError(path, f"not a readable STAR file ({type(exc).__name__}: {exc})".replace("\n", " "),
                         "check that it is a RELION STAR file") from None
    tables = {name: df for name, df in blocks.items() if isinstance(df, pd.DataFrame)}
    if not tables:
        raise InputError(path, "no data loop in this STAR file", "give a particle STAR file")
    return tables


def _particle_block(blocks: dict[str, pd.DataFrame], path: Path) -> pd.DataFrame:
    if "particles" in blocks:
        return blocks["particles"].copy()
    with_images = [df for name, df in blocks.items() if name != "optics" and "rlnImageName" in df]
    if with_images:
        return with_images[0].copy()
    raise InputError(path, f"no particle table (blocks: {', '.join(repr(b) for b in blocks)}; none has "
                     "rlnImageName)", "give a particle STAR file (e.g. run_data.star, particles.star)")


def _legacy_pixel_size(table: pd.DataFrame) -> np.ndarray | None:
    """Per-row pixel size in Å of a RELION 3.0 table, or None."""
    for label in ("rlnImagePixelSize", "rlnPixelSize"):
        if label in table:
            return table[label].to_numpy(np.float64)
    if "rlnDetectorPixelSize" in table and "rlnMagnification" in table:
        return table["rlnDetectorPixelSize"].to_numpy(np.float64) * 1e4 / table["rlnMagnification"].to_numpy(
            np.float64)
    return None


def _optics_from_particles(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build optics groups from the per-particle columns of a 3.0 file (one group per distinct set)."""
    table = table.copy()
    pixel = _legacy_pixel_size(table)
    table["rlnImagePixelSize"] = np.nan if pixel is None else pixel
    legacy = [c for c in ("rlnPixelSize", "rlnDetectorPixelSize", "rlnMagnification") if c in table]
    return split_optics(table.drop(columns=legacy))


def _check_numeric(table: pd.DataFrame, path: Path) -> None:
    for label in NUMERIC_LABELS:
        if label not in table:
            continue
        values = pd.to_numeric(table[label], errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(path, f"{label} of particle {row + 1} is '{table[label].iloc[row]}', not a finite "
                             "number", "fix or remove that particle")
        table[label] = values


def read_star(path: str | Path, datadir: str | Path | None = None, *, apix: float | None = None,
              load_images: bool = True) -> ParticleSet:
    """Read a RELION particle STAR file.

    ``datadir`` is searched first for stacks named in ``rlnImageName`` (then the STAR file's folder and its
    parents).  ``apix`` overrides the pixel size (Å).  With ``load_images=False`` (or when no stack can be
    found and none is required) the set carries metadata only.
    """
    path = Path(path)
    blocks = read_star_blocks(path)
    table = _particle_block(blocks, path)
    if "optics" in blocks:
        optics = blocks["optics"].copy()
        if "rlnOpticsGroup" not in optics:
            raise InputError(path, "data_optics has no rlnOpticsGroup column", "repair the optics table")
        if "rlnOpticsGroup" not in table:
            if len(optics) > 1:
                raise InputError(path, "particles lack rlnOpticsGroup but several optics groups exist",
                                 "add rlnOpticsGroup to data_particles")
            table["rlnOpticsGroup"] = int(optics["rlnOpticsGroup"].iloc[0])
        if "rlnImagePixelSize" not in optics:
            optics["rlnImagePixelSize"] = optics.get("rlnPixelSize", np.nan)
    else:
        table, optics = _optics_from_particles(table)
    _check_numeric(table, path)
    _check_numeric(optics, path)

    if apix is not None:
        optics["rlnImagePixelSize"] = float(apix)
    if "rlnAmplitudeContrast" not in optics and "rlnAmplitudeContrast" not in table and "rlnDefocusU" in table:
        log.warning("%s: no rlnAmplitudeContrast; using %.2f", path, DEFAULT_AMPLITUDE_CONTRAST)
        optics["rlnAmplitudeContrast"] = DEFAULT_AMPLITUDE_CONTRAST

    images = None
    if load_images and "rlnImageName" in table:
        images = images_from_names(table["rlnImageName"], path, datadir)
    _settle_pixel_size(optics, images, path, explicit=apix is not None)
    _legacy_origins_to_angstrom(table, optics)
    if images is not None:
        _check_box(optics, images.box, path)
    return ParticleSet(table, optics, images, source=str(path))


def images_from_names(names: pd.Series, path: Path, datadir: str | Path | None) -> ImageStack:
    """ImageStack from RELION ``N@file`` names (N 1-based; a name without '@' is a single image)."""
    names = names.astype(str)
    has_at = names.str.contains("@", regex=False)
    parts = names.str.split("@", n=1, expand=True) if has_at.any() else None
    if parts is None or parts.shape[1] < 2:
        files, numbers = names, pd.Series(np.ones(len(names), np.int64))
    else:
        files = parts[1].where(has_at, names)
        numbers = pd.to_numeric(parts[0].where(has_at, "1"), errors="coerce")
    if numbers.isna().any():
        row = int(np.argmax(numbers.isna().to_numpy()))
        raise InputError(path, f"rlnImageName '{names.iloc[row]}' is not of the form N@file", "fix the name")
    dirs = [Path(datadir)] if datadir is not None else []
    dirs += [path.parent, *list(path.resolve().parents)[:3], Path.cwd()]
    return ImageStack.from_references(files.tolist(), numbers.to_numpy(np.int64) - 1, dirs, path)


def _settle_pixel_size(optics: pd.DataFrame, images: ImageStack | None, path: Path, explicit: bool) -> None:
    """Fill unknown pixel sizes from the stack header; refuse a STAR/header disagreement."""
    header = [v for v in (images.header_voxel_sizes if images is not None else []) if v > 0]
    star = optics["rlnImagePixelSize"].to_numpy(np.float64)
    if np.isnan(star).any():
        if not header:
            raise InputError(path, "no pixel size in the STAR file or the stack headers", "pass --apix (Å/px)")
        optics["rlnImagePixelSize"] = optics["rlnImagePixelSize"].fillna(header[0])
        return
    if explicit or len(optics) != 1:
        return
    # 1.0 is the header default of many writers; any other value that disagrees means mixed-up data.
    disagree = [v for v in header if v != 1.0 and abs(v - star[0]) > PIXEL_SIZE_MISMATCH * star[0]]
    if disagree:
        raise InputError(path, f"pixel size {star[0]:g} Å in the STAR file disagrees with {disagree[0]:g} Å in "
                         "the stack header", "pass --apix with the right value")


def _legacy_origins_to_angstrom(table: pd.DataFrame, optics: pd.DataFrame) -> None:
    if "rlnOriginX" not in table:
        return
    apix = optics.set_index("rlnOpticsGroup")["rlnImagePixelSize"].loc[table["rlnOpticsGroup"]].to_numpy()
    if "rlnOriginXAngst" not in table:
        table["rlnOriginXAngst"] = table["rlnOriginX"].to_numpy(np.float64) * apix
        table["rlnOriginYAngst"] = table["rlnOriginY"].to_numpy(np.float64) * apix
    table.drop(columns=["rlnOriginX", "rlnOriginY"], inplace=True)


def _check_box(optics: pd.DataFrame, box: int, path: Path) -> None:
    if "rlnImageSize" in optics:
        sizes = optics["rlnImageSize"].to_numpy()
        if (sizes != box).any():
            raise InputError(path, f"rlnImageSize {sizes.tolist()} disagrees with the {box}-px images",
                             "fix rlnImageSize in data_optics")
    else:
        optics["rlnImageSize"] = box
    if "rlnImageDimensionality" not in optics:
        optics["rlnImageDimensionality"] = 2


def write_star(path: str | Path, particles: ParticleSet) -> None:
    """Write a RELION 3.1-style particle STAR file atomically; image names relative to its folder."""
    path = Path(path)
    table = particles.particles.copy()
    if particles.images is not None:
        table["rlnImageName"] = particles.images.references(relative_to=path.parent)
    optics = particles.optics.copy()
    if "rlnOpticsGroupName" not in optics:
        optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]])
    if particles.box and "rlnImageSize" not in optics:
        optics["rlnImageSize"] = particles.box
        optics["rlnImageDimensionality"] = 2
    with atomic_path(path) as tmp:
        starfile.write({"optics": optics, "particles": table}, tmp, overwrite=True)
        text = tmp.read_text()
        tmp.write_text("\n# version 30001\n" + text.replace("data_particles", "# version 30001\n\ndata_particles", 1))
