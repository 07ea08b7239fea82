"""Scores as matrix products (vitreous.align.scoring) against the Gaussian log-likelihood written out over the
whole Fourier disc, the reference slice sources, shift phases and the noise / scale estimators."""

from __future__ import annotations

import math

import pytest
import torch

from vitreous.align import (
    FullSlices,
    ProjectorSlices,
    ResidualShells,
    ShellPower,
    fourier_points,
    image_power,
    prepare,
    shift_grid,
    shift_phases,
)
from vitreous.align.scoring import best_shift_candidates, best_shift_shared, score_candidates, score_shared
from vitreous.physics.fourier import fft2c, translate_ft
from vitreous.physics.projection import Projector
from vitreous.physics.so3_grid import random_rotations

from .conftest import BOX, Images, simulate

RADIUS = 11.0


@pytest.fixture(scope="module")
def data(projector: Projector) -> Images:
    return simulate(projector, 6, 0.5, seed=3)


def direct_loglik(data: Images, slices_full: torch.Tensor, shifts: torch.Tensor, sigma2: torch.Tensor,
                  scale: float) -> torch.Tensor:
    """``-sum_k |T_s X - a CTF S|^2 / (2 sigma2) + sum_k |X|^2 / (2 sigma2)`` over all pixels with
    ``1 <= |k| <= RADIUS`` (both halves of the plane), images (B,) x rotations (R,) x shifts (T,) in float64."""
    k = torch.arange(BOX) - BOX // 2
    r = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2 + 0.0)
    inside = (r >= 1) & (r <= RADIUS)
    inv = 1.0 / sigma2.double()[torch.round(r).long().clamp(max=BOX // 2)] * inside
    x = data.spectra.to(torch.complex128)
    centred = translate_ft(x[:, None], shifts.double()[None])  # (B, T, D, D), content moved by +s
    model = scale * data.ctf.double()[:, None] * slices_full.to(torch.complex128)[None]  # (B, R, D, D)
    residual = centred[:, None] - model[:, :, None]  # (B, R, T, D, D)
    chi2 = ((residual.abs() ** 2) * inv).sum((-1, -2)) - ((x.abs() ** 2) * inv).sum((-1, -2))[:, None, None]
    return -0.5 * chi2


def test_shared_and_candidate_scores_are_the_gaussian_log_likelihood(projector: Projector, data: Images) -> None:
    sigma2 = torch.linspace(3e3, 1e3, BOX // 2 + 1)
    rotations = random_rotations(5, generator=torch.Generator().manual_seed(0))
    shifts = shift_grid(1.5, 0.75)
    points = fourier_points(BOX, RADIUS)
    images = prepare(data.spectra, data.ctf, sigma2, points)
    slices = ProjectorSlices(projector)(rotations, points)
    expected = direct_loglik(data, projector.slices(rotations), shifts, sigma2, scale=0.8)  # (B, R, T)
    shared = score_shared(images, slices, shift_phases(points, shifts), "likelihood", 0.8)  # (B, T, R)
    torch.testing.assert_close(shared.double(), expected.transpose(1, 2), rtol=2e-4, atol=0.05)
    # per-image candidates: two groups of rotations, each around its own centre shift
    centres = torch.tensor([[0.5, -0.25], [-1.0, 0.0]])
    offsets = torch.tensor([[0.0, 0.0], [0.25, 0.5]])
    per_image = score_candidates(images, slices[None, None].expand(len(data.images), 2, -1, -1),
                                 shift_phases(points, centres)[None].expand(len(data.images), -1, -1),
                                 shift_phases(points, offsets), "likelihood", 0.8)  # (B, K, C, T)
    for group in range(2):
        want = direct_loglik(data, projector.slices(rotations), centres[group] + offsets, sigma2, scale=0.8)
        torch.testing.assert_close(per_image[:, group].double(), want, rtol=2e-4, atol=0.05)
    # the search's shortcut: the best shift found on the data term is the best shift of the score
    for mode in ("likelihood", "ncc"):
        full = score_shared(images, slices, shift_phases(points, shifts), mode, 0.8)
        best, index = best_shift_shared(images, slices, shift_phases(points, shifts), mode, 0.8)
        torch.testing.assert_close(best, full.amax(1))
        assert torch.equal(index, full.argmax(1))
        args = (images, slices[None, None].expand(len(data.images), 2, -1, -1),
                shift_phases(points, centres)[None].expand(len(data.images), -1, -1), shift_phases(points, offsets),
                mode, 0.8)
        best, index = best_shift_candidates(*args)
        torch.testing.assert_close(best, score_candidates(*args).amax(-1))


def test_ncc_is_the_likelihood_maximised_over_the_scale(projector: Projector, data: Images) -> None:
    sigma2 = torch.full((BOX // 2 + 1,), 2e3)
    rotations = random_rotations(4, generator=torch.Generator().manual_seed(1))
    points = fourier_points(BOX, RADIUS)
    images = prepare(data.spectra, data.ctf, sigma2, points)
    slices = ProjectorSlices(projector)(rotations, points)
    phases = shift_phases(points, torch.zeros(1, 2))
    ncc = score_shared(images, slices, phases, "ncc")
    scales = torch.linspace(0.0, 3.0, 301)  # grid error of the maximum <= norm * 0.01**2 / 8: far below rtol
    profile = torch.stack([score_shared(images, slices, phases, "likelihood", float(a)) for a in scales]).amax(0)
    positive = ncc > 0  # for a negative correlation the best non-negative scale is 0 (score 0), ncc is negative
    torch.testing.assert_close(ncc[positive], profile[positive], rtol=1e-3, atol=1e-3)
    assert bool((ncc[~positive] < 0).all())


def test_projector_slices_equal_the_projector_s_own_slices(projector: Projector) -> None:
    rotations = random_rotations(7, generator=torch.Generator().manual_seed(2))
    points = fourier_points(BOX, BOX // 2)
    fast = ProjectorSlices(projector)(rotations, points)
    full = FullSlices(projector.slices, BOX)(rotations, points)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-3 * float(full.abs().max()))


def test_shift_phases_centre_a_shifted_image(projector: Projector) -> None:
    """RELION origins: an image whose particle sits at ``D//2 - s`` is centred by the ramp of ``+s``."""
    rotation = random_rotations(1, generator=torch.Generator().manual_seed(3))
    centred = projector.slices(rotation)
    s = torch.tensor([[1.25, -0.5]])
    moved = fft2c(projector.project(rotation, s))  # particle centre at D//2 - s
    points = fourier_points(BOX, BOX // 2)
    torch.testing.assert_close(points.gather(moved) * shift_phases(points, s), points.gather(centred),
                               rtol=1e-4, atol=1e-3 * float(centred.abs().max()))


def test_noise_power_of_white_noise_is_d_squared_times_the_variance() -> None:
    noise = 0.7 * torch.randn(400, BOX, BOX, generator=torch.Generator().manual_seed(4))
    power = ShellPower(BOX)
    image_power(fft2c(noise), fourier_points(BOX, BOX // 2), power)
    spectrum = power.spectrum()
    expected = BOX**2 * 0.49
    assert spectrum.shape == (BOX // 2 + 1,)
    # shell s holds ~pi s pixels of the half-plane x 400 images: relative sd of the mean <= 1 / sqrt(400 pi)
    torch.testing.assert_close(spectrum[2:], torch.full_like(spectrum[2:], expected), rtol=0.06, atol=0)
    assert float(spectrum[0]) == float(spectrum[1])  # DC is not sampled: it copies shell 1


def test_residual_shells_recover_scale_and_noise(projector: Projector) -> None:
    """Images ``a * CTF * S + noise`` at known poses: the scale comes back as ``a``, the residual power as the
    noise power ``D**2 sd**2``."""
    data = simulate(projector, 300, 1.0, seed=6, shift_sd=0.0)
    points = fourier_points(BOX, BOX // 2)
    sigma2 = torch.full((BOX // 2 + 1,), BOX**2 * data.noise_sd**2)
    signal = data.ctf * projector.slices(data.rotations)  # centred particles (no shifts)
    spectra = 1.7 * signal + (data.spectra - signal)  # 1.7 x the signal, the same noise
    images = prepare(spectra, data.ctf, sigma2, points)
    residuals = ResidualShells(BOX)
    residuals.add(images.values, images.ctf, ProjectorSlices(projector)(data.rotations, points),
                  shift_phases(points, torch.zeros(len(spectra), 2)), points)
    assert residuals.scale(sigma2, 12) == pytest.approx(1.7, rel=0.02)
    noise_power = residuals.noise(1.7)
    torch.testing.assert_close(noise_power[2:], sigma2[2:], rtol=0.1, atol=0)
    assert math.isfinite(float(noise_power[0]))
