"""Global and local pose search (vitreous.align.search) on simulated images with known poses.

Bounds are tied to the grid: the level-4 grid has spacing 3.75° and every rotation lies within
``covering_radius_deg(4)`` = 3.6° of a grid point (0.47 x spacing on average), so noise-free images must come out
at (or next to) their nearest grid point; noisy ones within about one spacing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitreous.align import (
    GlobalOptions,
    LocalOptions,
    PoseSearch,
    ProjectorSlices,
    ShellPower,
    fourier_points,
    image_power,
)
from vitreous.physics import so3_grid
from vitreous.physics.projection import Projector
from vitreous.physics.rotations import angular_distance, rotvec_to_matrix

from .conftest import BOX, Images, simulate

LEVEL = 4
OPTIONS = GlobalOptions(radius_px=BOX // 2, start_level=2, end_level=LEVEL, keep=5, max_shift_px=4.0)


def noise_power(data: Images) -> torch.Tensor:
    power = ShellPower(BOX)
    image_power(data.spectra, fourier_points(BOX, BOX // 2), power)
    return power.spectrum()


@pytest.fixture(scope="module")
def clean(projector: Projector) -> Images:
    return simulate(projector, 96, None, seed=1)


@pytest.fixture(scope="module")
def noisy(projector: Projector) -> Images:
    return simulate(projector, 160, 0.5, seed=2)


@pytest.fixture(scope="module")
def noisy_search(projector: Projector, noisy: Images) -> PoseSearch:
    return PoseSearch(ProjectorSlices(projector), noise_power(noisy), BOX)


def test_noise_free_images_land_on_their_nearest_grid_point(projector: Projector, clean: Images) -> None:
    search = PoseSearch(ProjectorSlices(projector), noise_power(clean), BOX)
    result = search.global_search(clean.spectra, clean.ctf, OPTIONS)
    error = angular_distance(result.best_rotations.double(), clean.rotations.double())
    assert float(error.max()) <= so3_grid.covering_radius_deg(LEVEL)
    assert float(error.median()) < 0.55 * so3_grid.grid_spacing_deg(LEVEL)  # the grid's own median is ~0.47
    found = so3_grid.nearest(LEVEL, result.best_rotations)  # exact: the results are grid points
    nearest = so3_grid.nearest(LEVEL, clean.rotations)
    assert float((found == nearest).float().mean()) >= 0.85  # mostly the nearest grid point itself ...
    neighbours, _ = so3_grid.neighbours(LEVEL, nearest, 8)
    assert bool(((found == nearest) | (neighbours == found[:, None]).any(1)).all())  # ... else a neighbour of it
    shift_error = (result.best_shifts - clean.shifts).norm(dim=-1)
    assert float(shift_error.max()) < 0.25  # the last shift grid has a 0.22-px step
    weights = result.weights
    assert torch.allclose(weights.sum(1), torch.ones(len(weights), dtype=weights.dtype))
    assert bool((result.scores[:, :-1] >= result.scores[:, 1:]).all())  # best first


def test_noisy_images_are_found_within_a_grid_spacing(noisy_search: PoseSearch, noisy: Images) -> None:
    result = noisy_search.global_search(noisy.spectra, noisy.ctf, OPTIONS)
    error = angular_distance(result.best_rotations.double(), noisy.rotations.double())
    spacing = so3_grid.grid_spacing_deg(LEVEL)
    assert float(error.median()) < 1.25 * spacing  # measured 3.9° at SNR 0.5
    assert float((error > 20).float().mean()) < 0.05  # a few images are too noisy to place
    shift_error = (result.best_shifts - noisy.shifts).norm(dim=-1)
    assert float(shift_error.median()) < 0.3
    # the posterior is not certain about noisy images, but favours the best pose
    assert 0.2 < float(result.max_weight.mean()) < 1.0


def _perturbed_scores(search: PoseSearch, data: Images, angle_deg: float) -> torch.Tensor:
    """Scores (n, 13) of the true pose (column 0) and of 12 rotations ``angle_deg`` away from it (about 12
    fixed axes), all at the true shift: a local search whose candidates are exactly these."""
    axes = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [-1, -1, 1], [1, -1, -1]], dtype=torch.float64)
    axes = torch.cat([axes, -axes])
    turns = rotvec_to_matrix(axes / axes.norm(dim=1, keepdim=True) * np.radians(angle_deg)).float()
    candidates = torch.cat([torch.eye(3)[None], turns]) @ data.rotations[:, None]  # (n, 13, 3, 3)
    order, _, scores = search._candidates(data.spectra, data.ctf, BOX // 2, candidates[:, None],
                                          data.shifts[:, None], torch.zeros(1, 2), keep=13)
    return torch.empty_like(scores).scatter_(1, order, scores)  # back in candidate order


def test_the_true_pose_scores_best(projector: Projector, clean: Images, noisy_search: PoseSearch,
                                   noisy: Images) -> None:
    clean_search = PoseSearch(ProjectorSlices(projector), noise_power(clean), BOX)
    scores = _perturbed_scores(clean_search, clean, 2.0)
    assert bool((scores[:, 0] > scores[:, 1:].max(1).values).all())  # noise-free: always the truth
    # noisy: the log-likelihood falls with the distance from the truth, on average over images and axes
    means = [float(_perturbed_scores(noisy_search, noisy, angle)[:, 1:].mean()) for angle in (2.0, 5.0, 10.0)]
    truth = float(_perturbed_scores(noisy_search, noisy, 2.0)[:, 0].mean())
    assert truth > means[0] > means[1] > means[2]


def _kicked(data: Images, angle_deg: float, shift_px: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The true poses rotated by ``angle_deg`` about random axes and shifted by ``shift_px`` in random directions."""
    gen = torch.Generator().manual_seed(seed)
    axis = torch.randn(len(data.rotations), 3, generator=gen, dtype=torch.float64)
    kick = rotvec_to_matrix(axis / axis.norm(dim=1, keepdim=True) * np.radians(angle_deg)).float()
    direction = torch.nn.functional.normalize(torch.randn(len(data.rotations), 2, generator=gen))
    return kick @ data.rotations, data.shifts + shift_px * direction


