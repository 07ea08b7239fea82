"""Whether a job may use an output folder: new, resume an unfinished job, or overwrite a job folder.

Rules: a missing or empty folder starts a new job.  A finished job is replaced only with ``overwrite``.
An unfinished one (running, failed, interrupted) needs ``resume`` (same command, parameters and inputs)
or ``overwrite``.  A non-empty folder without ``job.json`` is never touched, not even with ``overwrite``.
"""

from __future__ import annotations

import enum
import os
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitreous.errors import InputError
from vitreous.jobs.record import FINISHED, RUNNING, differences, read_record


class Mode(enum.Enum):
    """How a job uses its folder."""

    NEW = "new"
    RESUME = "resume"
    OVERWRITE = "overwrite"


def decide(folder: Path, command: str, params: Mapping[str, Any] | None, inputs: list[dict[str, Any]], *,
           overwrite: bool, resume: bool) -> tuple[Mode, dict[str, Any] | None]:
    """The mode for a job in ``folder`` and the record found there (None when new); InputError when refused."""
    if overwrite and resume:
        raise InputError(None, "--overwrite and --resume exclude each other", "give only one of them")
    if folder.exists() and not folder.is_dir():
        raise InputError(folder, "exists and is not a folder", "choose another output folder")
    if not folder.exists() or not any(folder.iterdir()):
        return Mode.NEW, None
    record = read_record(folder)
    if record is None:
        raise InputError(folder, "is not empty and is not a vitreous job folder (no job.json)",
                         "choose a new or empty output folder")
    status = record["status"]
    what = f"a {status} '{record.get('command')}' job (started {record.get('started')})"
    if overwrite:
        return Mode.OVERWRITE, record
    if status == FINISHED:
        fix = "use --overwrite to run it again" if resume else "use --overwrite to replace it, or another folder"
        raise InputError(folder, f"holds {what}", fix)
    if not resume:
        raise InputError(folder, f"holds {what}", "use --resume to continue it or --overwrite to start again")
    if status == RUNNING and _alive(record):
        raise InputError(folder, f"holds {what} that is still running (process {record.get('pid')})",
                         "wait for it, or stop that process first")
    changed = differences(record, command, params, inputs)
    if changed:
        raise InputError(folder, f"cannot resume: {'; '.join(changed)}",
                         "resume with the same command, options and inputs, or use --overwrite")
    return Mode.RESUME, record


def _alive(record: Mapping[str, Any]) -> bool:
    """Whether the process that wrote a 'running' record still runs (on this host)."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clear(folder: Path) -> None:
    """Remove everything inside a job folder (the caller has checked that it is one)."""
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
