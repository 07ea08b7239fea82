"""Job: one command's output folder, with its record (job.json), log (run.log), checkpoints and report."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from vitreous.errors import InputError
from vitreous.jobs.checkpoints import Checkpoints
from vitreous.jobs.folder import Mode, clear, decide
from vitreous.jobs.logs import JobLog
from vitreous.jobs.record import (
    FAILED,
    FINISHED,
    INTERRUPTED,
    JOB_FILE,
    RUNNING,
    describe_inputs,
    environment,
    new_record,
    now,
    write_record,
)

if TYPE_CHECKING:
    from vitreous.distributed.ranks import Ranks
    from vitreous.report.html import Report

log = logging.getLogger(__name__)
LOG_FILE = "run.log"
REPORT_FILE = "report.html"


class Job:
    """A command's output folder.  Use as ``with Job.open(...) as job:``; see :mod:`vitreous.jobs`."""

    def __init__(self, folder: Path, mode: Mode, record: dict[str, Any], console: bool) -> None:
        self.folder = folder
        self.mode = mode
        self.record = record
        self.console = console
        self.checkpoints = Checkpoints(folder / "checkpoints")
        self._log: JobLog | None = None
        self._sigterm: Any = None

    @classmethod
    def open(cls, out_dir: str | Path, *, command: str, params: Mapping[str, Any] | None = None,
             inputs: Iterable[str | Path] = (), overwrite: bool = False, resume: bool = False,
             console: bool = True, ranks: Ranks | None = None) -> Job:
        """Check that ``out_dir`` may hold this job (InputError if not); nothing is written until ``with``.

        ``params`` are the command's options (JSON-able; paths become strings), ``inputs`` the files it
        reads.  ``resume`` continues an unfinished job with the same command, parameters and inputs;
        ``overwrite`` replaces any earlier job in the folder.  ``console`` also logs to the terminal.
        Under ``torchrun`` (``ranks``), every rank decides on the folder as it is before any of them enters
        it; rank 0 gets the job, the other ranks a :class:`FollowerJob` that reads checkpoints but writes nothing.
        """
        folder = Path(out_dir)
        described = describe_inputs(inputs)
        mode, old = decide(folder, command, params, described, overwrite=overwrite, resume=resume)
        if ranks is not None and ranks.distributed:
            ranks.barrier()
        if ranks is not None and not ranks.is_main:
            return FollowerJob(folder, mode, {}, console=False)
        if mode is Mode.RESUME and old is not None:
            record = dict(old)
            attempt = {key: old.get(key) for key in ("started", "ended", "status", "error", "argv")}
            record["attempts"] = [*old.get("attempts", []), attempt]
        else:
            record = new_record(command, params, described)
        return cls(folder, mode, record, console)

    @property
    def resumed(self) -> bool:
        """Whether this run continues an unfinished job (so checkpoints may hold finished work)."""
        return self.mode is Mode.RESUME

    @property
    def status(self) -> str:
        """The status in job.json: running, finished, failed or interrupted."""
        return self.record["status"]

    def path(self, name: str | Path) -> Path:
        """Where result ``name`` (a relative path) goes inside the job folder."""
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"job result names are relative paths inside the job folder, not {name}")
        return self.folder / relative

    # ---- lifetime ----------------------------------------------------------------------------------
    def __enter__(self) -> Job:
        if self.mode is Mode.OVERWRITE:
            clear(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.mode is Mode.RESUME:
            self.record.update(environment(), argv=list(sys.argv), started=now())
        self.record.update(status=RUNNING, error=None, ended=None)
        write_record(self.folder, self.record)
        self._log = JobLog(self.folder / LOG_FILE, console=self.console)
        self._catch_sigterm()
        log.info("vitreous %s %s in %s", self.record["command"], "resumed" if self.resumed else "started",
                 self.folder)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._sigterm is not None:  # a second SIGTERM (torchrun stopping the survivors) must not cut this short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            status, error = _outcome(exc)
            assert self._log is not None
            if status == FINISHED:
                log.info("vitreous %s finished", self.record["command"])
            else:
                self._log.error(f"vitreous {self.record['command']} {status}: {error}", exc)
            self.record.update(status=status, error=error, ended=now())
            write_record(self.folder, self.record)
            self._log.close()
            self._log = None
        finally:
            self._restore_sigterm()

    def _catch_sigterm(self) -> None:
        """Turn SIGTERM (a scheduler's time limit, ``kill``) into KeyboardInterrupt: status 'interrupted'."""
        if threading.current_thread() is not threading.main_thread():
            return

        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt("terminated by SIGTERM")

        self._sigterm = signal.signal(signal.SIGTERM, interrupt)

    def _restore_sigterm(self) -> None:
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None

    # ---- checkpoints and report --------------------------------------------------------------------
    def save_checkpoint(self, name: str, obj: Any) -> Path:
        """Save ``obj`` with torch.save as ``checkpoints/NAME.pt``, atomically."""
        return self.checkpoints.save(name, obj)

    def load_checkpoint(self, name: str) -> Any | None:
        """The object of checkpoint ``name``, or None when it was never saved."""
        return self.checkpoints.load(name)

    def has_checkpoint(self, name: str) -> bool:
        """Whether checkpoint ``name`` exists."""
        return self.checkpoints.has(name)

    def scope(self, name: str) -> JobScope:
        """A part of this job that runs another command's stages: see :class:`JobScope`."""
        return JobScope(self, name)

    def write_report(self, report: Report) -> Path:
        """Write ``report`` as ``report.html`` with a closing 'Job' section linking run.log and job.json."""
        report.section("Job")
        report.key_values({
            "command": " ".join(self.record.get("argv", [])) or self.record["command"],
            "vitreous": self.record.get("vitreous_version"),
            "torch": self.record.get("torch_version"),
            "host": self.record.get("host"),
            "started": self.record.get("started"),
        })
        if self.record.get("params"):
            report.key_values(self.record["params"], caption="Parameters")
        report.links({"run.log": LOG_FILE, "job.json": JOB_FILE})
        return report.write(self.path(REPORT_FILE))


class FollowerJob(Job):
    """A non-zero rank's view of the job under ``torchrun``: it reads the folder (checkpoints, for ``--resume``)
    and never writes to it; rank 0's :class:`Job` writes the record, log, checkpoints, results and report."""

    def __enter__(self) -> Job:
        self._catch_sigterm()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._restore_sigterm()

    def save_checkpoint(self, name: str, obj: Any) -> Path:
        return self.checkpoints.path(name)

    def write_report(self, report: Report) -> Path:
        return self.path(REPORT_FILE)


class JobScope:
    """A part of a job, for code written for a whole job (``resumed``, ``path``, checkpoints): its results go to
    the subfolder ``NAME/``, its checkpoints are named ``NAME.CHECKPOINT``; the job's own are untouched."""

    def __init__(self, job: Job, name: str) -> None:
        self.job, self.name = job, name

    @property
    def resumed(self) -> bool:
        return self.job.resumed

    def path(self, name: str | Path) -> Path:
        path = self.job.path(Path(self.name) / name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def save_checkpoint(self, name: str, obj: Any) -> Path:
        return self.job.save_checkpoint(f"{self.name}.{name}", obj)

    def load_checkpoint(self, name: str) -> Any | None:
        return self.job.load_checkpoint(f"{self.name}.{name}")


def _outcome(exc: BaseException | None) -> tuple[str, str | None]:
    """Job status and error message for how the ``with`` block ended."""
    if exc is None:
        return FINISHED, None
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED, str(exc) or "interrupted (Ctrl-C)"
    if isinstance(exc, SystemExit) and exc.code in (None, 0):
        return FINISHED, None
    if isinstance(exc, InputError):
        return FAILED, exc.one_line()
    return FAILED, f"{type(exc).__name__}: {exc}"
