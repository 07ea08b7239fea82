"""Round trips between formats on real files: STAR -> .cs -> STAR, STAR -> cryoDRGN pkl -> STAR, .cs -> STAR -> .cs.

.cs and cryoDRGN pickles store float32, so values come back to float32 precision; everything a format holds
(poses, shifts, CTF, image references, classes, half sets) must survive.  Files are written to new folders
under tmp_path and their image references must resolve from there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from vitreous.data.particles import ParticleSet
from vitreous.io.cryodrgn import particles_from_pkl
from vitreous.io.cryosparc import load_cs_array, read_cs, write_cs
from vitreous.io.formats import read_particles, write_particles
from vitreous.io.star import read_star, write_star
from vitreous.physics.rotations import angular_distance

WITH_IMAGES = ["particles/relion31_5ptcl/relion31.star", "particles/aspire_sample17/sample_relion_data.star",
               "particles/empiar10076_7/empiar_10076_7.star"]
DNATET_CS = "metadata/cryosparc_dnatet_2019ptcl/cryosparc_P12_J24_001_particles.cs"
CTF_9 = ["pixel_size", "defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast",
         "phase_shift"]  # the cryoDRGN pickle's columns besides D
F32 = {"rtol": 2e-7, "atol": 1e-6}  # a float32 store: half an ulp relative, plus the six decimals of STAR text


def _image_files(particles: ParticleSet) -> list[tuple[Path, int]]:
    images = particles.images
    return [(images.paths[f].resolve(), int(i)) for f, i in zip(images.file_id, images.index, strict=True)]


def _assert_refs_resolve_from(star_path: Path) -> None:
    """Every rlnImageName of a written STAR file names an existing stack relative to the file's folder."""
    names = starfile.read(star_path, always_dict=True)["particles"]["rlnImageName"].astype(str)
    for name in names:
        assert (star_path.parent / name.split("@", 1)[1]).is_file(), name


def _assert_same(a: ParticleSet, b: ParticleSet, *, ctf_columns: list[str] | None = None,
                 labels: bool = True) -> None:
    assert len(a) == len(b)
    np.testing.assert_allclose(b.pixel_size, a.pixel_size, rtol=1e-6)
    assert b.has_poses == a.has_poses
    if a.has_poses:
        assert angular_distance(a.rotations, b.rotations).max() < 1e-4  # degrees
        np.testing.assert_allclose(b.shifts_angst, a.shifts_angst, rtol=1e-6, atol=1e-5)
    assert b.has_ctf == a.has_ctf
    if a.has_ctf:
        ca, cb = a.ctf_table(), b.ctf_table()
        columns = ctf_columns or list(ca.columns)
        np.testing.assert_allclose(cb[columns].to_numpy(), ca[columns].to_numpy(), **F32)
    if labels and a.classes is not None and a.has_poses:
        np.testing.assert_array_equal(b.classes, a.classes)
    if labels and a.half_sets is not None and a.has_poses:
        np.testing.assert_array_equal(b.half_sets, a.half_sets)
    if a.images is not None:
        assert b.images is not None
        assert _image_files(b) == _image_files(a)
        np.testing.assert_array_equal(b.images.read(slice(None)), a.images.read(slice(None)))


@pytest.mark.parametrize("name", WITH_IMAGES)
def test_star_cs_star(real_data: Path, tmp_path: Path, name: str) -> None:
    original = read_star(real_data / name)
    cs_path, star_path = tmp_path / "cs" / "particles.cs", tmp_path / "star" / "out" / "particles.star"
    write_cs(cs_path, original)
    via_cs = read_cs(cs_path)
    _assert_same(original, via_cs)
    write_star(star_path, via_cs)
    _assert_refs_resolve_from(star_path)
    back = read_star(star_path)
    _assert_same(original, back)


@pytest.mark.parametrize("name", WITH_IMAGES)
def test_star_pkl_star(real_data: Path, tmp_path: Path, name: str) -> None:
    original = read_star(real_data / name)
    written = write_particles(tmp_path / "pkl" / "poses.pkl", original)
    assert len(written) == (2 if original.has_poses else 1)
    pose = tmp_path / "pkl" / "poses.pkl" if original.has_poses else None
    ctf = tmp_path / "pkl" / "poses_ctf.pkl"
    via_pkl = particles_from_pkl(pose, ctf, images=original.images)
    # the pickles hold poses and the 9 CTF columns, not image names, classes or half sets
    _assert_same(original, via_pkl, ctf_columns=CTF_9, labels=False)
    star_path = tmp_path / "star" / "particles.star"
    write_star(star_path, via_pkl)
    _assert_refs_resolve_from(star_path)
    _assert_same(original, read_star(star_path), ctf_columns=CTF_9, labels=False)


