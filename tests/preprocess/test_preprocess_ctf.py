"""CTF estimation: defocus, astigmatism angle and phase shift recovered from micrographs whose spectrum is a known
RELION CTF times a smooth signal spectrum plus white noise, and from the micrograph simulator."""

from __future__ import annotations

import math
from importlib import resources

import numpy as np
import pytest
import torch

from vitreous.physics.ctf import CTFParams, compute_ctf
from vitreous.physics.fourier import fft2c, ifft2c, radius_grid
from vitreous.preprocess.ctf_estimate import CTFSearch, Optics, estimate_ctf, periodogram, tile_size

APIX = 1.0


def ctf_micrograph(u: float, v: float, angle: float, size: int = 1024, phase: float = 0.0, bfactor: float = 50.0,
                   seed: int = 0) -> np.ndarray:
    """White noise filtered by the CTF and a falling signal spectrum, plus white noise of twice its variance."""
    generator = torch.Generator().manual_seed(seed)
    ctf = compute_ctf(CTFParams.create(u, v, angle, phase_shift=phase, bfactor=bfactor), size, APIX)[0]
    falloff = 1.0 / torch.sqrt(1 + (radius_grid(size) / (size * APIX * 0.05)) ** 2)
    signal = ifft2c(fft2c(torch.randn(size, size, generator=generator)) * ctf * falloff).real
    noise = torch.randn(size, size, generator=generator)
    return (signal / signal.std() / math.sqrt(2) + noise).numpy()


def angle_error(a: float, b: float) -> float:
    """Difference of two axis directions in degrees, in [0, 90]."""
    return abs((a - b + 90.0) % 180.0 - 90.0)


@pytest.mark.parametrize(("u", "v", "angle"), [(8000.0, 7600.0, 35.0), (15000.0, 14000.0, -70.0),
                                                (28000.0, 27500.0, 10.0)])
def test_defocus_and_angle_are_recovered(u: float, v: float, angle: float) -> None:
    torch.set_num_threads(1)
    fit = estimate_ctf(ctf_micrograph(u, v, angle), Optics(APIX))
    assert fit.defocus_u >= fit.defocus_v
    assert abs(fit.defocus_u - u) < 50 and abs(fit.defocus_v - v) < 50, (fit.defocus_u, fit.defocus_v)
    assert angle_error(fit.defocus_angle, angle) < 3.0
    assert fit.phase_shift == 0.0
    assert 0.3 < fit.figure_of_merit <= 1.0
    assert 2 * APIX <= fit.max_resolution < 6.0  # rings (B = 50 Å^2) are visible well beyond 6 Å


def test_phase_shift_is_fitted_when_asked() -> None:
    torch.set_num_threads(1)
    image = ctf_micrograph(6000.0, 5500.0, -20.0, phase=70.0, seed=1)
    fit = estimate_ctf(image, Optics(APIX), CTFSearch(phase_shift=True))
    assert abs(fit.phase_shift - 70.0) < 8.0
    assert abs(0.5 * (fit.defocus_u + fit.defocus_v) - 5750.0) < 150.0
    assert angle_error(fit.defocus_angle, -20.0) < 5.0
    unfitted = estimate_ctf(image, Optics(APIX))
    assert unfitted.phase_shift == 0.0 and unfitted.figure_of_merit < fit.figure_of_merit


def test_fit_resolution_follows_the_envelope() -> None:
    torch.set_num_threads(1)
    sharp = estimate_ctf(ctf_micrograph(20000.0, 19500.0, 0.0, bfactor=20.0, seed=2), Optics(APIX))
    blurred = estimate_ctf(ctf_micrograph(20000.0, 19500.0, 0.0, bfactor=400.0, seed=2), Optics(APIX))
    assert blurred.max_resolution > sharp.max_resolution + 1.0
    k, spectrum, fit, correlation = blurred.profile
    assert np.nanmax(correlation) > 0.8 and blurred.diagnostic.ndim == 2


def test_periodogram_averages_overlapping_tiles() -> None:
    image = torch.randn(300, 500, generator=torch.Generator().manual_seed(3))
    assert tile_size(tuple(image.shape), 512) == 150
    power = periodogram(image, 128)
    assert power.shape == (128, 128)
    assert power[64, 64] == pytest.approx(0.0, abs=1e-6)  # tile means removed
    assert float(power.mean()) == pytest.approx(1.0, rel=0.05)  # white noise of unit variance


def test_simulated_micrographs() -> None:
    from vitreous.sim.micrographs import MicrographOptions, MicrographSimulator
    from vitreous.sim.truth import models_truth

    torch.set_num_threads(1)
    with resources.as_file(resources.files("vitreous.resources") / "adk_closed.pdb.gz") as path:
        volumes = models_truth([path], None, APIX).volumes
    simulator = MicrographSimulator(volumes, MicrographOptions(size=1024, apix=APIX, particles=(60, 60)))
    for seed in (2, 4):  # astigmatism 814 and 976 Å
        micrograph = simulator.simulate(seed)
        truth = micrograph.ctf
        fit = estimate_ctf(micrograph.image, Optics(APIX))
        assert abs(fit.defocus_u - truth["rlnDefocusU"]) < 50 and abs(fit.defocus_v - truth["rlnDefocusV"]) < 50
        assert angle_error(fit.defocus_angle, truth["rlnDefocusAngle"]) < 3.0
