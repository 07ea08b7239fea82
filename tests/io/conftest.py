"""Fixtures for the I/O tests: small synthetic stacks and STAR files written to tmp_path."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from vitreous.errors import InputError


def write_stack_file(path: Path, data: np.ndarray, voxel_size: float = 0.0) -> Path:
    """Write ``data`` (n, y, x) as an MRC stack with mrcfile (mode from the dtype) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as mrc:
        warnings.filterwarnings("ignore", "Data array contains NaN", RuntimeWarning)  # bad-input tests want NaN
        mrc.set_data(np.ascontiguousarray(data))
        mrc.set_image_stack()
        mrc.voxel_size = voxel_size
    return path


def write_star_file(path: Path, particles: dict, optics: dict | None = None) -> Path:
    """Write a RELION 3.1 STAR file (or 3.0 without ``optics``) from column dicts with starfile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = {"particles": pd.DataFrame(particles)}
    if optics is not None:
        blocks = {"optics": pd.DataFrame(optics), **blocks}
    starfile.write(blocks, path, overwrite=True)
    return path


@pytest.fixture
def make_stack() -> Callable[..., Path]:
    """``make_stack(path, data, voxel_size=0.0)``: an MRC stack on disk."""
    return write_stack_file


@pytest.fixture
def make_star() -> Callable[..., Path]:
    """``make_star(path, particles, optics=None)``: a STAR file on disk."""
    return write_star_file


@pytest.fixture
def tiny_project(tmp_path: Path) -> dict:
    """A 3-image stack (header 2.0 Å/px) and a valid 3.1 STAR file beside it, with poses and CTF."""
    rng = np.random.default_rng(7)
    data = rng.normal(size=(3, 16, 16)).astype(np.float32)
    stack = write_stack_file(tmp_path / "stack.mrcs", data, voxel_size=2.0)
    particles = {
        "rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(3)],
        "rlnOpticsGroup": [1, 1, 1],
        "rlnAngleRot": [10.0, 20.0, 30.0], "rlnAngleTilt": [40.0, 50.0, 60.0], "rlnAnglePsi": [70.0, 80.0, 90.0],
        "rlnOriginXAngst": [1.0, -2.0, 0.5], "rlnOriginYAngst": [0.0, 3.0, -1.5],
        "rlnDefocusU": [12000.0, 15000.0, 18000.0], "rlnDefocusV": [11000.0, 14000.0, 17000.0],
        "rlnDefocusAngle": [5.0, 15.0, 25.0],
    }
    optics = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [300.0],
              "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [2.0],
              "rlnImageSize": [16], "rlnImageDimensionality": [2]}
    star = write_star_file(tmp_path / "particles.star", particles, optics)
    return {"dir": tmp_path, "stack": stack, "data": data, "star": star, "particles": particles, "optics": optics}


def check_one_line_error(error: InputError, path: str | Path) -> str:
    """Assert that an InputError is one line, names ``path`` and suggests a fix; returns its message."""
    message = str(error)
    assert "\n" not in message
    assert str(path) in message, f"{path} not named in: {message}"
    assert error.fix, f"no fix suggested in: {message}"
    return message


@pytest.fixture
def one_line_error() -> Callable[[InputError, str | Path], str]:
    """``one_line_error(exc, path)``: checks an InputError's message (one line, names the file, has a fix)."""
    return check_one_line_error