def test_pkl_through_read_particles(real_data: Path, tmp_path: Path) -> None:
    """``read_particles`` on a pose pickle with its CTF pickle and the stack gives the same particles."""
    original = read_star(real_data / WITH_IMAGES[0])
    pose, ctf = write_particles(tmp_path / "poses.pkl", original)
    stack = original.images.paths[0]
    again = read_particles(pose, ctf=ctf, stack=stack)
    _assert_same(original, again, ctf_columns=CTF_9, labels=False)


def test_cs_star_cs_2019_particles(real_data: Path, tmp_path: Path) -> None:
    source = real_data / DNATET_CS
    original = read_cs(source, load_images=False)
    star_path, cs_path = tmp_path / "a" / "particles.star", tmp_path / "b" / "particles.cs"
    write_star(star_path, original)
    via_star = read_star(star_path, load_images=False)
    _assert_same(original, via_star)
    write_cs(cs_path, via_star)

    before, after = load_cs_array(source), load_cs_array(cs_path)
    assert len(after) == len(before) == 2019
    for field in ("uid", "blob/path", "blob/idx", "blob/shape", "alignments3D/split", "alignments3D/class"):
        np.testing.assert_array_equal(after[field], before[field], err_msg=field)
    for field in ("blob/psize_A", "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast", "ctf/df1_A", "ctf/df2_A",
                  "ctf/df_angle_rad", "ctf/phase_shift_rad", "ctf/scale", "alignments3D/shift"):
        np.testing.assert_allclose(after[field], before[field], rtol=1e-6, atol=1e-6, err_msg=field)
    # a Rodrigues vector is not unique at 180 degrees: compare the rotations
    back = read_cs(cs_path, load_images=False)
    assert angular_distance(original.rotations, back.rotations).max() < 1e-4


def test_written_star_is_relion_31(real_data: Path, tmp_path: Path) -> None:
    """The writer's output has data_optics + data_particles, RELION's version tag, and starfile reads it."""
    original = read_star(real_data / WITH_IMAGES[1])  # a 3.0 file: optics groups are built on reading
    out = tmp_path / "particles.star"
    write_star(out, original)
    blocks = starfile.read(out, always_dict=True)
    assert list(blocks) == ["optics", "particles"]
    assert len(blocks["particles"]) == len(original)
    assert {"rlnOpticsGroup", "rlnImagePixelSize", "rlnImageSize", "rlnVoltage"} <= set(blocks["optics"].columns)
    assert "rlnOriginX" not in blocks["particles"] and "rlnOriginXAngst" in blocks["particles"]
    text = out.read_text()
    assert text.count("# version 30001") == 2 and text.index("data_optics") < text.index("data_particles")


def test_metadata_only_round_trip_keeps_names(real_data: Path, tmp_path: Path) -> None:
    """Without images, STAR -> STAR keeps rlnImageName and every numeric column as read."""
    original = read_star(real_data / "metadata/empiar10330_pfcrt/FinalRefinement-OriginalParticles-PfCRT.star",
                         load_images=False)
    out = tmp_path / "pfcrt.star"
    write_star(out, original)
    back = read_star(out, load_images=False)
    assert back.particles["rlnImageName"].tolist() == original.particles["rlnImageName"].tolist()
    _assert_same(original, back)


def test_star_star_keeps_every_value(real_data: Path, tmp_path: Path) -> None:
    """STAR -> STAR keeps every column, small values included (latents of any magnitude, not six decimals)."""
    original = read_star(real_data / WITH_IMAGES[0])
    latents = np.array([[1.23456789e-7, -2.5], [3.0, 1e-12], [0.0, 1.0], [5.5e3, -6e-5], [7.0, 8.0]])
    original = original.with_latents(latents)
    out = tmp_path / "out" / "latents.star"
    write_star(out, original)
    back = read_star(out)
    np.testing.assert_allclose(back.latents, latents, rtol=1e-11)
    columns = [c for c in original.particles.columns if c != "rlnImageName"]
    assert set(columns) <= set(back.particles.columns)
    for column in columns:
        before, after = original.particles[column], back.particles[column]
        if pd.api.types.is_numeric_dtype(before):
            np.testing.assert_allclose(after.to_numpy(np.float64), before.to_numpy(np.float64), rtol=1e-11,
                                       err_msg=column)
        else:
            assert after.tolist() == before.tolist(), column
    _assert_same(original, back)
