"""Bad input gives one InputError line that names the file and says how to fix it (never a traceback)."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from vitreous.errors import InputError
from vitreous.io.cryodrgn import particles_from_pkl, read_ctf_pkl, read_pose_pkl
from vitreous.io.cryosparc import load_cs_array, read_cs, write_cs
from vitreous.io.formats import read_particles
from vitreous.io.mrc import read_header, read_map
from vitreous.io.stack import ImageStack
from vitreous.io.star import read_star


def _rewrite(star: Path, particles: dict | None = None, optics: dict | None = None, drop: tuple = ()) -> Path:
    """Rewrite a STAR file with some columns changed or dropped."""
    blocks = starfile.read(star, always_dict=True)
    for name, changes in (("particles", particles), ("optics", optics)):
        for column, values in (changes or {}).items():
            blocks[name][column] = values
    for name in blocks:
        blocks[name] = blocks[name].drop(columns=[c for c in drop if c in blocks[name]])
    starfile.write(blocks, star, overwrite=True)
    return star


# ---- MRC files ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [500, 1024, 1024 + 16 * 16 * 4 * 2 + 7])
def test_truncated_mrc(tiny_project: dict, one_line_error, keep: int) -> None:
    stack = tiny_project["stack"]
    stack.write_bytes(stack.read_bytes()[:keep])
    with pytest.raises(InputError, match="truncated|too short") as info:
        read_header(stack)
    one_line_error(info.value, stack)
    with pytest.raises(InputError) as info:
        read_star(tiny_project["star"])
    one_line_error(info.value, stack)


@pytest.mark.parametrize("size", [10, 5000])
def test_non_mrc_bytes(tmp_path: Path, one_line_error, size: int) -> None:
    path = tmp_path / "notes.mrcs"
    path.write_bytes((b"this is a text file, not an MRC stack\n" * 200)[:size])
    with pytest.raises(InputError) as info:
        ImageStack.from_file(path)
    assert "MRC" in one_line_error(info.value, path)


def test_huge_extended_header_refused_before_reading(tiny_project: dict, one_line_error) -> None:
    """A corrupt nsymbt (extended header size) is refused from the header, not by allocating gigabytes."""
    stack = tiny_project["stack"]
    blob = bytearray(stack.read_bytes())
    blob[92:96] = struct.pack("<i", 2**31 - 1)
    stack.write_bytes(bytes(blob))
    with pytest.raises(InputError, match="extended header of 2147483647 bytes") as info:
        read_header(stack)
    one_line_error(info.value, stack)


def test_complex_mrc_refused(tmp_path: Path, make_stack, one_line_error) -> None:
    path = make_stack(tmp_path / "complex.mrcs", np.ones((2, 4, 4), np.complex64))
    with pytest.raises(InputError, match="complex") as info:
        read_header(path)
    one_line_error(info.value, path)


def test_map_with_nan(tmp_path: Path, make_stack, one_line_error) -> None:
    volume = np.zeros((4, 4, 4), np.float32)
    volume[1, 2, 3] = np.nan
    path = make_stack(tmp_path / "map.mrc", volume)
    with pytest.raises(InputError, match="NaN") as info:
        read_map(path)
    one_line_error(info.value, path)


# ---- STAR files ----------------------------------------------------------------------------------------------
def test_rewritten_star_is_read_afresh(tiny_project: dict, one_line_error) -> None:
    """A failed read leaves nothing behind: the same path, fixed, reads correctly (starfile's linecache)."""
    star = tiny_project["star"]
    good = star.read_text()
    short = good.replace("_rlnDefocusAngle #10\n", "")
    assert short != good
    star.write_text(short)  # one label short: rows do not fit
    with pytest.raises(InputError, match="number of column labels") as info:
        read_star(star)
    one_line_error(info.value, star)
    star.write_text(good)
    assert read_star(star).particles["rlnDefocusV"].tolist() == tiny_project["particles"]["rlnDefocusV"]


def test_star_without_image_names(tiny_project: dict, one_line_error) -> None:
    star = _rewrite(tiny_project["star"], drop=("rlnImageName",))
    with pytest.raises(InputError, match="rlnImageName") as info:
        read_star(star)
    one_line_error(info.value, star)
    assert len(read_star(star, load_images=False)) == 3  # metadata alone is still usable


@pytest.mark.parametrize("column", ["rlnImageName", "rlnDefocusU"])
def test_star_with_a_column_named_twice(tiny_project: dict, one_line_error, column: str) -> None:
    """Found by the STAR fuzz test: a second ``_rlnImageName`` header made the name column a table."""
    lines = tiny_project["star"].read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith(f"_{column} "))
    star = tiny_project["dir"] / "twice.star"
    lines[header + 1] = f"_{column} #99"  # the next column's label replaced by a second one of this name
    star.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=f"column {column} appears twice") as info:
        read_star(star)
    one_line_error(info.value, star)


