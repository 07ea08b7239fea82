"""``vitreous class2d`` on 10 000 simulated adenylate kinase particles, K = 50: class averages against clean
projections of the truth map, time, memory; side by side with ASPIRE's class averaging on the same particles.

One run (every command in a fresh process with 2 threads, ``harness.run_measured``):

1. ``vitreous simulate`` of the bundled closed adenylate kinase model: ``--n`` particles (default 10 000),
   box 64, 1.5 Å/px, SNR 0.1, origin shifts of 2 px standard deviation, defocus 1-2.5 µm, astigmatism up to
   300 Å, uniform poses; the truth map is ``OUT/sim/truth/state_001.mrc``.
2. ``vitreous class2d --classes 50 --diameter 80`` (defaults otherwise), wall time and peak RSS.
3. ASPIRE 0.14.3 (its own venv, ``peers.ensure_aspire``) on the same STAR: ``aspire_class_averages.py``
   (phase flip, ``RIRClass2D`` + ``BFTAverager2D``, 50 classes of ``--n-nbor`` 50 neighbours).
4. The metric, the same for both: each class average (CTF-free for vitreous, phase-flipped for ASPIRE) is
   compared with clean projections of the truth map (no CTF, the same 80 Å soft circular mask as the
   averages) along the 3072 viewing directions of the level-4 HEALPix grid (3.75°), every in-plane angle
   (5° steps) and shifts up to 3 px (0.5 px steps) (:func:`vitreous.classify.compare.best_matches`): the best
   normalised cross-correlation of their spectra over ``1 <= |k| <= radius``, i.e. the Pearson correlation
   of the mean-free images both low-passed to ``LOWPASS_A`` (10 Å, the E-step limit of class2d).  For
   vitreous also at each class's own resolution (SSNR = 1, ``classes.csv``).  Target: every class average with
   at least 50 particles correlates >= 0.8.  ASPIRE's contrast follows its CTF sign, so its averages are
   compared with the sign that correlates best (reported).

Wall times depend on what else runs: each step records the 1-minute load average before and after it.
Prints a table and writes ``OUT/bench_class2d.json``::

    flock /tmp/vitreous-bench.lock .venv/bin/python benchmarks/bench_class2d.py --out /tmp/bench_c2d
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

if __package__:
    from . import harness, peers
else:  # run as a script: benchmarks/ is on sys.path
    import harness
    import peers

HERE = Path(__file__).resolve().parent
BOX, APIX, SNR, CLASSES, DIAMETER_A = 64, 1.5, 0.1, 50, 80.0
LOWPASS_A = 10.0
MIN_SIZE, TARGET = 50, 0.8
GRID_LEVEL = 4


def vitreous_exe() -> list[str]:
    """The console script beside this Python, else the entry point through ``-c``."""
    script = Path(sys.executable).parent / "vitreous"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from vitreous.cli.main import run; run()"]


def _run(name: str, cmd: list[str], out: Path, threads: int, timeout: float | None = None) -> dict[str, Any]:
    """One measured command; exits with its log on failure (a run past ``timeout`` s is reported as such)."""
    load_before = os.getloadavg()[0]
    result = harness.run_measured(cmd, threads=threads, log_path=out / f"{name}.log", timeout=timeout)
    if result["timed_out"]:
        return {"wall_s": result["wall_s"], "timed_out": True, "load_before": load_before}
    if result["returncode"] != 0:
        print(result["stdout_tail"], file=sys.stderr)
        raise SystemExit(f"{name} failed (exit code {result['returncode']})")
    return {**{key: result[key] for key in ("wall_s", "peak_rss_mb", "user_s", "sys_s", "threads")},
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def clean_projections(truth: Path) -> Any:
    """Masked clean projections (N, D, D) of the truth map along the level-``GRID_LEVEL`` directions."""
    import torch

    from vitreous.io.mrc import read_map
    from vitreous.physics import so3_grid
    from vitreous.physics.fourier import soft_circular_mask
    from vitreous.physics.projection import Projector

    volume, _ = read_map(truth)
    first_inplane = torch.arange(so3_grid.n_directions(GRID_LEVEL)) * so3_grid.n_inplane(GRID_LEVEL)
    rotations = so3_grid.grid_matrices(GRID_LEVEL, first_inplane).float()
    projector = Projector(torch.as_tensor(volume))
    images = torch.cat([projector.project(rotations[i:i + 512]) for i in range(0, len(rotations), 512)])
    return images * soft_circular_mask(BOX, DIAMETER_A / APIX / 2 - 3.0, 3.0)


def correlations(averages: Any, projections: Any, resolution_A: float | np.ndarray) -> np.ndarray:
    """Best correlation (K,) of each average with the projections, low-passed to ``resolution_A`` (one value, or
    one per average)."""
    import torch

    from vitreous.classify.compare import best_matches

    averages = torch.as_tensor(np.array(averages, np.float32))
    radius = np.clip(np.round(BOX * APIX / np.broadcast_to(resolution_A, (len(averages),))), 2, BOX // 2 - 1)
    out = np.zeros(len(averages))
    for r in np.unique(radius):
        chosen = np.nonzero(radius == r)[0]
        match = best_matches(averages[chosen], projections, float(r), psi_step_deg=5.0, max_shift_px=3.0, chunk=64)
        out[chosen] = match.correlation.numpy()
    return out


def _summary(values: np.ndarray, keep: np.ndarray) -> dict[str, Any]:
    chosen = values[keep]
    return {"classes_evaluated": int(keep.sum()), "min": float(chosen.min()), "median": float(np.median(chosen)),
            "mean": float(chosen.mean()), "below_target": int((chosen < TARGET).sum()),
            "target_met": bool((chosen >= TARGET).all()), "all": values.round(4).tolist()}


def evaluate(out: Path) -> dict[str, Any]:
    """The correlation metric for both tools (module docstring)."""
    import pandas as pd
    import torch

    from vitreous.cli.select2d import read_averages

    torch.set_num_threads(2)
    projections = clean_projections(out / "sim" / "truth" / "state_001.mrc")
    table = pd.read_csv(out / "class2d" / "classes.csv")
    averages, _ = read_averages(out / "class2d" / "class_averages.mrcs")
    big = table["particles"].to_numpy() >= MIN_SIZE
    vitreous = {"fixed_lowpass": _summary(correlations(averages, projections, LOWPASS_A), big),
                "own_resolution": _summary(correlations(averages, projections, table["resolution_A"].to_numpy()),
                                           big),
                "class_sizes": table["particles"].tolist(), "class_resolution_A": table["resolution_A"].tolist()}
    if not (out / "aspire" / "averages.npy").exists():
        return {"vitreous": vitreous, "aspire": None}
    aspire_averages = np.load(out / "aspire" / "averages.npy")
    direct = correlations(aspire_averages, projections, LOWPASS_A)
    flipped = correlations(-aspire_averages, projections, LOWPASS_A)
    sign = 1 if direct.mean() >= flipped.mean() else -1
    everyone = np.ones(len(aspire_averages), bool)
    aspire = {"fixed_lowpass": _summary(direct if sign > 0 else flipped, everyone), "contrast_sign": sign,
              "class_size": int(np.load(out / "aspire" / "members.npy").shape[1])}
    return {"vitreous": vitreous, "aspire": aspire}


def run(out: Path, n: int, threads: int, seed: int, n_nbor: int, aspire_timeout: float) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    steps = {}
    with resources.as_file(resources.files("vitreous.resources") / "adk_closed.pdb.gz") as model:
        steps["simulate"] = _run("simulate", [
            *vitreous_exe(), "simulate", "--model", str(model), "-n", str(n), "--box", str(BOX), "--apix", str(APIX),
            "--snr", str(SNR), "--shift-sd", "2", "--astigmatism", "300", "--seed", str(seed), "-o",
            str(out / "sim"), "--overwrite"], out, threads)
    star = str(out / "sim" / "particles.star")
    steps["vitreous class2d"] = _run("class2d", [
        *vitreous_exe(), "class2d", star, "--classes", str(CLASSES), "--diameter", str(DIAMETER_A), "--seed",
        str(seed), "-o", str(out / "class2d"), "--overwrite"], out, threads)
    aspire_python = peers.ensure_aspire()
    steps["ASPIRE class averages"] = _run("aspire", [
        str(aspire_python), str(HERE / "aspire_class_averages.py"), star, str(out / "aspire"), "--classes",
        str(CLASSES), "--n-nbor", str(n_nbor)], out, threads, aspire_timeout)
    return {"particles": n, "box_px": BOX, "pixel_size_A": APIX, "snr": SNR, "classes": CLASSES, "seed": seed,
            "lowpass_A": LOWPASS_A, "min_class_size": MIN_SIZE, "target": TARGET, "steps": steps, **evaluate(out)}


def print_result(result: dict[str, Any]) -> None:
    print(f"{result['particles']} particles (adenylate kinase), box {result['box_px']} px, "
          f"{result['pixel_size_A']} Å/px, SNR {result['snr']}, K = {result['classes']}")
    harness.print_table([{"step": name, **values} for name, values in result["steps"].items()],
                        ["step", "wall_s", "peak_rss_mb", "user_s", "threads", "load_before", "load_after"])
    rows = []
    for tool, lowpass in (("vitreous", "fixed_lowpass"), ("vitreous", "own_resolution"), ("aspire", "fixed_lowpass")):
        if result[tool] is None:
            continue
        values = result[tool][lowpass]
        rows.append({"averages": tool, "low-pass": f"{result['lowpass_A']:g} Å" if lowpass == "fixed_lowpass"
                     else "class resolution", **{k: v for k, v in values.items() if k != "all"}})
    print(f"\ncorrelation with the best clean projection (classes with >= {result['min_class_size']} particles; "
          f"target >= {result['target']})")
    harness.print_table(rows, ["averages", "low-pass", "classes_evaluated", "min", "median", "mean", "below_target",
                               "target_met"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the data, the jobs and the JSON")
    parser.add_argument("--n", type=int, default=10_000, help="number of particles")
    parser.add_argument("--threads", type=int, default=harness.DEFAULT_THREADS, help="threads per process")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulation and the classification")
    parser.add_argument("--n-nbor", type=int, default=50, help="ASPIRE's neighbours per class")
    parser.add_argument("--aspire-timeout", type=float, default=1200.0, help="seconds ASPIRE may run")
    parser.add_argument("--evaluate-only", action="store_true", help="only recompute the metric of an earlier run")
    args = parser.parse_args()
    if args.evaluate_only:
        import json

        result = {**json.loads((args.out / "bench_class2d.json").read_text()), **evaluate(args.out)}
    else:
        result = run(args.out, args.n, args.threads, args.seed, args.n_nbor, args.aspire_timeout)
    print_result(result)
    harness.write_json(args.out / "bench_class2d.json", result)


if __name__ == "__main__":
    main()
