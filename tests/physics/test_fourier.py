"""Centred Fourier/Hartley transforms, grids, resampling, shifts, masks and filters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitreous.physics import fourier as F

SIZES = [16, 17]


def _cosines(D: int, waves: list[tuple[int, int, float, float]], ndim: int = 2) -> torch.Tensor:
    """Sum of cosines with integer cycles per box, sampled on a D grid whose origin is pixel D//2.

    ``waves`` holds (cx, cy, amplitude, phase) (cz = (cx - cy) // 3 for 3D); the same function sampled at any D
    (with the box as unit length) gives the exact band-limited resampling.
    """
    t = (torch.arange(D, dtype=torch.float64) - D // 2) / D
    if ndim == 2:
        y, x = torch.meshgrid(t, t, indexing="ij")
        return sum(a * torch.cos(2 * math.pi * (cx * x + cy * y) + ph) for cx, cy, a, ph in waves)
    z, y, x = torch.meshgrid(t, t, t, indexing="ij")
    return sum(a * torch.cos(2 * math.pi * (cx * x + cy * y + ((cx - cy) // 3) * z) + ph)
               for cx, cy, a, ph in waves)


@pytest.mark.parametrize("D", SIZES)
def test_fft2c_centre_conventions(D: int) -> None:
    x = torch.zeros(D, D, dtype=torch.float64)
    x[D // 2, D // 2] = 1.0  # a delta at the phase origin has a flat, real spectrum
    f = F.fft2c(x)
    assert torch.allclose(f, torch.ones_like(f))
    img = torch.randn(3, D, D, dtype=torch.float64)
    f = F.fft2c(img)
    assert torch.allclose(f[:, D // 2, D // 2].real, img.sum((-1, -2)))  # DC at D//2
    assert torch.allclose(F.ifft2c(f).real, img)
    # numpy reference of the definition
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img.numpy(), axes=(-2, -1))), axes=(-2, -1))
    assert np.allclose(f.numpy(), ref)


@pytest.mark.parametrize("D", SIZES)
def test_fft3c_roundtrip_and_dc(D: int) -> None:
    vol = torch.randn(D, D, D, dtype=torch.float64)
    f = F.fft3c(vol)
    assert torch.allclose(f[D // 2, D // 2, D // 2].real, vol.sum())
    assert torch.allclose(F.ifft3c(f).real, vol)


@pytest.mark.parametrize("D", SIZES)
def test_hartley_transforms(D: int) -> None:
    img = torch.randn(2, D, D, dtype=torch.float64)
    h = F.ht2c(img)
    f = F.fft2c(img)
    assert torch.allclose(h, f.real - f.imag)
    assert torch.allclose(F.iht2c(h), img)
    assert torch.allclose(F.hartley_to_fourier(h), f)
    assert torch.allclose(F.fourier_to_hartley(f), h)
    vol = torch.randn(D, D, D, dtype=torch.float64)
    assert torch.allclose(F.iht3c(F.ht3c(vol)), vol)
    assert torch.allclose(F.hartley_to_fourier(F.ht3c(vol), ndim=3), F.fft3c(vol))


@pytest.mark.parametrize("D", SIZES)
def test_frequency_grids(D: int) -> None:
    g = F.frequency_grid_2d(D, dtype=torch.float64)
    assert g.shape == (D, D, 2)
    ref = np.fft.fftshift(np.fft.fftfreq(D))
    assert np.allclose(g[0, :, 0].numpy(), ref)  # kx varies along the last axis
    assert np.allclose(g[:, 0, 1].numpy(), ref)  # ky along rows
    assert g[D // 2, D // 2].abs().sum() == 0
    g3 = F.frequency_grid_3d(D, dtype=torch.float64)
    assert g3.shape == (D, D, D, 3)
    assert np.allclose(g3[:, 0, 0, 2].numpy(), ref) and np.allclose(g3[0, 0, :, 0].numpy(), ref)
    # a wave of frequency (kx, ky) = (2, -3)/D cycles/px peaks at that grid point
    wave = _cosines(D, [(2, -3, 1.0, 0.3)])
    spec = F.fft2c(wave).abs()
    iy, ix = np.unravel_index(int(spec[:, D // 2 + 1:].argmax()), (D, D - D // 2 - 1))
    assert torch.allclose(g[iy, ix + D // 2 + 1] * D, torch.tensor([2.0, -3.0], dtype=torch.float64))


def test_radial_shells() -> None:
    D = 16
    shells = F.radial_index(D)
    assert torch.equal(F.shell_index_2d(D), shells) and torch.equal(F.shell_index_3d(D)[D // 2], shells)
    assert shells[D // 2, D // 2] == 0 and shells[D // 2, D // 2 + 5] == 5 and shells[D // 2 + 3, D // 2 + 4] == 5
    ones = torch.ones(D, D, dtype=torch.float64)
    assert torch.allclose(F.radial_average(ones), torch.ones(D // 2 + 1, dtype=torch.float64))
    counts = F.shell_sum(ones, shells)
    assert counts.sum() == D * D and counts[0] == 1 and counts[1] == 8  # 4 axial + 4 diagonal
    r = F.radius_grid(D, 3, dtype=torch.float64)
    avg = F.radial_average(r, ndim=3)  # shell s holds radii in [s - 1/2, s + 1/2)
    assert ((avg - torch.arange(D // 2 + 1, dtype=torch.float64)).abs() < 0.5).all()
    batched = F.radial_average(torch.stack([ones, 2 * ones]))
    assert batched.shape == (2, D // 2 + 1) and torch.allclose(batched[1], 2 * batched[0])


@pytest.mark.parametrize(("D", "new_D"), [(32, 16), (33, 16), (32, 17), (33, 21)])
def test_fourier_crop_and_pad_resample_bandlimited_signals(D: int, new_D: int) -> None:
    waves = [(0, 0, 0.7, 0.0), (1, 2, 1.0, 0.4), (-3, 1, 0.5, -1.1), (5, -4, 0.25, 2.0)]  # all below new Nyquist
    big, small = _cosines(D, waves), _cosines(new_D, waves)
    assert torch.allclose(F.fourier_crop(big, new_D), small, atol=1e-12)  # pixel values kept
    assert torch.allclose(F.fourier_pad(small, D), big, atol=1e-12)
    vbig, vsmall = _cosines(D, waves, 3), _cosines(new_D, waves, 3)
    assert torch.allclose(F.fourier_crop(vbig, new_D, ndim=3), vsmall, atol=1e-12)
    assert torch.allclose(F.fourier_pad(vsmall, D, ndim=3), vbig, atol=1e-12)
    with pytest.raises(ValueError):
        F.fourier_pad(big, new_D)


def test_fourier_crop_matches_aspire_downsample_indexing() -> None:
    """Odd -> even crop keeps the centred block starting at ``L//2 - n//2`` (ASPIRE's ``crop_pad_3d``)."""
    L, n = 9, 8
    vol = np.random.default_rng(0).standard_normal((L, L, L))
    spec = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(vol)))
    s = L // 2 - n // 2
    block = spec[s:s + n, s:s + n, s:s + n]
    ref = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(block))).real * (n / L) ** 3
    assert np.allclose(F.fourier_crop(torch.from_numpy(vol), n, ndim=3).numpy(), ref)


