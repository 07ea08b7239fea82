"""Rotations in RELION's convention, for NumPy arrays and torch tensors alike.

Convention (RELION 3.1+, ``Euler_angles2matrix``): Euler angles (rot, tilt, psi) in degrees, ZYZ, and the
matrix ``A = Rz(psi) Ry(tilt) Rz(rot)`` with RELION's passive elementary matrices.  ``A`` maps volume
coordinates (x, y, z) to the projection frame: a particle image is the projection along z of the volume
rotated by ``A``, i.e. the central slice ``F_image(kx, ky) = F_volume(A^T (kx, ky, 0))``.
cryoDRGN's ``rot`` is this same ``A``.  cryoSPARC stores ``alignments3D/pose`` as a Rodrigues vector ``v``
with ``A = expmap(v)^T``.  Quaternions are (w, x, y, z) of the matrix given, with w >= 0.
Every function accepts a ``numpy.ndarray`` or a ``torch.Tensor`` with any leading batch shape and returns
the same kind.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or torch.Tensor


def _xp(x: Array):
    """The array namespace (numpy or torch) of ``x``."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch
    return np


def _as_float(x: Array) -> Array:
    if _xp(x) is np:
        return np.asarray(x, dtype=np.float64)
    return x if x.is_floating_point() else x.double()


def euler_to_matrix(euler_deg: Array) -> Array:
    """RELION Euler angles (..., 3) = (rot, tilt, psi) in degrees -> rotation matrices (..., 3, 3)."""
    e = _as_float(euler_deg)
    xp = _xp(e)
    a, b, g = (e[..., i] * (math.pi / 180.0) for i in range(3))
    ca, sa, cb, sb, cg, sg = xp.cos(a), xp.sin(a), xp.cos(b), xp.sin(b), xp.cos(g), xp.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        xp.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], axis=-1),
        xp.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], axis=-1),
        xp.stack([sc, ss, cb], axis=-1),
    ]
    return xp.stack(rows, axis=-2)


def matrix_to_euler(matrix: Array) -> Array:
    """Rotation matrices (..., 3, 3) -> RELION Euler angles (..., 3) in degrees, tilt in [0, 180].

    Follows RELION's ``Euler_matrix2angles``: at tilt 0 or 180 all rotation is put in psi (rot = 0).
    """
    m = _as_float(matrix)
    xp = _xp(m)
    abs_sb = xp.sqrt(m[..., 0, 2] ** 2 + m[..., 1, 2] ** 2)
    regular = abs_sb > 16 * np.finfo(np.float32).eps
    tilt = xp.arctan2(abs_sb, m[..., 2, 2])
    rot = xp.where(regular, xp.arctan2(m[..., 2, 1], m[..., 2, 0]), xp.zeros_like(tilt))
    psi_regular = xp.arctan2(m[..., 1, 2], -m[..., 0, 2])
    up = m[..., 2, 2] > 0
    psi_degenerate = xp.where(
        up, xp.arctan2(-m[..., 1, 0], m[..., 0, 0]), xp.arctan2(m[..., 1, 0], -m[..., 0, 0])
    )
    tilt = xp.where(regular, tilt, xp.where(up, xp.zeros_like(tilt), xp.full_like(tilt, math.pi)))
    psi = xp.where(regular, psi_regular, psi_degenerate)
    return xp.stack([rot, tilt, psi], axis=-1) * (180.0 / math.pi)


def _skew(v: Array) -> Array:
    xp = _xp(v)
    z = xp.zeros_like(v[..., 0])
    x, y, w = v[..., 0], v[..., 1], v[..., 2]
    return xp.stack(
        [xp.stack([z, -w, y], axis=-1), xp.stack([w, z, -x], axis=-1), xp.stack([-y, x, z], axis=-1)],
        axis=-2,
    )


def rotvec_to_matrix(rotvec: Array) -> Array:
    """Rodrigues / axis-angle vectors (..., 3) (angle in radians = norm) -> active rotation matrices."""
    v = _as_float(rotvec)
    xp = _xp(v)
    theta2 = (v**2).sum(axis=-1)
    small = theta2 < 1e-12
    # sqrt only away from 0, so that torch gradients stay finite at the zero vector
    safe = xp.sqrt(xp.where(small, xp.ones_like(theta2), theta2))
    # sin(t)/t and (1-cos(t))/t^2 with their Taylor limits near 0
    s = xp.where(small, 1.0 - theta2 / 6.0, xp.sin(safe) / safe)
    c = xp.where(small, 0.5 - theta2 / 24.0, (1.0 - xp.cos(safe)) / safe**2)
    k = _skew(v)
    eye = xp.eye(3, dtype=v.dtype) if xp is np else xp.eye(3, dtype=v.dtype, device=v.device)
    return eye + s[..., None, None] * k + c[..., None, None] * (k @ k)


