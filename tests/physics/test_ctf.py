"""RELION's CTF: independent numpy transcription of ``CTF::getCTF``, known properties, real Thon rings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vitreous.io.star import read_star
from vitreous.physics.ctf import (
    CTFParams,
    compute_ctf,
    ctf_from_frequencies,
    electron_wavelength,
    phase_flip,
    wiener_filter,
)
from vitreous.physics.fourier import fft2c, ifft2c, radius_grid, soft_circular_mask


def relion_get_ctf(D: int, angpix: float, defocus_u: float, defocus_v: float, azimuth: float, kv: float,
                   cs: float, q0: float, phase_shift: float, bfac: float, scale: float) -> np.ndarray:
    """RELION ``CTF::initialise`` + ``getCTF(X, Y)`` transcribed line by line (numpy, float64), on the centred
    grid with ``X = (j - D//2) / (D * angpix)`` along x and ``Y`` along y."""
    local_cs = cs * 1e7
    local_kv = kv * 1e3
    rad_azimuth = np.deg2rad(azimuth)
    defocus_average = -(defocus_u + defocus_v) * 0.5
    defocus_deviation = -(defocus_u - defocus_v) * 0.5
    lam = 12.2643247 / np.sqrt(local_kv * (1.0 + local_kv * 0.978466e-6))
    K1 = np.pi / 2 * 2 * lam
    K2 = np.pi / 2 * local_cs * lam * lam * lam
    K3 = np.arctan(q0 / np.sqrt(1 - q0 * q0))
    K4 = -bfac / 4.0
    K5 = np.deg2rad(phase_shift)
    idx = (np.arange(D) - D // 2) / (D * angpix)
    Y, X = np.meshgrid(idx, idx, indexing="ij")
    u2 = X * X + Y * Y
    u4 = u2 * u2
    at_origin = (np.abs(X) < 1e-6) & (np.abs(Y) < 1e-6)
    ellipsoid_ang = np.arctan2(Y, X) - rad_azimuth
    deltaf = np.where(at_origin, 0.0, defocus_average + defocus_deviation * np.cos(2 * ellipsoid_ang))
    argument = K1 * deltaf * u2 + K2 * u4 - K5 - K3
    retval = -np.sin(argument)
    retval = retval * np.exp(K4 * u2)
    return retval * scale


PARTICLES = [
    # defocus_u, defocus_v, angle, kV, Cs, Q, phase, B, scale, pixel size
    (15301.1, 14916.4, 5.28, 300.0, 2.7, 0.07, 0.0, 0.0, 1.0, 1.31),
    (21000.0, 17000.0, -160.39, 200.0, 0.01, 0.1, 0.0, 40.0, 0.8, 2.806),
    (8000.0, 9500.0, 77.0, 300.0, 2.7, 0.1, 87.0, 0.0, 1.0, 1.0),
    (30000.0, 30000.0, 0.0, 120.0, 1.4, 0.2, 180.0, 150.0, 1.3, 3.5),
]


@pytest.mark.parametrize("D", [64, 65])
def test_matches_relion_getctf_transcription(D: int) -> None:
    rows = np.array(PARTICLES)
    params = CTFParams.create(*[torch.from_numpy(rows[:, i].copy()) for i in range(9)],
                              pixel_size=torch.from_numpy(rows[:, 9].copy()), dtype=torch.float64)
    ours = compute_ctf(params, D).numpy()
    for i, row in enumerate(PARTICLES):
        ref = relion_get_ctf(D, row[9], *row[:9])
        assert np.abs(ours[i] - ref).max() < 1e-10
    # float32 keeps the sign and shape (phases up to ~100 rad)
    ours32 = compute_ctf(params.to(dtype=torch.float32), D).numpy()
    assert np.abs(ours32 - ours).max() < 1e-3


def test_wavelength_is_relativistic() -> None:
    assert electron_wavelength(300.0) == pytest.approx(0.019687, abs=1e-6)  # Å, tabulated value
    assert electron_wavelength(200.0) == pytest.approx(0.025079, abs=1e-6)
    t = electron_wavelength(torch.tensor([300.0, 200.0], dtype=torch.float64))
    assert torch.allclose(t, torch.tensor([electron_wavelength(300.0), electron_wavelength(200.0)],
                                          dtype=torch.float64))


def test_dc_value_sign_and_first_lobe() -> None:
    params = CTFParams.create([12000.0, 12000.0], [12000.0, 12000.0], amplitude_contrast=[0.1, 0.07],
                              scale=[1.0, 2.0], pixel_size=1.0, dtype=torch.float64)
    ctf = compute_ctf(params, 128)
    assert torch.allclose(ctf[:, 64, 64], torch.tensor([0.1, 0.14], dtype=torch.float64))  # Q * scale
    # along +x the CTF first rises from Q to +1 (first lobe positive), then crosses zero
    k = torch.linspace(0.0, 0.2, 4001, dtype=torch.float64)
    line = ctf_from_frequencies(params, k[None], torch.zeros_like(k)[None])[0]
    first_zero = int(torch.nonzero(line < 0)[0])
    assert line[0] == pytest.approx(0.1) and line[:first_zero].min() > 0 and line[:first_zero].max() > 1 - 1e-6
    # phase plate: 90 degrees makes CTF(0) = sqrt(1 - Q^2) (still positive); 180 flips the sign
    pp = CTFParams.create(12000.0, phase_shift=[90.0, 180.0], amplitude_contrast=0.1, pixel_size=1.0,
                          dtype=torch.float64)
    dc = compute_ctf(pp, 32)[:, 16, 16]
    assert torch.allclose(dc, torch.tensor([math.sqrt(1 - 0.01), -0.1], dtype=torch.float64))


def test_first_zero_position_and_astigmatism_direction() -> None:
    """With U > V and angle a, zeros along direction a come from U, along a + 90 degrees from V."""
    U, V, angle = 20000.0, 12000.0, 30.0
    params = CTFParams.create(U, V, angle, cs=0.0, amplitude_contrast=0.0, dtype=torch.float64)
    lam = electron_wavelength(300.0)
    # Cs = 0, Q = 0: CTF = sin(pi lambda Df k^2), first zero at k = 1 / sqrt(lambda Df)
    for direction, defocus in ((angle, U), (angle + 90.0, V), (angle + 180.0, U)):
        k_zero = 1.0 / math.sqrt(lam * defocus)
        t = math.radians(direction)
        k = torch.tensor([0.999 * k_zero, k_zero, 1.001 * k_zero], dtype=torch.float64)
        vals = ctf_from_frequencies(params, (k * math.cos(t))[None], (k * math.sin(t))[None])[0]
        assert vals[0] > 0 and vals[2] < 0 and abs(vals[1]) < 1e-9
    # on an image grid: ring along +30 degrees (x towards y) is closer to the centre than along -30 degrees
    img = compute_ctf(params, 256, 1.0)[0]
    c = 128
    r = torch.arange(1, 100, dtype=torch.float64)

    def first_zero(deg: float) -> float:
        t = math.radians(deg)
        xs, ys = (c + r * math.cos(t)).round().long(), (c + r * math.sin(t)).round().long()
        return float(r[int(torch.nonzero(img[ys, xs] < 0)[0])])

    assert first_zero(30.0) < first_zero(-30.0) and first_zero(120.0) > first_zero(30.0)


def test_params_from_particle_table_subset_and_device(real_data: Path) -> None:
    ps = read_star(real_data / "particles" / "relion31_5ptcl" / "relion31.star", load_images=False)
    table = ps.ctf_table()
    params = CTFParams.from_table(table, device="cpu", dtype=torch.float64)
    assert len(params) == len(ps) == 5
    assert torch.allclose(params.defocus_u, torch.tensor(table["defocus_u"].to_numpy()))
    assert torch.allclose(params.pixel_size, torch.full((5,), 2.806, dtype=torch.float64))
    sub = params[torch.tensor([0, 3])]
    assert len(sub) == 2 and sub.defocus_v[1] == params.defocus_v[3]
    assert len(params[1:4]) == 3 and len(params[2]) == 1
    assert len(params[np.array([True, False, True, False, False])]) == 2
    p32 = params.to(dtype=torch.float32)
    assert p32.dtype == torch.float32 and p32.device.type == "cpu" and p32.pixel_size.dtype == torch.float32
    ctf = compute_ctf(p32, 32)
    assert ctf.shape == (5, 32, 32) and ctf.dtype == torch.float32
    # per-particle pixel sizes give per-particle frequency grids
    mixed = compute_ctf(params, 32, torch.tensor([1.0, 2.0, 1.0, 2.0, 1.0], dtype=torch.float64))
    assert torch.allclose(mixed[1], compute_ctf(params[1], 32, 2.0)[0])


def test_relion_defocus_matches_real_thon_rings(real_data: Path) -> None:
    """Real images (RELION 3.1, 5 particles): the STAR defocus explains the power spectra better than
    a defocus 10 % off either way (checks units: Å, kV, mm, pixel size)."""
    ps = read_star(real_data / "particles" / "relion31_5ptcl" / "relion31.star")
    images = torch.from_numpy(ps.images.read(slice(None))).double()
    D = images.shape[-1]
    params = CTFParams.from_table(ps.ctf_table(), dtype=torch.float64)
    power = torch.log(fft2c(images * soft_circular_mask(D, D / 2 - 8, 6, dtype=torch.float64)).abs() ** 2)
    r = radius_grid(D, 2, dtype=torch.float64)
    band = (r > 0.06 * D) & (r < 0.4 * D)

    def score(factor: float) -> float:
        scaled = CTFParams(**{**params.__dict__, "defocus_u": params.defocus_u * factor,
                              "defocus_v": params.defocus_v * factor})
        ctf2 = compute_ctf(scaled, D) ** 2
        x = power[:, band] - power[:, band].mean(1, keepdim=True)
        y = ctf2[:, band] - ctf2[:, band].mean(1, keepdim=True)
        return float(((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))).mean())

    right, low, high = score(1.0), score(0.9), score(1.1)
    assert right > 0.1 and right > low + 0.03 and right > high + 0.03


def test_phase_flip_and_wiener_filter() -> None:
    torch.manual_seed(0)
    D = 65  # odd: every frequency has its mirror on the grid, so CTF products stay Hermitian
    params = CTFParams.create([9000.0, 15000.0], [8000.0, 15000.0], [20.0, 0.0], pixel_size=1.5,
                              dtype=torch.float64)
    ctf = compute_ctf(params, D)
    x = torch.randn(2, D, D, dtype=torch.float64)
    y = ifft2c(fft2c(x) * ctf).real  # CTF-modulated images
    assert torch.allclose(phase_flip(y, ctf), ifft2c(fft2c(x) * ctf.abs()).real)
    # Wiener: exact inverse where the CTF is bounded away from zero and snr is large
    flat = torch.full((2, D, D), -0.6, dtype=torch.float64)
    assert torch.allclose(wiener_filter(ifft2c(fft2c(x) * flat).real, flat, 1e12), x, atol=1e-8)
    out = wiener_filter(y, ctf, 2.0)
    expected = ifft2c(fft2c(x) * ctf * ctf / (ctf * ctf + 0.5)).real
    assert torch.allclose(out, expected)
    assert phase_flip(y.float(), ctf.float()).dtype == torch.float32
