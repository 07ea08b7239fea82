"""``vitreous class2d`` and ``vitreous select2d``: a complete job folder, resuming an interrupted run, selecting
classes, and bad input (one line, exit code 2).  Data: 160 simulated particles showing two views of the bundled
adenylate kinase model (random in-plane angles; box 32, 3 Å/px, SNR 1)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from vitreous.classify import class2d as class2d_module
from vitreous.classify.class2d import Class2DOptions, Class2DState
from vitreous.data.particles import DEFOCUS, ParticleSet
from vitreous.io.mrc import write_map
from vitreous.io.star import read_star, write_star
from vitreous.physics.rotations import euler_to_matrix
from vitreous.sim.particles import Acquisition, simulate_stack
from vitreous.sim.truth import models_truth

APIX, BOX, N = 3.0, 32, 160
FAST = ("--classes", "2", "--iterations", "3", "--diameter", "84")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """particles.star (+ .mrcs): even particles show the top view, odd ones the side view; labels.npy."""
    out = tmp_path_factory.mktemp("class2d_cli")
    with resources.as_file(resources.files("vitreous.resources") / "adk_closed.pdb.gz") as path:
        volume = models_truth([path], BOX, APIX).volumes
    labels = np.arange(N) % 2
    views = euler_to_matrix(np.array([[0.0, 0.0, 0.0], [0.0, 90.0, 0.0]]))
    psi = np.random.default_rng(2).uniform(0, 360, N)
    rotations = euler_to_matrix(np.stack([np.zeros(N), np.zeros(N), psi], 1)) @ views[labels]
    particles = simulate_stack(volume, np.zeros(N, np.int64), out / "particles.mrcs",
                               Acquisition(apix=APIX, snr=1.0, shift_sd_px=1.0, seed=3), rotations=rotations)
    write_star(out / "particles.star", particles.with_columns(vtsView=labels))
    np.save(out / "labels.npy", labels)
    return out


@pytest.fixture(scope="module")
def finished(simulated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished class2d job on the simulated particles."""
    from vitreous.cli.class2d import run_class2d

    out = tmp_path_factory.mktemp("class2d_job") / "job"
    run_class2d(simulated / "particles.star", out, Class2DOptions(classes=2, iterations=3, diameter_A=84.0))
    return out