def matrix_to_quaternion(matrix: Array) -> Array:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) = (w, x, y, z), w >= 0.

    Shepperd's method: each quaternion is computed from the largest of its four squared components, which
    keeps the signs right for every rotation, 180 degrees included.
    """
    m = _as_float(matrix)
    xp = _xp(m)
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s01, s02, s12 = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    t = xp.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], axis=-1)
    # candidate k has 4 q_k^2 = t_k on its own component; the largest t_k >= 1, so its division is safe
    candidates = xp.stack([
        xp.stack([t[..., 0], d21, d02, d10], axis=-1),
        xp.stack([d21, t[..., 1], s01, s02], axis=-1),
        xp.stack([d02, s01, t[..., 2], s12], axis=-1),
        xp.stack([d10, s02, s12, t[..., 3]], axis=-1),
    ], axis=-2)
    best = xp.argmax(t, axis=-1)
    if xp is np:
        q = np.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
    else:
        q = xp.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = q / xp.sqrt((q**2).sum(axis=-1, keepdims=True))
    return q * _sign(q[..., :1])


def _sign(x: Array) -> Array:
    """Sign with sign(0) = +1 (so that a zero component never zeroes a quaternion)."""
    xp = _xp(x)
    return xp.where(x < 0, -xp.ones_like(x), xp.ones_like(x))


def quaternion_to_matrix(q: Array) -> Array:
    """Quaternions (..., 4) = (w, x, y, z), normalised here -> rotation matrices (..., 3, 3)."""
    q = _as_float(q)
    xp = _xp(q)
    q = q / xp.sqrt((q**2).sum(axis=-1, keepdims=True))
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        xp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
        xp.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
        xp.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1),
    ]
    return xp.stack(rows, axis=-2)


def matrix_to_rotvec(matrix: Array) -> Array:
    """Active rotation matrices (..., 3, 3) -> Rodrigues vectors (..., 3), angle in [0, pi]."""
    q = matrix_to_quaternion(matrix)
    xp = _xp(q)
    vec = q[..., 1:]
    norm = xp.sqrt((vec**2).sum(axis=-1))
    angle = 2.0 * xp.arctan2(norm, q[..., 0])
    scale = xp.where(norm < 1e-12, 2.0 * xp.ones_like(norm), angle / xp.where(norm < 1e-12, 1.0, norm))
    return vec * scale[..., None]


def cryosparc_pose_to_matrix(pose: Array) -> Array:
    """cryoSPARC ``alignments3D/pose`` (Rodrigues, radians) -> RELION matrix ``A = expmap(v)^T``."""
    return rotvec_to_matrix(pose).swapaxes(-1, -2) if _xp(pose) is np else rotvec_to_matrix(pose).mT


def matrix_to_cryosparc_pose(matrix: Array) -> Array:
    """RELION matrix ``A`` -> cryoSPARC ``alignments3D/pose`` Rodrigues vector (radians)."""
    return -matrix_to_rotvec(matrix)


def angular_distance(a: Array, b: Array) -> Array:
    """Geodesic angle in degrees between rotation matrices ``a`` and ``b`` (broadcast over batch).

    Uses atan2(sin, cos) of ``R = a^T b``, accurate near 0 and 180 degrees.
    """
    a, b = _as_float(a), _as_float(b)
    xp = _xp(a)
    rel = a.swapaxes(-1, -2) @ b if xp is np else a.mT @ b
    cos = (rel[..., 0, 0] + rel[..., 1, 1] + rel[..., 2, 2] - 1.0) / 2.0
    asym = rel - (rel.swapaxes(-1, -2) if xp is np else rel.mT)
    sin = xp.sqrt((asym**2).sum(axis=(-1, -2))) / (2.0 * math.sqrt(2.0))
    return xp.arctan2(sin, cos) * (180.0 / math.pi)
