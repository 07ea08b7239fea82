"""The particle cache library: fingerprints and keys, the data-file check that ImageStack runs, and build()
(Fourier crop, one global scale, float16/float32, chunked)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch

from vitreous.data import cache
from vitreous.data.particles import ParticleSet
from vitreous.errors import InputError
from vitreous.io import cache_manifest
from vitreous.io.stack import ImageStack
from vitreous.physics.fourier import fourier_crop


def _stack(path: Path, data: np.ndarray, voxel: float = 2.0) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.set_image_stack()
        mrc.voxel_size = voxel
    return path


def _particles(path: Path) -> ParticleSet:
    images = ImageStack.from_file(path)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.0]})
    return ParticleSet(pd.DataFrame({"rlnOpticsGroup": np.ones(len(images), int)}), optics, images)


@pytest.fixture
def noise(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = (np.random.default_rng(0).normal(size=(23, 16, 16)) * 30).astype(np.float32)
    return _stack(tmp_path / "in.mrcs", data), data


def test_fingerprint_sees_size_time_and_sampled_bytes(noise) -> None:
    path, _ = noise
    first = cache_manifest.fingerprint(path)
    assert cache_manifest.fingerprint(path) == first
    with open(path, "r+b") as fh:  # the first sampled block starts at byte 0
        fh.seek(100)
        fh.write(b"\x01")
    os.utime(path, ns=(first["mtime_ns"], first["mtime_ns"]))
    changed = cache_manifest.fingerprint(path)
    assert changed["sample_sha256"] != first["sample_sha256"] and changed["mtime_ns"] == first["mtime_ns"]
    os.utime(path, ns=(first["mtime_ns"] + 10**9, first["mtime_ns"] + 10**9))
    assert cache_manifest.fingerprint(path)["mtime_ns"] != first["mtime_ns"]


def test_key_depends_on_metadata_stacks_and_params(tmp_path: Path, noise) -> None:
    path, _ = noise
    star = tmp_path / "p.star"
    star.write_text("data_particles\n")
    base = cache.describe_sources(star, [path], {"box": 16, "dtype": "float16"})
    assert cache.cache_key(base) == cache.cache_key(cache.describe_sources(star, [path], {"box": 16,
                                                                                           "dtype": "float16"}))
    other = cache.describe_sources(star, [path], {"box": 8, "dtype": "float16"})
    assert cache.cache_key(other) != cache.cache_key(base)
    assert cache.source_differences(base, other) == ["box (16 -> 8)"]
    star.write_text("data_particles\n# edited\n")
    edited = cache.describe_sources(star, [path], base["params"])
    assert cache.cache_key(edited) != cache.cache_key(base)
    assert cache.source_differences(base, edited) == ["the particle metadata file"]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_build_crops_and_scales_in_chunks(tmp_path: Path, noise, monkeypatch, dtype: str) -> None:
    path, data = noise
    monkeypatch.setattr(cache, "CHUNK_BYTES", 5 * 16 * 16 * 4)  # 5 images a chunk: 5 chunks, the last short
    seen = []
    out = tmp_path / "cache" / "particles.mrcs"
    stats = cache.build(_particles(path), out, box=8, dtype=dtype, scale=30.0, voxel_size=4.0, progress=seen.append)
    assert seen == [5, 5, 5, 5, 3]
    expected = fourier_crop(torch.from_numpy(data), 8).numpy() / 30.0
    with mrcfile.open(out) as mrc:
        assert int(mrc.header.mode) == cache.DTYPES[dtype] and mrc.data.shape == (23, 8, 8)
        assert float(mrc.voxel_size.x) == pytest.approx(4.0)
        assert float(mrc.header.rms) == pytest.approx(expected.std(), rel=1e-3)
        got = np.asarray(mrc.data, np.float32)
    np.testing.assert_allclose(got, expected, atol=2e-3 if dtype == "float16" else 1e-6)
    assert stats["max"] == pytest.approx(expected.max(), rel=1e-6)
    assert not list(out.parent.glob(".*.tmp"))


def test_build_refuses_values_beyond_float16(tmp_path: Path, noise) -> None:
    path, _ = noise
    out = tmp_path / "cache" / "particles.mrcs"
    with pytest.raises(InputError, match="float32"):
        cache.build(_particles(path), out, box=16, dtype="float16", scale=1e-4, voxel_size=2.0)
    assert not out.exists() and not list(out.parent.glob(".*.tmp"))  # no half-written data file


def test_image_stack_refuses_a_changed_cache_data_file(tmp_path: Path) -> None:
    data = np.random.default_rng(1).normal(size=(400, 16, 16)).astype(np.float32)  # 400 kB: 16 sampled 4 kB blocks
    folder = tmp_path / "cache"
    folder.mkdir()
    data_file = _stack(folder / cache.DATA_FILE, data)
    manifest = {"vitreous_cache": cache_manifest.FORMAT, "key": "k", "data_file": cache.DATA_FILE,
                "data": cache_manifest.fingerprint(data_file)}
    (folder / cache_manifest.MANIFEST).write_text(json.dumps(manifest))
    np.testing.assert_array_equal(ImageStack.from_file(data_file).read([2]), data[[2]])
    built = manifest["data"]["mtime_ns"]
    with open(data_file, "r+b") as fh:  # a byte no sampled block covers: caught by the modification time
        fh.seek(6000)
        fh.write(b"\x00")
    with pytest.raises(InputError, match="modified after it was built") as info:
        ImageStack.from_file(data_file)
    assert "vitreous preprocess" in info.value.fix and "\n" not in str(info.value)
    os.truncate(data_file, data_file.stat().st_size - 1024)
    os.utime(data_file, ns=(built, built))
    with pytest.raises(InputError, match="changed size"):
        ImageStack.from_file(data_file)
    (folder / cache_manifest.MANIFEST).unlink()  # no manifest: an ordinary stack, checked by its header alone
    with pytest.raises(InputError, match="truncated"):
        ImageStack.from_file(data_file)


@pytest.mark.parametrize("size", [7, 9, 40, 4])
def test_cache_box_is_even_and_not_larger(size: int) -> None:
    with pytest.raises(InputError, match="--downsample"):
        cache.cache_box(32, size)
    assert cache.cache_box(32, None) == 32 and cache.cache_box(32, 16) == 16
