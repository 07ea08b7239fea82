"""Template matching: locally normalised FFT cross-correlation of a micrograph with CTF-aware templates.

Templates are images of the particle with positive density (projections of a map over viewing directions
times in-plane rotations, or rotated 2D class averages, which vitreous keeps white), resampled to the working
pixel size (default: a tenth of the particle diameter; coarser sampling averages out the ice's structural
noise, finer sampling did worse on simulated micrographs).  For each micrograph (binned by Fourier cropping to
the working pixel size, RELION contrast: particles dark) a template becomes ``-ifft(fft(template) * CTF * H)``:
the micrograph's CTF (RELION sign, from its rlnDefocusU/V/Angle) with the minus sign of the dark contrast, and
``H`` a Gaussian high-pass at three particle diameters, also applied to the micrograph (it removes ice
thickness gradients).  The template box includes the CTF's delocalisation (``lambda * defocus * k_max`` either
side).

Score: Roseman's locally normalised correlation ``sum_y t(y) g(x + y) / sqrt(sum_y M(y) (g(x + y) - mu(x))^2)``
with ``t = M (u - mean_M u) / ||sqrt(M) (u - mean_M u)||`` (so ``|score| <= 1``); the local statistics of ``g``
under the soft circular mask ``M`` come from FFTs of ``g`` and ``g^2``.  The score map is the maximum over
templates; its peaks (:func:`vitreous.preprocess.picking.find_peaks`) are the picks, with the score as
rlnAutopickFigureOfMerit.  One code path on CPU and CUDA (the device of the template bank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vitreous.physics.ctf import CTFParams, ctf_from_frequencies, electron_wavelength
from vitreous.physics.fourier import fourier_crop, fourier_pad, soft_circular_mask, window
from vitreous.physics.projection import Projector
from vitreous.physics.rotations import euler_to_matrix
from vitreous.physics.so3_grid import grid_matrices, n_directions, n_inplane
from vitreous.preprocess.picking import (
    HIGHPASS_DIAMETERS,
    Picks,
    fft_size,
    find_peaks,
    highpass,
    picks_from_peaks,
    working_image,
)


@dataclass(frozen=True)
class TemplateOptions:
    """Template picking settings (Å, degrees).

    ``working_pixel_A``: pixel size the micrograph is binned to (default ``diameter / 10``, at least the
    micrograph's);
    ``direction_level``: HEALPix level of the viewing directions for map templates (:mod:`so3_grid`: 12 * 4**L);
    ``inplane_step_deg``: in-plane rotation step; ``contrast``: "dark" (RELION's raw micrographs) or "white";
    ``threshold``: least score kept (default: no threshold); ``max_per_micrograph``: the best N kept;
    ``min_distance``: least distance between picks as a fraction of the diameter; ``batch``: templates per FFT
    batch (memory).
    """

    diameter_A: float
    working_pixel_A: float | None = None
    direction_level: int = 1
    inplane_step_deg: float = 10.0
    contrast: str = "dark"
    threshold: float | None = None
    max_per_micrograph: int | None = None
    min_distance: float = 0.8
    batch: int = 64

    def working_pixel(self, pixel_size: float) -> float:
        return max(self.working_pixel_A or self.diameter_A / 10, pixel_size)


@dataclass(frozen=True)
class TemplateBank:
    """Templates (K, B, B) [y, x] of positive density, centred at pixel ``B // 2``, at ``pixel_size`` Å."""

    images: Tensor
    pixel_size: float

    def __len__(self) -> int:
        return int(self.images.shape[0])


def inplane_angles(step_deg: float) -> np.ndarray:
    """``n = round(360 / step)`` equally spaced in-plane angles from 0 (degrees; at least one)."""
    n = max(int(round(360.0 / step_deg)), 1)
    return np.arange(n) * (360.0 / n)


def _resample(images: Tensor, pixel_size: float, working_pixel: float, ndim: int) -> tuple[Tensor, float]:
    """Images (``ndim=2``) or a volume (3) resampled by Fourier crop/pad to about ``working_pixel``; returns the
    result and its exact pixel size."""
    D = images.shape[-1]
    new_D = max(int(round(D * pixel_size / working_pixel)), 2)
    out = fourier_crop(images, new_D, ndim) if new_D <= D else fourier_pad(images, new_D, ndim)
    return out, pixel_size * D / new_D


def templates_from_map(volume: Tensor, voxel_size: float, working_pixel: float, direction_level: int = 1,
                       inplane_step_deg: float = 10.0, batch: int = 512) -> TemplateBank:
    """Projections of a map [z, y, x] (positive density) over the HEALPix directions of ``direction_level``
    times in-plane rotations every ``inplane_step_deg``: ``12 * 4**L * round(360 / step)`` templates."""
    small, pixel = _resample(volume.float(), voxel_size, working_pixel, 3)
    directions = grid_matrices(direction_level, torch.arange(n_directions(direction_level)) * n_inplane(
        direction_level), device=small.device)
    angles = torch.as_tensor(inplane_angles(inplane_step_deg), dtype=torch.float32)
    spins = euler_to_matrix(torch.stack([torch.zeros_like(angles), torch.zeros_like(angles), angles], -1))
    rotations = (spins.to(small.device)[None] @ directions[:, None]).reshape(-1, 3, 3)
    projector = Projector(small)
    images = torch.cat([projector.project(rotations[i:i + batch]) for i in range(0, len(rotations), batch)])
    return TemplateBank(images, pixel)


def templates_from_averages(averages: Tensor, pixel_size: float, working_pixel: float, diameter_A: float,
                            inplane_step_deg: float = 10.0) -> TemplateBank:
    """2D class averages (N, b, b) (white particles) masked to the particle, resampled, rotated in-plane every
    ``inplane_step_deg`` (bilinear): N * round(360 / step) templates."""
    small, pixel = _resample(averages.float(), pixel_size, working_pixel, 2)
    b = small.shape[-1]
    mask = soft_circular_mask(b, 0.5 * diameter_A / pixel + 1.0, width=2.0, device=small.device)
    small = (small - small.mean(dim=(-2, -1), keepdim=True)) * mask
    if b % 2 == 0:  # odd box: grid_sample rotates about the pixel (b - 1) / 2, which is then the centre b // 2
        small, b = window(small, b + 1), b + 1
    angles = torch.as_tensor(inplane_angles(inplane_step_deg), dtype=small.dtype, device=small.device)
    c, s = torch.cos(torch.deg2rad(angles)), torch.sin(torch.deg2rad(angles))
    theta = torch.zeros(len(angles), 2, 3, dtype=small.dtype, device=small.device)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = c, -s, s, c
    grid = F.affine_grid(theta, [len(angles), 1, b, b], align_corners=False)
    rotated = [F.grid_sample(image.expand(len(angles), 1, b, b), grid, align_corners=False)[:, 0]
               for image in small[:, None]]
    return TemplateBank(torch.cat(rotated), pixel)


def delocalisation_px(ctf: CTFParams, working_pixel: float) -> float:
    """Largest CTF delocalisation ``lambda * max(defocus) * k_max`` in working pixels (k_max: Nyquist)."""
    k_max = 0.5 / working_pixel
    defocus = float(torch.maximum(ctf.defocus_u, ctf.defocus_v).abs().max())
    return float(electron_wavelength(float(ctf.voltage.max()))) * defocus * k_max / working_pixel


@dataclass
class _Prepared:
    """A binned, filtered micrograph's FFT on the zero-padded correlation grid (the image starts at pixel
    ``B // 2``), the local standard deviation under the template mask on that grid, and the binned shape (h, w).
    Correlating with a template whose box starts at pixel 0 puts the score of image pixel ``p`` at index ``p``."""

    g_ft: Tensor
    sigma: Tensor
    shape: tuple[int, int]


def prepare_micrograph(image: Tensor, pixel_size: float, working_pixel: float, diameter_A: float, mask: Tensor,
                       contrast: str = "dark") -> _Prepared:
    """The working image (:func:`working_image`) zero-padded for correlation, and its local statistics under
    ``mask`` (B, B).  ``contrast`` "white" negates the image, so that templates for dark particles fit it."""
    g = working_image(image, pixel_size, working_pixel, diameter_A)
    if contrast == "white":
        g = -g
    B = mask.shape[-1]
    grid = (fft_size(g.shape[0] + B), fft_size(g.shape[1] + B))
    padded = F.pad(g, (B // 2, grid[1] - g.shape[1] - B // 2, B // 2, grid[0] - g.shape[0] - B // 2))
    g_ft = torch.fft.rfft2(padded)
    m_ft = torch.fft.rfft2(mask, s=grid).conj()
    s0 = mask.sum()
    s1 = torch.fft.irfft2(g_ft * m_ft, s=grid)
    s2 = torch.fft.irfft2(torch.fft.rfft2(padded * padded) * m_ft, s=grid)
    variance = (s2 - s1 * s1 / s0).clamp_min(0)
    sigma = torch.sqrt(variance).clamp_min(1e-6 * float(variance.max().sqrt()))
    return _Prepared(g_ft, sigma, tuple(g.shape))


def ctf_templates(bank: TemplateBank, ctf: CTFParams, mask: Tensor, highpass_px: float) -> Tensor:
    """Templates of one micrograph (K, B, B): ``-(template * CTF * H)`` (dark particles), masked, zero-mean and
    normalised under ``mask`` (see the module docstring).  ``ctf``: one micrograph's (N = 1)."""
    B = mask.shape[-1]
    u = window(bank.images, B)
    k = torch.fft.fftfreq(B, device=u.device, dtype=u.dtype)
    kx, ky = k[None, :], k[:, None]
    transfer = ctf_from_frequencies(ctf.to(u.device, u.dtype), kx[None] / bank.pixel_size,
                                    ky[None] / bank.pixel_size)[0]
    filt = -transfer * highpass(kx, ky, highpass_px)
    u = torch.fft.ifftshift(u, dim=(-2, -1))  # centre at pixel 0 for the FFT
    u = torch.fft.fftshift(torch.fft.ifft2(torch.fft.fft2(u) * filt).real, dim=(-2, -1))
    u = u - (u * mask).sum(dim=(-2, -1), keepdim=True) / mask.sum()
    norm = torch.sqrt((mask * u * u).sum(dim=(-2, -1), keepdim=True)).clamp_min(1e-12)
    return mask * u / norm


def template_mask(diameter_px: float, delocalisation: float) -> Tensor:
    """Soft circular mask (B, B) of radius ``diameter/2 + delocalisation`` px with a 2-px edge."""
    radius = 0.5 * diameter_px + delocalisation
    B = 2 * int(math.ceil(radius + 3))
    return soft_circular_mask(B, radius, width=2.0)


def score_map(image: Tensor, pixel_size: float, bank: TemplateBank, ctf: CTFParams, options: TemplateOptions,
              delocalisation: float) -> tuple[Tensor, tuple[int, int]]:
    """Locally normalised correlation, maximum over templates, on the binned grid [h, w]; and (h, w)."""
    device = bank.images.device
    diameter_px = options.diameter_A / bank.pixel_size
    mask = template_mask(diameter_px, delocalisation).to(device)
    prepared = prepare_micrograph(image.to(device), pixel_size, bank.pixel_size, options.diameter_A, mask,
                                  options.contrast)
    templates = ctf_templates(bank, ctf, mask, HIGHPASS_DIAMETERS * diameter_px)
    grid = tuple(prepared.sigma.shape)
    best = torch.full(grid, -math.inf, device=device)
    for start in range(0, len(templates), options.batch):
        t_ft = torch.fft.rfft2(templates[start:start + options.batch], s=grid).conj()
        best = torch.maximum(best, torch.fft.irfft2(prepared.g_ft * t_ft, s=grid).amax(0))
    h, w = prepared.shape
    return (best / prepared.sigma)[:h, :w], prepared.shape


def pick_micrograph(image: np.ndarray | Tensor, pixel_size: float, bank: TemplateBank, ctf: CTFParams,
                    options: TemplateOptions, delocalisation: float) -> Picks:
    """Template picks of one micrograph [H, W] (``ctf``: its CTF, N = 1); ``delocalisation`` in working px
    (:func:`delocalisation_px` over all micrographs, so that every micrograph uses one mask)."""
    image = torch.as_tensor(image, dtype=torch.float32)
    score, shape = score_map(image, pixel_size, bank, ctf, options, delocalisation)
    radius = 0.5 * options.diameter_A / bank.pixel_size
    yx, values = find_peaks(score, options.min_distance * 2 * radius, options.threshold, options.max_per_micrograph,
                            border=int(math.ceil(radius)))
    return picks_from_peaks(yx, values, shape, tuple(image.shape))
