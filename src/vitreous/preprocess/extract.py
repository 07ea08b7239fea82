"""Particle extraction: boxes cut around picked coordinates, down-sampled, normalised and contrast-inverted.

Geometry: a coordinate (x, y) (micrograph pixels, x = column, y = row, 0 = the first pixel's centre) is cut at
the integer pixel ``round(x) = floor(x + 0.5)``: box pixel ``box//2`` is micrograph pixel ``round(x)``.  The
sub-pixel remainder is kept as the RELION origin, ``rlnOriginXAngst = (round(x) - x) * apix`` (and Y), so the
particle centre sits at ``box//2 - origin`` as everywhere in vitreous (nothing is lost and no image is
interpolated; RELION's own extract rounds the coordinate and keeps origins 0).  Boxes that reach beyond the
micrograph are dropped (and counted).

Processing of each box, in RELION's order: Fourier cropping from ``box`` to ``out_box`` pixels (pixel size
``apix * box / out_box``; the origin in Å is unchanged), contrast inversion (raw micrographs show dark
particles; vitreous, like RELION's ``--invert_contrast``, wants them white), and background normalisation:
mean 0 and standard deviation 1 over the pixels farther than ``bg_radius`` (output pixels, default 3/8 of the
output box, RELION's 75 % circle) from pixel ``out_box//2``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vitreous.data.particles import SHIFTS, ParticleSet
from vitreous.io.micrographs import COORDINATES, NAME, PIXEL_SIZE, MicrographTable, read_micrograph
from vitreous.io.mrc import write_map
from vitreous.io.stack import relative_name
from vitreous.physics.fourier import fourier_crop
from vitreous.preprocess.parallel import map_micrographs


@dataclass(frozen=True)
class ExtractOptions:
    """Box sizes in pixels (``box`` on the micrograph, ``out_box`` written), background radius in output px."""

    box: int
    out_box: int | None = None  # None: no down-sampling
    invert: bool = True
    bg_radius: float | None = None  # default 0.375 * out_box

    @property
    def size(self) -> int:
        return self.box if self.out_box is None else self.out_box

    @property
    def radius(self) -> float:
        return 0.375 * self.size if self.bg_radius is None else self.bg_radius


@dataclass
class Extracted:
    """Result of one micrograph: ``kept`` (N,) bool per input coordinate (False: box beyond the edge),
    ``origins_px`` (K, 2) micrograph-pixel origins of the kept boxes, and ``usable`` False for an empty
    (all-zero, constant or non-finite) micrograph, whose boxes are all dropped."""

    kept: np.ndarray
    origins_px: np.ndarray
    usable: bool = True


def box_corners(coordinates: np.ndarray, box: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray,
                                                                                     np.ndarray]:
    """Integer corners (N, 2) (x, y of box pixel (0, 0)), origins (N, 2) in px and the inside mask (N,)."""
    whole = np.floor(np.asarray(coordinates, np.float64).reshape(-1, 2) + 0.5)
    corners = whole.astype(np.int64) - box // 2
    inside = ((corners >= 0).all(1) & (corners[:, 0] + box <= shape[1]) & (corners[:, 1] + box <= shape[0]))
    return corners, whole - coordinates, inside


def cut_boxes(image: np.ndarray, corners: np.ndarray, box: int) -> np.ndarray:
    """Boxes (N, box, box) of ``image`` [y, x] with top-left pixels ``corners`` (x, y), all inside the image."""
    offsets = np.arange(box)
    rows = corners[:, 1, None] + offsets
    cols = corners[:, 0, None] + offsets
    return image[rows[:, :, None], cols[:, None, :]]


def process_boxes(boxes: np.ndarray, options: ExtractOptions) -> np.ndarray:
    """Down-sample, invert and normalise boxes (N, box, box) -> float32 (N, out, out) (see module docstring)."""
    images = torch.as_tensor(np.asarray(boxes, np.float32))
    if options.out_box is not None and options.out_box != options.box:
        images = fourier_crop(images, options.out_box)
    if options.invert:
        images = -images
    size = images.shape[-1]
    axis = torch.arange(size, dtype=torch.float32) - size // 2
    outside = (axis[:, None] ** 2 + axis[None, :] ** 2) > options.radius**2
    background = images[:, outside]
    mean = background.mean(1)
    sd = background.std(1).clamp_min(1e-12)
    return ((images - mean[:, None, None]) / sd[:, None, None]).numpy().astype(np.float32)


def usable_micrograph(image: np.ndarray) -> bool:
    """False for micrographs that are all zero / constant or hold NaN or infinite values."""
    return bool(np.isfinite(image).all() and image.std() > 0)


def extract_micrograph(path: Path, coordinates: np.ndarray, options: ExtractOptions, stack: Path,
                       apix: float) -> Extracted:
    """Extract the boxes of one micrograph into the MRCS ``stack`` (pixel size ``apix`` of the output boxes);
    no file is written when no box is kept."""
    image = read_micrograph(path)
    n = len(coordinates)
    if not usable_micrograph(image):
        return Extracted(np.zeros(n, bool), np.zeros((0, 2)), usable=False)
    corners, origins, inside = box_corners(coordinates, options.box, image.shape)
    if inside.any():
        images = process_boxes(cut_boxes(image, corners[inside], options.box), options)
        write_map(stack, images, apix)
    return Extracted(inside, origins[inside])


@dataclass
class Extraction:
    """All micrographs: the particles (images written, STAR not yet), boxes dropped at the edges, and the
    names of the skipped (empty) micrographs."""

    particles: ParticleSet
    dropped_at_edge: int
    empty: list[str]


def _extract_item(item: tuple[Path, np.ndarray, Path], options: ExtractOptions, apix: float) -> Extracted:
    path, coordinates, stack = item
    return extract_micrograph(path, coordinates, options, stack, apix)


def extract_particles(coordinates: MicrographTable, options: ExtractOptions, folder: Path, workers: int = 1,
                      scheduler: str | None = None,
                      on_micrograph: Callable[[int, Extracted], None] | None = None) -> Extraction:
    """Extract every coordinate row into ``folder/Particles/<micrograph>.mrcs`` (one stack per micrograph).

    Rows keep their columns (coordinates, CTF, figure of merit, any poses) and gain ``rlnImageName``
    (relative to ``folder``) and ``rlnOriginXAngst/YAngst``; the optics gain ``rlnImagePixelSize``
    (micrograph pixel size x ``box / out_box``), ``rlnImageSize`` and ``rlnMicrographOriginalPixelSize``.
    Micrographs run in parallel through :func:`vitreous.preprocess.parallel.map_micrographs`.
    """
    apix = coordinates.pixel_size()
    out_apix = apix * options.box / options.size
    table = coordinates.table.copy()
    table[NAME] = [str(p.resolve()) for p in coordinates.paths()]
    groups = [rows for _, rows in table.groupby(NAME, sort=False)]
    stems = [Path(rows[NAME].iloc[0]).stem for rows in groups]
    if len(set(stems)) < len(stems):
        stems = [f"{i:05d}_{stem}" for i, stem in enumerate(stems)]
    stacks = [folder / "Particles" / f"{stem}.mrcs" for stem in stems]
    stacks[0].parent.mkdir(parents=True, exist_ok=True)
    items = [(Path(rows[NAME].iloc[0]), rows[COORDINATES].to_numpy(np.float64), stack)
             for rows, stack in zip(groups, stacks, strict=True)]
    results = map_micrographs(partial(_extract_item, options=options, apix=out_apix), items, workers, scheduler,
                              on_result=on_micrograph)
    kept_rows, empty, dropped = [], [], 0
    for rows, stack, result in zip(groups, stacks, results, strict=True):
        if not result.usable:
            empty.append(rows[NAME].iloc[0])
            continue
        dropped += int((~result.kept).sum())
        rows = rows[result.kept].copy()
        rows["rlnImageName"] = [f"{j + 1:06d}@Particles/{stack.name}" for j in range(len(rows))]
        rows[SHIFTS] = result.origins_px * apix
        rows[NAME] = [relative_name(Path(p), folder) for p in rows[NAME]]
        kept_rows.append(rows)
    particles = pd.concat(kept_rows, ignore_index=True) if kept_rows else table.iloc[:0].assign(
        rlnImageName=pd.Series(dtype=str), **{c: pd.Series(dtype=float) for c in SHIFTS})
    first = ["rlnImageName", NAME, *COORDINATES]
    particles = particles[first + [c for c in particles if c not in first]]
    optics = coordinates.optics.rename(columns={PIXEL_SIZE: "rlnMicrographOriginalPixelSize"})
    optics = optics.assign(rlnImagePixelSize=out_apix, rlnImageSize=options.size, rlnImageDimensionality=2)
    return Extraction(ParticleSet(particles, optics), dropped, empty)