def test_relion30_loop_without_image_names(tmp_path: Path, one_line_error) -> None:
    star = tmp_path / "coords.star"
    star.write_text("data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1.0 2.0\n3.0 4.0\n")
    with pytest.raises(InputError, match="no particle table") as info:
        read_star(star)
    one_line_error(info.value, star)


def test_star_without_pixel_size(tmp_path: Path, make_stack, make_star, one_line_error) -> None:
    make_stack(tmp_path / "s.mrcs", np.zeros((1, 8, 8), np.float32))  # header: 0 = unknown
    star = make_star(tmp_path / "p.star", {"rlnImageName": ["1@s.mrcs"], "rlnDefocusU": [1e4]})
    with pytest.raises(InputError, match="--apix") as info:
        read_star(star)
    one_line_error(info.value, star)
    assert read_star(star, apix=1.2).single_pixel_size() == pytest.approx(1.2)


def test_optics_without_group_column(tiny_project: dict, one_line_error) -> None:
    star = _rewrite(tiny_project["star"], drop=("rlnOpticsGroup",))
    with pytest.raises(InputError, match="rlnOpticsGroup") as info:
        read_star(star)
    one_line_error(info.value, star)


@pytest.mark.parametrize("legacy_shifts", [False, True])
def test_unknown_optics_group(tiny_project: dict, one_line_error, legacy_shifts: bool) -> None:
    changes = {"rlnOpticsGroup": [1, 2, 1]}
    if legacy_shifts:
        changes |= {"rlnOriginX": [0.5, 0.5, 0.5], "rlnOriginY": [0.0, 0.0, 0.0]}
    star = _rewrite(tiny_project["star"], particles=changes)
    with pytest.raises(InputError, match=r"optics groups \[2\]") as info:
        read_star(star)
    one_line_error(info.value, star)


def test_duplicate_optics_group(tiny_project: dict, one_line_error) -> None:
    blocks = starfile.read(tiny_project["star"], always_dict=True)
    blocks["optics"] = pd.concat([blocks["optics"]] * 2, ignore_index=True)
    starfile.write(blocks, tiny_project["star"], overwrite=True)
    with pytest.raises(InputError, match="defined twice") as info:
        read_star(tiny_project["star"])
    one_line_error(info.value, tiny_project["star"])


@pytest.mark.parametrize(("name", "problem"), [("000004@stack.mrcs", "image 4 but the stack holds 3"),
                                               ("000000@stack.mrcs", "image 0, but image numbers"),
                                               ("x@stack.mrcs", "not of the form N@file")])
def test_image_index_outside_stack(tiny_project: dict, one_line_error, name: str, problem: str) -> None:
    star = _rewrite(tiny_project["star"], particles={"rlnImageName": ["000001@stack.mrcs", name, "2@stack.mrcs"]})
    with pytest.raises(InputError, match=problem) as info:
        read_star(star)
    message = one_line_error(info.value, star if name.startswith("x") else tiny_project["stack"])
    assert name.startswith("x") or "particle 2" in message


def test_nan_pixels_on_read(tiny_project: dict, make_stack, one_line_error) -> None:
    data = tiny_project["data"].copy()
    data[1, 3, 4] = np.nan
    make_stack(tiny_project["stack"], data, voxel_size=2.0)
    particles = read_star(tiny_project["star"])  # lazy: nothing read yet
    np.testing.assert_array_equal(particles.images.read([0, 2]), data[[0, 2]])
    with pytest.raises(InputError, match="image 2") as info:
        particles.images.read(slice(None))
    one_line_error(info.value, tiny_project["stack"])
    assert np.isnan(particles.images.read([1], check_finite=False)).any()


