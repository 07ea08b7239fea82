"""``vitreous ctf``: a complete job folder from a micrographs STAR file (simulated 1024 px micrographs, one all-zero
micrograph skipped), ``--select``, MRC inputs, resuming an interrupted run, and bad input (one line, exit 2)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vitreous.io.micrographs import micrographs_from_files, read_micrograph_star, write_micrograph_star
from vitreous.io.mrc import write_map
from vitreous.preprocess import curation

APIX, SIZE, N = 1.0, 1024, 3


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """micrographs.star naming N simulated micrographs and an all-zero one (last), with truth.csv."""
    from vitreous.sim.micrographs import MicrographOptions, MicrographSimulator
    from vitreous.sim.truth import models_truth

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ctf_cli")
    with resources.as_file(resources.files("vitreous.resources") / "adk_closed.pdb.gz") as path:
        volumes = models_truth([path], None, APIX).volumes
    simulator = MicrographSimulator(volumes, MicrographOptions(size=SIZE, apix=APIX, particles=(80, 80),
                                                               defocus_um=(1.0, 2.5)))
    truth = []
    for seed in range(N):
        micrograph = simulator.simulate(seed)
        write_map(out / f"mic_{seed}.mrc", micrograph.image, APIX)
        truth.append(micrograph.ctf)
    write_map(out / "empty.mrc", np.zeros((SIZE, SIZE), np.float32), APIX)
    paths = [out / f"mic_{seed}.mrc" for seed in range(N)] + [out / "empty.mrc"]
    write_micrograph_star(out / "micrographs.star", micrographs_from_files(paths, APIX))
    pd.DataFrame(truth).to_csv(out / "truth.csv", index=False)
    return out


def test_ctf_writes_a_complete_job(vitreous, simulated: Path, tmp_path: Path) -> None:
    out = tmp_path / "job"
    result = vitreous("ctf", simulated / "micrographs.star", "-o", out, "--workers", "0",
                      "--select", "rlnCtfMaxResolution<8,vtsCrystallineIce<2")
    assert result.code == 0, result.err
    for name in ("micrographs_ctf.star", "micrographs_selected.star", "report.html", "job.json", "run.log",
                 "checkpoints/micrograph-000000.pt"):
        assert (out / name).is_file(), name
    assert "empty.mrc: skipped (constant image" in result.err
    fitted = read_micrograph_star(out / "micrographs_ctf.star")
    assert [p.name for p in fitted.paths()] == [f"mic_{i}.mrc" for i in range(N)]
    assert all(p.is_file() for p in fitted.paths())  # names relative to the STAR file still resolve
    assert fitted.pixel_size() == APIX
    table, truth = fitted.table, pd.read_csv(simulated / "truth.csv")
    assert (table["rlnDefocusU"] >= table["rlnDefocusV"]).all()
    errors = np.abs(table[["rlnDefocusU", "rlnDefocusV"]].to_numpy() - truth[["rlnDefocusU", "rlnDefocusV"]].to_numpy())
    assert np.median(errors) <= 50.0 and errors.max() <= 100.0, errors  # the target: median <= 50 Å
    assert table["rlnCtfMaxResolution"].between(2 * APIX, 8).all()
    assert table["rlnCtfFigureOfMerit"].between(0.2, 1).all()
    assert table["vtsIceThickness"].min() == 0.0 and table["vtsIceThickness"].max() < 0.5
    assert table["vtsCrystallineIce"].between(0.5, 2).all()
    selected = read_micrograph_star(out / "micrographs_selected.star")
    assert len(selected) == N  # all meet the conditions
    report = (out / "report.html").read_text()
    assert "CTF estimation" in report and "Skipped micrographs" in report and "data:image/png" in report
    record = json.loads((out / "job.json").read_text())
    assert record["status"] == "finished" and record["command"] == "ctf"


def test_mrc_inputs_and_a_strict_selection(vitreous, simulated: Path, tmp_path: Path) -> None:
    out = tmp_path / "job"
    result = vitreous("ctf", simulated / "mic_0.mrc", simulated / "mic_1.mrc", "-o", out, "--workers", "1",
                      "--voltage", "300", "--select", "rlnCtfMaxResolution<1")
    assert result.code == 0, result.err
    assert len(read_micrograph_star(out / "micrographs_ctf.star")) == 2
    assert len(read_micrograph_star(out / "micrographs_selected.star")) == 0
    assert "selected 0 of 2 micrographs" in result.err


def test_an_interrupted_run_resumes_with_the_remaining_micrographs(vitreous, simulated: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "job"
    real = curation.measure_micrograph
    calls: list[str] = []

    def interrupted_second(path, optics, search):
        calls.append(Path(path).name)
        if len(calls) == 2:
            raise KeyboardInterrupt("stopped by the test")
        return real(path, optics, search)

    monkeypatch.setattr(curation, "measure_micrograph", interrupted_second)
    args = ("ctf", simulated / "micrographs.star", "-o", out, "--workers", "0")
    result = vitreous(*args)
    assert result.code != 0
    assert json.loads((out / "job.json").read_text())["status"] == "interrupted"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["micrograph-000000.pt"]
    calls.clear()
    monkeypatch.setattr(curation, "measure_micrograph", lambda path, optics, search: (calls.append(Path(path).name),
                                                                                      real(path, optics, search))[1])
    result = vitreous(*args, "--resume")
    assert result.code == 0, result.err
    assert calls == ["mic_1.mrc", "mic_2.mrc", "empty.mrc"]
    assert "resuming: 1 of 4 micrographs done" in result.err
    assert len(read_micrograph_star(out / "micrographs_ctf.star")) == N


def test_bad_input_is_one_line(vitreous, simulated: Path, tmp_path: Path) -> None:
    write_map(tmp_path / "coarse.mrc", np.ones((SIZE, SIZE), np.float32), 2.0)
    vitreous("ctf", simulated / "mic_0.mrc", tmp_path / "coarse.mrc", "-o", tmp_path / "a").assert_error(
        "pixel sizes")
    vitreous("ctf", tmp_path / "missing.mrc", "-o", tmp_path / "b").assert_error("missing.mrc", "no such file")
    star = read_micrograph_star(simulated / "micrographs.star")
    moved = star.with_table(star.table.assign(rlnMicrographName=["gone.mrc"] * len(star)))
    write_micrograph_star(tmp_path / "moved.star", type(star)(moved.table, star.optics, tmp_path / "moved.star"))
    vitreous("ctf", tmp_path / "moved.star", "-o", tmp_path / "c").assert_error("gone.mrc", "does not exist")
    vitreous("ctf", simulated / "micrographs.star", "-o", tmp_path / "d", "--select", "rlnDefocus<1").assert_error(
        "unknown column rlnDefocus")
    vitreous("ctf", simulated / "micrographs.star", "-o", tmp_path / "e", "--max-defocus", "100").assert_error(
        "--max-defocus")
    assert not any((tmp_path / name).exists() for name in "abcde")
