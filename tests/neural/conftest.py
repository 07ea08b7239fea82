"""Simulated particles for the neural tests: the bundled adenylate kinase map (box 32, 3 Å/px) and a second state
with an extra blob of density, as ``vitreous simulate`` writes them (STAR + MRC stack, true poses and CTF)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from vitreous.data.particles import ParticleSet
from vitreous.io.star import read_star, write_star
from vitreous.physics.fourier import radius_grid
from vitreous.sim.particles import Acquisition, simulate_stack
from vitreous.sim.truth import models_truth

APIX, BOX = 3.0, 32


class Simulated(NamedTuple):
    particles: ParticleSet  # read back from particles.star
    star: Path
    truth: torch.Tensor  # (S, D, D, D)
    labels: np.ndarray  # 0-based state per particle


def adk_map(box: int = BOX, apix: float = APIX) -> torch.Tensor:
    with resources.as_file(resources.files("vitreous.resources") / "adk_closed.pdb.gz") as path:
        return models_truth([path], box, apix).volumes[0]


def simulate(folder: Path, volumes: torch.Tensor, n: int, snr: float, seed: int = 3) -> Simulated:
    labels = np.random.default_rng(seed).integers(0, len(volumes), n)
    acquisition = Acquisition(apix=APIX, snr=snr, astigmatism_A=200.0, shift_sd_px=1.0, seed=seed)
    particles = simulate_stack(volumes, labels, folder / "particles.mrcs", acquisition)
    write_star(folder / "particles.star", particles)
    return Simulated(read_star(folder / "particles.star"), folder / "particles.star", volumes, labels)


@pytest.fixture(scope="session")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Simulated:
    """40 particles of the adenylate kinase map at SNR 10^6 (practically noise-free)."""
    return simulate(tmp_path_factory.mktemp("clean"), adk_map()[None], 40, 1e6)


@pytest.fixture(scope="session")
def two_states(tmp_path_factory: pytest.TempPathFactory) -> Simulated:
    """600 particles, half of them with a blob (radius 3 px, off-centre) added to the map; SNR 0.5."""
    base = adk_map()
    blob = (radius_grid(BOX, 3) <= 3).float().roll((5, -4, 6), dims=(0, 1, 2)) * float(base.max())
    return simulate(tmp_path_factory.mktemp("two_states"), torch.stack([base, base + blob]), 600, 0.5)


@pytest.fixture(scope="session")
def one_state(tmp_path_factory: pytest.TempPathFactory) -> Simulated:
    """1000 particles of the adenylate kinase map, SNR 0.2."""
    return simulate(tmp_path_factory.mktemp("one_state"), adk_map()[None], 1000, 0.2)
