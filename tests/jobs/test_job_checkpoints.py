"""Checkpoints: atomic torch.save files that survive a killed job and are cleared by --overwrite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vitreous.errors import InputError
from vitreous.jobs import INTERRUPTED, Job


def open_job(folder: Path, **kwargs) -> Job:
    return Job.open(folder, command="refine", params={"iterations": 3}, console=False, **kwargs)


def test_save_and_load(tmp_path: Path) -> None:
    with open_job(tmp_path / "job") as job:
        assert job.load_checkpoint("state") is None and not job.has_checkpoint("state")
        state = {"iteration": 2, "volume": torch.arange(8.0).reshape(2, 2, 2), "angles": np.array([1.5, 2.5])}
        path = job.save_checkpoint("state", state)
        assert path == tmp_path / "job" / "checkpoints" / "state.pt" and job.has_checkpoint("state")
        back = job.load_checkpoint("state")
    assert back["iteration"] == 2
    assert torch.equal(back["volume"], state["volume"])
    np.testing.assert_array_equal(back["angles"], state["angles"])


def test_a_scope_keeps_its_results_and_checkpoints_apart_from_the_jobs(tmp_path: Path) -> None:
    with open_job(tmp_path / "job") as job:
        job.save_checkpoint("state", {"whole": True})
        part = job.scope("part_001")
        assert part.load_checkpoint("state") is None and part.resumed is job.resumed is False
        part.save_checkpoint("state", {"whole": False})
        assert job.load_checkpoint("state") == {"whole": True}
        assert part.load_checkpoint("state") == {"whole": False}
        assert job.has_checkpoint("part_001.state")
        result = part.path("map.mrc")
    assert result == tmp_path / "job" / "part_001" / "map.mrc" and result.parent.is_dir()


def test_resume_after_a_kill_keeps_finished_work(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    done = []
    with pytest.raises(KeyboardInterrupt), open_job(folder) as job:
        for iteration in range(3):
            if iteration == 2:
                raise KeyboardInterrupt
            done.append(iteration)
            job.save_checkpoint("iteration", {"next": iteration + 1})
    assert job.status == INTERRUPTED
    with open_job(folder, resume=True) as job:
        start = job.load_checkpoint("iteration")["next"]
        done.extend(range(start, 3))
    assert done == [0, 1, 2]
    with open_job(folder, overwrite=True) as job:
        assert job.load_checkpoint("iteration") is None


def test_failed_save_leaves_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_job(tmp_path / "job") as job:
        job.save_checkpoint("state", {"step": 1})

        def crash(obj, path):
            Path(path).write_bytes(b"half a file")
            raise OSError("disk full")

        monkeypatch.setattr(torch, "save", crash)
        with pytest.raises(OSError, match="disk full"):
            job.save_checkpoint("state", {"step": 2})
        monkeypatch.undo()
        assert job.load_checkpoint("state") == {"step": 1}
        assert [p.name for p in (tmp_path / "job" / "checkpoints").iterdir()] == ["state.pt"]


def test_bad_names_and_corrupt_files(tmp_path: Path) -> None:
    with open_job(tmp_path / "job") as job:
        for name in ("../x", "a/b", "", ".hidden"):
            with pytest.raises(ValueError):
                job.save_checkpoint(name, 1)
        job.checkpoints.path("broken").parent.mkdir(parents=True, exist_ok=True)
        job.checkpoints.path("broken").write_bytes(b"not a checkpoint")
        with pytest.raises(InputError, match="--overwrite"):
            job.load_checkpoint("broken")
