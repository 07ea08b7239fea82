"""``vitreous preprocess``: the cache job folder (images = Fourier crop / one global scale, STAR with the new pixel
size and box, the same batches for training), reuse of an identical cache, refusal of one built from other data
or parameters, a changed data file, an interrupted build, and bad options (one line, exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from vitreous.cli.preprocess import run_preprocess
from vitreous.data import cache
from vitreous.errors import InputError
from vitreous.io import cache_manifest
from vitreous.io.star import read_star
from vitreous.neural.data import ParticleBatches, image_scale
from vitreous.physics import fourier

N, BOX, APIX = 40, 32, 2.0

def write_particles(folder: Path, n: int = N, box: int = BOX, seed: int = 0) -> Path:
    """``folder/particles.star`` + ``stack.mrcs`` (float32, header APIX); returns the STAR path."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:box, :box] - box // 2
    blob = 5 * np.exp(-((xx - 3) ** 2 + (yy + 2) ** 2) / 8.0)
    data = (rng.normal(size=(n, box, box)) + blob).astype(np.float32) * 40  # a scale far from 1
    folder.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(folder / "stack.mrcs", overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.set_image_stack()
        mrc.voxel_size = APIX
    defocus = rng.uniform(10000, 20000, n)
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(n)], "rlnOpticsGroup": 1,
        "rlnAngleRot": rng.uniform(-180, 180, n), "rlnAngleTilt": rng.uniform(0, 180, n),
        "rlnAnglePsi": rng.uniform(-180, 180, n),
        "rlnOriginXAngst": rng.normal(0, 4, n), "rlnOriginYAngst": rng.normal(0, 4, n),
        "rlnDefocusU": defocus + 100, "rlnDefocusV": defocus - 100, "rlnDefocusAngle": rng.uniform(0, 180, n),
        "rlnClassNumber": rng.integers(1, 3, n),
    })
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [APIX], "rlnImageSize": [box], "rlnImageDimensionality": [2]})
    starfile.write({"optics": optics, "particles": particles}, folder / "particles.star", overwrite=True)
    return folder / "particles.star"


