"""``vitreous info`` on real files, metadata without images, maps, bad input; light on memory and imports."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from vitreous.io.mrc import write_map
from vitreous.io.stack import ImageStack

INFO_SUFFIXES = {".star", ".cs", ".pkl", ".mrc", ".mrcs", ".map"}


def test_every_real_file_exits_0_or_with_one_line(vitreous, real_data: Path) -> None:
    files = sorted(p for p in real_data.rglob("*") if p.suffix in INFO_SUFFIXES)
    assert len(files) > 40
    exit_codes = {}
    for path in files:
        outcome = vitreous("info", path, "--sample", 20)
        exit_codes[path.name] = outcome.code
        assert "Traceback" not in outcome.err, path
        if outcome.code == 2:
            outcome.assert_error(path.name)
        else:
            assert outcome.code == 0, (path, outcome)
            assert vitreous("info", path, "--json", "--sample", 20).json()["path"] == str(path)
    # particle files with stacks, metadata-only files and maps are all summarised
    for name in ("relion31.star", "empiar_10076_7.cs", "ap_s_c2d.star", "cryosparc_P12_J24_001_particles.cs",
                 "relion5.star", "ref_model.mrc", "EMD-3001.map", "sample.mrcs"):
        assert exit_codes[name] == 0, name
    for name in ("relion_model_example.star", "ref_it002_optimiser.star", "ref_pose.star.pkl"):
        assert exit_codes[name] == 2, name


def test_particles_with_images(vitreous, real_data: Path) -> None:
    summary = vitreous("info", real_data / "particles/relion31_5ptcl/relion31.star", "--json").json()
    assert summary["particles"] == 5 and summary["box_px"] == 256
    assert summary["pixel_size_A"] == [2.806]
    assert summary["optics_groups"][0]["voltage_kV"] == 300 and summary["optics_groups"][0]["particles"] == 5
    assert summary["poses"]["present"] and 70 < summary["poses"]["tilt_deg"]["median"] < 90
    assert summary["ctf"]["present"] and 12000 < summary["ctf"]["defocus_A"]["median"] < 13000
    assert summary["half_sets"]["present"] and not summary["latents"]["present"]
    assert summary["images"]["found"] and summary["files_referenced"]["first"] == ["relion31.mrcs"]
    stats = summary["image_statistics"]
    assert stats["particles_read"] == 5 and stats["particles_with_nonfinite"] == 0
    assert abs(stats["std"] - 1.0) < 0.1 and stats["min"] < 0 < stats["max"]


def test_missing_stacks_give_metadata_and_the_reason(vitreous, real_data: Path, tmp_path: Path) -> None:
    star = tmp_path / "relion31.star"
    shutil.copy(real_data / "particles/relion31_5ptcl/relion31.star", star)
    outcome = vitreous("info", star)
    assert outcome.code == 0
    assert "metadata only" in outcome.out and "--datadir" in outcome.out
    summary = vitreous("info", star, "--json").json()
    assert summary["particles"] == 5 and summary["poses"]["present"]
    assert not summary["images"]["found"] and "relion31.mrcs" in summary["images"]["problem"]
    assert "image_statistics" not in summary
    found = vitreous("info", star, "--json", "--datadir", real_data / "particles/relion31_5ptcl").json()
    assert found["images"]["found"] and found["image_statistics"]["particles_read"] == 5


def test_maps_and_stacks(vitreous, real_data: Path) -> None:
    volume = vitreous("info", real_data / "maps/relion_betagal_tests/ref_model.mrc", "--json").json()
    assert volume["type"] == "volume" and volume["shape_zyx"] == [100, 100, 100]
    assert volume["voxel_size_A"] == pytest.approx(3.54, abs=1e-4) and volume["statistics"]["z_slices_read"] == 100
    stack = vitreous("info", real_data / "particles/empiar10076_7/empiar_10076_7.mrc", "--json").json()
    assert stack["type"] == "stack" and stack["images"] == 7 and stack["box_px"] == 320
    assert stack["voxel_size_A"] is None and "voxel size unset" in stack["notes"][0]


def test_sample_limits_the_images_read(vitreous, real_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read = []
    original = ImageStack.read

    def counting(self, indices, check_finite=True):
        images = original(self, indices, check_finite)
        read.append(len(images))
        return images

    monkeypatch.setattr(ImageStack, "read", counting)
    star = real_data / "particles/aspire_sample17/sample_relion_data.star"
    summary = vitreous("info", star, "--json", "--sample", 5).json()
    assert sum(read) == 5 and summary["image_statistics"]["particles_read"] == 5
    read.clear()
    assert "image_statistics" not in vitreous("info", star, "--json", "--sample", 0).json()
    assert sum(read) == 0


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_nan_pixels_are_reported_with_1_based_numbers(vitreous, tmp_path: Path) -> None:
    images = np.random.default_rng(0).standard_normal((4, 16, 16)).astype(np.float32)
    images[2, 5, 5] = np.nan
    write_map(tmp_path / "stack.mrcs", images, 2.0)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.0], "rlnImageSize": [16]})
    particles = pd.DataFrame({"rlnImageName": [f"{i}@stack.mrcs" for i in range(1, 5)], "rlnOpticsGroup": 1})
    starfile.write({"optics": optics, "particles": particles}, tmp_path / "p.star")
    stats = vitreous("info", tmp_path / "p.star", "--json").json()["image_statistics"]
    assert stats["particles_with_nonfinite"] == 1 and stats["first_particles_with_nonfinite"] == [3]
    assert stats["nonfinite_values"] == 1 and np.isfinite(stats["mean"])
    stack = vitreous("info", tmp_path / "stack.mrcs", "--json").json()["statistics"]
    assert stack["first_images_with_nonfinite"] == [3]


def test_cryodrgn_pickles_need_the_ctf(vitreous, real_data: Path, tmp_path: Path) -> None:
    star = real_data / "particles/relion31_5ptcl/relion31.star"
    assert vitreous("convert", star, tmp_path / "p.pkl").code == 0
    vitreous("info", tmp_path / "p.pkl").assert_error("p.pkl", "--ctf")
    summary = vitreous("info", tmp_path / "p.pkl", "--ctf", tmp_path / "p_ctf.pkl", "--json").json()
    assert summary["format"] == "cryoDRGN pickle" and summary["particles"] == 5 and summary["poses"]["present"]
    assert not summary["images"]["found"] and "--stack" in summary["images"]["problem"]
    with_stack = vitreous("info", tmp_path / "p.pkl", "--ctf", tmp_path / "p_ctf.pkl", "--json",
                          "--stack", real_data / "particles/relion31_5ptcl/relion31.mrcs").json()
    assert with_stack["images"]["found"]


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("garbage.star", b"\x00\x01not a star file\xff" * 20, "garbage.star"),
    ("garbage.mrc", b"\x00" * 100, "too short"),
    ("garbage.cs", b"nope", "cryoSPARC"),
    ("notes.txt", b"hello", "unknown file type"),
])
def test_unusable_files_give_one_line(vitreous, tmp_path: Path, name: str, content: bytes, fragment: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    vitreous("info", path).assert_error(fragment)


def test_missing_file_and_bad_apix(vitreous, tmp_path: Path) -> None:
    vitreous("info", tmp_path / "absent.star").assert_error("absent.star", "not found")
    assert vitreous("info", tmp_path / "absent.star", "--apix", "-1").code == 2  # usage error, as typer shows it


def test_info_never_imports_torch(real_data: Path) -> None:
    star = real_data / "particles/relion31_5ptcl/relion31.star"
    code = (f"import sys\nfrom vitreous.cli.main import run\nsys.argv = ['vitreous', 'info', {str(star)!r}]\n"
            "try:\n    run()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', 'matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "NO TORCH False"
