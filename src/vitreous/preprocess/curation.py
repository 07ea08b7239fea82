"""Exposure curation: per-micrograph measures (CTF fit, relative ice thickness, crystalline ice) and selection.

``measure_micrograph`` reads one micrograph and returns its CTF fit and curation measures (the work of one
Dask task in ``vitreous ctf``).  Measures, as columns of the micrographs STAR file:

* ``vtsIceThickness``: relative ice thickness from the mean intensity (Beer-Lambert: electrons scattered out
  of the beam, inelastically or beyond the objective aperture, are lost, so ``I = I0 exp(-t / L)``):
  ``-ln(mean / brightest mean of the run)``, in units of the mean free path ``L``, 0 for the thinnest ice of the
  run.  It needs micrographs in (proportional to) electron counts; NaN where the mean is not positive
  (normalised micrographs).
* ``vtsCrystallineIce``: the largest ratio, over the rotationally averaged power spectrum smoothed over
  ``SMOOTHING`` (0.016 Å^-1: about one Thon-ring period at 3.7 Å and 1.5 µm defocus, so the CTF's oscillations
  on the water ring average out while a sharp crystalline ring stays) between 3.35 and 3.98 Å (hexagonal ice
  3.90, 3.67, 3.44 Å; cubic ice 3.67 Å), of the power to its smooth baseline: a quadratic in log power fitted
  over 3.05-4.6 Å (as far as Nyquist reaches) away from those rings (``RING_EXCLUSION``), which follows the
  broad water ring of amorphous ice at 3.7 Å but not the sharp crystalline rings.  About 1-1.4 without
  crystalline ice, above 3 with it (simulated micrographs).  NaN when Nyquist (2 x pixel size) is coarser
  than 3.35 Å.

Selection: ``parse_selection("rlnCtfMaxResolution<6,vtsCrystallineIce<2")`` gives conditions ``COLUMN OP
VALUE`` (OP one of ``< <= > >= == !=``), all of which a kept micrograph meets; NaN meets none.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.ndimage import uniform_filter1d

from vitreous.errors import InputError
from vitreous.io.micrographs import read_micrograph
from vitreous.physics.fourier import radial_average
from vitreous.physics.ice import HEXAGONAL_RINGS_A
from vitreous.preprocess.ctf_estimate import CTFEstimate, CTFSearch, Optics, fit_ctf, periodogram, tile_size

ICE_RINGS_A = (3.98, 3.35)
BASELINE_A = (4.6, 3.05)
RING_EXCLUSION = 0.008  # 1/Å either side of a crystalline ring left out of the baseline fit
SMOOTHING = 0.016  # 1/Å, boxcar width of the profile smoothing
OPERATORS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt,
             ">": operator.gt}
CONDITION = re.compile(r"^\s*([A-Za-z_]\w*)\s*(<=|>=|==|!=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass
class MicrographMeasures:
    """One micrograph's CTF fit and curation measures; ``skipped`` says why there is no fit (else None)."""

    ctf: CTFEstimate | None
    mean_intensity: float
    crystalline_ice: float
    skipped: str | None = None


def crystalline_ice_score(power: torch.Tensor, pixel_size: float) -> float:
    """Crystalline-ice score of a periodogram (tile, tile) (see the module docstring); NaN if out of reach."""
    if 2 * pixel_size > ICE_RINGS_A[1]:
        return math.nan
    T = power.shape[-1]
    profile = radial_average(power.double()).numpy()
    k = np.arange(len(profile)) / (T * pixel_size)
    ice = (k >= 1 / ICE_RINGS_A[0]) & (k <= 1 / ICE_RINGS_A[1])
    near_ring = np.min(np.abs(k[:, None] - 1 / np.array(HEXAGONAL_RINGS_A)[None]), axis=1) < RING_EXCLUSION
    baseline = (k >= 1 / BASELINE_A[0]) & (k <= min(1 / BASELINE_A[1], 0.5 / pixel_size)) & ~near_ring
    width = max(1, int(round(SMOOTHING * T * pixel_size)))
    smooth = uniform_filter1d(profile, width, mode="nearest")
    log_power = np.log(np.clip(smooth, 1e-30, None))
    degree = 2 if (k[baseline] > 1 / ICE_RINGS_A[1]).sum() >= 2 else 0
    fit = np.polyval(np.polyfit(k[baseline], log_power[baseline], degree), k[ice])
    return float(np.exp(log_power[ice] - fit).max())


def relative_ice_thickness(mean_intensity: np.ndarray) -> np.ndarray:
    """``-ln(mean / max mean)`` per micrograph (NaN where the mean is not positive or not finite)."""
    means = np.asarray(mean_intensity, dtype=np.float64)
    good = np.isfinite(means) & (means > 0)
    out = np.full(means.shape, np.nan)
    if good.any():
        out[good] = -np.log(means[good] / means[good].max())
    return out


def measure_micrograph(path: str | Path, optics: Optics, search: CTFSearch) -> MicrographMeasures:
    """Read one micrograph, fit its CTF and measure it; all-zero, constant or non-finite ones are skipped."""
    image = read_micrograph(path)
    finite = np.isfinite(image)
    if not finite.all():
        return MicrographMeasures(None, math.nan, math.nan, f"{int((~finite).sum())} NaN or infinite pixels")
    if float(image.std()) == 0.0:
        return MicrographMeasures(None, float(image.mean()), math.nan, f"constant image (all {float(image.flat[0])})")
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    power = periodogram(tensor, tile_size(tuple(image.shape), search.tile))
    return MicrographMeasures(fit_ctf(power, optics, search), float(image.mean(dtype=np.float64)),
                              crystalline_ice_score(power, optics.pixel_size))


def parse_selection(text: str) -> list[tuple[str, str, float]]:
    """Conditions ``(column, operator, value)`` from ``"COLUMN OP VALUE,..."`` (InputError if malformed)."""
    conditions = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = CONDITION.match(part)
        if match is None:
            raise InputError(None, f"--select: cannot read {part!r}",
                             "write conditions as COLUMN<VALUE, separated by commas, e.g. "
                             "'rlnCtfMaxResolution<6,vtsCrystallineIce<2' (operators < <= > >= == !=)")
        conditions.append((match[1], match[2], float(match[3])))
    if not conditions:
        raise InputError(None, "--select is empty", "give conditions such as 'rlnCtfMaxResolution<6'")
    return conditions


def check_selection(conditions: list[tuple[str, str, float]], columns: list[str]) -> None:
    """InputError naming a condition's column that the table will not have."""
    for column, _, _ in conditions:
        if column not in columns:
            raise InputError(None, f"--select: unknown column {column}", f"use one of {', '.join(columns)}")


def select(table: pd.DataFrame, conditions: list[tuple[str, str, float]]) -> np.ndarray:
    """Boolean mask of the rows that meet every condition (a NaN value meets none)."""
    keep = np.ones(len(table), dtype=bool)
    for column, op, value in conditions:
        values = table[column].to_numpy(np.float64)
        keep &= np.isfinite(values) & OPERATORS[op](values, value)
    return keep