@pytest.mark.parametrize("D", SIZES)
def test_translate_moves_content_by_plus_shift(D: int) -> None:
    img = torch.zeros(D, D, dtype=torch.float64)
    img[D // 2, D // 2] = 1.0
    moved = F.translate_images(img, torch.tensor([3.0, -2.0], dtype=torch.float64))
    assert int(moved.argmax()) == (D // 2 - 2) * D + (D // 2 + 3)  # (y, x) = (c - 2, c + 3)
    assert torch.allclose(moved, torch.roll(img, (-2, 3), (0, 1)), atol=1e-12)
    # fractional shifts compose, and shifts broadcast over a batch
    imgs = torch.randn(4, D, D, dtype=torch.float64)
    s1 = torch.randn(4, 2, dtype=torch.float64)
    s2 = torch.randn(4, 2, dtype=torch.float64)
    two = F.translate_ft(F.translate_ft(F.fft2c(imgs), s1), s2)
    assert torch.allclose(two, F.translate_ft(F.fft2c(imgs), s1 + s2))
    # a band-limited wave moves exactly by a fractional shift
    wave = _cosines(D, [(1, 2, 1.0, 0.0)])
    shifted = F.translate_images(wave, torch.tensor([0.5, 0.25], dtype=torch.float64))
    t = (torch.arange(D, dtype=torch.float64) - D // 2) / D
    y, x = torch.meshgrid(t, t, indexing="ij")
    assert torch.allclose(shifted, torch.cos(2 * math.pi * (1 * (x - 0.5 / D) + 2 * (y - 0.25 / D))), atol=1e-12)


def test_window_crops_and_pads_about_the_centre() -> None:
    for D, new_D in [(8, 5), (7, 4), (5, 8), (4, 7)]:
        x = torch.arange(D * D, dtype=torch.float64).reshape(D, D)
        w = F.window(x, new_D)
        assert w.shape == (new_D, new_D)
        assert w[new_D // 2, new_D // 2] == x[D // 2, D // 2]
    vol = torch.randn(6, 6, 6)
    assert torch.equal(F.window(F.window(vol, 9, ndim=3), 6, ndim=3), vol)


def test_soft_masks() -> None:
    D = 32
    m = F.soft_circular_mask(D, radius=8, width=4, dtype=torch.float64)
    c = D // 2
    assert m[c, c] == 1 and m[c, c + 8] == 1 and m[c, c + 12] == 0 and m[0, 0] == 0
    assert torch.isclose(m[c, c + 10], torch.tensor(0.5, dtype=torch.float64))
    assert ((m >= 0) & (m <= 1)).all()
    s = F.soft_spherical_mask(D, radius=8, width=4, dtype=torch.float64)
    assert s.shape == (D, D, D) and s[c, c, c] == 1 and torch.isclose(s[c + 10, c, c], m[c, c + 10])
    hard = F.soft_circular_mask(D, radius=8, width=0)
    assert hard[c, c + 8] == 1 and hard[c, c + 9] == 0
    assert F.soft_circular_mask(D).shape == (D, D)


def test_lowpass_filter_cutoff_in_angstrom() -> None:
    D, apix = 64, 2.0
    filt = F.lowpass_filter(D, cutoff_angst=8.0, pixel_size=apix, dtype=torch.float64)  # shell 64*2/8 = 16
    c = D // 2
    assert torch.isclose(filt[c, c + 16], torch.tensor(0.5, dtype=torch.float64))
    assert filt[c, c + 14] == 1 and filt[c, c + 18] == 0
    low, high = _cosines(D, [(4, 3, 1.0, 0.2)]), _cosines(D, [(20, 9, 1.0, 0.0)])
    out = F.lowpass(low + high, cutoff_angst=8.0, pixel_size=apix)
    assert torch.allclose(out, low, atol=1e-12)
    vol_low, vol_high = _cosines(D // 2, [(2, 1, 1.0, 0.0)], 3), _cosines(D // 2, [(9, -6, 1.0, 0.0)], 3)
    out3 = F.lowpass(vol_low + vol_high, cutoff_angst=8.0, pixel_size=apix, ndim=3)
    assert torch.allclose(out3, vol_low, atol=1e-12)


def test_dtype_and_device_are_respected() -> None:
    x32 = torch.randn(2, 8, 8)
    assert F.fft2c(x32).dtype == torch.complex64
    assert F.fourier_crop(x32, 6).dtype == torch.float32
    assert F.translate_images(x32, torch.zeros(2, 2, dtype=torch.float64)).dtype == torch.float32
    x64 = x32.double()
    assert F.ht2c(x64).dtype == torch.float64 and F.lowpass(x64, 10.0, 1.0).dtype == torch.float64
    meta = torch.empty(2, 8, 8, device="meta")
    assert F.fft2c(meta).device.type == "meta"
