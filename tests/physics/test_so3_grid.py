"""Tests for vitreous.physics.so3_grid: Haar-uniform random rotations and the hierarchical Hopf/HEALPix grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from vitreous.physics import so3_grid as g
from vitreous.physics.rotations import (
    angular_distance,
    euler_to_matrix,
    matrix_to_quaternion,
    quaternion_to_matrix,
)

F64 = torch.float64


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _brute_nearest(level: int, rotations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest grid index and distance (degrees) by exhaustive quaternion comparison."""
    qg = g.grid_quaternions(level, dtype=F64)
    qr = matrix_to_quaternion(rotations.to(F64))
    best, idx = [], []
    for i in range(0, len(qr), 1000):
        m, j = (qr[i : i + 1000] @ qg.T).abs().max(dim=1)
        best.append(m)
        idx.append(j)
    cos_half = torch.cat(best).clamp(max=1.0)
    return torch.cat(idx), torch.rad2deg(2.0 * torch.arccos(cos_half))


def _is_rotation(m: torch.Tensor, atol: float) -> bool:
    eye = torch.eye(3, dtype=m.dtype).expand_as(m)
    return torch.allclose(m.mT @ m, eye, atol=atol) and torch.allclose(
        torch.linalg.det(m), torch.ones((), dtype=m.dtype), atol=atol
    )


# ---------------------------------------------------------------------------------------------- random rotations


def test_random_rotations_are_haar_uniform():
    r = g.random_rotations(40000, generator=_rng(0), dtype=F64)
    assert r.shape == (40000, 3, 3) and r.dtype == F64
    assert _is_rotation(r, 1e-12)
    # rotation angle density (1 - cos t) / pi  <=>  CDF (t - sin t) / pi
    angle = torch.deg2rad(angular_distance(torch.eye(3, dtype=F64), r)).numpy()
    ks = stats.kstest(angle, lambda t: (t - np.sin(t)) / np.pi)
    assert ks.pvalue > 1e-3
    # Haar moments: E[R] = 0 and E[R_ij R_kl] = delta_ik delta_jl / 3
    assert r.mean(0).abs().max() < 0.02
    second = torch.einsum("nij,nkl->ijkl", r, r) / len(r)
    expected = torch.einsum("ik,jl->ijkl", torch.eye(3, dtype=F64), torch.eye(3, dtype=F64)) / 3
    assert (second - expected).abs().max() < 0.02


def test_random_rotations_not_uniform_if_angles_were_uniform():
    """The KS check above has power: uniformly distributed rotation angles are rejected."""
    t = torch.rand(40000, generator=_rng(1), dtype=F64) * math.pi
    ks = stats.kstest(t.numpy(), lambda x: (x - np.sin(x)) / np.pi)
    assert ks.pvalue < 1e-10


def test_random_rotations_generator_dtype_and_quaternions():
    a = g.random_rotations(5, generator=_rng(7))
    b = g.random_rotations(5, generator=_rng(7))
    assert a.dtype == torch.float32 and torch.equal(a, b)
    q = g.random_quaternions(1000, generator=_rng(2), dtype=F64)
    assert (q[:, 0] >= 0).all()
    assert torch.allclose(q.norm(dim=-1), torch.ones(1000, dtype=F64))


# ------------------------------------------------------------------------------------------------------ HEALPix


def test_healpix_known_centres_and_round_trip():
    v = g.healpix_pix2vec(1, torch.arange(12))
    s = 1 / math.sqrt(2) * math.sqrt(1 - 4 / 9)
    assert torch.allclose(v[0], torch.tensor([s, s, 2 / 3], dtype=F64))  # theta = acos(2/3), phi = 45 deg
    assert torch.allclose(v[4], torch.tensor([1.0, 0.0, 0.0], dtype=F64), atol=1e-15)
    assert torch.allclose(v[8], torch.tensor([s, s, -2 / 3], dtype=F64))
    for level in range(5):
        nside = 2**level
        pix = torch.arange(12 * nside * nside)
        vec = g.healpix_pix2vec(nside, pix)
        assert torch.allclose(vec.norm(dim=-1), torch.ones(len(pix), dtype=F64))
        assert torch.equal(g.healpix_vec2pix(nside, vec), pix)
        assert torch.allclose(vec.mean(0), torch.zeros(3, dtype=F64), atol=1e-14)