LOCAL = LocalOptions(radius_px=BOX // 2, step_deg=1.5, range_deg=6.0, shift_step_px=0.25, shift_range_px=1.0)


def test_local_search_recovers_perturbed_poses_of_clean_images(projector: Projector, clean: Images) -> None:
    """From 4° and 0.6 px off, noise-free images return to the truth up to the lattice searched: the median
    error is within 0.1° of that of the lattice point nearest to the truth (~0.7° for a 1.5° step), the largest
    below 1.25 steps (the scores weigh some directions of error more than others); every shift within the
    shift lattice's half diagonal ``0.25 / sqrt(2)`` px."""
    search = PoseSearch(ProjectorSlices(projector), noise_power(clean), BOX)
    start, start_shift = _kicked(clean, 4.0, 0.6, seed=5)
    result = search.local_search(clean.spectra, clean.ctf, start, start_shift, LOCAL)
    error = angular_distance(result.best_rotations.double(), clean.rotations.double())
    lattice = so3_grid.local_grid(start.double(), LOCAL.range_deg, LOCAL.step_deg)
    best_possible = angular_distance(lattice, clean.rotations.double()[:, None]).min(1).values
    assert float(error.median()) < float(best_possible.median()) + 0.1
    assert float(error.max()) < 1.25 * LOCAL.step_deg
    assert float((result.best_shifts - clean.shifts).norm(dim=-1).max()) < 0.25 / np.sqrt(2) + 0.02


def test_local_search_improves_perturbed_poses_of_noisy_images(noisy_search: PoseSearch, noisy: Images) -> None:
    start, start_shift = _kicked(noisy, 4.0, 0.6, seed=5)
    result = noisy_search.local_search(noisy.spectra, noisy.ctf, start, start_shift, LOCAL)
    before = angular_distance(start.double(), noisy.rotations.double())
    after = angular_distance(result.best_rotations.double(), noisy.rotations.double())
    assert float(before.median()) == pytest.approx(4.0, abs=1e-3)
    assert float(after.median()) < float(before.median())
    assert float((after < before).float().mean()) > 0.6
    shift_error = (result.best_shifts - noisy.shifts).norm(dim=-1)
    assert float(shift_error.median()) < 0.6


def test_results_do_not_depend_on_how_the_work_is_split(projector: Projector, noisy: Images) -> None:
    """A small memory budget splits images and rotations into many pieces without changing the answer."""
    images = slice(0, 24)
    results = []
    for budget in (1 << 14, 1 << 24):
        search = PoseSearch(ProjectorSlices(projector), noise_power(noisy), BOX, budget=budget)
        results.append(search.global_search(noisy.spectra[images], noisy.ctf[images], OPTIONS))
    a, b = results
    assert torch.allclose(a.rotations, b.rotations)
    assert torch.allclose(a.shifts, b.shifts)
    assert torch.allclose(a.scores, b.scores, rtol=1e-4, atol=1e-3)
