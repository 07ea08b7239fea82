"""``vitreous abinit``: a complete job folder with K classes, resuming an interrupted run, and bad input (one
line, exit code 2).  Data: 240 simulated particles, closed and open adenylate kinase alternating (box 24, 4 Å/px,
SNR 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vitreous.data.particles import EULER, SHIFTS
from vitreous.io.mrc import read_map
from vitreous.io.star import read_star, write_star
from vitreous.reconstruct import abinit as abinit_module
from vitreous.reconstruct.abinit import AbinitOptions, SGDState
from vitreous.sim.particles import Acquisition, simulate_stack
from vitreous.sim.truth import models_truth

APIX, BOX, N = 4.0, 24, 240
FAST = ("--iterations", "3", "--initial-batch", "60", "--final-batch", "80", "--refine-iterations", "1",
        "--final-resolution", "16")
ADK = Path(__file__).resolve().parents[3] / "shared" / "data" / "structures" / "adk"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("abinit_cli")
    volumes = models_truth([ADK / "adk_closed.pdb", ADK / "adk_open.pdb"], BOX, APIX).volumes
    states = np.arange(N) % 2
    acquisition = Acquisition(apix=APIX, snr=1.0, astigmatism_A=300.0, shift_sd_px=0.5, seed=5)
    particles = simulate_stack(volumes, states, out / "particles.mrcs", acquisition)
    write_star(out / "particles.star", particles)
    return out


def test_abinit_writes_a_complete_job_with_classes(vitreous, simulated: Path, tmp_path: Path) -> None:
    out = tmp_path / "job"
    result = vitreous("abinit", simulated / "particles.star", "-o", out, "--classes", "2", *FAST)
    assert result.code == 0, result.err
    for name in ("class_001.mrc", "class_002.mrc", "class_001_initial.mrc", "class_001_half_map_1.mrc",
                 "particles.star", "fsc.csv", "report.html", "job.json", "run.log", "checkpoints/sgd.pt",
                 "checkpoints/classes.pt", "checkpoints/resolve.pt"):
        assert (out / name).is_file(), name
    resolved = torch.load(out / "checkpoints/resolve.pt", weights_only=False)
    assert 1 <= resolved["round"] <= 3 and (resolved["round"] == 3 or resolved["changed"] <= 0.01)
    volume, voxel = read_map(out / "class_001.mrc")
    assert volume.shape == (BOX,) * 3 and voxel == pytest.approx(APIX)
    table = read_star(out / "particles.star").particles
    assert len(table) == N and {*EULER, *SHIFTS, "rlnClassNumber", "vtsClassProbability1"} <= set(table.columns)
    assert set(table["rlnClassNumber"]) <= {1, 2}
    probabilities = table[["vtsClassProbability1", "vtsClassProbability2"]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-4)
    assert (probabilities.argmax(1) + 1 == table["rlnClassNumber"].to_numpy()).all()
    assert {"frequency_invA"} < set(pd.read_csv(out / "fsc.csv").columns)
    report = (out / "report.html").read_text()
    assert "Ab initio reconstruction" in report and "data:image/png" in report
    assert json.loads((out / "job.json").read_text())["status"] == "finished"


def test_without_refinement_the_stage_2_poses_are_written(vitreous, simulated: Path, tmp_path: Path) -> None:
    from vitreous.reconstruct.abinit import Assignment

    out = tmp_path / "job"
    fast = [*FAST[:FAST.index("--refine-iterations")], *FAST[FAST.index("--refine-iterations") + 2:]]
    result = vitreous("abinit", simulated / "particles.star", "-o", out, "--refine-iterations", "0", *fast)
    assert result.code == 0, result.err
    assignment = Assignment.from_dict(torch.load(out / "checkpoints" / "classes.pt", weights_only=False)["assignment"])
    rotations, shifts_px = assignment.best_poses()
    written = read_star(out / "particles.star")
    np.testing.assert_allclose(written.rotations, rotations, atol=1e-5)
    np.testing.assert_allclose(written.shifts_px, shifts_px, atol=1e-4)
    assert not np.allclose(written.rotations, np.eye(3))


def test_an_interrupted_run_resumes_from_its_last_mini_batch(vitreous, simulated: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from vitreous.cli.abinit import run_abinit

    out = tmp_path / "job"
    real = abinit_module.sgd_iteration
    calls: list[int] = []

    def interrupted_third(particles, state, options, halves):
        calls.append(state.iteration)
        if state.iteration == 2:
            raise KeyboardInterrupt("stopped by the test")
        return real(particles, state, options, halves)

    monkeypatch.setattr(abinit_module, "sgd_iteration", interrupted_third)
    options = AbinitOptions(iterations=3, initial_batch=60, final_batch=80, refine_iterations=1,
                            final_resolution_A=16)
    with pytest.raises(KeyboardInterrupt):
        run_abinit(simulated / "particles.star", out, options)
    saved = SGDState.from_dict(torch.load(out / "checkpoints/sgd.pt", weights_only=False))
    assert saved.iteration == 2 and not (out / "map.mrc").exists()
    calls.clear()
    monkeypatch.setattr(abinit_module, "sgd_iteration", lambda *a: calls.append(a[1].iteration) or real(*a))
    result = vitreous("abinit", simulated / "particles.star", "-o", out, *FAST, "--resume")
    assert result.code == 0, result.err
    assert calls == [2] and "resuming after mini-batch 2" in result.err
    assert (out / "map.mrc").is_file() and (out / "map_initial.mrc").is_file()


def test_a_finished_resolve_round_is_not_run_again_on_resume(vitreous, simulated: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "job"
    real = abinit_module.resolve_classes
    rounds: list[int] = []

    def interrupted_second(particles, state, assignment, options, round_, progress=None):
        rounds.append(round_)
        if round_ == 1:
            raise KeyboardInterrupt("stopped by the test")
        return real(particles, state, assignment, options, round_, progress)

    monkeypatch.setattr(abinit_module, "resolve_classes", interrupted_second)
    args = ("abinit", simulated / "particles.star", "-o", out, "--classes", "2", "--resolve-rounds", "2", *FAST)
    assert vitreous(*args).code != 0 and rounds == [0, 1]
    assert torch.load(out / "checkpoints/resolve.pt", weights_only=False)["round"] == 1
    rounds.clear()
    monkeypatch.setattr(abinit_module, "resolve_classes", lambda *a, **k: rounds.append(a[4]) or real(*a, **k))
    result = vitreous(*args, "--resume")
    assert result.code == 0, result.err
    assert rounds == [1] and torch.load(out / "checkpoints/resolve.pt", weights_only=False)["round"] == 2


@pytest.mark.parametrize("args, fragments", [
    (("--classes", "0"), ("--classes 0",)),
    (("--classes", str(N + 1)), (f"--classes {N + 1}",)),
    (("--initial-resolution", "10", "--final-resolution", "20"), ("final",)),
    (("--refine-iterations", "-1"), ("--refine-iterations",)),
    (("--resolve-rounds", "-1"), ("--resolve-rounds",)),
])
def test_bad_options_are_one_line(vitreous, simulated: Path, tmp_path: Path, args, fragments) -> None:
    out = tmp_path / "job"
    vitreous("abinit", simulated / "particles.star", "-o", out, *args).assert_error(*fragments)
    assert not out.exists()


def test_particles_without_ctf_are_refused(vitreous, simulated: Path, tmp_path: Path) -> None:
    particles = read_star(simulated / "particles.star")
    bare = particles.particles.drop(columns=["rlnDefocusU", "rlnDefocusV"])
    star = simulated / "no_ctf.star"
    write_star(star, type(particles)(bare, particles.optics, particles.images))
    vitreous("abinit", star, "-o", tmp_path / "job").assert_error("CTF")



def test_classify3d_realign_runs_the_abinit_pipeline_from_the_reference(vitreous, simulated: Path,
                                                                         tmp_path: Path) -> None:
    """The mechanics (accuracy: tests/reconstruct/test_abinit.py and benchmarks/bench_classify3d.py)."""
    from vitreous.io.mrc import write_map

    reference = models_truth([ADK / "adk_closed.pdb"], BOX, APIX).volumes[0].numpy()
    write_map(tmp_path / "reference.mrc", reference, APIX)
    out = tmp_path / "job"
    result = vitreous("classify3d", simulated / "particles.star", "--reference", tmp_path / "reference.mrc",
                      "--classes", "2", "--realign", "-o", out, "--iterations", "3", "--refine-iterations", "1",
                      "--final-resolution", "16")
    assert result.code == 0, result.err
    record = json.loads((out / "job.json").read_text())
    assert record["command"] == "classify3d" and record["params"]["realign"]
    assert len(record["inputs"]) == 2
    table = read_star(out / "particles.star").particles
    assert {*EULER, *SHIFTS, "rlnClassNumber", "vtsClassProbability2"} <= set(table.columns)
    assert (out / "class_001.mrc").is_file() and (out / "class_002_initial.mrc").is_file()
