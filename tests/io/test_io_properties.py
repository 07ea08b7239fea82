"""Property tests: whatever bytes or columns the readers get, they return data or raise InputError, nothing else."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import starfile
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vitreous.errors import InputError
from vitreous.io.cryodrgn import read_ctf_pkl, read_pose_pkl
from vitreous.io.cryosparc import load_cs_array, read_cs, write_cs
from vitreous.io.mrc import read_header
from vitreous.io.stack import ImageStack
from vitreous.io.star import read_star, read_star_blocks, write_star

# tmp_path is shared by the examples of one test: each example overwrites the same file.
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JUNK = ["nan", "inf", "abc", "", "-1", "0", "1e400", "2.5", "data_", "loop_", "_rlnFoo #99", "#", "@", "1@",
        "data_optics", "data_particles", "_rlnOpticsGroup #1", "_rlnImageName #1", "9999@stack.mrcs"]


def _mutate(blob: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    data = bytearray(blob)
    for position, value in edits:
        data[position % len(data)] = value
    return bytes(data[:cut])


# MRC header words (byte offset): nx, ny, nz, mode, mx, nsymbt, and values to put there
HEADER_WORDS = st.tuples(st.sampled_from([0, 4, 8, 12, 28, 92]),
                         st.one_of(st.integers(-3, 20), st.integers(-(2**31), 2**31 - 1)))


def _expect_input_error_only(read, *args, **kwargs):
    """Call a reader; an InputError must be one line; returns the result or None."""
    name = getattr(read, "__name__", "read")
    try:
        result = read(*args, **kwargs)
    except InputError as exc:
        assert "\n" not in str(exc)
        event(f"{name}: InputError")
        return None
    event(f"{name}: read")
    return result


@pytest.fixture
def valid_mrc(tmp_path: Path, make_stack) -> bytes:
    data = np.random.default_rng(0).normal(size=(2, 8, 8)).astype(np.float32)
    return make_stack(tmp_path / "valid.mrcs", data, voxel_size=1.5).read_bytes()


@SETTINGS
@given(raw=st.binary(max_size=3000), edits=st.lists(st.tuples(st.integers(0, 1600), st.integers(0, 255)),
                                                    max_size=6),
       words=st.lists(HEADER_WORDS, max_size=2), cut=st.one_of(st.none(), st.integers(0, 1600)),
       mutate=st.booleans())
def test_random_bytes_to_read_header(tmp_path: Path, valid_mrc: bytes, raw: bytes, edits, words, cut: int | None,
                                     mutate: bool) -> None:
    path = tmp_path / "random.mrcs"
    if mutate:
        blob = bytearray(valid_mrc)
        for offset, value in words:
            blob[offset : offset + 4] = struct.pack("<i", value)
        raw = _mutate(bytes(blob), edits, len(blob) if cut is None else cut)
    path.write_bytes(raw)
    header = _expect_input_error_only(read_header, path)
    if header is None:
        return
    assert header.n >= 1 and header.ny >= 1 and header.nx >= 1 and header.voxel_size >= 0
    stack = _expect_input_error_only(ImageStack.from_file, path)
    if stack is not None:
        images = _expect_input_error_only(stack.read, slice(None))
        assert images is None or images.shape == (header.n, header.ny, header.nx)


@pytest.fixture
def valid_star_text(tiny_project: dict) -> list[str]:
    return tiny_project["star"].read_text().splitlines()


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=2000), st.text(max_size=2000).map(str.encode)),
       edits=st.lists(st.tuples(st.integers(0, 200), st.sampled_from(["drop", "copy", "token"]),
                                st.sampled_from(JUNK), st.integers(0, 20)), max_size=4),
       mutate=st.booleans())
def test_random_star_text(tiny_project: dict, valid_star_text: list[str], raw: bytes, edits, mutate: bool) -> None:
    path = tiny_project["dir"] / "random.star"
    if mutate:
        lines = list(valid_star_text)
        for line, action, token, field in edits:
            k = line % len(lines)
            if action == "drop":
                del lines[k]
            elif action == "copy":
                lines.insert(k, lines[k])
            else:
                words = lines[k].split() or [""]
                words[field % len(words)] = token
                lines[k] = " ".join(words)
            if not lines:
                lines = [""]
        raw = "\n".join(lines).encode()
    path.write_bytes(raw)
    _expect_input_error_only(read_star_blocks, path)
    for load_images in (True, False):
        particles = _expect_input_error_only(read_star, path, load_images=load_images)
        if particles is not None and particles.images is not None:
            _expect_input_error_only(particles.images.read, slice(None))


STAR_SOURCES = ["particles/relion31_5ptcl/relion31.star", "particles/aspire_sample17/sample_relion_data.star"]


@pytest.mark.parametrize("name", STAR_SOURCES)
def test_random_column_subsets(real_data: Path, tmp_path: Path, name: str) -> None:
    source = real_data / name
    blocks = starfile.read(source, always_dict=True)
    columns = sorted({(block, c) for block, df in blocks.items() for c in df.columns})

    @SETTINGS
    @given(drop=st.sets(st.sampled_from(columns), max_size=len(columns)))
    def check(drop: set) -> None:
        trimmed = {block: df.drop(columns=[c for b, c in drop if b == block]) for block, df in blocks.items()}
        path = tmp_path / "subset.star"
        starfile.write(trimmed, path, overwrite=True)
        particles = _expect_input_error_only(read_star, path, datadir=source.parent)
        if particles is None:
            return
        assert len(particles) == len(blocks[next(b for b in blocks if b != "optics")])
        assert np.all(particles.pixel_size > 0) and particles.box > 0
        write_star(tmp_path / "again.star", particles)  # whatever reads also writes
        if particles.has_ctf:
            assert np.isfinite(particles.ctf_table().to_numpy(np.float64)).all()

    check()


@SETTINGS
@given(raw=st.binary(max_size=2000), header_only=st.booleans())
def test_random_bytes_to_load_cs(tmp_path: Path, raw: bytes, header_only: bool) -> None:
    path = tmp_path / "random.cs"
    if header_only:  # a valid .npy header for a structured array, then random data
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {"descr": [("blob/path", "S8"), ("blob/idx", "<u4")],
                                                      "fortran_order": False, "shape": (3,)})
        raw = buffer.getvalue() + raw
    path.write_bytes(raw)
    data = _expect_input_error_only(load_cs_array, path)
    if data is not None:
        assert data.ndim == 1 and {"blob/path", "blob/idx", "blob/shape", "blob/psize_A"} <= set(data.dtype.names)
        _expect_input_error_only(read_cs, path)


@SETTINGS
@given(edits=st.lists(st.tuples(st.sampled_from(["ctf/df1_A", "ctf/accel_kv", "blob/psize_A", "blob/idx",
                                                 "alignments3D/pose", "alignments3D/shift", "blob/shape"]),
                                st.integers(0, 2), st.sampled_from([np.nan, np.inf, -1.0, 0.0, 1e30, 7.0])),
                      min_size=1, max_size=4))
def test_corrupted_cs_values(tiny_project: dict, edits) -> None:
    path = tiny_project["dir"] / "edited.cs"
    write_cs(path, read_star(tiny_project["star"]))
    data = load_cs_array(path)
    for field, row, value in edits:
        target = data[field]
        if np.issubdtype(target.dtype, np.integer):
            value = 0 if not np.isfinite(value) or value < 0 else min(int(value), np.iinfo(target.dtype).max)
        target[row] = value
    with open(path, "wb") as fh:
        np.save(fh, data)
    particles = _expect_input_error_only(read_cs, path)
    if particles is not None:
        assert np.all(particles.pixel_size > 0)
        _expect_input_error_only(particles.images.read, slice(None))


def _python_objects():
    leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
                       st.builds(np.asarray, st.lists(st.floats(width=32), max_size=9)))
    return st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                                                        st.dictionaries(st.text(max_size=3), inner, max_size=2)),
                        max_leaves=10)


@SETTINGS
@given(raw=st.binary(max_size=1000), obj=_python_objects(), use_object=st.booleans())
def test_random_pickles(tmp_path: Path, raw: bytes, obj, use_object: bool) -> None:
    path = tmp_path / "random.pkl"
    path.write_bytes(pickle.dumps(obj) if use_object else raw)
    poses = _expect_input_error_only(read_pose_pkl, path)
    if poses is not None:
        rot, trans = poses
        assert rot.ndim == 3 and rot.shape[1:] == (3, 3) and (trans is None or trans.shape == (len(rot), 2))
    ctf = _expect_input_error_only(read_ctf_pkl, path)
    assert ctf is None or ctf.shape[1] == 9
