"""``vitreous ARGS...`` as the distributed tests launch it under ``torchrun`` (one copy per rank).

With ``VITREOUS_TEST_STOP_AFTER=K`` every rank stops (KeyboardInterrupt, as after torchrun's SIGTERM) right
after the checkpoint of iteration K has been saved, so that a test can resume the job with another number of
processes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from vitreous.cli.main import run
from vitreous.jobs.job import FollowerJob, Job


def stop_after(iteration: int) -> None:
    """Make ``save_checkpoint`` (rank 0's Job and the other ranks' FollowerJob) stop after ``iteration``."""
    for cls in (Job, FollowerJob):
        save = cls.save_checkpoint

        def save_then_stop(self: Job, name: str, obj: Any, save=save) -> Path:
            path = save(self, name, obj)
            if obj["iteration"] == iteration:
                raise KeyboardInterrupt("stopped by the test")
            return path

        cls.save_checkpoint = save_then_stop


if __name__ == "__main__":
    if "VITREOUS_TEST_STOP_AFTER" in os.environ:
        stop_after(int(os.environ["VITREOUS_TEST_STOP_AFTER"]))
    sys.argv = ["vitreous", *sys.argv[1:]]
    run()
