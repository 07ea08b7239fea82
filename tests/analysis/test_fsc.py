"""Fourier shell correlation, resolution at a threshold, CSV table and soft spherical mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vitreous.analysis.fsc import fsc_curve, fsc_table, resolution_at, soft_spherical_mask
from vitreous.sim.atoms import centred, load_atoms
from vitreous.sim.density import density_map


def shells_full(box: int, ndim: int) -> np.ndarray:
    """Shell index of each voxel of the full, centred FFT (independent of the rfft bookkeeping)."""
    k = np.arange(box) - box // 2
    return np.rint(np.sqrt(sum(g**2 for g in np.meshgrid(*([k] * ndim), indexing="ij")))).astype(int)


def fsc_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Straightforward FSC over the full centred FFT, shells 0 .. D//2."""
    fa, fb = (np.fft.fftshift(np.fft.fftn(x)) for x in (a, b))
    shells = shells_full(a.shape[0], a.ndim)
    out = []
    for s in range(a.shape[0] // 2 + 1):
        sel = shells == s
        out.append(np.real((fa[sel] * fb[sel].conj()).sum())
                   / np.sqrt((np.abs(fa[sel]) ** 2).sum() * (np.abs(fb[sel]) ** 2).sum()))
    return np.array(out)


@pytest.fixture(scope="module")
def adk_map(structures: Path) -> np.ndarray:
    return density_map(centred(load_atoms(structures / "adk/adk_open.pdb")), 64, 1.5).numpy().astype(np.float64)


@pytest.mark.parametrize("shape", [(32, 32, 32), (33, 33, 33), (48, 48)])
def test_matches_reference_and_self_is_one(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=shape), rng.normal(size=shape)
    b = a + 2.0 * b
    freq, fsc = fsc_curve(a, b, voxel_size=1.7)
    box = shape[0]
    assert len(freq) == len(fsc) == box // 2 + 1
    np.testing.assert_allclose(freq, np.arange(box // 2 + 1) / (box * 1.7))
    np.testing.assert_allclose(fsc, fsc_reference(a, b), atol=1e-10)
    _, same = fsc_curve(a, a, 1.7)
    np.testing.assert_allclose(same, 1.0, atol=1e-12)
    _, scaled = fsc_curve(a, 3.0 * a, 1.7)
    np.testing.assert_allclose(scaled, 1.0, atol=1e-12)
    _, negated = fsc_curve(a, -a, 1.7)
    np.testing.assert_allclose(negated, -1.0, atol=1e-12)
    _, from_torch = fsc_curve(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b), 1.7)
    np.testing.assert_allclose(from_torch, fsc, atol=1e-5)


def test_independent_noise_halves_follow_snr(adk_map: np.ndarray) -> None:
    """Half maps S + N1, S + N2 (white noise, sigma): FSC_shell = P_S / (P_S + n_shell sigma^2 D^3)."""
    box, apix, sigma = 64, 1.5, 0.02
    rng = np.random.default_rng(7)
    half1 = adk_map + rng.normal(0.0, sigma, adk_map.shape)
    half2 = adk_map + rng.normal(0.0, sigma, adk_map.shape)
    freq, fsc = fsc_curve(half1, half2, apix)
    spectrum = np.abs(np.fft.fftshift(np.fft.fftn(adk_map))) ** 2
    shells = shells_full(box, 3)
    counts = np.bincount(shells.ravel())[: box // 2 + 1]
    signal = np.bincount(shells.ravel(), spectrum.ravel())[: box // 2 + 1]
    expected = signal / (signal + counts * sigma**2 * box**3)
    assert expected[2] > 0.99 and expected[-1] < 0.05  # the curve spans the whole range
    shells_used = np.arange(2, box // 2 + 1)
    tolerance = 4.0 / np.sqrt(counts[shells_used])  # ~4 standard errors of a shell correlation
    assert (np.abs(fsc[shells_used] - expected[shells_used]) < tolerance).all()
    # the measured resolution is where the expected curve crosses
    assert resolution_at(freq, fsc, 0.143) == pytest.approx(resolution_at(freq, expected, 0.143), rel=0.05)


def test_resolution_interpolation() -> None:
    box, apix = 64, 1.5
    freq = np.arange(box // 2 + 1) / (box * apix)
    line = 1.0 - np.arange(box // 2 + 1) / 20.0  # crosses 0.5 exactly at shell 10, 0.143 at shell 17.14
    assert resolution_at(freq, line, 0.5) == pytest.approx(box * apix / 10.0)
    assert resolution_at(freq, line, 0.143) == pytest.approx(box * apix / 17.14)
    dip = np.ones_like(freq)
    dip[12:14] = 0.0  # first crossing wins, even if the curve recovers
    assert resolution_at(freq, dip, 0.143) == pytest.approx(box * apix / (11 + 0.857))
    assert resolution_at(freq, np.full_like(freq, 0.9), 0.143) == pytest.approx(2 * apix)  # never: Nyquist
    early = np.r_[1.0, 0.0, np.zeros(len(freq) - 2)]
    assert resolution_at(freq, early, 0.5) == pytest.approx(2 * box * apix)  # halfway to shell 1


def test_table_for_csv(tmp_path: Path) -> None:
    freq = np.arange(5) / 40.0
    fsc = np.array([1.0, 0.9, 0.6, 0.2, 0.05])
    table = fsc_table(freq, fsc)
    assert list(table.columns) == ["frequency_invA", "resolution_A", "fsc"]
    assert np.isinf(table["resolution_A"].iloc[0])
    np.testing.assert_allclose(table["resolution_A"].iloc[1:], 40.0 / np.arange(1, 5))
    path = tmp_path / "fsc.csv"
    table.to_csv(path, index=False)
    back = pd.read_csv(path)
    np.testing.assert_allclose(back["fsc"], fsc)
    np.testing.assert_allclose(back["frequency_invA"], freq)


def test_soft_spherical_mask() -> None:
    box, radius, edge = 32, 8.0, 4.0
    mask = soft_spherical_mask(box, radius, edge)
    c = box // 2
    assert mask.shape == (box,) * 3 and mask.dtype == np.float32
    assert mask[c, c, c] == 1.0 and mask[c, c, c + 8] == 1.0
    assert mask[c, c, c + 10] == pytest.approx(0.5)  # halfway through the cosine edge
    assert mask[c, c, c + 12] == 0.0 and mask[0, 0, 0] == 0.0
    assert ((mask >= 0) & (mask <= 1)).all()
    profile = mask[c, c, c:]
    assert (np.diff(profile) <= 0).all()
    np.testing.assert_array_equal(soft_spherical_mask(box, radius, 0.0), (mask == 1.0))
    disc = soft_spherical_mask(box, radius, edge, ndim=2)
    np.testing.assert_array_equal(disc, mask[c])


def test_masked_fsc_ignores_noise_outside(adk_map: np.ndarray) -> None:
    """Noise only outside the particle: unmasked FSC drops, FSC within a soft mask around it stays at 1."""
    box, apix = 64, 1.5
    mask = soft_spherical_mask(box, 26.0, 3.0)
    outside = soft_spherical_mask(box, 29.0, 0.0) == 0
    rng = np.random.default_rng(3)
    halves = [adk_map + outside * rng.normal(0.0, 0.05, adk_map.shape) for _ in range(2)]
    assert (adk_map * ~outside).sum() > 0.999 * adk_map.sum()  # the particle lies inside the mask
    _, plain = fsc_curve(*halves, apix)
    _, masked = fsc_curve(*halves, apix, mask=mask)
    assert plain[8:].max() < 0.9
    np.testing.assert_allclose(masked, 1.0, atol=1e-9)


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        fsc_curve(np.zeros((8, 8, 8)), np.zeros((8, 8, 6)))
    with pytest.raises(ValueError):
        fsc_curve(np.zeros((8, 8, 6)), np.zeros((8, 8, 6)))
