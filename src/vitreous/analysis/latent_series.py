"""Volume series decoded from latent points: MRC files ``vol_000.mrc ...`` and a ChimeraX script.

The script (``NAME.cxc``) opens the files as one volume series (``open DIR/vol_*.mrc vseries true``; the
zero-padded names sort in series order), shows them as surfaces at one common contour level and, for
trajectories, plays them back and forth.  ChimeraX runs a ``.cxc`` from the script's own folder, so the
relative paths work wherever the analysis folder is moved.  The level is the median over the series of
``mean + 3 standard deviations`` of each map (capped at its 99.9th percentile): on simulated maps of adenylate
kinase (24 kDa; boxes of 96 and 128 Å, 1 to 3 Å/px) it encloses 60-100 % of the molecular volume, where a
fixed enclosed fraction of the box (ChimeraX's own default, 1 %) depends on how much of the box the molecule
fills.  The script starts with ``close`` (a fresh scene), so the series is model #1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LEVEL_SD = 3.0  # contour level: mean + LEVEL_SD * standard deviation of each map (median over the series)


def contour_level(volume: np.ndarray) -> float:
    """``mean + LEVEL_SD * sd`` of a map, at most its 99.9th percentile (so that a map whose values are not
    a molecule on a flat background, e.g. pure noise or a ramp, still shows a surface)."""
    return float(min(volume.mean() + LEVEL_SD * volume.std(), np.percentile(volume, 99.9)))


def volume_names(count: int) -> list[str]:
    """``vol_000.mrc`` ... for ``count`` volumes (more digits when needed, so that names sort in order)."""
    width = max(3, len(str(max(count - 1, 0))))
    return [f"vol_{i:0{width}d}.mrc" for i in range(count)]


@dataclass
class VolumeSeries:
    """Volumes written to ``folder``: their files, a contour level and small previews for reports."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)  # contour_level of each map
    previews: dict[int, np.ndarray] = field(default_factory=dict)  # index -> sum along z, [y, x], of some maps

    @property
    def level(self) -> float:
        """One contour level for the whole series (median of the maps' levels)."""
        return float(np.median(self.levels))


def write_series(volumes: Iterable[np.ndarray], folder: Path, pixel_size: float, count: int, *,
                 previews: int = 60, advance=None) -> VolumeSeries:
    """Write ``count`` [z, y, x] maps from ``volumes`` as ``folder/vol_###.mrc`` (voxel size Å), one at a
    time, keeping projections of ``previews`` evenly chosen ones; ``advance(1)`` is called after each."""
    from vitreous.io.mrc import write_map

    folder.mkdir(parents=True, exist_ok=True)
    series = VolumeSeries(folder)
    names = volume_names(count)
    shown = set(np.linspace(0, count - 1, min(previews, count)).round().astype(int).tolist())
    for number, volume in enumerate(volumes):
        if number >= count:
            raise ValueError(f"more than the {count} volumes expected")
        volume = np.asarray(volume, np.float32)
        write_map(folder / names[number], volume, pixel_size)
        series.files.append(folder / names[number])
        series.levels.append(contour_level(volume))
        if number in shown:
            series.previews[number] = volume.sum(axis=0)
        if advance is not None:
            advance(1)
    if len(series.files) != count:
        raise ValueError(f"{len(series.files)} volumes written, {count} expected")
    return series


def chimerax_script(path: Path, series: VolumeSeries, *, play: bool = True) -> Path:
    """Write a ChimeraX ``.cxc`` at ``path`` that opens ``series`` as one volume series (paths relative to
    the script); ``play`` adds a looping back-and-forth playback.  Returns ``path``."""
    from vitreous.io.atomic import write_text
    from vitreous.io.stack import relative_name

    folder = Path(relative_name(series.folder, path.parent))
    pattern = (folder / "vol_*.mrc").as_posix()
    lines = [
        f"# ChimeraX: open {path.name}  ({len(series.files)} maps of {series.folder.name}, written by vitreous)",
        "close",
        f"open {pattern} vseries true",
        f"volume #1 style surface level {series.level:.6g}",
        "view",
    ]
    if play:
        lines.append("vseries play #1 loop true direction oscillate maxFrameRate 5")
    write_text(path, "\n".join(lines) + "\n")
    return path