def test_class2d_writes_a_complete_job(vitreous, simulated: Path, tmp_path: Path) -> None:
    out = tmp_path / "job"
    result = vitreous("class2d", simulated / "particles.star", "-o", out, *FAST)
    assert result.code == 0, result.err
    for name in ("class_averages.mrcs", "particles.star", "classes.csv", "report.html", "job.json", "run.log",
                 "checkpoints/class2d.pt"):
        assert (out / name).is_file(), name
    with mrcfile.open(out / "class_averages.mrcs") as mrc:
        assert mrc.data.shape == (2, BOX, BOX) and mrc.voxel_size.x == pytest.approx(APIX)
        assert np.isfinite(mrc.data).all() and mrc.data.std() > 0
    table = read_star(out / "particles.star").particles
    assert len(table) == N and "vtsView" in table  # other columns are kept
    assert set(table["rlnClassNumber"]) == {1, 2}
    assert ((table["rlnMaxValueProbDistribution"] > 0) & (table["rlnMaxValueProbDistribution"] <= 1)).all()
    assert ((table["rlnAnglePsi"] >= 0) & (table["rlnAnglePsi"] < 360)).all()
    assert {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(table)
    views = np.load(simulated / "labels.npy")
    assert all(len(set(views[table["rlnClassNumber"] == c])) == 1 for c in (1, 2))  # one view per class
    report = (out / "report.html").read_text()
    assert "2D classification" in report and "class 1:" in report and "data:image/png" in report
    record = json.loads((out / "job.json").read_text())
    assert record["status"] == "finished" and record["command"] == "class2d"


def test_an_interrupted_run_resumes_from_its_last_iteration(vitreous, simulated: Path, finished: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    from vitreous.cli.class2d import run_class2d

    out = tmp_path / "job"
    real = class2d_module.iterate
    calls: list[int] = []

    def interrupted_second(particles, images, state, options, progress=None):
        calls.append(state.iteration)
        if state.iteration == 1:
            raise KeyboardInterrupt("stopped by the test")
        return real(particles, images, state, options, progress)

    monkeypatch.setattr(class2d_module, "iterate", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        run_class2d(simulated / "particles.star", out, Class2DOptions(classes=2, iterations=3, diameter_A=84.0))
    assert json.loads((out / "job.json").read_text())["status"] == "interrupted"
    saved = Class2DState.from_dict(torch.load(out / "checkpoints/class2d.pt", weights_only=False))
    assert saved.iteration == 1 and not (out / "class_averages.mrcs").exists()
    calls.clear()
    capsys.readouterr()

    def counted(particles, images, state, options, progress=None):
        calls.append(state.iteration)
        return real(particles, images, state, options, progress)

    monkeypatch.setattr(class2d_module, "iterate", counted)
    vitreous("class2d", simulated / "particles.star", "-o", out, *FAST).assert_error("--resume")
    result = vitreous("class2d", simulated / "particles.star", "-o", out, *FAST, "--resume")
    assert result.code == 0, result.err
    assert calls == [1, 2] and "resuming after iteration 1" in result.err
    resumed = read_star(out / "particles.star").particles
    uninterrupted = read_star(finished / "particles.star").particles
    np.testing.assert_array_equal(resumed["rlnClassNumber"], uninterrupted["rlnClassNumber"])
    np.testing.assert_allclose(resumed["rlnAnglePsi"], uninterrupted["rlnAnglePsi"])


def test_select2d_keeps_the_particles_of_the_chosen_classes(vitreous, finished: Path, tmp_path: Path) -> None:
    table = read_star(finished / "particles.star").particles
    sizes = np.bincount(table["rlnClassNumber"], minlength=3)[1:]
    largest = int(np.argmax(sizes)) + 1
    at_least_largest = [c + 1 for c in np.nonzero(sizes == sizes.max())[0]]
    for args, kept_classes in ((("--classes", "2"), [2]), (("--top", "1"), [largest]),
                               (("--min-size", str(sizes.max())), at_least_largest)):
        out = tmp_path / "_".join(args).strip("-")
        result = vitreous("select2d", finished, "-o", out, *args)
        assert result.code == 0, result.err
        kept = read_star(out / "particles.star")
        expected = table[table["rlnClassNumber"].isin(kept_classes)]
        assert kept.images is not None and len(kept) == len(expected)
        np.testing.assert_array_equal(kept.particles["rlnImageName"], expected["rlnImageName"])
        with mrcfile.open(out / "class_averages.mrcs") as mrc, mrcfile.open(finished / "class_averages.mrcs") as all_:
            np.testing.assert_array_equal(mrc.data.reshape(-1, BOX, BOX), all_.data[np.array(kept_classes) - 1])
        assert "2D class selection" in (out / "report.html").read_text()
    vitreous("select2d", finished, "-o", tmp_path / "none").assert_error("exactly one of")
    vitreous("select2d", finished, "-o", tmp_path / "bad", "--classes", "7").assert_error("do not exist")
    vitreous("select2d", tmp_path, "-o", tmp_path / "nojob", "--top", "1").assert_error("class2d")


def test_bad_input_is_one_line_and_touches_nothing(vitreous, simulated: Path, tmp_path: Path) -> None:
    star = simulated / "particles.star"
    particles = read_star(star)
    no_ctf = tmp_path / "no_ctf.star"
    write_star(no_ctf, ParticleSet(particles.particles.drop(columns=DEFOCUS), particles.optics, particles.images,
                                   str(no_ctf)))
    images = np.asarray(particles.images.read(np.arange(N)), np.float32)
    images[5, 3, 3] = np.nan
    write_map(tmp_path / "nan.mrcs", images, APIX)
    nan_star = tmp_path / "nan.star"
    table = particles.particles.copy()
    table["rlnImageName"] = [f"{i + 1:06d}@nan.mrcs" for i in range(N)]
    write_star(nan_star, ParticleSet(table, particles.optics))
    cases = ((star, ("--classes", "0"), "at least 1"), (star, ("--classes", str(N + 1)), "classes for only"),
             (no_ctf, ("--classes", "2"), "--no-ctf"), (nan_star, ("--classes", "2"), "particle 6"),
             (star, ("--classes", "2", "--psi-step", "0"), "--psi-step"))
    for path, args, words in cases:
        out = tmp_path / "out"
        vitreous("class2d", path, "-o", out, *args).assert_error(words)
        assert not out.exists()
    result = vitreous("class2d", no_ctf, "-o", tmp_path / "ctf_free", "--no-ctf", *FAST)
    assert result.code == 0, result.err
