"""Parity with cryoDRGN's own parse of real metadata (the acceptance test of the I/O layer).

The references were made by cryoDRGN (parse_pose_star / parse_ctf_star with D=300, Apix 1.035 on the PfCRT
RELION 3.0 file; parse_pose_csparc / parse_ctf_csparc with D=180 on the 2019-particle cryoSPARC file).
Rotations are RELION matrices, shifts are in units of the box, CTF rows are the 9 cryoDRGN columns
(D, Apix, dfU, dfV, dfang, kV, Cs, w, phase shift).

Tolerance: rtol=1e-5 plus atol=1e-5.  The references are stored as float32, whose spacing near a defocus of
~1.6e4 Å is ~1e-3 Å, so a pure absolute 1e-5 is impossible there; the relative term covers it (and is still
~30x tighter than what a wrong unit or convention would give).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from vitreous.io.cryodrgn import cryodrgn_ctf, cryodrgn_poses
from vitreous.io.cryosparc import read_cs
from vitreous.io.star import read_star
from vitreous.physics.rotations import angular_distance

TOL = {"rtol": 1e-5, "atol": 1e-5}
PFCRT = "metadata/empiar10330_pfcrt"
DNATET = "metadata/cryosparc_dnatet_2019ptcl"


def _pickle(path: Path):
    with open(path, "rb") as fh:
        return pickle.load(fh)


@pytest.fixture(scope="module")
def pfcrt(real_data: Path):
    # The stacks of this file are not in the snapshot: metadata only, with cryoDRGN's box of 300 px.
    particles = read_star(real_data / PFCRT / "FinalRefinement-OriginalParticles-PfCRT.star", load_images=False)
    particles.optics["rlnImageSize"] = 300
    return particles


@pytest.fixture(scope="module")
def dnatet(real_data: Path):
    return read_cs(real_data / DNATET / "cryosparc_P12_J24_001_particles.cs", load_images=False)


def test_star_poses_match_cryodrgn(pfcrt, real_data: Path) -> None:
    ref_rot, ref_trans = _pickle(real_data / PFCRT / "ref_pose.star.pkl")
    rot, trans = cryodrgn_poses(pfcrt)
    assert rot.shape == ref_rot.shape == (5, 3, 3)
    np.testing.assert_allclose(rot, ref_rot, **TOL)
    np.testing.assert_allclose(trans, ref_trans, **TOL)
    assert angular_distance(rot, np.asarray(ref_rot, np.float64)).max() < 1e-3  # degrees


def test_star_ctf_matches_cryodrgn(pfcrt, real_data: Path) -> None:
    ref = _pickle(real_data / PFCRT / "ref_ctf1.pkl")
    ctf = cryodrgn_ctf(pfcrt)
    assert ctf.shape == ref.shape == (5, 9)
    np.testing.assert_allclose(ctf, ref, **TOL)
    # the file has no amplitude contrast: both fall back to 0.1; Cs is the file's 0.001 mm
    assert np.all(ctf[:, 7] == pytest.approx(0.1)) and np.all(ctf[:, 6] == pytest.approx(0.001))


def test_cs_poses_match_cryodrgn(dnatet, real_data: Path) -> None:
    ref_rot, ref_trans = _pickle(real_data / DNATET / "ref_pose.cs.pkl")
    rot, trans = cryodrgn_poses(dnatet)
    assert dnatet.box == 180
    assert rot.shape == ref_rot.shape == (2019, 3, 3)
    np.testing.assert_allclose(rot, ref_rot, **TOL)
    np.testing.assert_allclose(trans, ref_trans, **TOL)


def test_cs_ctf_matches_cryodrgn(dnatet, real_data: Path) -> None:
    ref = _pickle(real_data / DNATET / "ref_ctf2.pkl")
    ctf = cryodrgn_ctf(dnatet)
    assert ctf.shape == ref.shape == (2019, 9)
    np.testing.assert_allclose(ctf, ref, **TOL)
