"""``vitreous backproject``, ``refine`` and ``classify3d`` under ``torchrun`` (2 processes, gloo): the same maps,
poses and posteriors as one process, one job written by rank 0, and checkpoints that resume with another
number of processes (2 -> 1 for refine, 1 -> 2 for classify3d).

Data: the bundled adenylate kinase model, box 32, 3 Å/px, SNR 1; 200 particles (also for classification, half
of them showing the model with an added blob).  Refinement: a global search, then a local one.  Every torchrun
launch starts 2 Python processes (~5 s on an idle 2-core machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vitreous.cli.classify3d import run_classify3d
from vitreous.cli.refine import run_refine
from vitreous.io.formats import read_particles
from vitreous.io.mrc import read_map, write_map
from vitreous.io.star import write_star
from vitreous.jobs import Job
from vitreous.physics.fourier import radius_grid
from vitreous.reconstruct.backproject import backproject, solvent_mask
from vitreous.reconstruct.classify3d import ClassificationState, classify3d
from vitreous.reconstruct.refine import RefineOptions, RefineState, initial_state, refine
from vitreous.sim.particles import Acquisition, simulate_stack
from vitreous.sim.truth import models_truth

BOX, APIX, N = 32, 3.0, 200
WORKER = Path(__file__).with_name("classical_worker.py")
# both iterations global: a local second iteration may be discarded (refine's lost_ground), leaving nothing to resume
REFINE = RefineOptions(max_iterations=2, global_iterations=2, batch_size=100)
REFINE_ARGS = ("--global-iterations", 2, "--batch-size", 100)  # with "--iterations 2": REFINE
CLASSIFY = {"classes": 2, "tolerance": 0.0}


def torchrun(*args: object, stop_after: int | None = None) -> subprocess.CompletedProcess:
    """``vitreous ARGS`` as 2 processes under ``torchrun --standalone`` (gloo); ``stop_after`` K: every rank
    stops after the checkpoint of iteration K (see ``classical_worker.py``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("VITREOUS_TEST_STOP_AFTER", None)
    if stop_after is not None:
        env["VITREOUS_TEST_STOP_AFTER"] = str(stop_after)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER),
               *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def assert_written_by_one_rank(out: Path, status: str = "finished") -> dict[str, Any]:
    """job.json has ``status``; run.log was written by one process (one 'started'/'resumed' line per run)."""
    record = json.loads((out / "job.json").read_text())
    assert record["status"] == status, record
    log = (out / "run.log").read_text()
    assert log.count(" started in ") + log.count(" resumed in ") == 1 + len(record.get("attempts", []))
    return record


def assert_maps_close(a: np.ndarray, b: np.ndarray, rtol: float) -> None:
    """Equal up to ``rtol`` of the largest value (float32 sums in another order)."""
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * np.abs(b).max())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """particles.star (one state, true poses), mixture.star (two states) and truth.mrc."""
    root = tmp_path_factory.mktemp("distributed")
    with resources.as_file(resources.files("vitreous.resources") / "adk_closed.pdb.gz") as path:
        truth = models_truth([path], BOX, APIX).volumes
    acquisition = Acquisition(apix=APIX, snr=1.0, astigmatism_A=300.0, shift_sd_px=1.0, seed=11)
    write_star(root / "particles.star",
               simulate_stack(truth, np.zeros(N, np.int64), root / "particles.mrcs", acquisition))
    blob = truth[0].max() * torch.exp(-radius_grid(BOX, 3) ** 2 / 8).roll(shifts=(6, 6, 0), dims=(0, 1, 2))
    states = np.arange(N) % 2
    write_star(root / "mixture.star", simulate_stack(torch.stack([truth[0], truth[0] + blob]), states,
                                                     root / "mixture.mrcs", acquisition))
    write_map(root / "truth.mrc", truth[0].numpy(), APIX)
    return {"star": root / "particles.star", "mixture": root / "mixture.star", "truth": root / "truth.mrc"}


