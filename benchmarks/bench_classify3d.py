"""``vitreous classify3d`` on a 50/50 mixture of open and closed adenylate kinase: accuracy, time, memory.

One run (every command in a fresh process with 2 threads, ``harness.run_measured``):

1. ``vitreous simulate`` with ``adk_open.pdb`` and ``adk_closed.pdb`` (same atoms, 6.9 Å CA RMSD):
   ``--n`` particles (default 10 000), box 64, 1.5 Å/px, SNR 0.1, defocus 1-2.5 µm, uniform poses; the
   truth is ``OUT/sim/truth`` (``labels.npy``, 0-based state per particle; ``state_001.mrc`` open,
   ``state_002.mrc`` closed).
2. ``vitreous backproject`` of all particles with their true poses: the consensus map a user would have
   from a consensus refinement.
3. ``vitreous classify3d --classes 2 --reference consensus`` (defaults otherwise: 30 Å initial low-pass,
   at most 25 iterations), wall time and peak RSS of its process tree.
4. Adjusted Rand index of ``rlnClassNumber`` against the true labels (target >= 0.9), the confusion table,
   and the FSC of each class map against each truth map (unmasked, :func:`vitreous.analysis.fsc.fsc_curve`):
   resolution at FSC 0.5 and 0.143 and the mean FSC over shells 1 .. D/2; each class must be closer to the
   truth of the state most of its particles come from.

Wall times depend on what else runs: each step records the 1-minute load average before and after it.
Prints a table and writes ``OUT/bench_classify3d.json``::

    .venv/bin/python benchmarks/bench_classify3d.py --out /tmp/bench_c3d      # about 10 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

if __package__:
    from . import harness
else:  # run as a script: benchmarks/ is on sys.path
    import harness

REPO = Path(__file__).resolve().parents[1]
ADK = Path(os.environ.get("VITREOUS_SHARED_DATA", REPO.parent / "shared" / "data")) / "structures" / "adk"
BOX, APIX, SNR = 64, 1.5, 0.1
TARGET_ARI = 0.9


def vitreous_exe() -> list[str]:
    """The console script beside this Python, else the entry point through ``-c``."""
    script = Path(sys.executable).parent / "vitreous"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from vitreous.cli.main import run; run()"]


def _run(name: str, args: list[str], out: Path, threads: int) -> dict[str, Any]:
    """One measured vitreous command; exits with its log on failure.  The 1-minute load average before and
    after tells whether other processes competed for the cores."""
    load_before = os.getloadavg()[0]
    result = harness.run_measured([*vitreous_exe(), *args], threads=threads, log_path=out / f"{name}.log")
    if result["returncode"] != 0:
        print(result["stdout_tail"], file=sys.stderr)
        raise SystemExit(f"{name} failed (exit code {result['returncode']})")
    return {**{key: result[key] for key in ("wall_s", "peak_rss_mb", "user_s", "sys_s", "threads")},
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def evaluate(out: Path) -> dict[str, Any]:
    """ARI, confusion table and class-map FSCs against the truth."""
    import starfile

    from vitreous.analysis.fsc import fsc_curve, resolution_at
    from vitreous.analysis.metrics import adjusted_rand_index, contingency_table
    from vitreous.io.mrc import read_map

    labels = np.load(out / "sim" / "truth" / "labels.npy")
    classes = starfile.read(out / "classify" / "particles.star", always_dict=True)["particles"]["rlnClassNumber"]
    classes = classes.to_numpy(np.int64)
    truths = {name: read_map(out / "sim" / "truth" / f"state_{k:03d}.mrc")[0]
              for k, name in ((1, "open"), (2, "closed"))}
    maps = {f"class {k}": read_map(out / "classify" / f"class_{k:03d}.mrc")[0] for k in (1, 2)}
    maps["consensus"] = read_map(out / "consensus" / "map.mrc")[0]
    fsc = {}
    for map_name, volume in maps.items():
        for truth_name, truth in truths.items():
            frequency, curve = fsc_curve(volume, truth, APIX)
            fsc[f"{map_name} vs {truth_name}"] = {
                "fsc05_A": resolution_at(frequency, curve, 0.5), "fsc0143_A": resolution_at(frequency, curve, 0.143),
                "mean_fsc": float(curve[1:].mean())}
    names = list(truths)
    own = {}
    for k in (1, 2):
        majority = names[int(np.bincount(labels[classes == k], minlength=2).argmax())]
        other = names[1 - names.index(majority)]
        mine, theirs = fsc[f"class {k} vs {majority}"], fsc[f"class {k} vs {other}"]
        own[f"class {k}"] = {"state": majority, "closer_to_own_truth": bool(
            mine["mean_fsc"] > theirs["mean_fsc"] and mine["fsc05_A"] < theirs["fsc05_A"])}
    table = contingency_table(labels, classes)
    ari = adjusted_rand_index(labels, classes)
    return {"ari": ari, "ari_target": TARGET_ARI, "ari_ok": ari >= TARGET_ARI,
            "confusion": {"rows": "true state (open, closed)", "columns": "class (1, 2)", "counts": table.tolist()},
            "fsc": fsc, "classes": own}


def run(out: Path, n: int, threads: int, seed: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    steps = {}
    steps["simulate"] = _run("simulate", [
        "simulate", "--model", str(ADK / "adk_open.pdb"), "--model", str(ADK / "adk_closed.pdb"), "-n", str(n),
        "--box", str(BOX), "--apix", str(APIX), "--snr", str(SNR), "--seed", str(seed), "-o", str(out / "sim"),
        "--overwrite"], out, threads)
    star = str(out / "sim" / "particles.star")
    steps["backproject (consensus)"] = _run("backproject", [
        "backproject", star, "-o", str(out / "consensus"), "--overwrite"], out, threads)
    steps["classify3d"] = _run("classify3d", [
        "classify3d", star, "--reference", str(out / "consensus" / "map.mrc"), "--classes", "2",
        "--seed", str(seed), "-o", str(out / "classify"), "--overwrite"], out, threads)
    import pandas as pd

    sizes = pd.read_csv(out / "classify" / "class_sizes.csv")
    return {"particles": n, "box_px": BOX, "pixel_size_A": APIX, "snr": SNR, "seed": seed,
            "iterations": int(sizes["iteration"].max()), "steps": steps, **evaluate(out)}


def print_result(result: dict[str, Any]) -> None:
    print(f"{result['particles']} particles (open/closed adenylate kinase), box {result['box_px']} px, "
          f"{result['pixel_size_A']} Å/px, SNR {result['snr']}; {result['iterations']} iterations")
    harness.print_table([{"step": name, **values} for name, values in result["steps"].items()],
                        ["step", "wall_s", "peak_rss_mb", "user_s", "threads", "load_before", "load_after"])
    print(f"\nadjusted Rand index {result['ari']:.4f} (target >= {result['ari_target']}); confusion "
          f"(rows open, closed; columns class 1, 2): {result['confusion']['counts']}")
    rows = [{"map vs truth": name, **values} for name, values in result["fsc"].items()]
    harness.print_table(rows, ["map vs truth", "fsc05_A", "fsc0143_A", "mean_fsc"])
    for name, verdict in result["classes"].items():
        print(f"{name}: mostly {verdict['state']}, closer to its own truth: {verdict['closer_to_own_truth']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the data, the jobs and the JSON")
    parser.add_argument("--n", type=int, default=10_000, help="number of particles")
    parser.add_argument("--threads", type=int, default=harness.DEFAULT_THREADS, help="threads per process")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation and the classification")
    args = parser.parse_args()
    result = run(args.out, args.n, args.threads, args.seed)
    print_result(result)
    harness.write_json(args.out / "bench_classify3d.json", result)


if __name__ == "__main__":
    main()