@pytest.mark.parametrize(("column", "value"), [("rlnAngleRot", "nan"), ("rlnDefocusU", "inf"),
                                               ("rlnOriginXAngst", "abc"), ("rlnDefocusAngle", "nan")])
def test_nan_in_pose_or_ctf_column(tiny_project: dict, one_line_error, column: str, value: str) -> None:
    star = tiny_project["star"]
    lines = star.read_text().splitlines()
    blocks = starfile.read(star, always_dict=True)
    position = list(blocks["particles"].columns).index(column)
    row = next(k for k, line in enumerate(lines) if "000002@stack.mrcs" in line)
    fields = lines[row].split()
    fields[position] = value
    lines[row] = "\t".join(fields)
    star.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=f"{column} of particle 2") as info:
        read_star(star)
    one_line_error(info.value, star)


@pytest.mark.parametrize(("block", "column", "value", "problem"), [
    ("optics", "rlnImagePixelSize", -1.0, "not positive"), ("optics", "rlnVoltage", "abc", "not a finite"),
    ("optics", "rlnImageSize", 16.5, "not a whole"), ("particles", "rlnOpticsGroup", "one", "not a finite"),
])
def test_bad_optics_values(tiny_project: dict, one_line_error, block: str, column: str, value, problem: str) -> None:
    n = 3 if block == "particles" else 1
    star = _rewrite(tiny_project["star"], **{block: {column: [value] * n}})
    with pytest.raises(InputError, match=problem) as info:
        read_star(star)
    assert column in one_line_error(info.value, star)


def test_pixel_size_disagrees_with_header(tiny_project: dict, make_stack, one_line_error) -> None:
    star = _rewrite(tiny_project["star"], optics={"rlnImagePixelSize": [3.0]})  # header says 2.0
    with pytest.raises(InputError, match="disagrees") as info:
        read_star(star)
    one_line_error(info.value, star)
    assert read_star(star, apix=3.0).single_pixel_size() == 3.0  # an explicit --apix settles it
    make_stack(tiny_project["stack"], tiny_project["data"], voxel_size=1.0)  # the writers' default: ignored
    assert read_star(star).single_pixel_size() == 3.0


def test_pixel_size_disagrees_in_second_optics_group(tiny_project: dict, make_stack, one_line_error) -> None:
    """With several optics groups each particle is checked against the header of its own stack."""
    make_stack(tiny_project["dir"] / "other.mrcs", tiny_project["data"], voxel_size=4.0)
    blocks = starfile.read(tiny_project["star"], always_dict=True)
    second = blocks["optics"].assign(rlnOpticsGroup=2, rlnOpticsGroupName="opticsGroup2")
    blocks["optics"] = pd.concat([blocks["optics"], second], ignore_index=True)
    blocks["particles"]["rlnOpticsGroup"] = [1, 1, 2]
    blocks["particles"]["rlnImageName"] = ["1@stack.mrcs", "2@stack.mrcs", "1@other.mrcs"]
    star = tiny_project["star"]
    starfile.write(blocks, star, overwrite=True)
    with pytest.raises(InputError, match="other.mrcs") as info:
        read_star(star)
    one_line_error(info.value, star)
    blocks["optics"].loc[1, "rlnImagePixelSize"] = 4.0
    starfile.write(blocks, star, overwrite=True)
    np.testing.assert_allclose(read_star(star).pixel_size, [2.0, 2.0, 4.0])


def test_unknown_suffix(tmp_path: Path, one_line_error) -> None:
    path = tmp_path / "particles.txt"
    path.write_text("x")
    with pytest.raises(InputError, match=r"\.star") as info:
        read_particles(path)
    one_line_error(info.value, path)


