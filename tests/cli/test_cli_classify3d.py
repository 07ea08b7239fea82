"""``vitreous classify3d``: the job folder it writes, resume after an interruption, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import starfile

from vitreous.analysis.metrics import adjusted_rand_index
from vitreous.cli.classify3d import run_classify3d
from vitreous.io.formats import read_particles
from vitreous.io.mrc import read_map, write_map
from vitreous.jobs import Job

N_PARTICLES = 300


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, structures: Path) -> dict[str, Any]:
    """A simulated mixture of two proteins (box 32, 3 Å/px, SNR 0.1) and its consensus map ``consensus.mrc``."""
    from vitreous.cli.simulate import run_simulate
    from vitreous.reconstruct.backproject import backproject

    root = tmp_path_factory.mktemp("classify3d")
    proteins = structures / "proteins"
    star = run_simulate(root / "sim", models=[proteins / "1hvr.pdb", proteins / "4E43.pdb"], trajectory=None,
                        n=N_PARTICLES, box=32, apix=3.0, snr=0.1, seed=3)
    reference = root / "consensus.mrc"
    write_map(reference, backproject(read_particles(star)).full, 3.0)
    return {"star": star, "reference": reference, "labels": np.load(root / "sim" / "truth" / "labels.npy"),
            "root": root}


def _particles_table(star: Path) -> pd.DataFrame:
    return starfile.read(star, always_dict=True)["particles"]


def test_classify3d_writes_a_job(vitreous, data: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "job"
    outcome = vitreous("classify3d", data["star"], "--reference", data["reference"], "-K", 2, "-o", out)
    assert outcome.code == 0, outcome.err
    assert "class 1:" in outcome.err and "class 2:" in outcome.err
    for name in ("class_001.mrc", "class_002.mrc", "particles.star", "class_sizes.csv", "fsc.csv", "report.html",
                 "run.log", "job.json", "checkpoints/state.pt"):
        assert (out / name).is_file(), name
    assert json.loads((out / "job.json").read_text())["status"] == "finished"
    volume, voxel = read_map(out / "class_001.mrc")
    assert volume.shape == (32, 32, 32) and voxel == pytest.approx(3.0)

    table = _particles_table(out / "particles.star")
    posteriors = table[["vtsClassPosterior1", "vtsClassPosterior2"]].to_numpy()
    np.testing.assert_allclose(posteriors.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(table["rlnClassNumber"], posteriors.argmax(1) + 1)
    np.testing.assert_allclose(table["rlnMaxValueProbDistribution"], posteriors.max(1), atol=1e-6)
    assert adjusted_rand_index(data["labels"], table["rlnClassNumber"].to_numpy()) >= 0.95
    again = read_particles(out / "particles.star")  # image names rewritten relative to the job folder
    assert again.images is not None and len(again) == N_PARTICLES

    sizes = pd.read_csv(out / "class_sizes.csv")
    assert list(sizes.columns) == ["iteration", "class", "particles", "most_probable", "fraction", "resolution_A",
                                   "changed_fraction", "estep_limit_A"]
    last = sizes[sizes["iteration"] == sizes["iteration"].max()]
    assert last["most_probable"].tolist() == np.bincount(table["rlnClassNumber"], minlength=3)[1:].tolist()
    np.testing.assert_allclose(last["particles"].sum(), N_PARTICLES, rtol=1e-5)
    fsc = pd.read_csv(out / "fsc.csv")
    assert {"fsc_class_001_halves", "fsc_class_002_halves", "fsc_class_001_vs_002"} <= set(fsc.columns)
    report = (out / "report.html").read_text()
    for text in ("3D classification", "Class sizes per iteration", "FSC between class maps", "run.log"):
        assert text in report


def test_interrupted_job_resumes(vitreous, data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture) -> None:
    """Killed right after saving iteration 1, the job is 'interrupted'; --resume finishes it, with the result
    of an uninterrupted run."""
    saves = []
    original = Job.save_checkpoint

    def save_then_stop(self: Job, name: str, obj: Any) -> Path:
        path = original(self, name, obj)
        saves.append(obj["iteration"])
        if obj["iteration"] == 1:
            raise KeyboardInterrupt("terminated by SIGTERM")
        return path

    options = {"reference": data["reference"], "classes": 2, "iterations": 3, "tolerance": 0.0}
    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(Job, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_classify3d(data["star"], interrupted, **options)
    monkeypatch.undo()
    capsys.readouterr()  # the interrupted run's messages
    assert saves == [0, 1]
    assert json.loads((interrupted / "job.json").read_text())["status"] == "interrupted"
    assert not (interrupted / "particles.star").exists()

    args = ["classify3d", data["star"], "--reference", data["reference"], "-K", 2, "--iterations", 3,
            "--tolerance", 0, "-o"]
    refused = vitreous(*args, interrupted)
    refused.assert_error("--resume")
    outcome = vitreous(*args, interrupted, "--resume")
    assert outcome.code == 0, outcome.err
    record = json.loads((interrupted / "job.json").read_text())
    assert record["status"] == "finished" and record["attempts"][0]["status"] == "interrupted"
    assert "resuming after iteration 1" in (interrupted / "run.log").read_text()

    whole = tmp_path / "whole"
    assert vitreous(*args, whole).code == 0
    resumed, direct = _particles_table(interrupted / "particles.star"), _particles_table(whole / "particles.star")
    np.testing.assert_array_equal(resumed["rlnClassNumber"], direct["rlnClassNumber"])
    np.testing.assert_allclose(resumed["vtsClassPosterior1"], direct["vtsClassPosterior1"], atol=1e-6)
    for name in ("class_001.mrc", "class_002.mrc"):
        a, b = read_map(interrupted / name)[0], read_map(whole / name)[0]
        np.testing.assert_allclose(a, b, atol=1e-6 * np.abs(b).max())


def _variant(data: dict[str, Any], tmp_path: Path, drop: list[str]) -> Path:
    """The particle STAR without some columns (images found through --datadir)."""
    tables = starfile.read(data["star"], always_dict=True)
    tables["particles"] = tables["particles"].drop(columns=drop)
    path = tmp_path / "variant.star"
    starfile.write(tables, path)
    return path


@pytest.mark.parametrize(("args", "drop", "fragment"), [
    (["-K", 0], [], "--classes must be at least 1"),
    (["-K", N_PARTICLES + 1], [], f"{N_PARTICLES + 1} classes for only {N_PARTICLES} particles"),
    (["-K", 2], ["rlnDefocusU", "rlnDefocusV"], "no CTF parameters"),
    (["-K", 2], ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"], "vitreous refine"),
    (["-K", 2, "--iterations", 0], [], "--iterations 0"),
    (["-K", 2, "--batch-size", 0], [], "--batch-size 0"),
])
def test_bad_input_is_one_line(vitreous, data: dict[str, Any], tmp_path: Path, args: list[Any], drop: list[str],
                               fragment: str) -> None:
    star = _variant(data, tmp_path, drop) if drop else data["star"]
    out = tmp_path / "out"
    outcome = vitreous("classify3d", star, "--reference", data["reference"], "-o", out, "--datadir",
                       data["star"].parent, *args)
    outcome.assert_error(fragment)
    assert not out.exists()  # refused before the job folder is made


def test_reference_of_another_size_is_resampled(vitreous, data: dict[str, Any], tmp_path: Path) -> None:
    """A 40-px reference at 2 Å/px is zero-padded to 42 px (84 Å, a whole number of 3 Å pixels), Fourier-cropped
    to 28 px at 3 Å/px and padded to the particles' 32 px."""
    import torch

    from vitreous.physics.fourier import fourier_pad, window

    volume = torch.as_tensor(read_map(data["reference"])[0])
    finer = window(fourier_pad(volume, 48, ndim=3), 40, ndim=3).numpy()  # 48 px at 2 Å, cropped to 40 px
    reference = tmp_path / "fine.mrc"
    write_map(reference, finer, 2.0)
    out = tmp_path / "job"
    outcome = vitreous("classify3d", data["star"], "--reference", reference, "-K", 2, "--iterations", 1, "-o", out)
    assert outcome.code == 0, outcome.err
    log = (out / "run.log").read_text()
    assert "(40 px at 2 Å) was Fourier-resampled to 28 px at 3 Å" in log
    assert "28 px was padded to the particles' 32 px" in log

    tiny = tmp_path / "tiny.mrc"
    write_map(tiny, np.zeros((4, 4, 4), np.float32), 0.3)
    vitreous("classify3d", data["star"], "--reference", tiny, "-K", 2, "-o", tmp_path / "no").assert_error(
        "cannot resample the reference")
