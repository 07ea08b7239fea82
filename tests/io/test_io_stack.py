"""Lazy image reading: ImageStack against mrcfile, float16 stacks, several stacks, N@file resolution,
pixel size from the metadata, subsets, and the MRC map/stack writers."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from vitreous.errors import InputError
from vitreous.io.mrc import StackWriter, read_header, read_map, write_map
from vitreous.io.stack import ImageStack
from vitreous.io.star import read_star

RELION31 = "particles/relion31_5ptcl/relion31"


def _mrcfile_data(path: Path) -> np.ndarray:
    with mrcfile.open(path, permissive=True) as mrc:
        return np.array(mrc.data)


@pytest.mark.filterwarnings("ignore:.*(Map ID|machine stamp):RuntimeWarning")
@pytest.mark.parametrize("k", [0, 4, [3, 1], [2, 2, 0], slice(1, 4)])
def test_read_matches_mrcfile(real_data: Path, k) -> None:
    path = real_data / f"{RELION31}.mrcs"
    expected = _mrcfile_data(path)[k]  # an int gives one (D, D) image, like numpy
    got = ImageStack.from_file(path).read(k)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_star_images_are_the_named_frames(real_data: Path) -> None:
    """Images of a STAR file are the frames its rlnImageName entries point at, in row order."""
    particles = read_star(real_data / "particles/aspire_sample17/sample_relion_data.star")
    frames = particles.particles["rlnImageName"].str.split("@").str[0].astype(int).to_numpy() - 1
    stack = _mrcfile_data(real_data / "particles/aspire_sample17/sample.mrcs")
    np.testing.assert_array_equal(particles.images.read(slice(None)), stack[frames])
    np.testing.assert_array_equal(particles.images[[5]], stack[frames[[5]]])


def test_float16_stack_reads_as_float32(tmp_path: Path, make_stack) -> None:
    data = np.random.default_rng(1).normal(size=(4, 12, 12)).astype(np.float16)
    path = make_stack(tmp_path / "half.mrcs", data)
    with mrcfile.open(path) as mrc:
        assert mrc.header.mode == 12
    stack = ImageStack.from_file(path)
    assert stack.headers[0].dtype == np.float16
    got = stack.read([3, 0])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, data[[3, 0]].astype(np.float32))


def test_several_stacks_in_any_order(tmp_path: Path, make_stack) -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(3, 8, 8)).astype(np.float32)
    b = rng.normal(size=(2, 8, 8)).astype(np.float32)
    paths = [make_stack(tmp_path / "a.mrcs", a), make_stack(tmp_path / "b.mrcs", b)]
    file_id, index = np.array([1, 0, 1, 0, 0]), np.array([1, 2, 0, 0, 1])
    stack = ImageStack(paths, file_id, index)
    expected = np.stack([b[1], a[2], b[0], a[0], a[1]])
    np.testing.assert_array_equal(stack.read(slice(None)), expected)
    np.testing.assert_array_equal(stack.read([4, 0]), expected[[4, 0]])
    assert stack.references() == [f"{i + 1:06d}@{paths[f]}" for f, i in zip(file_id, index, strict=True)]


def test_names_relative_to_star_folder(tmp_path: Path, make_stack, make_star) -> None:
    data = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    make_stack(tmp_path / "project" / "Extract" / "job1" / "mic.mrcs", data)
    star = make_star(tmp_path / "project" / "particles.star",
                     {"rlnImageName": ["000002@Extract/job1/mic.mrcs", "000001@Extract/job1/mic.mrcs"]},
                     {"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.5]})
    particles = read_star(star)
    np.testing.assert_array_equal(particles.images.read(slice(None)), data[[1, 0]])


@pytest.mark.parametrize("layout", ["full path", "base name"])
def test_names_relative_to_datadir(tmp_path: Path, make_stack, make_star, one_line_error, layout: str) -> None:
    data = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    relative = Path("Extract/job1/mic.mrcs")
    make_stack(tmp_path / "data" / (relative if layout == "full path" else relative.name), data)
    star = make_star(tmp_path / "meta" / "particles.star", {"rlnImageName": [f"000003@{relative}"]},
                     {"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.5]})
    with pytest.raises(InputError, match="--datadir") as info:
        read_star(star)
    one_line_error(info.value, star)
    particles = read_star(star, datadir=tmp_path / "data")
    np.testing.assert_array_equal(particles.images.read([0]), data[[2]])


def test_pixel_size_from_metadata_when_header_is_zero(real_data: Path) -> None:
    particles = read_star(real_data / "particles/empiar10076_7/empiar_10076_7.star")
    assert particles.images.header_voxel_sizes == [0.0]
    np.testing.assert_allclose(particles.pixel_size, 5 * 1e4 / 38168)  # DetectorPixelSize (um) / Magnification
    sample = read_star(real_data / "particles/aspire_sample17/sample_relion_data.star")
    assert sample.images.header_voxel_sizes == [0.0]
    assert sample.single_pixel_size() == pytest.approx(1.338, abs=1e-3)


def test_pixel_size_from_header_when_metadata_has_none(tmp_path: Path, make_stack, make_star) -> None:
    make_stack(tmp_path / "s.mrcs", np.zeros((2, 8, 8), np.float32), voxel_size=1.7)
    star = make_star(tmp_path / "p.star", {"rlnImageName": ["1@s.mrcs", "2@s.mrcs"], "rlnDefocusU": [1e4, 1e4]})
    particles = read_star(star)
    np.testing.assert_allclose(particles.pixel_size, 1.7, rtol=1e-6)


def test_subset_keeps_images_aligned(real_data: Path) -> None:
    particles = read_star(real_data / f"{RELION31}.star")
    everything = particles.images.read(slice(None))
    picks = np.array([4, 0, 2])
    sub = particles.subset(picks)
    assert sub.particles["rlnImageName"].tolist() == particles.particles["rlnImageName"].iloc[picks].tolist()
    np.testing.assert_array_equal(sub.images.read(slice(None)), everything[picks])
    np.testing.assert_allclose(sub.rotations, particles.rotations[picks])
    mask = np.array([False, True, False, True, True])
    masked = particles.subset(mask)
    np.testing.assert_array_equal(masked.images.read(slice(None)), everything[mask])
    np.testing.assert_array_equal(masked.subset([2]).images.read([0]), everything[[4]])


def test_map_round_trip(tmp_path: Path) -> None:
    volume = np.random.default_rng(3).normal(size=(6, 7, 8)).astype(np.float32)
    write_map(tmp_path / "map.mrc", volume, 1.25)
    got, voxel = read_map(tmp_path / "map.mrc")
    np.testing.assert_array_equal(got, volume)
    assert voxel == pytest.approx(1.25)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind


def test_stack_writer(tmp_path: Path) -> None:
    images = np.random.default_rng(4).normal(size=(5, 10, 10)).astype(np.float32)
    path = tmp_path / "out.mrcs"
    with StackWriter(path, 5, 10, 2.5) as writer:
        writer.write(0, images[:3])
        writer.write(3, images[3:])
    header = read_header(path)
    assert (header.n, header.ny, header.nx, header.voxel_size) == (5, 10, 10, pytest.approx(2.5))
    np.testing.assert_array_equal(ImageStack.from_file(path).read(slice(None)), images)
    with mrcfile.open(path) as mrc:
        assert float(mrc.header.dmean) == pytest.approx(images.mean(), abs=1e-5)
        assert float(mrc.header.rms) == pytest.approx(images.std(), rel=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_random_batches_match_the_stack(tmp_path: Path, make_stack, dtype) -> None:
    data = np.random.default_rng(5).normal(size=(50, 8, 8)).astype(dtype)
    stack = ImageStack.from_file(make_stack(tmp_path / "s.mrcs", data))
    rng = np.random.default_rng(6)
    for _ in range(5):
        picks = rng.choice(50, size=12, replace=True)  # unsorted, with repeats
        np.testing.assert_array_equal(stack.read(picks), data[picks].astype(np.float32))
    np.testing.assert_array_equal(stack.read([-1, -50]), data[[49, 0]].astype(np.float32))
    mask = rng.random(50) < 0.3
    np.testing.assert_array_equal(stack.read(mask), data[mask].astype(np.float32))
    np.testing.assert_array_equal(stack.read(slice(45, None, 2)), data[45::2].astype(np.float32))
    assert stack.read([]).shape == (0, 8, 8)
    for bad in ([50], [-51], [1.5]):
        with pytest.raises(IndexError):
            stack.read(bad)


def test_consecutive_frames_are_read_at_once(tmp_path: Path, make_stack, monkeypatch) -> None:
    """A batch is read with one read per run of consecutive frames, in any order it is asked for."""
    data = np.random.default_rng(7).normal(size=(30, 8, 8)).astype(np.float32)
    stack = ImageStack.from_file(make_stack(tmp_path / "s.mrcs", data))
    reads = []

    class Counting:
        def __init__(self, fh) -> None:
            self.fh = fh

        def seek(self, offset: int) -> int:
            return self.fh.seek(offset)

        def readinto(self, buffer) -> int:
            reads.append(len(buffer))
            return self.fh.readinto(buffer)

    opened = ImageStack._file
    monkeypatch.setattr(ImageStack, "_file", lambda self, f: Counting(opened(self, f)))
    batch = [12, 5, 6, 13, 7, 8, 14, 20]  # runs 5-8, 12-14, 20
    np.testing.assert_array_equal(stack.read(batch), data[batch])
    assert sorted(reads) == [256, 3 * 256, 4 * 256]  # bytes
    reads.clear()
    stack.read(slice(0, 30))
    assert reads == [30 * 256]


def test_truncated_while_reading(tmp_path: Path, make_stack) -> None:
    path = make_stack(tmp_path / "s.mrcs", np.zeros((10, 8, 8), np.float32))
    stack = ImageStack.from_file(path)
    os.truncate(path, path.stat().st_size - 100)
    with pytest.raises(InputError, match="truncated while reading"):
        stack.read([9])
