"""``vitreous backproject`` as 2 ``torchrun`` processes (gloo) against 1 process with 1 and with 2 threads.

1. ``vitreous simulate``: ``--n`` particles (default 20000) of the closed adenylate kinase model, box 64,
   1.5 Å/px, SNR 0.1 (as ``bench_backproject.py``), into ``OUT/sim``; the stack is read once before timing so
   every case finds it in the page cache.
2. The command as a user runs it (``harness.run_measured``: wall time, CPU time and peak RSS of the process
   tree, torchrun's agent included), interleaved ``--repeats`` times:
   ``1x1``: ``vitreous backproject`` with 1 thread; ``1x2``: with 2 threads; ``2x1``: ``torchrun --standalone
   --nproc-per-node 2 vitreous backproject`` (torchrun gives each rank 1 thread).
3. The same three cases timing only the library call (``--worker``: ``backproject(particles, ranks=...)``
   between barriers, i.e. reading, inserting, the all-reduce of the accumulators and the reconstruction,
   without Python start-up, input checks and the job's outputs), plus the all-reduce of empty accumulators of
   the same size (2 halves x (complex numerator + weights) on the 2x oversampled grid) on its own.
4. Agreement: the largest difference between the half maps of ``2x1`` and ``1x1``, relative to their maximum.

Prints one table and writes ``OUT/bench_ddp.json``::

    flock /tmp/vitreous-bench.lock .venv/bin/python benchmarks/bench_ddp.py --out /tmp/bench_ddp   # ~5 min

Speed-ups are best-of-``--repeats`` wall times; the machine's load average is recorded at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__:
    from . import harness
    from .bench_backproject import APIX, BOX, DEFOCUS_UM, MODEL, SNR, cpu_s, vitreous_exe
else:  # run as a script: benchmarks/ is on sys.path
    import harness
    from bench_backproject import APIX, BOX, DEFOCUS_UM, MODEL, SNR, cpu_s, vitreous_exe

RESULT_TAG = "BENCH_RESULT "
BATCH = 1024
CASES = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 1)}  # name: (processes, threads per process)


def launcher(processes: int) -> list[str]:
    """How a command (an executable and its arguments) is started: as it is, or under ``torchrun --standalone``
    with ``processes`` ranks."""
    if processes == 1:
        return []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            "--no-python"]


def measured(cmd: list[str], threads: int, log: Path) -> dict[str, Any]:
    """One measured run (``threads`` per process); RuntimeError if it fails."""
    run = harness.run_measured(cmd, threads=threads, log_path=log)
    if run["returncode"] != 0:
        raise RuntimeError(f"{log.stem} failed (rc={run['returncode']}):\n{run['stdout_tail']}")
    return {"wall_s": run["wall_s"], "cpu_s": cpu_s(run), "peak_rss_mb": run["peak_rss_mb"], "log": log}


def worker(star: Path) -> dict[str, Any]:
    """Under torchrun or alone: time ``backproject`` of all particles (this rank's shard) and, separately, the
    all-reduce of accumulators of the same size; rank 0 returns the timings."""
    import torch

    from vitreous.distributed.ranks import current, shutdown
    from vitreous.io.formats import read_particles
    from vitreous.reconstruct.backproject import HalfSetBackprojector, backproject

    ranks = current("gloo")
    particles = read_particles(star)
    ranks.barrier()
    tick = time.perf_counter()
    backproject(particles, batch_size=BATCH, filtered_halves=False, ranks=ranks)
    ranks.barrier()
    total = time.perf_counter() - tick
    empty = HalfSetBackprojector(particles.box)
    ranks.barrier()
    tick = time.perf_counter()
    empty.all_reduce(ranks)
    reduce_s = time.perf_counter() - tick
    shutdown()
    return {"backproject_s": total, "all_reduce_s": reduce_s, "world_size": ranks.world_size,
            "threads": torch.get_num_threads(), "images": len(particles)}


def worker_run(star: Path, processes: int, threads: int, log: Path) -> dict[str, Any]:
    """:func:`worker` in fresh processes; its timings plus the whole run's wall time."""
    run = measured([*launcher(processes), sys.executable, __file__, "--worker", str(star)], threads, log)
    line = next(x for x in log.read_text().splitlines() if x.startswith(RESULT_TAG))
    return {**json.loads(line[len(RESULT_TAG):]), "process_wall_s": run["wall_s"]}


def max_difference(a: Path, b: Path) -> float:
    """Largest |difference| of the half maps of two jobs, relative to the largest value."""
    import numpy as np

    from vitreous.io.mrc import read_map

    worst = 0.0
    for name in ("half_map_1.mrc", "half_map_2.mrc"):
        x, y = read_map(a / name)[0], read_map(b / name)[0]
        worst = max(worst, float(np.abs(x - y).max() / np.abs(y).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="working folder (data, jobs, logs, bench_ddp.json)")
    p.add_argument("--n", type=int, default=20000, help="particles to simulate")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per case (best wall time reported)")
    p.add_argument("--reuse-data", action="store_true", help="keep OUT/sim from an earlier run with the same --n")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        timings = worker(a.worker)
        if int(os.environ.get("RANK", "0")) == 0:
            print(RESULT_TAG + json.dumps(timings), flush=True)
        return 0
    if a.out is None:
        p.error("--out is required")
    out = a.out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"n": a.n, "box": BOX, "apix_A": APIX, "batch_size": BATCH, "repeats": a.repeats,
                              "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    star = out / "sim" / "particles.star"
    reuse = a.reuse_data and star.is_file() and json.loads((out / "sim" / "job.json").read_text())["params"]["n"] == a.n
    result["simulate"] = "reused" if reuse else measured(
        [*vitreous_exe(), "simulate", "-o", str(out / "sim"), "--model", str(MODEL), "-n", str(a.n), "--box",
         str(BOX), "--apix", str(APIX), "--snr", str(SNR), "--defocus-min", str(DEFOCUS_UM[0]), "--defocus-max",
         str(DEFOCUS_UM[1]), "--overwrite"], 2, logs / "simulate.log")
    (out / "sim" / "particles.mrcs").read_bytes()  # into the page cache
    commands: dict[str, list[dict[str, Any]]] = {name: [] for name in CASES}
    workers: dict[str, list[dict[str, Any]]] = {name: [] for name in CASES}
    for repeat in range(a.repeats):
        for name, (processes, threads) in CASES.items():
            cmd = [*launcher(processes), *vitreous_exe(), "backproject", str(star), "-o", str(out / f"bp_{name}"),
                   "--batch-size", str(BATCH), "--overwrite"]
            commands[name].append(measured(cmd, threads, logs / f"backproject_{name}_{repeat}.log"))
            workers[name].append(worker_run(star, processes, threads, logs / f"worker_{name}_{repeat}.log"))
    rows, cases = [], {}
    best = {name: min(runs, key=lambda r: r["wall_s"]) for name, runs in commands.items()}
    inner = {name: min(runs, key=lambda r: r["backproject_s"]) for name, runs in workers.items()}
    for name, (processes, threads) in CASES.items():
        cases[name] = {"processes": processes, "threads_per_process": threads, "command": best[name],
                       "command_walls_s": [r["wall_s"] for r in commands[name]], "library": inner[name],
                       "library_walls_s": [r["backproject_s"] for r in workers[name]]}
        rows.append({"case": name, "processes": processes, "threads": threads,
                     "command_s": best[name]["wall_s"], "cpu_s": best[name]["cpu_s"],
                     "peak_rss_mb": best[name]["peak_rss_mb"], "backproject_s": inner[name]["backproject_s"],
                     "all_reduce_s": inner[name]["all_reduce_s"],
                     "img_per_s": a.n / inner[name]["backproject_s"]})
    for row in rows:
        for ref in ("1x1", "1x2"):
            row[f"speedup_vs_{ref}"] = cases[ref]["command"]["wall_s"] / row["command_s"]
            row[f"lib_speedup_vs_{ref}"] = cases[ref]["library"]["backproject_s"] / row["backproject_s"]
    result["cases"] = cases
    result["max_rel_difference_2x1_vs_1x1"] = max_difference(out / "bp_2x1", out / "bp_1x1")
    result["load_avg_end"] = os.getloadavg()
    result["table"] = harness.print_table(rows)
    print(f"half maps 2 ranks vs 1 process: max |difference| / max = {result['max_rel_difference_2x1_vs_1x1']:.2g}; "
          f"load average {result['load_avg_start'][0]:.2f} -> {result['load_avg_end'][0]:.2f}")
    harness.write_json(out / "bench_ddp.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