def test_healpix_nested_and_equal_area():
    x = torch.randn(120000, 3, generator=_rng(3), dtype=F64)
    for nside in (1, 2, 4):
        coarse = g.healpix_vec2pix(nside, x)
        fine = g.healpix_vec2pix(2 * nside, x)
        assert torch.equal(fine // 4, coarse)
        counts = torch.bincount(fine, minlength=12 * 4 * nside * nside).numpy()
        assert stats.chisquare(counts).pvalue > 1e-3  # equal-area pixels
        # a point's pixel centre is close to it: the centre-to-corner distance of the elongated HEALPix pixels
        # reaches ~1.0 times the pixel size sqrt(4 pi / n_pix) = 58.6 / nside degrees
        c = g.healpix_pix2vec(2 * nside, fine)
        cos = (c * x / x.norm(dim=-1, keepdim=True)).sum(-1)
        assert torch.rad2deg(torch.arccos(cos.clamp(max=1))).max() < 1.05 * 58.6 / (2 * nside)


# ------------------------------------------------------------------------------------------------------- the grid


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_counts_and_valid_rotations(level: int):
    n = 72 * 8**level
    assert g.grid_size(level) == n == g.n_directions(level) * g.n_inplane(level)
    assert g.n_directions(level) == 12 * 4**level and g.n_inplane(level) == 6 * 2**level
    assert g.grid_spacing_deg(level) == 60.0 / 2**level
    m = g.grid_matrices(level, dtype=F64)
    assert m.shape == (n, 3, 3)
    assert _is_rotation(m, 1e-12)
    # index access equals the full grid; float32 agrees to ~1e-5 degrees
    idx = torch.randint(0, n, (7, 11), generator=_rng(level))
    assert torch.allclose(g.grid_matrices(level, idx, dtype=F64), m[idx], atol=1e-13)
    m32 = g.grid_matrices(level, idx)
    assert m32.dtype == torch.float32
    assert angular_distance(m32.double(), m[idx]).max() < 1e-3
    # viewing direction = third row = HEALPix pixel centre; in-plane angles (k + 1/2) * 360 / n_inplane
    j, k = g.split_index(level, torch.arange(n))
    assert torch.equal(g.join_index(level, j, k), torch.arange(n))
    assert torch.allclose(m[:, 2, :], g.healpix_pix2vec(2**level, j), atol=1e-13)
    rel = m.reshape(-1, g.n_inplane(level), 3, 3) @ m.reshape(-1, g.n_inplane(level), 3, 3)[:, :1].mT
    psi = torch.rad2deg(torch.atan2(rel[..., 0, 1], rel[..., 0, 0]))
    expected = torch.arange(g.n_inplane(level), dtype=F64) * g.grid_spacing_deg(level)
    assert ((psi - expected + 180) % 360 - 180).abs().max() < 1e-9


def test_quaternions_and_euler_match_matrices():
    idx = torch.arange(0, g.grid_size(2), 7)
    m = g.grid_matrices(2, idx, dtype=F64)
    q = g.grid_quaternions(2, idx, dtype=F64)
    assert q.shape == (len(idx), 4) and (q[:, 0] >= 0).all()
    assert torch.allclose(quaternion_to_matrix(q), m, atol=1e-12)
    e = g.grid_euler(2, idx, dtype=F64)
    assert torch.allclose(euler_to_matrix(e), m, atol=1e-10)


def test_grid_is_a_design_for_haar_moments():
    """The grid reproduces E[R] = 0 and E[R_ij R_kl] = delta_ik delta_jl / 3, and its angle distribution."""
    m = g.grid_matrices(3, dtype=F64)
    assert m.mean(0).abs().max() < 1e-12
    second = torch.einsum("nij,nkl->ijkl", m, m) / len(m)
    expected = torch.einsum("ik,jl->ijkl", torch.eye(3, dtype=F64), torch.eye(3, dtype=F64)) / 3
    assert (second - expected).abs().max() < 1e-3
    angle = np.sort(torch.deg2rad(angular_distance(torch.eye(3, dtype=F64), m)).numpy())
    ecdf = np.arange(1, len(angle) + 1) / len(angle)
    assert np.abs(ecdf - (angle - np.sin(angle)) / np.pi).max() < 0.01


def test_grid_points_are_distinct_and_spread():
    m = g.grid_matrices(1, dtype=F64)
    d = angular_distance(m[:, None], m[None])
    d.fill_diagonal_(math.inf)
    assert d.min() > 0.3 * g.grid_spacing_deg(1)


def test_coverage_halves_per_level_and_matches_spacing():
    r = g.random_rotations(3000, generator=_rng(4), dtype=F64)
    means, q99 = [], []
    for level in range(4):
        _, d = _brute_nearest(level, r)
        nominal = g.grid_spacing_deg(level)
        assert d.max() <= g.covering_radius_deg(level)
        assert 0.43 < d.mean() / nominal < 0.51
        means.append(d.mean().item())
        q99.append(d.quantile(0.99).item())
    for a, b in zip(means[:-1], means[1:], strict=True):
        assert 1.9 < a / b < 2.1
    for a, b in zip(q99[:-1], q99[1:], strict=True):
        assert 1.7 < a / b < 2.3


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_nearest_matches_brute_force(level: int):
    r = g.random_rotations(1500, generator=_rng(10 + level), dtype=F64)
    idx, d = _brute_nearest(level, r)
    n = g.nearest(level, r)
    dn = angular_distance(r, g.grid_matrices(level, n, dtype=F64))
    assert torch.allclose(dn, d, atol=1e-6)
    assert (n == idx).float().mean() > 0.999  # differs only on exact ties


def test_locate_finds_own_cell():
    for level in range(4):
        idx = torch.arange(0, g.grid_size(level), 5)
        m = g.grid_matrices(level, idx, dtype=F64)
        assert torch.equal(g.locate(level, m), idx)
        assert torch.equal(g.locate(level, m.float()), idx)
        # locate's cell is usually the nearest point, and always close
        r = g.random_rotations(2000, generator=_rng(20 + level), dtype=F64)
        loc = g.locate(level, r)
        near, d = _brute_nearest(level, r)
        assert (loc == near).float().mean() > 0.8
        assert angular_distance(r, g.grid_matrices(level, loc, dtype=F64)).max() < 1.5 * g.grid_spacing_deg(level)


# ------------------------------------------------------------------------------------------------------ hierarchy


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_children_partition_next_level_and_stay_close(level: int):
    n = g.grid_size(level)
    ch = g.children(level, torch.arange(n))
    assert ch.shape == (n, 8)
    assert torch.equal(ch.flatten().sort().values, torch.arange(g.grid_size(level + 1)))
    assert torch.equal(g.parent(level + 1, ch), torch.arange(n)[:, None].expand(n, 8))
    d = angular_distance(g.grid_matrices(level, dtype=F64)[:, None], g.grid_matrices(level + 1, ch, dtype=F64))
    assert d.max() < g.covering_radius_deg(level)
    assert d.mean() < 0.5 * g.grid_spacing_deg(level)
    # children sit in their parent's direction pixel and in-plane bin
    pj, pk = g.split_index(level, torch.arange(n))
    cj, ck = g.split_index(level + 1, ch)
    assert torch.equal(cj // 4, pj[:, None].expand(n, 8)) and torch.equal(ck // 2, pk[:, None].expand(n, 8))


def test_children_accepts_any_shape():
    idx = torch.tensor([[0, 5], [71, 3]])
    ch = g.children(0, idx)
    assert ch.shape == (2, 2, 8)
    assert torch.equal(ch[1, 0], g.children(0, [71])[0])
    with pytest.raises(ValueError):
        g.parent(0, idx)
    with pytest.raises(ValueError):
        g.grid_size(-1)


def test_coarse_to_fine_search_finds_near_optimal_pose():
    """Expanding the 8 best level-L poses down to level 3 lands on (or next to) the true nearest level-3 point."""
    r = g.random_rotations(300, generator=_rng(5), dtype=F64)
    cand = torch.arange(g.grid_size(0)).expand(len(r), -1)
    for level in range(4):
        d = angular_distance(r[:, None], g.grid_matrices(level, cand, dtype=F64))
        best = cand.gather(1, d.topk(8, dim=1, largest=False).indices)
        cand = g.children(level, best).flatten(1) if level < 3 else best
    found = angular_distance(r, g.grid_matrices(3, cand[:, 0], dtype=F64))
    _, optimal = _brute_nearest(3, r)
    assert torch.allclose(found, optimal, atol=1e-6)


# --------------------------------------------------------------------------------------------- local refinement


def test_neighbours_match_brute_force():
    for level, k in ((1, 8), (2, 12)):
        m = g.grid_matrices(level, dtype=F64)
        idx = torch.arange(0, g.grid_size(level), 5 if level == 1 else 41)
        nb, dist = g.neighbours(level, idx, k)
        assert nb.shape == dist.shape == (len(idx), k)
        full = angular_distance(m[idx][:, None], m[None])
        full[torch.arange(len(idx)), idx] = math.inf
        expected = full.sort(dim=1).values[:, :k]
        assert torch.allclose(dist, expected, atol=1e-6)
        assert torch.allclose(full.gather(1, nb), dist, atol=1e-6)
        assert (nb != idx[:, None]).all()
        assert (nb.sort(dim=1).values.diff(dim=1) > 0).all()  # distinct
        assert dist[:, 0].max() < g.grid_spacing_deg(level)


def test_local_perturbations_and_grid_within_radius():
    p = g.local_perturbations(6.0, 2.0, dtype=F64)
    lattice = np.stack(np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    assert len(p) == int((np.linalg.norm(lattice, axis=1) <= 3).sum())
    assert torch.equal(p[0], torch.eye(3, dtype=F64))
    assert _is_rotation(p, 1e-12)
    angles = angular_distance(torch.eye(3, dtype=F64), p)
    assert angles.max() <= 6.0 + 1e-9 and angles.max() > 5.9
    assert (angles.diff() >= -1e-9).all()
    centres = g.random_rotations(4, generator=_rng(6), dtype=F64).reshape(2, 2, 3, 3)
    loc = g.local_grid(centres, 6.0, 2.0)
    assert loc.shape == (2, 2, len(p), 3, 3)
    d = angular_distance(centres[..., None, :, :], loc)
    assert d.max() <= 6.0 + 1e-9
    assert torch.allclose(loc[..., 0, :, :], centres)
    # the local grid fills its ball: rotations within 4 degrees of the centre are within the cubic lattice's
    # covering radius (step * sqrt(3) / 2, + 5 % for the curvature of SO(3)) of a member
    fine = g.local_perturbations(4.0, 0.5, dtype=F64)
    probe = fine[torch.randperm(len(fine), generator=_rng(8))[:300]] @ centres[0, 0]
    gap = angular_distance(probe[:, None], loc[0, 0][None]).min(dim=1).values
    assert gap.max() < 1.05 * 2.0 * math.sqrt(3) / 2
