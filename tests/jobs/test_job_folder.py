"""Job folders: record, log, status on exit, and the refuse / resume / overwrite rules."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path

import pytest

import vitreous
from vitreous.errors import InputError
from vitreous.jobs import FAILED, FINISHED, INTERRUPTED, RUNNING, Job

log = logging.getLogger("vitreous.test")
PARAMS = {"box": 64, "apix": 1.5, "mask": Path("/data/mask.mrc")}


@pytest.fixture
def inputs(tmp_path: Path) -> list[Path]:
    path = tmp_path / "particles.star"
    path.write_text("data_particles\n")
    return [path]


def open_job(folder: Path, inputs: list[Path], params: dict = PARAMS, **kwargs) -> Job:
    return Job.open(folder, command="backproject", params=params, inputs=inputs, console=False, **kwargs)


def record(folder: Path) -> dict:
    return json.loads((folder / "job.json").read_text())


def run_failing(folder: Path, inputs: list[Path], exc: BaseException) -> None:
    with pytest.raises(type(exc)), open_job(folder, inputs):
        raise exc


def test_finished_job_records_everything(tmp_path: Path, inputs: list[Path]) -> None:
    folder = tmp_path / "job"
    job = open_job(folder, inputs)
    assert not folder.exists()  # open only checks; the folder appears with `with`
    with job:
        assert record(folder)["status"] == RUNNING
        job.path("map.mrc").write_text("result")
        log.info("halfway there")
    saved = record(folder)
    assert saved["status"] == FINISHED and saved["error"] is None and saved["ended"] >= saved["started"]
    assert saved["command"] == "backproject" and saved["params"]["mask"] == "/data/mask.mrc"
    assert saved["inputs"][0]["path"] == str(inputs[0].resolve()) and saved["inputs"][0]["size"] == 15
    assert saved["vitreous_version"] == vitreous.__version__ and saved["torch_version"]
    assert saved["host"] and isinstance(saved["argv"], list)
    text = (folder / "run.log").read_text()
    assert "halfway there" in text and "backproject started" in text and "finished" in text
    log.info("after the job")
    assert "after the job" not in (folder / "run.log").read_text()  # handler detached
    assert (folder / "map.mrc").read_text() == "result"


def test_failure_is_recorded_with_traceback(tmp_path: Path, inputs: list[Path]) -> None:
    run_failing(tmp_path / "job", inputs, ValueError("bad value"))
    saved = record(tmp_path / "job")
    assert saved["status"] == FAILED and saved["error"] == "ValueError: bad value"
    assert "Traceback" in (tmp_path / "job" / "run.log").read_text()


def test_input_error_recorded_as_one_line(tmp_path: Path, inputs: list[Path]) -> None:
    run_failing(tmp_path / "job", inputs, InputError("x.star", "broken", "fix it"))
    assert record(tmp_path / "job")["error"] == "x.star: broken; fix: fix it"


def test_ctrl_c_and_sigterm_mean_interrupted(tmp_path: Path, inputs: list[Path]) -> None:
    run_failing(tmp_path / "a", inputs, KeyboardInterrupt())
    assert record(tmp_path / "a")["status"] == INTERRUPTED
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed in the main thread")
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), open_job(tmp_path / "b", inputs):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at the next bytecode
    assert record(tmp_path / "b")["status"] == INTERRUPTED and "SIGTERM" in record(tmp_path / "b")["error"]
    assert signal.getsignal(signal.SIGTERM) == previous


def test_a_second_sigterm_while_the_outcome_is_written_is_ignored(tmp_path: Path, inputs: list[Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun sends SIGTERM to the surviving ranks: one arriving while the job records 'interrupted' must not
    end the process before job.json says so."""
    from vitreous.jobs import job as job_module

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed in the main thread")
    calls: list[int] = []
    real_write = job_module.write_record

    def write_during_sigterm(folder: Path, data: dict) -> None:
        if data["status"] != RUNNING:
            os.kill(os.getpid(), signal.SIGTERM)
        real_write(folder, data)

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        monkeypatch.setattr(job_module, "write_record", write_during_sigterm)
        with pytest.raises(KeyboardInterrupt), open_job(tmp_path / "job", inputs):
            raise KeyboardInterrupt("stopped")
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert record(tmp_path / "job")["status"] == INTERRUPTED and calls == []


