"""RELION Euler angles, rotation matrices, quaternions, Rodrigues vectors and cryoSPARC poses.

Checked against scipy's Rotation (an independent implementation) and RELION's passive elementary matrices;
round trips over random angles (hypothesis) including the degenerate tilts 0 and 180 and 180-degree
rotations; torch and NumPy inputs must give the same numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.transform import Rotation

from vitreous.physics.rotations import (
    angular_distance,
    cryosparc_pose_to_matrix,
    euler_to_matrix,
    matrix_to_cryosparc_pose,
    matrix_to_euler,
    matrix_to_quaternion,
    matrix_to_rotvec,
    quaternion_to_matrix,
    rotvec_to_matrix,
)

SETTINGS = settings(max_examples=100, deadline=None)
ANGLE = st.one_of(st.floats(-720, 720, allow_nan=False), st.sampled_from([0.0, 90.0, 180.0, -180.0, 270.0]))
TILT = st.one_of(ANGLE, st.sampled_from([0.0, 180.0, 1e-7, 180 - 1e-7, 1e-3]))
EULER = st.tuples(ANGLE, TILT, ANGLE).map(lambda e: np.array(e, np.float64))
UNIT = arrays(np.float64, 3, elements=st.floats(-1, 1)).filter(lambda v: np.linalg.norm(v) > 1e-3)
ROTVEC = st.tuples(UNIT, st.floats(0, math.pi)).map(lambda a: a[0] / np.linalg.norm(a[0]) * a[1])


def _rz(deg: float) -> np.ndarray:  # RELION's passive rotation about z
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])


def _ry(deg: float) -> np.ndarray:  # RELION's passive rotation about y
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])


def _assert_rotation(m: np.ndarray) -> None:
    np.testing.assert_allclose(m @ m.swapaxes(-1, -2), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-12)


# ---- conventions ----------------------------------------------------------------------------------------------
@SETTINGS
@given(euler=EULER)
def test_euler_is_relion_zyz(euler: np.ndarray) -> None:
    rot, tilt, psi = euler
    expected = _rz(psi) @ _ry(tilt) @ _rz(rot)
    np.testing.assert_allclose(euler_to_matrix(euler), expected, atol=1e-12)
    # ... which is scipy's extrinsic ZYZ with the signs of a passive rotation
    scipy_matrix = Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix().T
    np.testing.assert_allclose(euler_to_matrix(euler), scipy_matrix, atol=1e-12)


def test_known_matrices() -> None:
    np.testing.assert_allclose(euler_to_matrix(np.array([90.0, 0, 0])), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]],
                               atol=1e-15)
    np.testing.assert_allclose(euler_to_matrix(np.array([0, 90.0, 0])), [[0, 0, -1], [0, 1, 0], [1, 0, 0]],
                               atol=1e-15)
    assert euler_to_matrix(np.zeros((4, 2, 3))).shape == (4, 2, 3, 3)


def test_degenerate_tilts_put_rotation_in_psi() -> None:
    angles = matrix_to_euler(euler_to_matrix(np.array([[30.0, 0.0, 20.0], [30.0, 180.0, 20.0]])))
    np.testing.assert_allclose(angles, [[0.0, 0.0, 50.0], [0.0, 180.0, -10.0]], atol=1e-9)


@SETTINGS
@given(rotvec=ROTVEC)
def test_rotvec_matches_scipy(rotvec: np.ndarray) -> None:
    np.testing.assert_allclose(rotvec_to_matrix(rotvec), Rotation.from_rotvec(rotvec).as_matrix(), atol=1e-12)
    # cryoSPARC: A = expmap(v)^T
    np.testing.assert_allclose(cryosparc_pose_to_matrix(rotvec), Rotation.from_rotvec(rotvec).as_matrix().T,
                               atol=1e-12)


@SETTINGS
@given(euler=EULER)
def test_quaternion_matches_scipy(euler: np.ndarray) -> None:
    matrix = euler_to_matrix(euler)
    q = matrix_to_quaternion(matrix)
    x, y, z, w = Rotation.from_matrix(matrix).as_quat()
    reference = np.array([w, x, y, z]) * (1 if w >= 0 else -1)
    if abs(reference[0]) < 1e-9:  # 180 degrees: q and -q are the same rotation
        reference *= np.sign(np.dot(reference, q))
    np.testing.assert_allclose(q, reference, atol=1e-9)
    assert q[0] >= 0


# ---- round trips ----------------------------------------------------------------------------------------------
@SETTINGS
@given(euler=EULER)
def test_euler_matrix_round_trip(euler: np.ndarray) -> None:
    matrix = euler_to_matrix(euler)
    _assert_rotation(matrix)
    angles = matrix_to_euler(matrix)
    assert 0 <= angles[1] <= 180 and np.all(np.abs(angles) <= 180)
    # exact except within ~2e-6 rad of tilt 0 / 180, where RELION's rule folds rot into psi
    np.testing.assert_allclose(euler_to_matrix(angles), matrix, atol=1e-5)
    assert angular_distance(euler_to_matrix(angles), matrix) < 1e-3


@SETTINGS
@given(rotvec=ROTVEC)
def test_rotvec_round_trip(rotvec: np.ndarray) -> None:
    matrix = rotvec_to_matrix(rotvec)
    back = matrix_to_rotvec(matrix)
    np.testing.assert_allclose(rotvec_to_matrix(back), matrix, atol=1e-9)
    assert np.linalg.norm(back) <= math.pi + 1e-12
    if np.linalg.norm(rotvec) < math.pi - 1e-6:  # below 180 degrees the vector is unique
        np.testing.assert_allclose(back, rotvec, atol=1e-7)


@SETTINGS
@given(euler=EULER)
def test_cryosparc_pose_round_trip(euler: np.ndarray) -> None:
    matrix = euler_to_matrix(euler)
    pose = matrix_to_cryosparc_pose(matrix)
    np.testing.assert_allclose(cryosparc_pose_to_matrix(pose), matrix, atol=1e-9)


@SETTINGS
@given(euler=EULER)
def test_quaternion_round_trip(euler: np.ndarray) -> None:
    matrix = euler_to_matrix(euler)
    q = matrix_to_quaternion(matrix)
    np.testing.assert_allclose(np.linalg.norm(q), 1.0, atol=1e-12)
    np.testing.assert_allclose(quaternion_to_matrix(q), matrix, atol=1e-9)
    again = matrix_to_quaternion(quaternion_to_matrix(q))
    np.testing.assert_allclose(again * np.sign(np.dot(again, q)), q, atol=1e-9)


@pytest.mark.parametrize("axis", [(1, -1, 0), (1, 1, 0), (0, 1, -1), (1, -1, 1), (-1, 2, 3), (0, 0, 1)])
def test_half_turns(axis: tuple) -> None:
    """180-degree rotations, whose quaternion has w = 0: the signs of x, y, z must still agree."""
    n = np.array(axis, np.float64) / np.linalg.norm(axis)
    matrix = 2 * np.outer(n, n) - np.eye(3)
    for convert, back in ((matrix_to_quaternion, quaternion_to_matrix), (matrix_to_rotvec, rotvec_to_matrix),
                          (matrix_to_cryosparc_pose, cryosparc_pose_to_matrix)):
        np.testing.assert_allclose(back(convert(matrix)), matrix, atol=1e-12)
    np.testing.assert_allclose(np.abs(matrix_to_rotvec(matrix)), np.abs(n) * math.pi, atol=1e-12)


@SETTINGS
@given(a=EULER, b=EULER)
def test_angular_distance(a: np.ndarray, b: np.ndarray) -> None:
    ma, mb = euler_to_matrix(a), euler_to_matrix(b)
    expected = np.degrees(Rotation.from_matrix(ma.T @ mb).magnitude())
    assert angular_distance(ma, mb) == pytest.approx(expected, abs=1e-6)
    assert angular_distance(ma, ma) == pytest.approx(0.0, abs=1e-6)
    assert angular_distance(ma, mb) == pytest.approx(angular_distance(mb, ma), abs=1e-9)


# ---- torch and NumPy give the same numbers ---------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(euler=arrays(np.float64, (4, 3), elements=st.floats(-360, 360)), other=EULER)
def test_torch_equals_numpy(euler: np.ndarray, other: np.ndarray) -> None:
    euler[0] = [10.0, 180.0, 20.0]  # a degenerate tilt in every batch
    matrices = euler_to_matrix(euler)
    poses = matrix_to_cryosparc_pose(matrices)
    cases = [
        (euler_to_matrix, euler), (matrix_to_euler, matrices), (matrix_to_quaternion, matrices),
        (quaternion_to_matrix, matrix_to_quaternion(matrices)), (matrix_to_rotvec, matrices),
        (rotvec_to_matrix, poses), (cryosparc_pose_to_matrix, poses), (matrix_to_cryosparc_pose, matrices),
    ]
    for function, value in cases:
        expected = function(value)
        got = function(torch.from_numpy(value))
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float64, function.__name__
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-10, err_msg=function.__name__)
    reference = euler_to_matrix(other)
    np.testing.assert_allclose(angular_distance(torch.from_numpy(matrices), torch.from_numpy(reference)).numpy(),
                               angular_distance(matrices, reference), atol=1e-10)


def test_torch_float32_and_gradients() -> None:
    euler = torch.tensor([[10.0, 40.0, 70.0], [-100.0, 120.0, 5.0]], requires_grad=True)
    matrices = euler_to_matrix(euler)
    assert matrices.dtype == torch.float32
    back = matrix_to_euler(matrices)
    np.testing.assert_allclose(back.detach().numpy(), euler.detach().numpy(), atol=1e-3)
    rotvec = torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.2, 0.3]], dtype=torch.float64, requires_grad=True)
    rotvec_to_matrix(rotvec).sum().backward()
    assert torch.isfinite(rotvec.grad).all()  # including at the zero vector (Taylor branch)
