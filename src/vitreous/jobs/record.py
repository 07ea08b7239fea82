"""The job record ``job.json``: what ran, with which parameters and inputs, where, and how it ended."""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import vitreous
from vitreous.errors import InputError
from vitreous.io.atomic import write_json

JOB_FILE = "job.json"
FORMAT = 1
RUNNING, FINISHED, FAILED, INTERRUPTED = "running", "finished", "failed", "interrupted"
UNFINISHED = (RUNNING, FAILED, INTERRUPTED)


def now() -> str:
    """The current time as an ISO 8601 string with time zone."""
    return datetime.now(UTC).astimezone().isoformat(timespec="seconds")


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def normalise_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Parameters as they read back from JSON (paths and other objects become strings)."""
    return json.loads(json.dumps(dict(params or {}), default=str, sort_keys=True))


def describe_inputs(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Absolute path, size (bytes) and modification time of each input; size None where it does not exist."""
    described = []
    for path in paths:
        path = Path(path).resolve()
        try:
            stat = path.stat()
        except OSError:
            described.append({"path": str(path), "size": None, "mtime": None, "mtime_ns": None})
            continue
        mtime = datetime.fromtimestamp(stat.st_mtime, UTC).astimezone().isoformat(timespec="seconds")
        described.append({"path": str(path), "size": stat.st_size, "mtime": mtime, "mtime_ns": stat.st_mtime_ns})
    return described


def new_record(command: str, params: Mapping[str, Any] | None, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """A fresh record for a job about to start (status ``running``); ``inputs`` from :func:`describe_inputs`."""
    return {
        "vitreous_job": FORMAT,
        "command": command,
        "argv": list(sys.argv),
        "params": normalise_params(params),
        "inputs": inputs,
        "status": RUNNING,
        "error": None,
        "started": now(),
        "ended": None,
        "attempts": [],
        **environment(),
    }


def environment() -> dict[str, Any]:
    """Versions, host and process of this run (torch's version is read without importing torch)."""
    return {
        "vitreous_version": vitreous.__version__,
        "torch_version": _package_version("torch"),
        "python_version": platform.python_version(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def read_record(folder: Path) -> dict[str, Any] | None:
    """The record in ``folder/job.json``; None when there is none, an InputError when it is not a job record."""
    path = folder / JOB_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable job record ({type(exc).__name__})",
                         "choose another output folder or delete this one") from None
    if not isinstance(record, dict) or "vitreous_job" not in record or "status" not in record:
        raise InputError(path, "not a vitreous job record", "choose another output folder")
    return record


def write_record(folder: Path, record: Mapping[str, Any]) -> None:
    """Write ``folder/job.json`` atomically."""
    write_json(folder / JOB_FILE, dict(record))


def differences(record: Mapping[str, Any], command: str, params: Mapping[str, Any] | None,
                inputs: list[dict[str, Any]]) -> list[str]:
    """How a new run (command, parameters, inputs) differs from the recorded one, one phrase per difference."""
    found = []
    if record.get("command") != command:
        found.append(f"command {record.get('command')!r} -> {command!r}")
    old, new = record.get("params", {}), normalise_params(params)
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            found.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    old_inputs = {i["path"]: i for i in record.get("inputs", [])}
    new_inputs = {i["path"]: i for i in inputs}
    for path in sorted(set(old_inputs) ^ set(new_inputs)):
        found.append(f"input {path} {'added' if path in new_inputs else 'removed'}")
    for path in sorted(set(old_inputs) & set(new_inputs)):
        a, b = old_inputs[path], new_inputs[path]
        if (a.get("size"), a.get("mtime_ns")) != (b.get("size"), b.get("mtime_ns")):
            found.append(f"input {path} changed since the job started")
    return found
