"""Uniform random rotations and hierarchical SO(3) grids for pose search (PyTorch, device-agnostic).

Grid: the Hopf-fibration grid of Yershova et al. (2010) as used by cryoDRGN(2): level ``L`` is the product of
``12 * 4**L`` HEALPix viewing directions (``N_side = 2**L``, *nested* scheme, pixel centres from the pix2ang
formulas of Gorski et al. 2005) and ``6 * 2**L`` in-plane angles ``psi_k = (k + 1/2) * 2 pi / (6 * 2**L)``:
``72 * 8**L`` rotations, nominal spacing ``60 / 2**L`` degrees (level 0: 72 rotations, ~60 deg; 1: 576, ~30 deg;
2: 4608, ~15 deg; 3: 36 864, ~7.5 deg; 4: 294 912, ~3.75 deg; 5: 2 359 296, ~1.9 deg).  The distance from a
random rotation to the nearest grid point has mean 0.471 times the nominal spacing at every level (28.4, 14.1,
7.07, 3.53 deg at levels 0-3) and maximum ~0.93 times it (hill-climbed worst case 56.3, 27.8, 13.9, 6.94 deg);
``covering_radius_deg(L) = 0.96 * 60 / 2**L`` bounds it.

Matrices are RELION's ``A`` (see :mod:`vitreous.physics.rotations`): the viewing direction ``d`` (volume
coordinates, the direction projected along image z) is the third row of ``A`` (``A d = e_z``), and an in-plane
rotation is ``Rz(psi) A`` with RELION's passive ``Rz``.  Grid point ``(j, k)`` is ``A = Rz(psi_k) S(d_j)`` where the
section ``S(d)`` maps ``d`` to ``e_z``: the minimal rotation taking ``d`` to the centre ``c_f`` of its HEALPix base
face ``f``, followed by a fixed rotation taking ``c_f`` to ``e_z``.  Any section gives a Haar-uniform grid; this
per-face one keeps the in-plane twist between nearby directions small, so children stay close to their parent
(level 3 -> 4: at most 4.6 deg; with Yershova's single Hopf chart, which twists fast near one pole, up to 47 deg).

Index of grid point ``(j, k)`` at level ``L``: ``j * n_inplane(L) + k``.  Hierarchy: the children of ``(j, k)`` are
``(4 j + a, 2 k + b)``, ``a < 4``, ``b < 2`` at level ``L + 1`` (nested HEALPix children and halved in-plane bins);
every level ``L + 1`` point has exactly one parent.  Quaternions are (w, x, y, z) with w >= 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from vitreous.physics.rotations import (
    angular_distance,
    matrix_to_euler,
    matrix_to_quaternion,
    quaternion_to_matrix,
    rotvec_to_matrix,
)

__all__ = [
    "children",
    "covering_radius_deg",
    "grid_euler",
    "grid_matrices",
    "grid_quaternions",
    "grid_size",
    "grid_spacing_deg",
    "healpix_pix2vec",
    "healpix_vec2pix",
    "join_index",
    "local_grid",
    "local_perturbations",
    "locate",
    "n_directions",
    "n_inplane",
    "nearest",
    "neighbours",
    "parent",
    "random_quaternions",
    "random_rotations",
    "split_index",
]

IndexLike = torch.Tensor | int | Sequence[int] | np.ndarray

# Covering radius / nominal spacing: worst distances to the grid found by hill-climbing from the worst of 2e5
# random rotations per level are 0.938, 0.928, 0.927, 0.925 (levels 0-3) times the spacing; rounded up.
_COVERING_RATIO = 0.96


# ----------------------------------------------------------------------------------------------- random rotations


def random_quaternions(
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` Haar-uniform unit quaternions (n, 4) = (w, x, y, z), w >= 0 (normalised Gaussian 4-vectors).

    ``generator`` must live on ``device`` (for CUDA, a ``torch.Generator("cuda")``).
    """
    q = torch.randn(n, 4, generator=generator, device=device, dtype=dtype)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[:, :1] < 0, -q, q)


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` Haar-uniform rotation matrices (n, 3, 3) (the rotation angle has density (1 - cos t) / pi)."""
    return quaternion_to_matrix(random_quaternions(n, generator, device, dtype)).to(dtype)


# ---------------------------------------------------------------------------------------------------- grid sizes


def n_directions(level: int) -> int:
    """Number of HEALPix viewing directions at ``level``: ``12 * 4**level``."""
    _check_level(level)
    return 12 * 4**level


def n_inplane(level: int) -> int:
    """Number of in-plane angles at ``level``: ``6 * 2**level``."""
    _check_level(level)
    return 6 * 2**level


def grid_size(level: int) -> int:
    """Number of rotations at ``level``: ``72 * 8**level``."""
    return n_directions(level) * n_inplane(level)


def grid_spacing_deg(level: int) -> float:
    """Nominal angular spacing at ``level`` in degrees: ``60 / 2**level`` (in-plane step, ~HEALPix pixel size)."""
    _check_level(level)
    return 60.0 / 2**level


def covering_radius_deg(level: int) -> float:
    """Bound (degrees) on the distance from any rotation to its nearest level-``level`` grid point (the cell
    radius): ``0.96 * grid_spacing_deg(level)``; the measured worst case is ~0.93 times the spacing."""
    return _COVERING_RATIO * grid_spacing_deg(level)


def _check_level(level: int) -> None:
    if not 0 <= level <= 16:  # int64 indices hold levels up to 18
        raise ValueError(f"grid level must be in [0, 16], got {level}")


# -------------------------------------------------------------------------------------------------- HEALPix (nest)

_JRLL = (2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4)  # base-face ring offsets (units of nside), healpix_base jrll
_JPLL = (1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7)  # longitude of each base face's centre (units of pi/4)


def _work_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (not MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


@lru_cache(maxsize=8)
def _face_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(_JRLL, device=device), torch.tensor(_JPLL, device=device)


def _compact_bits(v: torch.Tensor, nbits: int) -> torch.Tensor:
    """Bits 0, 2, 4, ... of ``v`` packed into bits 0, 1, 2, ..."""
    out = torch.zeros_like(v)
    for b in range(nbits):
        out |= ((v >> (2 * b)) & 1) << b
    return out


def _spread_bits(v: torch.Tensor, nbits: int) -> torch.Tensor:
    """Bits 0, 1, 2, ... of ``v`` moved to bits 0, 2, 4, ..."""
    out = torch.zeros_like(v)
    for b in range(nbits):
        out |= ((v >> b) & 1) << (2 * b)
    return out


def healpix_pix2vec(nside: int, pix: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Unit vectors (..., 3) of the centres of nested-scheme HEALPix pixels ``pix`` (int64) at ``nside`` = 2**k.

    Gorski et al. (2005) / healpix_base ``pix2loc``; z = cos(theta), phi measured from +x towards +y.
    """
    order = int(nside).bit_length() - 1
    if nside < 1 or 1 << order != nside:
        raise ValueError(f"nside must be a power of 2, got {nside}")
    pix = torch.as_tensor(pix, dtype=torch.int64)
    dev = pix.device
    wd = dtype if dtype is not None else _work_dtype(dev)
    npface = nside * nside
    face = pix // npface
    ipf = pix % npface
    ix = _compact_bits(ipf, order)
    iy = _compact_bits(ipf >> 1, order)
    jrll_table, jpll_table = _face_tables(dev)
    jrll, jpll = jrll_table[face], jpll_table[face]
    jr = jrll * nside - ix - iy - 1  # ring index, 1 .. 4 nside - 1
    north, south = jr < nside, jr > 3 * nside
    polar = north | south
    nr = torch.where(north, jr, torch.where(south, 4 * nside - jr, torch.full_like(jr, nside)))
    kshift = torch.where(polar, torch.zeros_like(jr), (jr - nside) & 1)
    one_minus_za = nr.to(wd) ** 2 / (3.0 * npface)  # 1 - |z| in the polar caps
    z_polar = torch.where(north, 1.0 - one_minus_za, one_minus_za - 1.0)
    z_eq = (2 * nside - jr).to(wd) * (2.0 / (3.0 * nside))
    z = torch.where(polar, z_polar, z_eq)
    sth = torch.where(polar, torch.sqrt(one_minus_za * (2.0 - one_minus_za)), torch.sqrt((1.0 - z_eq) * (1.0 + z_eq)))
    jp = (jpll * nr + ix - iy + 1 + kshift) // 2  # exact: the numerator is even
    jp = torch.where(jp > 4 * nside, jp - 4 * nside, jp)
    jp = torch.where(jp < 1, jp + 4 * nside, jp)
    phi = (jp.to(wd) - (kshift + 1).to(wd) * 0.5) * (math.pi / 2) / nr.to(wd)
    return torch.stack([sth * torch.cos(phi), sth * torch.sin(phi), z], dim=-1)


def healpix_vec2pix(nside: int, vec: torch.Tensor) -> torch.Tensor:
    """Nested-scheme HEALPix pixel (int64, ...) containing each direction ``vec`` (..., 3), any norm > 0.

    Gorski et al. (2005) / healpix_base ``loc2pix``.
    """
    order = int(nside).bit_length() - 1
    if nside < 1 or 1 << order != nside:
        raise ValueError(f"nside must be a power of 2, got {nside}")
    v = vec if vec.is_floating_point() else vec.to(_work_dtype(vec.device))
    v = v / v.norm(dim=-1, keepdim=True)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    za = z.abs()
    sth = torch.hypot(x, y)
    tt = torch.remainder(torch.atan2(y, x) * (2.0 / math.pi), 4.0)
    tt = torch.where(tt >= 4.0, torch.zeros_like(tt), tt)  # remainder may round up to 4
    # equatorial belt
    t1 = nside * (0.5 + tt)
    t2 = nside * (0.75 * z)
    jp_e = torch.floor(t1 - t2).to(torch.int64)
    jm_e = torch.floor(t1 + t2).to(torch.int64)
    ifp, ifm = jp_e >> order, jm_e >> order
    face_e = torch.where(ifp == ifm, ifp | 4, torch.where(ifp < ifm, ifp, ifm + 8))
    ix_e = jm_e & (nside - 1)
    iy_e = nside - (jp_e & (nside - 1)) - 1
    # polar caps
    ntt = torch.clamp(torch.floor(tt), max=3.0)
    tp = tt - ntt
    tmp = nside * sth * torch.rsqrt((1.0 + za) / 3.0)  # nside * sqrt(3 (1 - |z|)), accurate near the poles
    jp_p = torch.clamp(torch.floor(tp * tmp).to(torch.int64), max=nside - 1)
    jm_p = torch.clamp(torch.floor((1.0 - tp) * tmp).to(torch.int64), max=nside - 1)
    ntt = ntt.to(torch.int64)
    up = z >= 0
    face_p = torch.where(up, ntt, ntt + 8)
    ix_p = torch.where(up, nside - jm_p - 1, jp_p)
    iy_p = torch.where(up, nside - jp_p - 1, jm_p)
    eq = za <= 2.0 / 3.0
    face = torch.where(eq, face_e, face_p)
    ix = torch.where(eq, ix_e, ix_p)
    iy = torch.where(eq, iy_e, iy_p)
    return face * (nside * nside) + _spread_bits(ix, order) + (_spread_bits(iy, order) << 1)


# -------------------------------------------------------------------------------------------- grid construction


@lru_cache(maxsize=16)
def _face_frames(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Base-face centres ``c_f`` (12, 3) and fixed rotations ``B_f`` (12, 3, 3) with ``B_f c_f = e_z``."""
    c = healpix_pix2vec(1, torch.arange(12)).numpy()
    rot = np.arctan2(c[:, 1], c[:, 0])
    tilt = np.arccos(c[:, 2])
    ca, sa, cb, sb = np.cos(rot), np.sin(rot), np.cos(tilt), np.sin(tilt)
    # RELION A for Euler (rot, tilt, psi = -rot): the minimal rotation taking c_f to e_z
    rz_psi = np.zeros((12, 3, 3))
    rz_psi[:, 0, 0], rz_psi[:, 0, 1], rz_psi[:, 1, 0], rz_psi[:, 1, 1], rz_psi[:, 2, 2] = ca, -sa, sa, ca, 1.0
    ry = np.zeros((12, 3, 3))
    ry[:, 0, 0], ry[:, 0, 2], ry[:, 1, 1], ry[:, 2, 0], ry[:, 2, 2] = cb, -sb, 1.0, sb, cb
    rz_rot = np.zeros((12, 3, 3))
    rz_rot[:, 0, 0], rz_rot[:, 0, 1], rz_rot[:, 1, 0], rz_rot[:, 1, 1], rz_rot[:, 2, 2] = ca, sa, -sa, ca, 1.0
    b = rz_psi @ ry @ rz_rot
    return torch.as_tensor(c, dtype=dtype, device=device), torch.as_tensor(b, dtype=dtype, device=device)


def _section(d: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """Section ``S(d)`` (..., 3, 3): minimal rotation taking ``d`` to its face centre, then ``B_f``."""
    centres, frames = _face_frames(d.device, d.dtype)
    c = centres[face]
    v = torch.linalg.cross(d, c, dim=-1)  # axis * sin(angle)
    cos = (d * c).sum(-1, keepdim=True)
    vx, vy, vz = v.unbind(-1)
    zero = torch.zeros_like(vx)
    k = torch.stack([zero, -vz, vy, vz, zero, -vx, -vy, vx, zero], -1).unflatten(-1, (3, 3))
    # Rodrigues: cos I + [v]x + v v^T / (1 + cos), which maps d to c
    r_min = k + (v[..., :, None] * (v / (1.0 + cos))[..., None, :])
    r_min = r_min + torch.diag_embed(cos.expand_as(v))
    return frames[face] @ r_min


def _rz_times(psi: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``Rz(psi) @ m`` (..., 3, 3) for RELION's passive in-plane rotation ``Rz``, psi in radians."""
    c, s = torch.cos(psi)[..., None], torch.sin(psi)[..., None]
    m0, m1, m2 = m[..., 0, :], m[..., 1, :], m[..., 2, :]
    r0 = c * m0 + s * m1
    return torch.stack([r0, c * m1 - s * m0, m2.expand_as(r0)], -2)


def _as_index(indices: IndexLike, device: torch.device | str | None) -> torch.Tensor:
    if isinstance(indices, torch.Tensor):
        return indices.to(dtype=torch.int64, device=device if device is not None else indices.device)
    return torch.as_tensor(np.asarray(indices), dtype=torch.int64, device=device)


def split_index(level: int, indices: IndexLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid indices -> (direction index ``j`` (HEALPix nested pixel), in-plane index ``k``)."""
    idx = _as_index(indices, None)
    m = n_inplane(level)
    return idx // m, idx % m


def join_index(level: int, direction: IndexLike, inplane: IndexLike) -> torch.Tensor:
    """(direction index, in-plane index) -> grid index ``direction * n_inplane(level) + inplane``."""
    j, k = _as_index(direction, None), _as_index(inplane, None)
    return j * n_inplane(level) + k.to(j.device)


def _matrices_from_index(level: int, idx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Grid matrices (..., 3, 3) for int64 indices of any shape, computed in ``dtype``."""
    j, k = split_index(level, idx)
    d = healpix_pix2vec(2**level, j, dtype=dtype)
    psi = (k.to(dtype) + 0.5) * (2.0 * math.pi / n_inplane(level))
    return _rz_times(psi, _section(d, j // 4**level))


def grid_matrices(
    level: int,
    indices: IndexLike | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """RELION ``A`` matrices (..., 3, 3) of grid points ``indices`` (any shape; default: the whole level, in index
    order).  Computed in ``dtype`` from the indices on their device (or ``device``), so that a level can be
    evaluated sparsely, e.g. at the children of the best poses; float32 is accurate to ~1e-5 degrees."""
    if indices is None:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        j = torch.arange(n_directions(level), device=dev)
        section = _section(healpix_pix2vec(2**level, j, dtype=dtype), j // 4**level)
        psi = (torch.arange(n_inplane(level), device=dev, dtype=dtype) + 0.5) * (2.0 * math.pi / n_inplane(level))
        return _rz_times(psi[None, :], section[:, None]).reshape(-1, 3, 3)
    return _matrices_from_index(level, _as_index(indices, device), dtype)


def grid_quaternions(
    level: int,
    indices: IndexLike | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Quaternions (..., 4) = (w, x, y, z), w >= 0, of the grid matrices ``grid_matrices(level, indices)``."""
    return matrix_to_quaternion(grid_matrices(level, indices, device=device, dtype=dtype))


def grid_euler(
    level: int,
    indices: IndexLike | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """RELION Euler angles (..., 3) = (rot, tilt, psi) in degrees of the grid points (e.g. for STAR output)."""
    return matrix_to_euler(grid_matrices(level, indices, device=device, dtype=torch.float64)).to(dtype)


# ------------------------------------------------------------------------------------------------------ hierarchy


def children(level: int, indices: IndexLike) -> torch.Tensor:
    """Level ``level + 1`` indices (..., 8) of the children of level-``level`` grid points ``indices``.

    Child ``a * 2 + b`` is ``(4 j + a, 2 k + b)``; the children lie within ``covering_radius_deg(level)`` of the
    parent, and the children of all level-``level`` points are exactly the level ``level + 1`` grid.
    """
    j, k = split_index(level, indices)
    a = torch.arange(4, device=j.device)
    b = torch.arange(2, device=j.device)
    cj = 4 * j[..., None, None] + a[:, None]
    ck = 2 * k[..., None, None] + b[None, :]
    return (cj * n_inplane(level + 1) + ck).reshape(*j.shape, 8)


def parent(level: int, indices: IndexLike) -> torch.Tensor:
    """Level ``level - 1`` index of the parent of each level-``level`` grid point (inverse of :func:`children`)."""
    if level < 1:
        raise ValueError("level-0 grid points have no parent")
    j, k = split_index(level, indices)
    return (j // 4) * n_inplane(level - 1) + k // 2


# -------------------------------------------------------------------------------------------- local perturbations


def local_perturbations(
    radius_deg: float,
    step_deg: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Small rotations (m, 3, 3) ``exp(v)`` for ``v`` on a cubic lattice of spacing ``step_deg`` in the ball
    ``|v| <= radius_deg`` (rotation vectors in degrees); the rotation angle of ``exp(v)`` is ``|v|``.  The
    identity is first; the others are sorted by angle."""
    if step_deg <= 0 or radius_deg < 0:
        raise ValueError("need step_deg > 0 and radius_deg >= 0")
    n = int(math.floor(radius_deg / step_deg + 1e-9))
    r = torch.arange(-n, n + 1, dtype=torch.float64) * step_deg
    v = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    norm = v.norm(dim=-1)
    keep = norm <= radius_deg * (1 + 1e-12)
    v, norm = v[keep], norm[keep]
    v = v[torch.argsort(norm, stable=True)]
    mats = rotvec_to_matrix(v * (math.pi / 180.0))
    return mats.to(device=device, dtype=dtype)


def local_grid(rotations: torch.Tensor, radius_deg: float, step_deg: float) -> torch.Tensor:
    """Local grids (..., m, 3, 3) ``P_i @ A`` around each rotation ``A`` (..., 3, 3): every member lies within
    ``radius_deg`` of its centre (``P_i`` from :func:`local_perturbations`; index 0 is ``A`` itself).  Left
    multiplication perturbs in the projection frame: the z component of ``v`` is an in-plane rotation."""
    p = local_perturbations(radius_deg, step_deg, device=rotations.device, dtype=rotations.dtype)
    return p @ rotations[..., None, :, :]


# ---------------------------------------------------------------------------------------------- point location


def _cap_pixels(level: int, d: torch.Tensor, radius_deg: float) -> torch.Tensor:
    """HEALPix pixels (..., m) met by a square lattice (step 1/4 pixel) of points within ``radius_deg`` of each
    unit direction ``d`` (..., 3): in practice every pixel whose centre lies within ``radius_deg``."""
    step = 0.25 * grid_spacing_deg(level)
    n = int(math.ceil(radius_deg / step))
    r = torch.arange(-n, n + 1, dtype=d.dtype, device=d.device) * (step * math.pi / 180.0)
    u = torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)
    ang = u.norm(dim=-1)
    u = u[ang <= (radius_deg + step) * math.pi / 180.0]
    ang = u.norm(dim=-1)
    # tangent frame (e1, e2) at d
    helper = torch.zeros_like(d)
    use_x = d[..., 2].abs() > 0.9
    helper[..., 0] = use_x.to(d.dtype)
    helper[..., 2] = (~use_x).to(d.dtype)
    e1 = torch.linalg.cross(d, helper, dim=-1)
    e1 = e1 / e1.norm(dim=-1, keepdim=True)
    e2 = torch.linalg.cross(d, e1, dim=-1)
    sinc = torch.where(ang > 0, torch.sin(ang) / torch.where(ang > 0, ang, 1.0), torch.ones_like(ang))
    tang = (u[:, 0, None] * sinc[:, None]) * e1[..., None, :] + (u[:, 1, None] * sinc[:, None]) * e2[..., None, :]
    pts = torch.cos(ang)[:, None] * d[..., None, :] + tang
    return healpix_vec2pix(2**level, pts)


def _fiber_angle(level: int, a: torch.Tensor, j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In-plane angle ``alpha`` (radians) of the point ``Rz(alpha) S(d_j)`` of fibre ``j`` nearest to ``a``, and
    the section ``S(d_j)``: ``alpha`` maximises ``trace(a^T Rz(alpha) S)``."""
    s = _section(healpix_pix2vec(2**level, j, dtype=a.dtype), j // 4**level)
    m = a @ s.mT  # ~ Rz(alpha)
    return torch.atan2(m[..., 0, 1] - m[..., 1, 0], m[..., 0, 0] + m[..., 1, 1]), s


def _inplane_bin(alpha: torch.Tensor, n: int) -> torch.Tensor:
    """Index of the in-plane bin ``[k, k + 1) * 2 pi / n`` containing ``alpha`` (its centre is the nearest)."""
    k = torch.floor(torch.remainder(alpha, 2.0 * math.pi) * (n / (2.0 * math.pi))).to(torch.int64)
    return k % n


def locate(level: int, rotations: torch.Tensor) -> torch.Tensor:
    """Index (...) of the level-``level`` cell containing each rotation ``A`` (..., 3, 3): the HEALPix pixel of its
    viewing direction and the in-plane bin of its best-fitting in-plane angle.  Often, not always, the nearest
    grid point (see :func:`nearest`)."""
    a = _float(rotations)
    j = healpix_vec2pix(2**level, a[..., 2, :])
    n = n_inplane(level)
    return j * n + _inplane_bin(_fiber_angle(level, a, j)[0], n)


def _float(rotations: torch.Tensor) -> torch.Tensor:
    return rotations if rotations.is_floating_point() else rotations.to(_work_dtype(rotations.device))


def nearest(level: int, rotations: torch.Tensor) -> torch.Tensor:
    """Index (...) of the level-``level`` grid point nearest (geodesic distance) to each rotation (..., 3, 3).

    The nearest point lies within ``covering_radius_deg(level)``, so its direction does too: every pixel with a
    centre in that cap is tried, each with its in-plane bin nearest to the rotation (exact along a fibre)."""
    a = _float(rotations)
    j = _cap_pixels(level, a[..., 2, :], covering_radius_deg(level))
    ai = a[..., None, :, :]
    n = n_inplane(level)
    alpha, section = _fiber_angle(level, ai, j)
    k = _inplane_bin(alpha, n)
    grid = _rz_times((k.to(a.dtype) + 0.5) * (2.0 * math.pi / n), section)
    cand = j * n + k
    trace = (ai * grid).sum((-1, -2))  # trace(A^T G) = 1 + 2 cos(angle)
    return cand.gather(-1, trace.argmax(dim=-1, keepdim=True))[..., 0]


def neighbours(level: int, indices: IndexLike, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` level-``level`` grid points nearest to each grid point ``indices`` (itself excluded).

    Returns (indices (..., k), geodesic distances in degrees (..., k)), nearest first; ties in arbitrary order.
    Tries ~2000 candidates per point (a few ms each on CPU): for local refinement, prefer :func:`local_grid`.
    """
    idx = _as_index(indices, None)
    if not 0 < k <= 64:
        raise ValueError(f"k must be in [1, 64], got {k}")
    # search radius: a ball holding ~2 (k + 1) grid points (Haar volume of a ball of radius r: (r - sin r) / pi)
    # plus the covering radius; a point within it has its direction within it, and its in-plane angle within it
    # of the fibre's nearest angle (fibres are great circles of S^3, so the distance is at least that offset)
    r = (12.0 * math.pi * (k + 1) / grid_size(level)) ** (1.0 / 3.0) * 180.0 / math.pi + covering_radius_deg(level)
    r = min(r, 180.0)
    a = _matrices_from_index(level, idx, _work_dtype(idx.device))
    j = _cap_pixels(level, a[..., 2, :], r)
    n = n_inplane(level)
    centre = _inplane_bin(_fiber_angle(level, a[..., None, :, :], j)[0], n)
    t = min(int(math.ceil(r / grid_spacing_deg(level))) + 1, n // 2)
    offs = torch.arange(-t, t + 1, device=j.device)
    cand = (j[..., None] * n + (centre[..., None] + offs) % n).flatten(-2)
    cand, _ = cand.sort(dim=-1)
    invalid = cand == idx[..., None]
    invalid[..., 1:] |= cand[..., 1:] == cand[..., :-1]
    dist = angular_distance(a[..., None, :, :], _matrices_from_index(level, cand, a.dtype))
    dist = dist.masked_fill(invalid, math.inf)
    d, order = torch.topk(dist, k, dim=-1, largest=False, sorted=True)
    return cand.gather(-1, order), d
