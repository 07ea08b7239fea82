"""RELION STAR particle files (3.0 without optics, 3.1 and 5 with optics groups) <-> ParticleSet.

Read: the particle block (``data_particles``, or the single loop of a 3.0 file), the optics block (or optics
groups built from per-particle voltage / Cs / amplitude contrast / pixel size in 3.0 files), legacy pixel
shifts ``rlnOriginX/Y`` converted to ``rlnOriginXAngst/YAngst``.  Write: 3.1-style files that RELION reads
(``data_optics`` + ``data_particles``, ``# version 30001``).
"""

from __future__ import annotations

import linecache
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
                                              "rlnCtfScalefactor", "rlnVoltage", "rlnSphericalAberration",
                                              "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnPixelSize",
                                              "rlnDetectorPixelSize", "rlnMagnification"]
INTEGER_LABELS = ["rlnOpticsGroup", "rlnClassNumber", "rlnRandomSubset", "rlnImageSize"]
POSITIVE_LABELS = ["rlnImagePixelSize", "rlnPixelSize", "rlnDetectorPixelSize", "rlnMagnification", "rlnImageSize",
                   "rlnVoltage"]
PIXEL_SIZE_MISMATCH = 0.01  # relative


def read_star_blocks(path: str | Path) -> dict[str, pd.DataFrame]:
    """All loop blocks of a STAR file as DataFrames, or a one-line InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", "check the path")
    # starfile reads lines through the global linecache and clears it only after a successful parse: a stale
    # entry left by a failed read would make later reads of a rewritten file see the old lines.
    linecache.cache.pop(str(path), None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        if "Length mismatch" in detail:
            detail = f"a loop has a different number of column labels and values per row; {detail}"
        raise InputError(path, f"not a readable STAR file ({detail})", "check that it is a RELION STAR file") from None
    finally:
        linecache.cache.pop(str(path), None)
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


def _check_numeric(table: pd.DataFrame, path: Path, row_name: str) -> None:
    """Convert the known numeric columns to numbers, refusing non-finite, non-integer or non-positive values
    (and any column named twice)."""
    duplicated = table.columns[table.columns.duplicated()]
    if len(duplicated):
        raise InputError(path, f"column {duplicated[0]} appears twice", "remove the duplicate column")
    for label in NUMERIC_LABELS + INTEGER_LABELS:
        if label not in table:
            continue
        column = table[label]
        values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(values)
        problem = "not a finite number"
        if label in INTEGER_LABELS and not bad.any():
            bad, problem = values != np.round(values), "not a whole number"
        if label in POSITIVE_LABELS and not bad.any():
            bad, problem = values <= 0, "not positive"
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(path, f"{label} of {row_name} {row + 1} is '{column.iloc[row]}', {problem}",
                             "fix or remove that row")
        table[label] = values.astype(np.int64) if label in INTEGER_LABELS else values


def _check_optics_groups(table: pd.DataFrame, optics: pd.DataFrame, path: Path) -> None:
    duplicated = optics["rlnOpticsGroup"][optics["rlnOpticsGroup"].duplicated()]
    if len(duplicated):
        raise InputError(path, f"optics group {duplicated.iloc[0]} is defined twice in data_optics",
                         "give each optics group its own rlnOpticsGroup")
    unknown = ~table["rlnOpticsGroup"].isin(optics["rlnOpticsGroup"])
    if unknown.any():
        groups = sorted(set(table["rlnOpticsGroup"][unknown].tolist()))
        raise InputError(path, f"particles refer to optics groups {groups} that data_optics does not define "
                         f"(it has {optics['rlnOpticsGroup'].tolist()})", "fix rlnOpticsGroup or data_optics")


def read_star(path: str | Path, datadir: str | Path | None = None, *, apix: float | None = None,
              load_images: bool = True) -> ParticleSet:
    """Read a RELION particle STAR file.

    ``datadir`` is searched first for stacks named in ``rlnImageName`` (then the STAR file's folder, its
    parents and the working directory).  ``apix`` overrides the pixel size (Å).  With ``load_images=True``
    every image must be found; with ``load_images=False`` the set carries metadata only.
    """
    path = Path(path)
    if apix is not None and not (np.isfinite(apix) and apix > 0):
        raise InputError(path, f"pixel size {apix} is not a positive number", "pass --apix in Å per pixel")
    blocks = read_star_blocks(path)
    table = _particle_block(blocks, path)
    if load_images and "rlnImageName" not in table:
        raise InputError(path, "the particle table has no rlnImageName column, so the images are unknown",
                         "add rlnImageName (N@stack.mrcs) to the particle table")
    _check_numeric(table, path, "particle")
    if "optics" in blocks:
        optics = blocks["optics"].copy()
        if "rlnOpticsGroup" not in optics:
            raise InputError(path, "data_optics has no rlnOpticsGroup column", "repair the optics table")
        _check_numeric(optics, path, "optics group row")
        if "rlnOpticsGroup" not in table:
            if len(optics) > 1:
                raise InputError(path, "particles lack rlnOpticsGroup but several optics groups exist",
                                 "add rlnOpticsGroup to data_particles")
            table["rlnOpticsGroup"] = int(optics["rlnOpticsGroup"].iloc[0])
        if "rlnImagePixelSize" not in optics:
            optics["rlnImagePixelSize"] = optics.get("rlnPixelSize", np.nan)
        _check_optics_groups(table, optics, path)
    else:
        table, optics = _optics_from_particles(table)

    if apix is not None:
        optics["rlnImagePixelSize"] = float(apix)
    if "rlnAmplitudeContrast" not in optics and "rlnAmplitudeContrast" not in table and "rlnDefocusU" in table:
        log.warning("%s: no rlnAmplitudeContrast; using %.2f", path, DEFAULT_AMPLITUDE_CONTRAST)
        optics["rlnAmplitudeContrast"] = DEFAULT_AMPLITUDE_CONTRAST

    images = None
    if load_images:
        images = images_from_names(table["rlnImageName"], path, datadir)
    _settle_pixel_size(table, optics, images, path, explicit=apix is not None)
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
    dirs = list(dict.fromkeys(d.resolve() for d in dirs))  # each folder once, in order
    return ImageStack.from_references(files.tolist(), numbers.to_numpy(np.int64) - 1, dirs, path)


def _settle_pixel_size(table: pd.DataFrame, optics: pd.DataFrame, images: ImageStack | None, path: Path,
                       explicit: bool) -> None:
    """Fill unknown pixel sizes from the stack headers; refuse a STAR/header disagreement."""
    star = optics["rlnImagePixelSize"].to_numpy(np.float64)
    if np.isnan(star).any():
        header = [v for v in (images.header_voxel_sizes if images is not None else []) if v > 0]
        if not header:
            raise InputError(path, "no pixel size in the STAR file or the stack headers", "pass --apix (Å/px)")
        optics["rlnImagePixelSize"] = optics["rlnImagePixelSize"].fillna(header[0])
        return
    if explicit or images is None:
        return
    # Pixel size of each particle per the STAR file, against the header of the stack that holds it.
    per_group = dict(zip(optics["rlnOpticsGroup"].tolist(), star.tolist(), strict=True))
    particle_apix = table["rlnOpticsGroup"].map(per_group).to_numpy(np.float64)
    header = np.array(images.header_voxel_sizes)[images.file_id]
    # 0 means unset and 1.0 is the default of many writers; any other disagreeing value means mixed-up data.
    disagree = (header > 0) & (header != 1.0) & (np.abs(header - particle_apix) > PIXEL_SIZE_MISMATCH * particle_apix)
    if disagree.any():
        i = int(np.argmax(disagree))
        raise InputError(path, f"pixel size {particle_apix[i]:g} Å in the STAR file disagrees with {header[i]:g} Å "
                         f"in the header of {images.header_of(i).path.name}", "pass --apix with the right value")


def _legacy_origins_to_angstrom(table: pd.DataFrame, optics: pd.DataFrame) -> None:
    """Replace RELION 3.0 pixel shifts ``rlnOriginX/Y`` by ``rlnOriginX/YAngst`` (unless those exist)."""
    if "rlnOriginX" not in table and "rlnOriginY" not in table:
        return
    apix = optics.set_index("rlnOpticsGroup")["rlnImagePixelSize"].loc[table["rlnOpticsGroup"]].to_numpy()
    for axis in "XY":
        legacy = f"rlnOrigin{axis}"
        if legacy in table:
            if f"{legacy}Angst" not in table:
                table[f"{legacy}Angst"] = table[legacy].to_numpy(np.float64) * apix
            del table[legacy]


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
    write_star_blocks(path, {"optics": optics, "particles": table})


def write_star_blocks(path: str | Path, blocks: dict[str, pd.DataFrame]) -> None:
    """Write loop blocks atomically as a RELION 3.1 STAR file (``# version 30001`` before each block)."""
    with atomic_path(path) as tmp:
        # 12 significant digits with the decimal point kept (float columns stay float): RELION's six decimals
        # survive, and small values (latents, tiny shifts) are not rounded to zero as with a fixed "%.6f"
        starfile.write(blocks, tmp, overwrite=True, float_format="%#.12g")
        text = tmp.read_text()
        for name in list(blocks)[1:]:
            text = text.replace(f"data_{name}", f"# version 30001\n\ndata_{name}", 1)
        tmp.write_text("\n# version 30001\n" + text)
