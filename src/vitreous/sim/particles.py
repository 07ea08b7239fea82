"""Simulated particle stacks: projections of ground-truth maps with poses, shifts, CTF and Gaussian noise.

Image formation (RELION conventions, see physics/): ``image = IFT[ CTF * T_{-s} * slice_A(V) ] + noise``,
where ``slice_A`` is the central slice at RELION matrix ``A``, ``T_{-s}`` moves the content by minus the
origin ``s`` = (rlnOriginX, rlnOriginY) px, as ``relion_project`` does, and the CTF has RELION's sign (white
particles).  The noise is white Gaussian with variance ``var(clean images) / SNR``, the variance taken over
all pixels of (a sample of) the clean CTF-modulated images, as cryoDRGN's ``add_noise`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vitreous.data.particles import EULER, SHIFTS, ParticleSet
from vitreous.io.mrc import StackWriter
from vitreous.io.stack import ImageStack
from vitreous.physics.ctf import CTFParams, compute_ctf
from vitreous.physics.fourier import ifft2c, translate_ft
from vitreous.physics.projection import Projector
from vitreous.physics.rotations import matrix_to_euler
from vitreous.physics.so3_grid import random_rotations

NOISE_SAMPLE = 1000  # clean images used to set the noise level
CACHE_BYTES = 1 << 29  # Fourier volumes of all states kept between the noise-level and imaging passes


@dataclass
class Acquisition:
    """Microscope and sample parameters of a simulated data set (Å, µm, kV, mm, degrees)."""

    apix: float
    snr: float = 0.1
    defocus_um: tuple[float, float] = (1.0, 2.5)
    astigmatism_A: float = 0.0  # maximum |defocus U - defocus V|, drawn uniformly
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    bfactor: float = 0.0
    shift_sd_px: float = 0.0
    seed: int = 0


def draw_metadata(n: int, box: int, acq: Acquisition, rotations: np.ndarray | None = None) -> pd.DataFrame:
    """Per-particle poses, shifts and CTF (RELION labels) drawn from ``acq``; rotations uniform unless given."""
    rng = np.random.default_rng(acq.seed)
    if rotations is None:
        generator = torch.Generator().manual_seed(acq.seed)
        rotations = random_rotations(n, generator=generator, dtype=torch.float64).numpy()
    defocus = rng.uniform(*acq.defocus_um, n) * 1e4
    astig = rng.uniform(0.0, acq.astigmatism_A, n)
    table = pd.DataFrame(matrix_to_euler(rotations), columns=EULER)
    table[SHIFTS] = rng.normal(0.0, acq.shift_sd_px, (n, 2)) * acq.apix
    table["rlnDefocusU"] = defocus + astig / 2
    table["rlnDefocusV"] = defocus - astig / 2
    table["rlnDefocusAngle"] = rng.uniform(-180.0, 180.0, n)
    table["rlnPhaseShift"] = 0.0
    table["rlnCtfBfactor"] = acq.bfactor
    return table


def _optics(box: int, acq: Acquisition) -> pd.DataFrame:
    return pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [acq.voltage],
        "rlnSphericalAberration": [acq.cs], "rlnAmplitudeContrast": [acq.amplitude_contrast],
        "rlnImagePixelSize": [acq.apix], "rlnImageSize": [box], "rlnImageDimensionality": [2],
    })


@dataclass
class _Geometry:
    """Per-particle rotations, origins (px) and CTF parameters as tensors, for cheap batch indexing."""

    rotations: torch.Tensor
    shifts_px: torch.Tensor
    ctf: CTFParams
    box: int
    apix: float

    @classmethod
    def of(cls, particles: ParticleSet) -> _Geometry:
        """From the particles' tables (one pixel size)."""
        return cls(torch.as_tensor(particles.rotations, dtype=torch.float32),
                   torch.as_tensor(particles.shifts_px, dtype=torch.float32),
                   CTFParams.from_table(particles.ctf_table()), particles.box, particles.single_pixel_size())

    def clean(self, projector: Projector, idx: np.ndarray) -> torch.Tensor:
        """Noise-free images of particles ``idx``: IFT[CTF * T_{-origin} slice_A(V)], (len(idx), D, D)."""
        index = torch.as_tensor(idx, dtype=torch.int64)
        spectra = translate_ft(projector.slices(self.rotations[index]), -self.shifts_px[index])  # centre D//2 - origin
        return ifft2c(spectra * compute_ctf(self.ctf[index], self.box, self.apix)).real