def test_system_exit_zero_is_finished(tmp_path: Path, inputs: list[Path]) -> None:
    with pytest.raises(SystemExit), open_job(tmp_path / "job", inputs):
        raise SystemExit(0)
    assert record(tmp_path / "job")["status"] == FINISHED


def test_finished_job_needs_overwrite(tmp_path: Path, inputs: list[Path]) -> None:
    folder = tmp_path / "job"
    with open_job(folder, inputs) as job:
        job.path("old.mrc").write_text("old")
    with pytest.raises(InputError, match="--overwrite"):
        open_job(folder, inputs)
    with pytest.raises(InputError, match="finished"):
        open_job(folder, inputs, resume=True)
    with open_job(folder, inputs, params={"box": 32}, overwrite=True) as job:
        assert not job.path("old.mrc").exists()  # the old job's files are gone
    assert record(folder)["params"] == {"box": 32} and record(folder)["status"] == FINISHED


def test_unfinished_job_needs_resume_or_overwrite(tmp_path: Path, inputs: list[Path]) -> None:
    folder = tmp_path / "job"
    run_failing(folder, inputs, KeyboardInterrupt())
    with pytest.raises(InputError, match="--resume"):
        open_job(folder, inputs)
    job = open_job(folder, inputs, resume=True)
    assert job.resumed
    with job:
        log.info("second attempt")
    saved = record(folder)
    assert saved["status"] == FINISHED and len(saved["attempts"]) == 1
    assert saved["attempts"][0]["status"] == INTERRUPTED
    assert "second attempt" in (folder / "run.log").read_text()


def test_resume_refuses_other_parameters_or_inputs(tmp_path: Path, inputs: list[Path]) -> None:
    folder = tmp_path / "job"
    run_failing(folder, inputs, RuntimeError("crash"))
    with pytest.raises(InputError, match="box 64 -> 128"):
        open_job(folder, inputs, params={**PARAMS, "box": 128}, resume=True)
    with pytest.raises(InputError, match="command"):
        Job.open(folder, command="refine", params=PARAMS, inputs=inputs, resume=True)
    inputs[0].write_text("data_particles\n# edited\n")
    with pytest.raises(InputError, match="changed since the job started"):
        open_job(folder, inputs, resume=True)
    assert record(folder)["status"] == FAILED  # refusals leave the folder alone


def test_resume_in_an_empty_folder_starts_afresh(tmp_path: Path, inputs: list[Path]) -> None:
    job = open_job(tmp_path / "new", inputs, resume=True)
    assert not job.resumed
    with job:
        pass
    assert record(tmp_path / "new")["status"] == FINISHED


def test_running_job_of_a_live_process_is_refused(tmp_path: Path, inputs: list[Path]) -> None:
    folder = tmp_path / "job"
    with open_job(folder, inputs):
        pass
    saved = record(folder)
    saved.update(status=RUNNING, pid=os.getppid())  # the parent process: alive, on this host
    (folder / "job.json").write_text(json.dumps(saved))
    with pytest.raises(InputError, match="still running"):
        open_job(folder, inputs, resume=True)


def test_folders_that_are_not_jobs_are_never_touched(tmp_path: Path, inputs: list[Path]) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    for kwargs in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(InputError, match="not a vitreous job folder"):
            open_job(folder, inputs, **kwargs)
    (folder / "job.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a vitreous job record"):
        open_job(folder, inputs, overwrite=True)
    assert (folder / "thesis.tex").read_text() == "precious"
    with pytest.raises(InputError, match="not a folder"):
        open_job(inputs[0], inputs)
    with pytest.raises(InputError, match="exclude each other"):
        open_job(tmp_path / "x", inputs, overwrite=True, resume=True)


def test_result_paths_stay_inside(tmp_path: Path, inputs: list[Path]) -> None:
    job = open_job(tmp_path / "job", inputs)
    assert job.path("maps/half1.mrc") == tmp_path / "job" / "maps" / "half1.mrc"
    for name in ("../escape.mrc", "/etc/passwd"):
        with pytest.raises(ValueError):
            job.path(name)