def test_missing_file(tmp_path: Path, one_line_error) -> None:
    for path in (tmp_path / "no.star", tmp_path / "no.cs", tmp_path / "no.mrcs"):
        with pytest.raises(InputError, match="not found") as info:
            read_particles(path) if path.suffix != ".mrcs" else read_header(path)
        one_line_error(info.value, path)


# ---- cryoSPARC ------------------------------------------------------------------------------------------------
def test_cs_with_nan_defocus(tiny_project: dict, tmp_path: Path, one_line_error) -> None:
    path = tmp_path / "p.cs"
    write_cs(path, read_star(tiny_project["star"]))
    data = load_cs_array(path)
    data["ctf/df1_A"][1] = np.nan
    with open(path, "wb") as fh:
        np.save(fh, data)
    with pytest.raises(InputError, match="ctf/df1_A of particle 2 is NaN") as info:
        read_cs(path)
    one_line_error(info.value, path)


def test_cs_without_blob_fields(tmp_path: Path, one_line_error) -> None:
    path = tmp_path / "p.cs"
    with open(path, "wb") as fh:
        np.save(fh, np.zeros(3, dtype=[("uid", "<u8"), ("ctf/df1_A", "<f4")]))
    with pytest.raises(InputError, match="blob/path") as info:
        read_cs(path)
    one_line_error(info.value, path)


def test_cs_pose_without_shift(tiny_project: dict, tmp_path: Path) -> None:
    """A .cs file with poses but no shifts (some exports) reads with zero shifts."""
    path = tmp_path / "p.cs"
    original = read_star(tiny_project["star"])
    write_cs(path, original)
    data = load_cs_array(path)
    names = [n for n in data.dtype.names if n != "alignments3D/shift"]
    with open(path, "wb") as fh:
        np.save(fh, data[names])
    particles = read_cs(path)
    np.testing.assert_allclose(particles.rotations, original.rotations, atol=1e-6)
    np.testing.assert_array_equal(particles.shifts_angst, 0.0)


# ---- cryoDRGN pickles -----------------------------------------------------------------------------------------
def _dump(path: Path, obj) -> Path:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)
    return path


def test_pickle_counts_disagree(tmp_path: Path, one_line_error) -> None:
    pose = _dump(tmp_path / "pose.pkl", (np.tile(np.eye(3), (5, 1, 1)), np.zeros((5, 2))))
    ctf_row = [64, 1.5, 1e4, 1e4, 0, 300, 2.7, 0.1, 0]
    ctf = _dump(tmp_path / "ctf.pkl", np.array([ctf_row] * 4, np.float32))
    with pytest.raises(InputError, match="5 poses but 4 CTF rows") as info:
        particles_from_pkl(pose, ctf)
    message = one_line_error(info.value, pose)
    assert str(ctf) in message


@pytest.mark.parametrize("obj", [
    (np.tile(np.eye(3), (2, 1, 1)), np.zeros((3, 2))),  # trans of another length
    np.zeros((2, 3)),  # not matrices
    {"rot": 1},  # not an array
    (np.full((1, 3, 3), np.nan), np.zeros((1, 2))),  # NaN
])
def test_bad_pose_pickle(tmp_path: Path, one_line_error, obj) -> None:
    path = _dump(tmp_path / "pose.pkl", obj)
    with pytest.raises(InputError) as info:
        read_pose_pkl(path)
    one_line_error(info.value, path)


def test_nan_in_ctf_pickle(tmp_path: Path, one_line_error) -> None:
    ctf = np.array([[64, 1.5, 1e4, np.nan, 0, 300, 2.7, 0.1, 0]])
    path = _dump(tmp_path / "ctf.pkl", ctf)
    with pytest.raises(InputError, match="NaN") as info:
        read_ctf_pkl(path)
    one_line_error(info.value, path)


def test_pickle_with_code_is_refused(tmp_path: Path, one_line_error) -> None:
    """A pickle that would call a function on loading is refused before anything runs."""
    marker = tmp_path / "ran"
    path = _dump(tmp_path / "pose.pkl", _Touch(str(marker)))
    with pytest.raises(InputError, match="not a NumPy array") as info:
        read_pose_pkl(path)
    one_line_error(info.value, path)
    assert not marker.exists()


class _Touch:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))
