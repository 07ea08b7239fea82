"""``vitreous convert``: round trips between STAR, .cs and cryoDRGN .pkl; refusals write nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from vitreous.io.formats import read_particles


@pytest.fixture
def relion31(real_data: Path) -> Path:
    return real_data / "particles/relion31_5ptcl/relion31.star"


def assert_same_particles(a, b) -> None:
    """Same poses (as matrices), shifts (Å), CTF and images, to float32 precision."""
    assert len(a) == len(b)
    np.testing.assert_allclose(a.rotations, b.rotations, atol=1e-5)
    np.testing.assert_allclose(a.shifts_angst, b.shifts_angst, atol=1e-4)
    ctf_a, ctf_b = a.ctf_table(), b.ctf_table()
    for column in ("defocus_u", "defocus_v", "voltage", "cs", "amplitude_contrast", "pixel_size"):
        np.testing.assert_allclose(ctf_a[column], ctf_b[column], rtol=1e-6)
    angle = (ctf_a["defocus_angle"] - ctf_b["defocus_angle"] + 90) % 180 - 90
    np.testing.assert_allclose(angle, 0, atol=1e-3)
    np.testing.assert_array_equal(a.images.read(slice(None)), b.images.read(slice(None)))


def test_star_cs_star_round_trip(vitreous, relion31: Path, tmp_path: Path) -> None:
    assert vitreous("convert", relion31, tmp_path / "a.cs").code == 0
    outcome = vitreous("convert", tmp_path / "a.cs", tmp_path / "sub" / "b.star")
    assert outcome.code == 0 and "wrote 5 particles" in outcome.out
    original, back = read_particles(relion31), read_particles(tmp_path / "sub" / "b.star")
    assert_same_particles(original, back)
    np.testing.assert_array_equal(original.half_sets, back.half_sets)


def test_star_pkl_star_round_trip(vitreous, relion31: Path, tmp_path: Path) -> None:
    outcome = vitreous("convert", relion31, tmp_path / "poses.pkl")
    assert outcome.code == 0 and "poses_ctf.pkl" in outcome.out
    stack = relion31.with_name("relion31.mrcs")
    assert vitreous("convert", tmp_path / "poses.pkl", tmp_path / "c.star", "--ctf", tmp_path / "poses_ctf.pkl",
                    "--stack", stack).code == 0
    assert_same_particles(read_particles(relion31), read_particles(tmp_path / "c.star"))


def test_ctf_out_names_the_ctf_pickle(vitreous, relion31: Path, tmp_path: Path) -> None:
    assert vitreous("convert", relion31, tmp_path / "p.pkl", "--ctf-out", tmp_path / "my_ctf.pkl").code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_ctf.pkl", "p.pkl"]
    vitreous("convert", relion31, tmp_path / "q.star", "--ctf-out", tmp_path / "x.pkl").assert_error("--ctf-out")


def test_existing_output_needs_overwrite(vitreous, relion31: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.star"
    out.write_text("keep me")
    vitreous("convert", relion31, out).assert_error("out.star", "--overwrite")
    assert out.read_text() == "keep me"
    assert vitreous("convert", relion31, out, "--overwrite").code == 0
    assert len(read_particles(out)) == 5


def test_refusals_write_nothing(vitreous, relion31: Path, real_data: Path, tmp_path: Path) -> None:
    metadata_only = real_data / "metadata/relion_betagal_tests/ap_s_c2d_red.star"
    vitreous("convert", metadata_only, tmp_path / "x.pkl").assert_error("box size unknown", "--datadir")
    vitreous("convert", relion31, tmp_path / "x.mrc").assert_error("unknown output type")
    vitreous("convert", tmp_path / "absent.star", tmp_path / "x.star").assert_error("absent.star", "not found")
    bad = tmp_path / "bad.star"
    bad.write_text("data_particles\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n1@a.mrcs\tnot_a_number\n")
    vitreous("convert", bad, tmp_path / "x.cs").assert_error("bad.star")
    vitreous("convert", tmp_path / "absent.pkl", tmp_path / "x.star").assert_error("--ctf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.star"]  # no output, no temporary files


def test_output_may_not_be_an_input(vitreous, relion31: Path, tmp_path: Path) -> None:
    star = tmp_path / "r.star"
    shutil.copy(relion31, star)
    vitreous("convert", star, star, "--overwrite", "--datadir", relion31.parent).assert_error("is also an input")


def test_metadata_without_stacks_keeps_image_names(vitreous, real_data: Path, tmp_path: Path) -> None:
    source = real_data / "metadata/relion_betagal_tests/ap_s_c2d_red.star"
    outcome = vitreous("convert", source, tmp_path / "copy.star")
    assert outcome.code == 0 and "image names are copied unchanged" in outcome.err
    before = read_particles(source, load_images=False).particles["rlnImageName"]
    after = read_particles(tmp_path / "copy.star", load_images=False).particles["rlnImageName"]
    assert before.tolist() == after.tolist()
