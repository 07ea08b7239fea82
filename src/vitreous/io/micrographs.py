"""RELION 3.1 micrograph and coordinate STAR files: an optics block plus one table, and micrograph images.

Micrographs (``data_micrographs``): ``rlnMicrographName`` (written relative to the STAR file's folder),
``rlnOpticsGroup`` and, after CTF estimation, ``rlnDefocusU/V`` (Å), ``rlnDefocusAngle`` (deg),
``rlnPhaseShift`` (deg), ``rlnCtfMaxResolution`` (Å), ``rlnCtfFigureOfMerit``.
Coordinates (``data_particles``): ``rlnMicrographName``, ``rlnCoordinateX/Y`` (pixels of the micrograph: x
along columns, y along rows, 0 at the centre of the first pixel, the particle's centre), optionally
``rlnAutopickFigureOfMerit``, CTF columns copied from the micrograph and, in simulated truth, poses.
Optics (``data_optics``): ``rlnOpticsGroup``, ``rlnOpticsGroupName``, ``rlnVoltage`` (kV),
``rlnSphericalAberration`` (mm), ``rlnAmplitudeContrast``, ``rlnMicrographPixelSize`` (Å).
Images are float32 [y, x]; a micrograph file holds one 2D image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from vitreous.data.particles import DEFAULT_AMPLITUDE_CONTRAST, ctf_table
from vitreous.errors import InputError
from vitreous.io.mrc import read_frames, read_header
from vitreous.io.stack import relative_name
from vitreous.io.star import read_star_blocks, write_star_blocks

PIXEL_SIZE = "rlnMicrographPixelSize"
NAME = "rlnMicrographName"
COORDINATES = ["rlnCoordinateX", "rlnCoordinateY"]


@dataclass(frozen=True)
class MicrographTable:
    """One table of rows that name micrographs (micrographs or particle coordinates) with its optics groups.

    ``source`` is the STAR file the names are relative to (or the folder of the first micrograph file).
    """

    table: pd.DataFrame
    optics: pd.DataFrame
    source: Path

    def __len__(self) -> int:
        return len(self.table)

    def paths(self) -> list[Path]:
        """Absolute micrograph paths of the rows (relative names resolved against the STAR file's folder)."""
        base = self.source.parent if self.source.suffix == ".star" else self.source
        return [p if p.is_absolute() else (base / p) for p in map(Path, self.table[NAME].astype(str))]

    def pixel_size(self) -> float:
        """The one micrograph pixel size (Å) of all rows, or an InputError if optics groups differ."""
        sizes = np.unique(self.optics_column(PIXEL_SIZE).round(6))
        if len(sizes) != 1:
            raise InputError(self.source, f"micrographs of differing pixel sizes ({', '.join(map(str, sizes))} Å) in "
                             "one run", "process each pixel size separately (split the STAR by optics group)")
        return float(sizes[0])

    def optics_column(self, column: str) -> np.ndarray:
        """An optics value per row (N,)."""
        if column not in self.optics:
            raise InputError(self.source, f"no {column} in the optics block", f"add {column} to data_optics")
        by_group = self.optics.set_index("rlnOpticsGroup")[column]
        return by_group.loc[self.table["rlnOpticsGroup"].to_numpy()].to_numpy()

    def ctf_table(self) -> pd.DataFrame:
        """Per-row CTF parameters in the form of :meth:`vitreous.data.particles.ParticleSet.ctf_table`."""
        missing = [c for c in ("rlnDefocusU", "rlnDefocusV") if c not in self.table]
        if missing:
            raise InputError(self.source, f"no CTF columns ({', '.join(missing)})", "run `vitreous ctf` first")
        return ctf_table(self.table, self.optics, self.optics_column(PIXEL_SIZE))

    def image(self, i: int) -> np.ndarray:
        """Micrograph of row ``i`` as float32 [y, x] (checked: 2D, not truncated)."""
        return read_micrograph(self.paths()[i])

    def with_table(self, table: pd.DataFrame) -> MicrographTable:
        return replace(self, table=table.reset_index(drop=True))

    def subset(self, rows: np.ndarray) -> MicrographTable:
        return self.with_table(self.table.iloc[np.asarray(rows)])


def read_micrograph(path: str | Path) -> np.ndarray:
    """One micrograph as float32 [y, x]; a one-line InputError for missing, truncated or 3D files."""
    header = read_header(path)
    if header.n != 1:
        raise InputError(path, f"expected one 2D micrograph, got {header.n} frames", "give summed micrographs")
    with open(header.path, "rb") as fh:
        return read_frames(fh, header, np.array([0]))[0]


def micrographs_from_files(paths: list[Path], pixel_size: float | None, voltage: float = 300.0, cs: float = 2.7,
                           amplitude_contrast: float = DEFAULT_AMPLITUDE_CONTRAST) -> MicrographTable:
    """A micrograph table (one optics group) from MRC files; the pixel size from ``pixel_size`` or the headers."""
    if not paths:
        raise InputError(None, "no micrographs given", "give micrograph MRC files or a micrographs STAR file")
    sizes = {round(read_header(p).voxel_size, 4) for p in paths} if pixel_size is None else {pixel_size}
    if len(sizes) != 1 or 0.0 in sizes:
        raise InputError(paths[0], f"micrograph headers give pixel sizes {sorted(sizes)} Å",
                         "pass --apix, or process each pixel size separately")
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [voltage],
                           "rlnSphericalAberration": [cs], "rlnAmplitudeContrast": [amplitude_contrast],
                           PIXEL_SIZE: [float(sizes.pop())]})
    table = pd.DataFrame({NAME: [str(Path(p).resolve()) for p in paths], "rlnOpticsGroup": 1})
    return MicrographTable(table, optics, Path(paths[0]).resolve().parent)


def read_micrograph_star(path: str | Path, block: str = "micrographs") -> MicrographTable:
    """A micrographs (``block="micrographs"``) or coordinates (``block="particles"``) STAR file."""
    path = Path(path)
    blocks = read_star_blocks(path)
    if block not in blocks or NAME not in blocks[block]:
        raise InputError(path, f"no data_{block} block with {NAME} (blocks: {', '.join(blocks)})",
                         f"give a RELION {block} STAR file")
    table = blocks[block].copy()
    needed = COORDINATES if block == "particles" else []
    missing = [c for c in needed if c not in table]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}", "give a coordinates STAR file")
    optics = blocks.get("optics")
    if optics is None or PIXEL_SIZE not in optics:
        raise InputError(path, f"no data_optics block with {PIXEL_SIZE}", "add the optics block (RELION 3.1)")
    if "rlnOpticsGroup" not in table:
        table["rlnOpticsGroup"] = int(optics["rlnOpticsGroup"].iloc[0])
    unknown = set(table["rlnOpticsGroup"]) - set(optics["rlnOpticsGroup"])
    if unknown:
        raise InputError(path, f"optics group(s) {sorted(unknown)} not in data_optics", "fix the optics block")
    return MicrographTable(table, optics.copy(), path)


def write_micrograph_star(path: str | Path, micrographs: MicrographTable, block: str = "micrographs") -> None:
    """Write atomically as RELION 3.1 STAR (``data_optics`` + ``data_<block>``), names relative to its folder."""
    path = Path(path)
    table = micrographs.table.copy()
    table[NAME] = [relative_name(p, path.parent) for p in micrographs.paths()]
    optics = micrographs.optics.copy()
    if "rlnOpticsGroupName" not in optics:
        optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]])
    write_star_blocks(path, {"optics": optics, block: table})
