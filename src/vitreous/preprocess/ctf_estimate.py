"""CTF estimation of a micrograph (CTFFIND4-like) in PyTorch, against RELION's CTF (:mod:`vitreous.physics.ctf`).

1. Spectrum: the power spectra of overlapping tiles (``tile`` px, 50 % overlap, tile means removed) of the
   normalised micrograph are averaged (centred layout [ky, kx], DC at ``T//2``); its square root, the amplitude
   spectrum, minus a box-car smoothed copy of itself (7 px box, CTFFIND4's background subtraction) and divided
   by a smooth per-ring RMS, leaves the Thon rings as a zero-mean, unit-variance pattern ``d``.
2. Score: the normalised cross-correlation of ``d`` with the squared CTF, ``CTF^2 - mean``, over the half-plane
   pixels of a resolution band (``low_resolution`` .. ``high_resolution`` Å, below Nyquist); beyond the frequency
   where a candidate's rings come closer than 3 spectrum pixels (aliased) its model is flat (``CTF^2 = 1/2``).
3. Search: 1D, exhaustive over the mean defocus (and phase shift with ``phase_shift``) against the rotational
   average of ``d``; 2D, a grid of mean defocus, astigmatism and angle around the best 1D candidates; then
   L-BFGS refinement of the best grid points on ``(mean, (U-V)/2 cos 2a, (U-V)/2 sin 2a[, phase])``.
4. Fit resolution (``rlnCtfMaxResolution``, Å): ``d`` is averaged along the fitted rings (equiphase average,
   1D) and correlated with the fitted ``CTF^2`` in a sliding window of about two rings; it is the resolution at
   which that correlation first drops below ``FIT_THRESHOLD``.  ``rlnCtfFigureOfMerit`` is the 2D score.

Conventions: defocus in Å, positive = underfocus, ``defocus_u >= defocus_v``; the angle (degrees, (-90, 90])
is the direction of the U axis from the image x axis towards y; phase shift in degrees [0, 180).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vitreous.physics.ctf import CTFParams, ctf_from_frequencies, electron_wavelength
from vitreous.physics.fourier import frequencies_1d, shell_index_2d, shell_sum

FIT_THRESHOLD = 0.5  # windowed correlation of the equiphase average and the fit that defines the fit resolution
BOX_CAR = 7  # px, background box of the amplitude spectrum (CTFFIND4)
MIN_RING_SPACING = 3.0  # spectrum pixels between rings at the upper end of the fitting band
DISPLAY = 256  # px, side of the diagnostic image


@dataclass(frozen=True)
class Optics:
    """Micrograph optics: pixel size (Å), voltage (kV), spherical aberration (mm), amplitude contrast."""

    pixel_size: float
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1


@dataclass(frozen=True)
class CTFSearch:
    """Search ranges (defocus and astigmatism ``U - V`` in Å, resolutions in Å, tile in px)."""

    min_defocus: float = 2000.0
    max_defocus: float = 50000.0
    max_astigmatism: float = 3000.0
    low_resolution: float = 30.0
    high_resolution: float = 5.0
    tile: int = 512
    phase_shift: bool = False


@dataclass
class CTFEstimate:
    """A fitted CTF with its diagnostics.

    ``profile`` (4, n): frequency (1/Å), equiphase average of the spectrum, fitted ``CTF^2`` (both scaled to
    zero mean and unit variance) and their windowed correlation; ``diagnostic`` [y, x] (float16): the
    background-subtracted spectrum with the fit in its right half.
    """

    defocus_u: float
    defocus_v: float
    defocus_angle: float
    phase_shift: float
    max_resolution: float
    figure_of_merit: float
    profile: np.ndarray
    diagnostic: np.ndarray

    def columns(self) -> dict[str, float]:
        """The RELION columns of this fit."""
        return {"rlnDefocusU": self.defocus_u, "rlnDefocusV": self.defocus_v, "rlnDefocusAngle": self.defocus_angle,
                "rlnPhaseShift": self.phase_shift, "rlnCtfMaxResolution": self.max_resolution,
                "rlnCtfFigureOfMerit": self.figure_of_merit}


def tile_size(shape: tuple[int, ...], requested: int) -> int:
    """The tile side: ``requested``, or half the micrograph's shorter side (even) when that is smaller."""
    return max(2, min(requested, min(shape) // 4 * 2))


def periodogram(image: Tensor, tile: int) -> Tensor:
    """Mean power spectrum (tile, tile) of 50 %-overlapping tiles of ``image`` [y, x], centred layout."""
    x = image.to(torch.float32)
    x = (x - x.mean()) / x.std().clamp_min(1e-12)
    windows = x.unfold(0, tile, tile // 2).unfold(1, tile, tile // 2)  # (ny, nx, tile, tile) view
    power = torch.zeros(tile, tile)
    for row in windows:
        row = row - row.mean(dim=(-2, -1), keepdim=True)
        power += torch.fft.fft2(row).abs().square().sum(0)
    return torch.fft.fftshift(power) / (windows.shape[0] * windows.shape[1] * tile * tile)


def normalised_spectrum(power: Tensor) -> Tensor:
    """Thon rings as a zero-mean, unit-variance pattern: amplitude minus its box-car background, over its
    per-ring RMS (smoothed over 5 rings), clipped to +-4."""
    T = power.shape[-1]
    amplitude = power.sqrt()
    background = F.avg_pool2d(amplitude[None, None], BOX_CAR, stride=1, padding=BOX_CAR // 2,
                              count_include_pad=False)[0, 0]
    rings = amplitude - background
    shells = shell_index_2d(T)
    n = int(shells.max()) + 1
    counts = shell_sum(torch.ones_like(rings), shells, n).clamp_min(1)
    variance = shell_sum(rings.square(), shells, n) / counts
    variance = F.avg_pool1d(variance[None, None], 5, stride=1, padding=2, count_include_pad=False)[0, 0]
    return (rings / variance.clamp_min(1e-20).sqrt()[shells]).clamp(-4.0, 4.0)


def _params(mean: Tensor, half_cos: Tensor, half_sin: Tensor, phase_deg: Tensor, optics: Optics) -> CTFParams:
    """CTF parameters from the mean defocus, ``(U-V)/2 (cos 2a, sin 2a)`` (Å) and the phase shift (deg)."""
    half = torch.sqrt(half_cos.square() + half_sin.square() + 1e-6)
    angle = torch.rad2deg(0.5 * torch.atan2(half_sin, half_cos))
    return CTFParams.create(mean + half, mean - half, angle, optics.voltage, optics.cs, optics.amplitude_contrast,
                            phase_deg, dtype=mean.dtype)


def _correlation(model: Tensor, data: Tensor) -> Tensor:
    """Normalised cross-correlation of each row of ``model`` (N, P) with ``data`` (P,) (zero mean, unit norm)."""
    model = model - model.mean(-1, keepdim=True)
    return (model @ data) / model.norm(dim=-1).clamp_min(1e-20)


def _unit(x: Tensor) -> Tensor:
    x = x - x.mean()
    return x / x.norm().clamp_min(1e-20)


def _aliasing(params: CTFParams, T: int, pixel_size: float) -> Tensor:
    """(N,) frequency (1/Å) where rings of the mean defocus come MIN_RING_SPACING pixels apart (1/(2 lam Df k))."""
    mean = 0.5 * (params.defocus_u + params.defocus_v).detach()
    return T * pixel_size / (2 * MIN_RING_SPACING * electron_wavelength(params.voltage.detach()) * mean)


def _model(params: CTFParams, kx: Tensor, ky: Tensor, limit: Tensor) -> Tensor:
    """``CTF^2 - 1/2`` (N, P) at frequencies (1, P), zero beyond ``limit`` (N,) 1/Å."""
    inside = (kx.square() + ky.square()) <= limit[:, None].square()
    return (ctf_from_frequencies(params, kx, ky).square() - 0.5) * inside


class _Band:
    """The half-plane pixels of the spectrum in the fitting band, with the pattern ``d`` there."""

    def __init__(self, d: Tensor, optics: Optics, k_low: float, k_high: float, dtype: torch.dtype) -> None:
        self.T, self.pixel_size = d.shape[-1], optics.pixel_size
        k = frequencies_1d(self.T, dtype=torch.float64) / optics.pixel_size
        ky, kx = torch.meshgrid(k, k, indexing="ij")
        radius = torch.sqrt(kx**2 + ky**2)
        mask = (radius >= k_low) & (radius <= k_high) & ((ky > 0) | ((ky == 0) & (kx > 0)))
        self.kx, self.ky = kx[mask].to(dtype)[None], ky[mask].to(dtype)[None]
        self.data = _unit(d.to(dtype)[mask])

    def scores(self, params: CTFParams, limit: Tensor | None = None, chunk: int = 128) -> Tensor:
        """Correlation of ``CTF^2`` with the data for each candidate of ``params``, flat beyond ``limit`` (N,)
        1/Å (default: where each candidate's rings are aliased)."""
        limit = _aliasing(params, self.T, self.pixel_size) if limit is None else limit
        out = [_correlation(_model(params[i:i + chunk], self.kx, self.ky, limit[i:i + chunk]), self.data)
               for i in range(0, len(params), chunk)]
        return torch.cat(out)

    def edge(self, params: CTFParams) -> float:
        """The highest frequency (1/Å) at which the model of ``params`` (one candidate) is not flat."""
        radius = torch.sqrt(self.kx.square() + self.ky.square())[0]
        inside = radius[radius <= _aliasing(params, self.T, self.pixel_size)]
        return float(inside.max() if len(inside) else radius.min())


def _high_frequency(search: CTFSearch, optics: Optics) -> float:
    """The fitting band's upper end (1/Å): ``1/high_resolution``, below Nyquist."""
    return min(1.0 / search.high_resolution, 0.95 / (2 * optics.pixel_size))


def _search_1d(d: Tensor, optics: Optics, search: CTFSearch, seeds: int = 3) -> list[tuple[float, float]]:
    """The best (mean defocus, phase shift) candidates on the rotational average of ``d``, >= 2000 Å apart."""
    T = d.shape[-1]
    shells = shell_index_2d(T)
    n = T // 2 + 1
    profile = shell_sum(d.double(), shells, n) / shell_sum(torch.ones_like(d, dtype=torch.float64), shells, n)
    k = torch.arange(n, dtype=torch.float64) / (T * optics.pixel_size)
    k_high = _high_frequency(search, optics)
    inside = (k >= 1.0 / search.low_resolution) & (k <= k_high)
    lam = electron_wavelength(optics.voltage)
    step = min(100.0, 0.25 / (lam * k_high**2))  # at most pi/4 of phase at the band's end per step
    defoci = torch.arange(search.min_defocus, search.max_defocus + step / 2, step, dtype=torch.float64)
    phases = torch.arange(0.0, 180.0, 10.0, dtype=torch.float64) if search.phase_shift else torch.zeros(1)
    mean, phase = (g.reshape(-1) for g in torch.meshgrid(defoci, phases.double(), indexing="ij"))
    zero = torch.zeros_like(mean)
    params = _params(mean, zero, zero, phase, optics)
    model = _model(params, k[inside][None], torch.zeros(1, int(inside.sum()), dtype=torch.float64),
                   _aliasing(params, T, optics.pixel_size))
    scores = _correlation(model, _unit(profile[inside]))
    chosen: list[tuple[float, float]] = []
    for i in torch.argsort(scores, descending=True).tolist():
        if all(abs(float(mean[i]) - m) >= 2000.0 for m, _ in chosen):
            chosen.append((float(mean[i]), float(phase[i])))
        if len(chosen) == seeds:
            break
    return chosen


def _grid_2d(seeds: list[tuple[float, float]], search: CTFSearch) -> Tensor:
    """Candidates (N, 4): mean defocus, (U-V)/2 cos 2a, (U-V)/2 sin 2a, phase around each 1D seed."""
    rows = []
    halves = np.arange(250.0, search.max_astigmatism / 2 + 1, 250.0)
    angles = np.deg2rad(np.arange(0.0, 180.0, 15.0))
    astigmatism = [(0.0, 0.0)] + [(h * math.cos(2 * a), h * math.sin(2 * a)) for h in halves for a in angles]
    for mean, phase in seeds:
        for offset in np.arange(-600.0, 601.0, 100.0):
            if search.min_defocus <= mean + offset <= search.max_defocus:
                rows += [(mean + offset, c, s, phase) for c, s in astigmatism]
    return torch.tensor(rows, dtype=torch.float64)


def _refine(band: _Band, start: Tensor, optics: Optics, fit_phase: bool) -> tuple[Tensor, float]:
    """L-BFGS on the score from ``start`` (mean, cos, sin, phase), with the aliasing limit of ``start``; returns
    the parameters and their score."""
    limit = _aliasing(_params(*start[:, None], optics), band.T, band.pixel_size)
    scale = torch.tensor([1e3, 1e3, 1e3, 10.0], dtype=torch.float64)
    x = (start / scale).clone().requires_grad_(True)
    free = torch.tensor([1.0, 1.0, 1.0, 1.0 if fit_phase else 0.0], dtype=torch.float64)
    optimizer = torch.optim.LBFGS([x], lr=1.0, max_iter=60, tolerance_grad=1e-10, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def loss() -> Tensor:
        optimizer.zero_grad()
        v = (start / scale) + (x - start / scale) * free
        value = -band.scores(_params(*(v * scale)[:, None], optics), limit)[0]
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():
        v = (start / scale + (x - start / scale) * free) * scale
        return v, float(band.scores(_params(*v[:, None], optics), limit)[0])


def fit_ctf(power: Tensor, optics: Optics, search: CTFSearch = CTFSearch()) -> CTFEstimate:
    """Fit the CTF to a periodogram (tile, tile) (see the module docstring)."""
    d = normalised_spectrum(power)
    k_low = 1.0 / search.low_resolution
    seeds = _search_1d(d, optics, search)
    candidates = _grid_2d(seeds, search)
    scores = _Band(d, optics, k_low, _high_frequency(search, optics), torch.float32).scores(
        _params(*candidates.float().T, optics))
    band = _Band(d, optics, k_low, _high_frequency(search, optics), torch.float64)
    best, best_score = candidates[scores.argmax()], -math.inf
    for i in torch.argsort(scores, descending=True)[:3].tolist():
        refined, score = _refine(band, candidates[i], optics, search.phase_shift)
        if score > best_score:
            best, best_score = refined, score
    mean, half_cos, half_sin, phase = (float(v) for v in best)
    half = math.hypot(half_cos, half_sin)
    angle = math.degrees(0.5 * math.atan2(half_sin, half_cos))
    params = _params(*best[:, None], optics)
    profile, max_resolution = _fit_resolution(d, params, optics, k_low)
    return CTFEstimate(
        defocus_u=mean + half, defocus_v=mean - half, defocus_angle=angle, phase_shift=phase % 180.0,
        max_resolution=max_resolution, figure_of_merit=best_score, profile=profile,
        diagnostic=_diagnostic(d, params, optics, band.edge(params)))


def _fit_resolution(d: Tensor, params: CTFParams, optics: Optics, k_low: float) -> tuple[np.ndarray, float]:
    """Equiphase average of ``d`` along the fitted rings, the fit, their windowed correlation (see the module
    docstring) as a (4, n) array, and the fit resolution in Å."""
    T = d.shape[-1]
    apix = optics.pixel_size
    k = frequencies_1d(T, dtype=torch.float64) / apix
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    mean = 0.5 * float(params.defocus_u + params.defocus_v)
    half = 0.5 * float(params.defocus_u - params.defocus_v)
    a2 = math.radians(2 * float(params.defocus_angle))
    defocus_k2 = mean * (kx**2 + ky**2) + half * (math.cos(a2) * (kx**2 - ky**2) + math.sin(a2) * 2 * kx * ky)
    shells = torch.round(torch.sqrt(defocus_k2.clamp_min(0) / mean) * T * apix).long()
    n = T // 2
    counts = shell_sum(torch.ones_like(k[None].expand(T, T)), shells, n)
    epa = (shell_sum(d.double(), shells, n) / counts.clamp_min(1)).numpy()
    k1 = torch.arange(n, dtype=torch.float64) / (T * apix)
    isotropic = params.to(dtype=torch.float64)
    isotropic.defocus_u = isotropic.defocus_v = torch.full_like(isotropic.defocus_u, mean)
    fit = ctf_from_frequencies(isotropic, k1[None], torch.zeros_like(k1)[None])[0].square().numpy()
    lam, cs = electron_wavelength(optics.voltage), optics.cs * 1e7
    spacing = T * apix / (2 * np.abs(lam * mean * k1.numpy() - cs * lam**3 * k1.numpy() ** 3).clip(1e-12))  # bins
    valid = (counts.numpy() > 0) & (k1.numpy() >= k_low)
    correlation = np.full(n, np.nan)
    for j in np.flatnonzero(valid):
        w = int(np.clip(np.ceil(spacing[j]), 3, 15))
        window = np.arange(max(j - w, 0), min(j + w + 1, n))
        window = window[valid[window]]
        a, b = epa[window] - epa[window].mean(), fit[window] - fit[window].mean()
        correlation[j] = float(a @ b / max(np.sqrt((a @ a) * (b @ b)), 1e-20))
    first_peak = np.flatnonzero(valid & (np.r_[np.diff(fit) < 0, False]))
    start = first_peak[0] if len(first_peak) else np.flatnonzero(valid)[0]
    below = np.flatnonzero(valid[start:] & (correlation[start:] < FIT_THRESHOLD))
    last = start + below[0] - 1 if len(below) else np.flatnonzero(valid)[-1]
    max_resolution = 1.0 / k1[max(last, start)].item()

    def scaled(x: np.ndarray) -> np.ndarray:
        x = np.where(valid, x, np.nan)
        return (x - np.nanmean(x)) / max(np.nanstd(x), 1e-20)

    profile = np.stack([k1.numpy(), scaled(epa), scaled(fit), correlation]).astype(np.float32)
    return profile, max_resolution


def _diagnostic(d: Tensor, params: CTFParams, optics: Optics, band_edge: float) -> np.ndarray:
    """The spectrum ``d`` up to 1.15 x the band edge with the fitted ``CTF^2`` (scaled alike) in the right half."""
    T = d.shape[-1]
    radius = min(T // 2, int(math.ceil(1.15 * band_edge * T * optics.pixel_size)))
    crop = slice(T // 2 - radius, T // 2 + radius)
    k = frequencies_1d(T, dtype=torch.float64)[crop] / optics.pixel_size
    fit = ctf_from_frequencies(params.to(dtype=torch.float64), k[None, None, :], k[None, :, None])[0].square()
    fit = (fit - 0.5) * 2 * float(d.std())
    image = d[crop, crop].double().clone()
    image[:, radius:] = fit[:, radius:]
    if 2 * radius > DISPLAY:
        image = F.interpolate(image[None, None], size=(DISPLAY, DISPLAY), mode="area")[0, 0]
    return image.numpy().astype(np.float16)


def estimate_ctf(image: Tensor | np.ndarray, optics: Optics, search: CTFSearch = CTFSearch()) -> CTFEstimate:
    """Estimate the CTF of one micrograph [y, x] (see the module docstring)."""
    image = torch.as_tensor(np.asarray(image, dtype=np.float32))
    return fit_ctf(periodogram(image, tile_size(tuple(image.shape), search.tile)), optics, search)