@pytest.fixture(scope="module")
def star(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_particles(tmp_path_factory.mktemp("preprocess") / "input")


@pytest.fixture(scope="module")
def built(star: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float16 cache of ``star`` at box 16."""
    out = tmp_path_factory.mktemp("built") / "cache"
    run_preprocess(star, out, downsample=16)
    return out


def test_cache_job_folder(star: Path, built: Path) -> None:
    for name in ("particles.mrcs", "particles.star", "cache.json", "job.json", "run.log", "report.html"):
        assert (built / name).is_file(), name
    assert json.loads((built / "job.json").read_text())["status"] == "finished"
    assert "throughput (images/s)" in (built / "report.html").read_text()
    original, cached = read_star(star), read_star(built / "particles.star")
    assert len(cached) == N and cached.box == 16 and cached.single_pixel_size() == pytest.approx(2 * APIX)
    pd.testing.assert_frame_equal(cached.particles.drop(columns="rlnImageName"),
                                  original.particles.drop(columns="rlnImageName"), check_dtype=False)
    assert cached.particles["rlnImageName"].iloc[2] == "000003@particles.mrcs"
    manifest = cache_manifest.read_manifest(built)
    scale = image_scale(original)
    assert manifest["scale"] == pytest.approx(scale) and manifest["dtype"] == "float16"
    with mrcfile.open(built / "particles.mrcs") as mrc:
        assert int(mrc.header.mode) == 12 and float(mrc.voxel_size.x) == pytest.approx(2 * APIX)
    expected = fourier.fourier_crop(torch.from_numpy(original.images.read(slice(None))), 16).numpy() / scale
    np.testing.assert_allclose(cached.images.read(slice(None)), expected, atol=2e-3)


def test_training_batches_from_the_cache_match(star: Path, built: Path) -> None:
    """Cropping on the fly and reading the cache give the same training batch (pixel size, shifts, CTF)."""
    direct = ParticleBatches(read_star(star), box=16)
    cached = ParticleBatches(read_star(built / "particles.star"), scale=1.0)  # already divided by the scale
    assert cached.pixel_size == pytest.approx(direct.pixel_size)
    index = np.array([1, 7, 30])
    a, b = direct.batch(index), cached.batch(index)
    torch.testing.assert_close(b.ctf, a.ctf)
    torch.testing.assert_close(b.spectra, a.spectra, atol=0.05, rtol=0)  # float16 storage
    torch.testing.assert_close(b.encoder_input, a.encoder_input, atol=3e-3, rtol=0)


def test_same_inputs_reuse_the_cache(vitreous, star: Path, built: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in built.iterdir()}
    result = vitreous("preprocess", star, "-o", built, "--downsample", "16")
    assert result.code == 0, result.err
    assert "up to date" in result.err and "reusing" in result.err
    assert {p.name: p.stat().st_mtime_ns for p in built.iterdir()} == before


def test_other_parameters_or_data_are_refused_then_rebuilt(vitreous, star: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    assert vitreous("preprocess", star, "-o", out, "--downsample", "16").code == 0
    vitreous("preprocess", star, "-o", out, "--downsample", "8").assert_error(
        str(out), "other data or parameters", "box (16 -> 8)", "--overwrite")
    vitreous("preprocess", star, "-o", out, "--downsample", "16", "--dtype", "float32").assert_error(
        "dtype (float16 -> float32)")
    edited = star.with_name("edited.star")
    table = starfile.read(star)
    table["particles"].loc[0, "rlnDefocusU"] += 1
    starfile.write(table, edited, overwrite=True)
    vitreous("preprocess", edited, "-o", out, "--downsample", "16").assert_error("the particle metadata file")
    result = vitreous("preprocess", edited, "-o", out, "--downsample", "8", "--overwrite")
    assert result.code == 0, result.err
    assert read_star(out / "particles.star").box == 8
    assert read_star(out / "particles.star").particles["rlnDefocusU"].iloc[0] == pytest.approx(
        table["particles"]["rlnDefocusU"].iloc[0])


def test_changed_data_file_is_refused(vitreous, star: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    assert vitreous("preprocess", star, "-o", out).code == 0
    with open(out / "particles.mrcs", "r+b") as fh:
        fh.seek(-10, 2)
        fh.write(b"\x00" * 10)
    with pytest.raises(InputError, match="particle cache is invalid") as info:
        read_star(out / "particles.star")
    assert "vitreous preprocess" in info.value.fix
    vitreous("preprocess", star, "-o", out).assert_error("particle cache is invalid", "--overwrite")
    assert vitreous("preprocess", star, "-o", out, "--overwrite").code == 0
    assert len(read_star(out / "particles.star").images.read(slice(None))) == N


def test_interrupted_build_leaves_no_valid_looking_cache(vitreous, star: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    out = tmp_path / "cache"
    monkeypatch.setattr(cache, "CHUNK_BYTES", 8 * BOX * BOX * 4)  # 5 chunks
    calls = []
    crop = fourier.fourier_crop

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return crop(*args, **kwargs)

    monkeypatch.setattr(fourier, "fourier_crop", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_preprocess(star, out, downsample=16)
    assert json.loads((out / "job.json").read_text())["status"] == "interrupted"
    assert not (out / "cache.json").exists() and not (out / "particles.mrcs").exists()
    assert not list(out.glob(".*.tmp"))
    monkeypatch.setattr(fourier, "fourier_crop", crop)
    capsys.readouterr()  # the interrupted run's progress output
    vitreous("preprocess", star, "-o", out, "--downsample", "16").assert_error("--resume")
    result = vitreous("preprocess", star, "-o", out, "--downsample", "16", "--resume")
    assert result.code == 0, result.err
    assert cache_manifest.data_file_problem(out, cache_manifest.read_manifest(out)) is None


@pytest.mark.parametrize(("option", "value", "fragment"), [
    ("--dtype", "float64", "--dtype float64"), ("--downsample", "15", "--downsample 15"),
    ("--downsample", "64", "--downsample 64")])
def test_bad_options(vitreous, star: Path, tmp_path: Path, option: str, value: str, fragment: str) -> None:
    vitreous("preprocess", star, "-o", tmp_path / "cache", option, value).assert_error(fragment)
    assert not (tmp_path / "cache").exists()
