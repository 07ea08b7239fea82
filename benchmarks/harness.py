"""Fair, dependency-free measurement of benchmark commands (vitreous and peer tools alike).

``run_measured`` runs one command in a fresh subprocess with the same thread limits for every
tool and reports its wall time and the peak resident memory of its whole process tree.

The child and all its descendants are sampled from ``/proc/<pid>/status`` every ``poll_s``
seconds (psutil is not in the vitreous venv; Linux only). ``peak_rss_mb`` is the larger of

* ``tree_peak_rss_mb``: the peak over samples of the summed ``VmRSS`` of the tree (counts
  concurrent workers, but misses spikes shorter than the sampling interval), and
* ``hwm_rss_mb``: the largest per-process ``VmHWM``, the kernel's own high-water mark of each
  process since its exec (exact, except growth in the last ``poll_s`` before it exits).

``ru_maxrss`` from ``wait4`` is reported as ``ru_maxrss_mb`` but not used: Linux folds the
pre-exec memory map into it, so it is never below the launching (driver) process's own RSS.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULT_THREADS = 2
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "TORCH_NUM_THREADS",
)


def thread_env(threads: int = DEFAULT_THREADS, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a copy of ``env`` (default ``os.environ``) with all thread-pool sizes set to ``threads``."""
    out = dict(os.environ if env is None else env)
    for var in THREAD_ENV_VARS:
        out[var] = str(threads)
    return out


def _ppid_map() -> dict[int, int]:
    """Map pid -> parent pid for every process visible in /proc."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Fields after the last ')' (the command name may contain spaces or parentheses).
        fields = stat[stat.rfind(b")") + 2 :].split()
        parents[int(name)] = int(fields[1])
    return parents


def _mem_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of one process in KiB; zeros if it has gone or is a zombie."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return rss, hwm


def tree_mem_kb(root: int) -> dict[int, tuple[int, int]]:
    """(VmRSS, VmHWM) in KiB for ``root`` and each of its descendants, keyed by pid."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppid_map().items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, tuple[int, int]] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        out[pid] = _mem_kb(pid)
        stack.extend(children.get(pid, ()))
    return out


def _kill_group(pgid: int) -> None:
    """SIGKILL a process group, ignoring one that has already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _tail(path: Path, max_chars: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - max_chars))
        return fh.read().decode("utf-8", errors="replace")


def run_measured(
    cmd: Sequence[str | os.PathLike[str]],
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    threads: int = DEFAULT_THREADS,
    timeout: float | None = None,
    poll_s: float = 0.05,
    tail_chars: int = 4000,
    log_path: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run ``cmd`` and measure wall time and peak RSS of its process tree.

    ``env`` defaults to ``os.environ``; thread-pool variables are overwritten with ``threads``.
    stdout and stderr are merged into ``log_path`` (a temporary file if None).
    On ``timeout`` the process group is killed and ``returncode`` is None.

    Returns a dict with ``wall_s``, ``peak_rss_mb``, ``returncode``, ``stdout_tail`` plus
    ``tree_peak_rss_mb``, ``hwm_rss_mb``, ``ru_maxrss_mb``, ``user_s``, ``sys_s``, ``threads``, ``timed_out``, ``cmd``.
    """
    argv = [os.fspath(c) for c in cmd]
    run_env = thread_env(threads, env)
    tmp = None
    if log_path is None:
        tmp = tempfile.NamedTemporaryFile(prefix="bench-", suffix=".log", delete=False)  # noqa: SIM115
        tmp.close()
        log_path = tmp.name
    log = Path(log_path)
    tree_peak_kb = 0
    hwm_kb: dict[int, int] = {}
    stop = threading.Event()

    def sample(root: int) -> None:
        nonlocal tree_peak_kb
        while not stop.is_set():
            mem = tree_mem_kb(root)
            tree_peak_kb = max(tree_peak_kb, sum(rss for rss, _ in mem.values()))
            for p, (_, hwm) in mem.items():
                hwm_kb[p] = max(hwm_kb.get(p, 0), hwm)
            stop.wait(poll_s)

    try:
        with open(log, "wb") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                argv, cwd=cwd, env=run_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            sampler = threading.Thread(target=sample, args=(proc.pid,), daemon=True)
            sampler.start()
            killer = None
            if timeout is not None:
                killer = threading.Timer(timeout, _kill_group, args=(proc.pid,))
                killer.start()
            # Blocking wait4: exact wall time and the child's rusage; Popen is told the status.
            _, status, rusage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            stop.set()
            sampler.join()
            timed_out = killer is not None and killer.finished.is_set() and proc.returncode == -signal.SIGKILL
            if killer is not None:
                killer.cancel()
        tree_mb = tree_peak_kb / 1024.0
        hwm_mb = max(hwm_kb.values(), default=0) / 1024.0
        return {
            "cmd": argv,
            "wall_s": wall,
            "peak_rss_mb": max(tree_mb, hwm_mb),
            "tree_peak_rss_mb": tree_mb,
            "hwm_rss_mb": hwm_mb,
            "ru_maxrss_mb": rusage.ru_maxrss / 1024.0,  # Linux reports KiB
            "user_s": rusage.ru_utime,
            "sys_s": rusage.ru_stime,
            "returncode": None if timed_out else proc.returncode,
            "timed_out": timed_out,
            "threads": threads,
            "stdout_tail": _tail(log, tail_chars),
        }
    finally:
        if tmp is not None:
            os.unlink(tmp.name)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:,.2f}"
    return "" if value is None else str(value)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Print ``rows`` as an aligned plain-text table and return the text.

    Columns default to the union of keys in first-seen order; numbers are right-aligned.
    """
    if not rows:
        print("(no rows)")
        return "(no rows)"
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), int | float) or row.get(c) is None for row in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    text = "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])
    print(text)
    return text


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON (paths and numpy values converted), creating parent dirs."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return out