# ---- backproject -----------------------------------------------------------------------------------------
def test_backproject_two_ranks_give_the_maps_of_one_process(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "job"
    done = torchrun("backproject", data["star"], "-o", out, "--batch-size", 64)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_written_by_one_rank(out)
    single = backproject(read_particles(data["star"]), batch_size=64, filtered_halves=False)
    assert_maps_close(read_map(out / "half_map_1.mrc")[0], single.half1_unfiltered, 1e-5)
    assert_maps_close(read_map(out / "half_map_2.mrc")[0], single.half2_unfiltered, 1e-5)
    assert_maps_close(read_map(out / "map.mrc")[0], single.full * solvent_mask(BOX, APIX), 1e-5)
    assert "FSC=0.143 (half maps, Å)" in done.stderr  # the summary, printed by rank 0
    assert done.stderr.count("FSC=0.143 (half maps, Å)") == 1


# ---- refine ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def refined(data: dict[str, Path]) -> list[RefineState]:
    """Two iterations in this process (the reference for the distributed runs)."""
    particles = read_particles(data["star"])
    states: list[RefineState] = []
    refine(particles, initial_state(particles, read_map(data["truth"])[0], REFINE), REFINE,
           on_iteration=states.append)
    return states


def _saved_refine(out: Path) -> RefineState:
    return RefineState.from_dict(torch.load(out / "checkpoints/refine.pt", weights_only=False))


def test_refine_iteration_on_two_ranks_matches_one_process(data: dict[str, Path], refined: list[RefineState],
                                                           tmp_path: Path) -> None:
    out = tmp_path / "job"
    done = torchrun("refine", data["star"], "--reference", data["truth"], "-o", out, "--iterations", 1, *REFINE_ARGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_written_by_one_rank(out)
    assert (out / "particles.star").is_file() and (out / "map.mrc").is_file()
    state, single = _saved_refine(out), refined[0]
    assert state.iteration == 1
    np.testing.assert_array_equal(state.halves, single.halves)
    np.testing.assert_allclose(state.rotations, single.rotations, atol=1e-6)  # the same best poses
    np.testing.assert_allclose(state.shifts_px, single.shifts_px, atol=1e-6)
    np.testing.assert_allclose(state.max_weight, single.max_weight, atol=1e-4)
    for a, b in zip(state.references, single.references, strict=True):
        assert_maps_close(a, b, 1e-4)
    assert state.resolution_A == pytest.approx(single.resolution_A, rel=1e-3)


def test_refine_checkpoint_of_two_ranks_resumes_in_one_process(data: dict[str, Path], refined: list[RefineState],
                                                               tmp_path: Path) -> None:
    out = tmp_path / "job"
    done = torchrun("refine", data["star"], "--reference", data["truth"], "-o", out, "--iterations", 2, *REFINE_ARGS,
                    stop_after=1)
    assert done.returncode != 0  # torchrun reports the interrupted ranks
    assert_written_by_one_rank(out, "interrupted")
    assert _saved_refine(out).iteration == 1 and not (out / "map.mrc").exists()

    run_refine(data["star"], data["truth"], out, REFINE, resume=True)  # one process
    record = assert_written_by_one_rank(out)
    assert [a["status"] for a in record["attempts"]] == ["interrupted"]
    state, single = _saved_refine(out), refined[1]
    assert state.iteration == 2
    np.testing.assert_allclose(state.rotations, single.rotations, atol=1e-6)  # measured: the same poses
    for a, b in zip(state.references, single.references, strict=True):
        assert_maps_close(a, b, 1e-4)  # measured 5e-7
    assert state.resolution_A == pytest.approx(single.resolution_A, rel=1e-3)


# ---- classify3d ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classified(data: dict[str, Path]) -> list[ClassificationState]:
    """Initialisation and two iterations in this process."""
    states: list[ClassificationState] = []
    classify3d(read_particles(data["mixture"]), read_map(data["truth"])[0], iterations=2,
               on_state=lambda s: states.append(ClassificationState.from_dict(s.to_dict())), **CLASSIFY)
    return states


def _saved_classes(out: Path) -> ClassificationState:
    return ClassificationState.from_dict(torch.load(out / "checkpoints/state.pt", weights_only=False))


def test_classify3d_iteration_on_two_ranks_matches_one_process(data: dict[str, Path],
                                                               classified: list[ClassificationState],
                                                               tmp_path: Path) -> None:
    out = tmp_path / "job"
    done = torchrun("classify3d", data["mixture"], "--reference", data["truth"], "-K", 2, "--iterations", 1,
                    "--tolerance", 0, "-o", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_written_by_one_rank(out)
    state, single = _saved_classes(out), classified[1]
    assert state.iteration == 1 and state.limit == single.limit
    posteriors = state.posteriors.numpy()
    assert 0.3 < (posteriors[:, 0] > 0.5).mean() < 0.7  # the classes are not trivial
    np.testing.assert_allclose(posteriors, single.posteriors.numpy(), atol=1e-5)
    np.testing.assert_allclose(state.noise.numpy(), single.noise.numpy(), rtol=1e-5)
    assert_maps_close(state.half_maps.numpy(), single.half_maps.numpy(), 1e-5)


def test_classify3d_checkpoint_of_one_process_resumes_on_two_ranks(data: dict[str, Path],
                                                                   classified: list[ClassificationState],
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "job"
    save = Job.save_checkpoint

    def save_then_stop(self: Job, name: str, obj: Any) -> Path:
        path = save(self, name, obj)
        if obj["iteration"] == 1:
            raise KeyboardInterrupt("stopped by the test")
        return path

    monkeypatch.setattr(Job, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_classify3d(data["mixture"], out, reference=data["truth"], iterations=2, **CLASSIFY)
    monkeypatch.undo()
    done = torchrun("classify3d", data["mixture"], "--reference", data["truth"], "-K", 2, "--iterations", 2,
                    "--tolerance", 0, "-o", out, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    record = assert_written_by_one_rank(out)
    assert [a["status"] for a in record["attempts"]] == ["interrupted"]
    state, single = _saved_classes(out), classified[2]
    assert state.iteration == 2
    np.testing.assert_allclose(state.posteriors.numpy(), single.posteriors.numpy(), atol=1e-5)  # measured 1e-7
    assert_maps_close(state.maps.numpy(), single.maps.numpy(), 1e-5)


def test_classify3d_realign_is_refused_under_torchrun(data: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    from vitreous.cli.main import run

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before the process group is joined
    monkeypatch.setattr(sys, "argv", ["vitreous", "classify3d", str(data["mixture"]), "--reference",
                                      str(data["truth"]), "-K", "2", "--realign", "-o", str(tmp_path / "job")])
    with pytest.raises(SystemExit) as stopped:
        run()
    assert stopped.value.code == 2
    assert "--realign does not run under torchrun" in capsys.readouterr().err
    assert not (tmp_path / "job").exists()
