"""Pieces shared by the particle pickers: the working grid of a micrograph, its normalisation, and peak finding.

Coordinates follow the coordinates STAR (:mod:`vitreous.io.micrographs`): ``x`` along columns, ``y`` along rows,
0 at the centre of the first pixel.  A micrograph [y, x] is binned by Fourier cropping (origin at pixel 0, so a
binned pixel ``(x, y)`` lies at ``(x * W / w, y * H / h)`` of the original ``H x W`` micrograph).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Picks:
    """Particles found in one micrograph: centres ``xy`` (K, 2) in micrograph pixels (x, y) and their figures
    of merit ``fom`` (K,), best first."""

    xy: np.ndarray
    fom: np.ndarray

    def __len__(self) -> int:
        return len(self.fom)


def binned_shape(shape: tuple[int, int], pixel_size: float, working_pixel: float) -> tuple[int, int]:
    """(h, w) of a micrograph of ``shape`` (H, W) at ``pixel_size`` Å binned to about ``working_pixel`` Å."""
    factor = max(working_pixel / pixel_size, 1.0)
    return max(round(shape[0] / factor), 1), max(round(shape[1] / factor), 1)


def fourier_bin(image: Tensor, shape: tuple[int, int]) -> Tensor:
    """Real image [..., H, W] resampled to ``shape`` (h, w) <= (H, W) by cropping its spectrum (anti-aliased).

    Keeps frequencies ``-(h//2) .. (h-1)//2`` along y and ``0 .. w//2`` along x; pixel values keep their scale.
    """
    H, W = image.shape[-2:]
    h, w = shape
    if h > H or w > W:
        raise ValueError(f"fourier_bin: {shape} exceeds {(H, W)}")
    if (h, w) == (H, W):
        return image
    f = torch.fft.rfft2(image)
    f = torch.cat([f[..., : (h + 1) // 2, : w // 2 + 1], f[..., H - h // 2:, : w // 2 + 1]], dim=-2)
    return torch.fft.irfft2(f, s=(h, w)) * (h * w / (H * W))


def fft_size(n: int) -> int:
    """Smallest ``2^a 3^b 5^c >= n`` (a fast FFT length)."""
    best = 1 << max(n - 1, 0).bit_length()
    for odd in (1, 3, 5, 9, 15, 25, 27, 45, 75, 81, 125, 135, 225, 243):
        m = odd
        while m < n:
            m *= 2
        best = min(best, m)
    return best


def standardise(image: Tensor) -> Tensor:
    """Zero mean, unit standard deviation (robust: median and MAD, so that particles and blobs do not set them)."""
    centre = image.median()
    spread = (image - centre).abs().median() * 1.4826
    return (image - centre) / spread.clamp_min(1e-12)


HIGHPASS_DIAMETERS = 3.0  # Gaussian high-pass cutoff of the working image, in particle diameters


def highpass(kx: Tensor, ky: Tensor, cutoff_px: float) -> Tensor:
    """Gaussian high-pass ``1 - exp(-(k * cutoff)^2)`` at frequencies ``kx, ky`` (cycles/px); ``cutoff`` in px."""
    return 1.0 - torch.exp(-(kx * kx + ky * ky) * cutoff_px**2)


def working_image(image: Tensor, pixel_size: float, working_pixel: float, diameter_A: float) -> Tensor:
    """A micrograph [H, W] binned to about ``working_pixel`` Å (:func:`binned_shape`), standardised, and
    high-passed at ``HIGHPASS_DIAMETERS`` particle diameters (removes ice-thickness gradients)."""
    shape = binned_shape(tuple(image.shape), pixel_size, working_pixel)
    g = standardise(fourier_bin(image, shape))
    ky = torch.fft.fftfreq(shape[0], device=g.device, dtype=g.dtype)[:, None]
    kx = torch.fft.rfftfreq(shape[1], device=g.device, dtype=g.dtype)[None, :]
    cutoff = HIGHPASS_DIAMETERS * diameter_A * shape[1] / (image.shape[-1] * pixel_size)
    return torch.fft.irfft2(torch.fft.rfft2(g) * highpass(kx, ky, cutoff), s=shape)


def find_peaks(score: Tensor, min_distance: float, threshold: float | None = None, max_peaks: int | None = None,
               border: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Greedy non-maximum suppression of a score map [y, x]: local maxima (3 x 3) at least ``border`` px from the
    edges and above ``threshold`` (if given) are taken best first, each suppressing the candidates closer than
    ``min_distance`` px; at most ``max_peaks`` (if given).

    Returns ``yx`` (K, 2) int64 pixel indices and their scores (K,), best first.
    """
    from scipy.spatial import cKDTree

    pooled = F.max_pool2d(score[None, None], 3, stride=1, padding=1)[0, 0]
    keep = (score == pooled) & torch.isfinite(score)
    if border > 0:
        inner = torch.zeros_like(keep)
        inner[border: score.shape[0] - border, border: score.shape[1] - border] = True
        keep &= inner
    if threshold is not None:
        keep &= score >= threshold
    yx = keep.nonzero()
    values = score[yx[:, 0], yx[:, 1]]
    order = torch.argsort(values, descending=True)
    yx, values = yx[order].cpu().numpy(), values[order].cpu().numpy()
    neighbours = cKDTree(yx).query_ball_point(yx, np.nextafter(min_distance, 0)) if len(yx) else []
    suppressed = np.zeros(len(yx), bool)
    chosen: list[int] = []
    for i in range(len(yx)):
        if suppressed[i]:
            continue
        chosen.append(i)
        if max_peaks is not None and len(chosen) >= max_peaks:
            break
        suppressed[neighbours[i]] = True
    return yx[chosen], values[chosen]


def picks_from_peaks(yx: np.ndarray, values: np.ndarray, binned: tuple[int, int],
                     original: tuple[int, int]) -> Picks:
    """Peaks (row, column) of a binned map -> :class:`Picks` in pixels of the original micrograph."""
    scale = np.array([original[1] / binned[1], original[0] / binned[0]])
    return Picks(yx[:, ::-1].astype(np.float64) * scale, values.astype(np.float64))


def match_picks(found: np.ndarray, truth: np.ndarray, tolerance: float) -> tuple[int, int, int]:
    """One-to-one matching (Hungarian, on distances) of found and true centres (K, 2) within ``tolerance`` px.

    Returns (true positives, false positives, false negatives).
    """
    from scipy.optimize import linear_sum_assignment

    if len(found) == 0 or len(truth) == 0:
        return 0, len(found), len(truth)
    distance = np.linalg.norm(found[:, None, :] - truth[None, :, :], axis=-1)
    cost = np.where(distance <= tolerance, distance, 1e6)
    rows, cols = linear_sum_assignment(cost)
    hits = int(np.sum(distance[rows, cols] <= tolerance))
    return hits, len(found) - hits, len(truth) - hits


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut between histogram bins that maximises the between-class variance."""
    counts, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(counts)[:-1]
    w1 = counts.sum() - w0
    m0 = np.cumsum(counts * centres)[:-1] / np.maximum(w0, 1)
    m1 = (np.sum(counts * centres) - np.cumsum(counts * centres)[:-1]) / np.maximum(w1, 1)
    return float(edges[1:-1][np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def automatic_threshold(values: np.ndarray, iterations: int = 100) -> float:
    """Figure-of-merit threshold between background peaks and particles: a two-Gaussian mixture fitted by EM
    (started from Otsu's split) to the candidates' values, cut where the two weighted densities are equal
    (between the two means).  Meant for the pooled candidates of many micrographs; with no particles at all it
    still splits the background, so look at the histogram in the report."""
    v = np.asarray(values, np.float64)
    if len(v) < 10 or np.ptp(v) == 0:
        return float(v.min()) if len(v) else 0.0
    cut = _otsu(v)
    low, high = v[v < cut], v[v >= cut]
    weight = np.array([len(low), len(high)]) / len(v)
    mean = np.array([low.mean(), high.mean()])
    floor = 1e-3 * np.ptp(v)
    sd = np.maximum([low.std(), high.std()], floor)
    for _ in range(iterations):
        density = weight * np.exp(-0.5 * ((v[:, None] - mean) / sd) ** 2) / sd
        resp = density / np.maximum(density.sum(1, keepdims=True), 1e-300)
        n = np.maximum(resp.sum(0), 1e-9)
        weight, mean = n / len(v), (resp * v[:, None]).sum(0) / n
        sd = np.maximum(np.sqrt((resp * (v[:, None] - mean) ** 2).sum(0) / n), floor)
    low_i, high_i = np.argsort(mean)
    x = np.linspace(mean[low_i], mean[high_i], 2001)
    density = weight * np.exp(-0.5 * ((x[:, None] - mean) / sd) ** 2) / sd
    return float(x[np.argmax(density[:, high_i] >= density[:, low_i])])


def count_threshold(values: np.ndarray, expected: float) -> float:
    """The threshold that keeps the ``expected`` (rounded, at least 1) best of ``values``."""
    v = np.sort(np.asarray(values, np.float64))[::-1]
    if len(v) == 0:
        return 0.0
    return float(v[min(max(int(round(expected)), 1), len(v)) - 1])