def clean_images(projector: Projector, particles: ParticleSet, idx: np.ndarray) -> torch.Tensor:
    """Noise-free CTF-modulated, shifted projections (len(idx), D, D) of one map for particles ``idx``."""
    return _Geometry.of(particles.subset(idx)).clean(projector, np.arange(len(idx)))


def simulate_stack(volumes: torch.Tensor, states: np.ndarray, out_stack: Path, acq: Acquisition,
                   rotations: np.ndarray | None = None, batch_size: int = 512,
                   progress: Callable[[int], None] | None = None) -> ParticleSet:
    """Simulate ``len(states)`` particles, particle i imaging ``volumes[states[i]]``; writes ``out_stack``.

    ``volumes`` is (S, D, D, D) float; returns the ParticleSet (images on disk, true poses and CTF in it).
    """
    n, box = len(states), volumes.shape[-1]
    table = draw_metadata(n, box, acq, rotations)
    table.insert(0, "rlnImageName", [f"{i + 1:06d}@{out_stack.name}" for i in range(n)])
    particles = ParticleSet(table, _optics(box, acq))
    geometry = _Geometry.of(particles)
    projectors = _Projectors(volumes)
    rng = np.random.default_rng(acq.seed + 1)
    sample = np.sort(rng.choice(n, min(n, NOISE_SAMPLE), replace=False))
    sigma = _noise_sigma(projectors, geometry, states, sample, acq.snr)
    generator = torch.Generator().manual_seed(acq.seed + 2)
    with StackWriter(out_stack, n, box, acq.apix) as writer:
        for s in np.unique(states):
            projector = projectors[s]
            members = np.nonzero(states == s)[0]
            for start in range(0, len(members), batch_size):
                idx = members[start:start + batch_size]
                clean = geometry.clean(projector, idx)
                noise = torch.randn(clean.shape, generator=generator) * sigma
                _write_scattered(writer, idx, (clean + noise).numpy())
                if progress is not None:
                    progress(len(idx))
    particles.images = ImageStack.from_file(out_stack)
    return particles


class _Projectors:
    """Projector of each state, built on first use and kept while their Fourier volumes fit ``CACHE_BYTES``."""

    def __init__(self, volumes: torch.Tensor) -> None:
        self.volumes = volumes
        padded_bytes = 8 * (2 * volumes.shape[-1]) ** 3  # complex64 (2D)^3 per state
        self.cache: dict[int, Projector] | None = {} if padded_bytes * len(volumes) <= CACHE_BYTES else None

    def __getitem__(self, state: int) -> Projector:
        if self.cache is None:
            return Projector(self.volumes[state])
        if state not in self.cache:
            self.cache[state] = Projector(self.volumes[state])
        return self.cache[state]


def _noise_sigma(projectors: _Projectors, geometry: _Geometry, states: np.ndarray, sample: np.ndarray,
                 snr: float) -> float:
    """Noise standard deviation for the requested SNR, from the clean images of ``sample``."""
    images = [geometry.clean(projectors[s], sample[states[sample] == s]) for s in np.unique(states[sample])]
    return float(torch.cat(images).std()) / np.sqrt(snr)


def _write_scattered(writer: StackWriter, idx: np.ndarray, images: np.ndarray) -> None:
    """Write images at (possibly non-contiguous, increasing) frame indices, in contiguous runs."""
    breaks = np.nonzero(np.diff(idx) != 1)[0] + 1
    for run, block in zip(np.split(idx, breaks), np.split(images, breaks), strict=True):
        writer.write(int(run[0]), block)
