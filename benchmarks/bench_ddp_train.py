"""``vitreous train-vae`` data-parallel: one epoch on 2 ranks (``torchrun``, gloo) against 1 process.

1. Data (as ``bench_vae.py``, reused when ``OUT/sim`` exists): ``vitreous simulate --trajectory
   adk_dims_traj.npz``, ``--n`` particles (default 16000) of the adenylate kinase trajectory, box 64, 1.5 Å/px,
   SNR 0.1, true poses.
2. One epoch of ``vitreous train-vae --zdim 8`` (default model, ``--batch-size 128``, seed 0) in three ways:
   1 process with 1 thread; 1 process with 2 threads; ``torchrun --standalone --nproc-per-node 2`` (gloo, 1
   thread per rank: torchrun's default, so the two ranks use the 2 cores).  The global batch is the same, so the
   three runs take the same optimiser steps (the 2-rank loss equals the 1-process loss up to rounding).
3. Reported per run (``harness.run_measured``, interleaved ``--repeats`` times, best wall time kept): wall time of
   the whole command (start-up, the initial backprojection, the epoch, encoding every particle, writing the
   job), the epoch's own rate ``images/s (training)`` that train-vae prints (images / training-loop seconds),
   the final loss, peak memory of the process tree; speed-ups of 2 ranks over each 1-process run.  The machine
   load (``os.getloadavg``) before and after goes into the JSON.

Prints one table and writes ``OUT/bench_ddp_train.json``::

    flock /tmp/vitreous-bench.lock .venv/bin/python benchmarks/bench_ddp_train.py --out /tmp/bench_ddp_train
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

if __package__:
    from . import harness
    from .bench_backproject import vitreous_exe
    from .bench_vae import simulate
else:  # run as a script: benchmarks/ is on sys.path
    import harness
    from bench_backproject import vitreous_exe
    from bench_vae import simulate

RATE_RE = re.compile(r"images/s \(training\): ([\d.]+)")
LOSS_RE = re.compile(r"final loss: ([-\d.e+]+)")
TORCHRUN = Path(sys.executable).with_name("torchrun")
WAYS = {"1 process, 1 thread": ("single", 1), "1 process, 2 threads": ("single", 2),
        "2 ranks (torchrun, 1 thread each)": ("torchrun", 1)}


def train_command(way: str, star: Path, job: Path, zdim: int, batch_size: int) -> list[str]:
    args = ["train-vae", str(star), "--zdim", str(zdim), "-o", str(job), "--epochs", "1", "--batch-size",
            str(batch_size), "--overwrite"]
    if way == "torchrun":
        return [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "--no-python", *vitreous_exe(), *args]
    return [*vitreous_exe(), *args]


def one_epoch(way: str, threads: int, star: Path, job: Path, log: Path, zdim: int, batch_size: int) -> dict[str, Any]:
    """One measured epoch; RuntimeError if the command fails."""
    run = harness.run_measured(train_command(way, star, job, zdim, batch_size), threads=threads, log_path=log)
    text = log.read_text()
    if run["returncode"] != 0 or not RATE_RE.search(text):
        raise RuntimeError(f"{log.stem} failed (rc={run['returncode']}):\n{run['stdout_tail']}")
    return {"wall_s": run["wall_s"], "images_per_s": float(RATE_RE.search(text)[1]),
            "final_loss": float(LOSS_RE.search(text)[1]), "peak_rss_mb": run["peak_rss_mb"],
            "cpu_s": run["user_s"] + run["sys_s"]}


def run(out: Path, n: int, zdim: int, batch_size: int, repeats: int) -> dict[str, Any]:
    (out / "logs").mkdir(parents=True, exist_ok=True)
    star = simulate(out, n)
    result: dict[str, Any] = {"n": n, "box": 64, "zdim": zdim, "batch_size": batch_size, "repeats": repeats,
                              "load_before": os.getloadavg(), "runs": {name: [] for name in WAYS}}
    for repeat in range(repeats):
        for name, (way, threads) in WAYS.items():
            tag = f"{way}{threads}_{repeat}"
            result["runs"][name].append(one_epoch(way, threads, star, out / "jobs" / tag, out / "logs" / f"{tag}.log",
                                                  zdim, batch_size))
            shutil.rmtree(out / "jobs" / tag)
    result["load_after"] = os.getloadavg()
    best = {name: min(runs, key=lambda r: r["wall_s"]) for name, runs in result["runs"].items()}
    result["best"] = best
    ddp = best["2 ranks (torchrun, 1 thread each)"]
    result["speedup"] = {f"vs {name}": {"epoch": ddp["images_per_s"] / r["images_per_s"],
                                         "wall": r["wall_s"] / ddp["wall_s"]}
                         for name, r in best.items() if not name.startswith("2 ranks")}
    return result


def table(result: dict[str, Any]) -> str:
    lines = [f"train-vae, one epoch of {result['n']} particles, box 64, zdim {result['zdim']}, batch "
             f"{result['batch_size']} (best of {result['repeats']}; load {result['load_before'][0]:.1f} before, "
             f"{result['load_after'][0]:.1f} after)",
             f"{'run':<36}{'wall s':>9}{'epoch img/s':>13}{'final loss':>12}{'peak MB':>10}{'CPU s':>8}"]
    for name, r in result["best"].items():
        lines.append(f"{name:<36}{r['wall_s']:>9.1f}{r['images_per_s']:>13.0f}{r['final_loss']:>12.2f}"
                     f"{r['peak_rss_mb']:>10.0f}{r['cpu_s']:>8.0f}")
    for name, s in result["speedup"].items():
        lines.append(f"2 ranks {name}: epoch x{s['epoch']:.2f}, whole command x{s['wall']:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=16000)
    parser.add_argument("--zdim", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    result = run(args.out, args.n, args.zdim, args.batch_size, args.repeats)
    print(table(result))
    (args.out / "bench_ddp_train.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
