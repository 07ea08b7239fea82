"""``vitreous refine`` from a low-passed reference and no poses, against ``vitreous backproject`` with the true
poses: time, peak memory, FSC to the truth, pose errors; plus the pose-search engine's throughput.

One run (``--threads`` for every command, default 2; ``harness.run_measured``):

1. ``vitreous simulate``: ``--n`` particles (default 10 000) of the closed adenylate kinase model, box 64,
   1.5 Å/px, SNR 0.1, origins of 1.5 px sd, 300 Å astigmatism; ground truth in ``OUT/sim/truth``.
2. ``OUT/unposed.star``: the same particles without Euler angles and origins.
3. ``vitreous refine OUT/unposed.star --reference OUT/sim/truth/state_001.mrc`` (low-passed to 30 Å by refine,
   default options): time, peak RSS, iterations.
4. ``vitreous backproject OUT/sim/particles.star`` (true poses): time, peak RSS.
5. FSC against the truth (FSC = 0.5 and 0.143) of both full maps, half-map FSC of both; median geodesic
   rotation error (``vitreous.physics.rotations.angular_distance``) and median origin error of the refined
   poses against the truth, and the fraction of particles more than 10° and 20° off.
6. Engine throughput (fresh process, 2 threads): images/s of a global search (levels 2 -> 4, 5 poses kept,
   shifts up to 5 px) of 1024 of the images against the true map at the full radius (Nyquist) and at 8 Å,
   and of a local search (1.875° step, 3.75° range), with the time split between slice interpolation,
   score products, selection and preparation.

Targets: refined FSC = 0.5 within 10 % of the known-pose map's; median rotation error < 3°; refine < 10 min.
Prints a table and writes ``OUT/bench_refine.json``::

    .venv/bin/python benchmarks/bench_refine.py --out /tmp/bench_refine          # ~8 min on 2 idle cores
    .venv/bin/python benchmarks/bench_refine.py --out /tmp/bench_refine --n 2000 --skip-engine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__:
    from . import harness
else:  # run as a script: benchmarks/ is on sys.path
    import harness

REPO = Path(__file__).resolve().parents[1]
MODEL = Path(os.environ.get("VITREOUS_SHARED_DATA", REPO.parent / "shared" / "data")) / "structures/adk/adk_closed.pdb"
BOX, APIX, SNR, SHIFT_SD, ASTIGMATISM = 64, 1.5, 0.1, 1.5, 300
TARGET_FSC_RATIO, TARGET_ROTATION_DEG, TARGET_SECONDS = 1.10, 3.0, 600.0
ENGINE_IMAGES = 1024
RESULT_TAG = "BENCH_RESULT "


def vitreous_exe() -> list[str]:
    """The ``vitreous`` console script beside this Python, else the entry point through ``-c``."""
    exe = Path(sys.executable).with_name("vitreous")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from vitreous.cli.main import run; run()"]


def measured(cmd: list[str], log: Path, threads: int) -> dict[str, Any]:
    run = harness.run_measured(cmd, threads=threads, log_path=log)
    if run["returncode"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc={run['returncode']}):\n{run['stdout_tail']}")
    return {"wall_s": run["wall_s"], "cpu_s": run["user_s"] + run["sys_s"], "peak_rss_mb": run["peak_rss_mb"],
            "cmd": [str(c) for c in cmd]}


def simulated_adk(out: Path, n: int, threads: int) -> Path:
    """``OUT/sim``: ``n`` closed adenylate kinase particles (step 1), simulated unless already there."""
    out.mkdir(parents=True, exist_ok=True)
    sim = out / "sim"
    if not (sim / "particles.star").is_file():
        measured([*vitreous_exe(), "simulate", "--model", str(MODEL), "-n", str(n), "--box", str(BOX), "--apix",
                  str(APIX), "--snr", str(SNR), "--shift-sd", str(SHIFT_SD), "--astigmatism", str(ASTIGMATISM), "-o",
                  str(sim), "--overwrite"], out / "simulate.log", threads)
    return sim


def unposed(star: Path, out: Path) -> Path:
    """A copy of the particles without Euler angles and origins (image names relative to ``out``)."""
    from vitreous.data.particles import EULER, SHIFTS, ParticleSet
    from vitreous.io.star import read_star, write_star

    particles = read_star(star)
    write_star(out, ParticleSet(particles.particles.drop(columns=EULER + SHIFTS), particles.optics,
                                particles.images))
    return out


def evaluate(sim: Path, refined: Path, known: Path) -> dict[str, Any]:
    """FSC to the truth of both maps, half-map FSC, pose errors of the refined particles."""
    from vitreous.analysis.fsc import fsc_curve, resolution_at
    from vitreous.io.mrc import read_map
    from vitreous.io.star import read_star
    from vitreous.physics.rotations import angular_distance

    truth, voxel = read_map(sim / "truth" / "state_001.mrc")
    out: dict[str, Any] = {}
    for name, folder in (("refine", refined), ("known_poses", known)):
        full, _ = read_map(folder / "map.mrc")
        frequency, curve = fsc_curve(full, truth, voxel)
        halves = [read_map(folder / f"half_map_{k}.mrc")[0] for k in (1, 2)]
        _, half_curve = fsc_curve(*halves, voxel)
        out[name] = {"fsc_truth_0.5_A": resolution_at(frequency, curve, 0.5),
                     "fsc_truth_0.143_A": resolution_at(frequency, curve, 0.143),
                     "half_maps_0.143_A": resolution_at(frequency, half_curve, 0.143),
                     "half_maps_0.5_A": resolution_at(frequency, half_curve, 0.5)}
    particles = read_star(refined / "particles.star", load_images=False)
    true_rotations = np.load(sim / "truth" / "rotations.npy")
    true_shifts = np.load(sim / "truth" / "shifts_px.npy")
    error = np.asarray(angular_distance(particles.rotations, true_rotations))
    shift_error = np.linalg.norm(particles.shifts_px - true_shifts, axis=1)
    out["poses"] = {"median_rotation_error_deg": float(np.median(error)),
                    "mean_rotation_error_deg": float(np.mean(error)),
                    "fraction_over_10_deg": float(np.mean(error > 10)),
                    "fraction_over_20_deg": float(np.mean(error > 20)),
                    "median_shift_error_px": float(np.median(shift_error)),
                    "median_shift_error_A": float(np.median(shift_error) * voxel)}
    record = json.loads((refined / "job.json").read_text())
    import torch

    state = torch.load(refined / "checkpoints" / "refine.pt", map_location="cpu", weights_only=False)
    out["refine_iterations"] = [{k: v for k, v in h.items()} for h in state["history"]]
    out["refine_status"] = record["status"]
    return out


def engine_worker(sim: Path) -> dict[str, Any]:
    """Throughput of global and local search on ``ENGINE_IMAGES`` images (run in a fresh process)."""
    import torch

    from vitreous.align import (
        GlobalOptions,
        LocalOptions,
        PoseSearch,
        ProjectorSlices,
        ShellPower,
        fourier_points,
        image_power,
        image_spectra,
        radius_for_resolution,
    )
    from vitreous.io.mrc import read_map
    from vitreous.io.star import read_star
    from vitreous.physics.ctf import CTFParams, compute_ctf
    from vitreous.physics.projection import Projector
    from vitreous.physics.rotations import angular_distance

    particles = read_star(sim / "particles.star")
    truth, voxel = read_map(sim / "truth" / "state_001.mrc")
    idx = np.arange(min(ENGINE_IMAGES, len(particles)))
    spectra = image_spectra(torch.as_tensor(particles.images.read(idx)))
    ctf = compute_ctf(CTFParams.from_table(particles.ctf_table().iloc[idx]), BOX, voxel)
    power = ShellPower(BOX)
    image_power(spectra, fourier_points(BOX, BOX // 2), power)
    slices = ProjectorSlices(Projector(torch.as_tensor(truth)))
    true_rot = torch.as_tensor(particles.rotations[idx])
    results = {}
    cases = {"global_nyquist": BOX // 2, "global_8A": radius_for_resolution(8.0, BOX, voxel)}
    for name, radius in cases.items():
        search = PoseSearch(slices, power.spectrum(), BOX)
        options = GlobalOptions(radius_px=radius, keep=5, max_shift_px=0.08 * BOX)
        start = time.perf_counter()
        found = search.global_search(spectra, ctf, options)
        seconds = time.perf_counter() - start
        error = angular_distance(found.best_rotations.double(), true_rot)
        results[name] = {"images": len(idx), "radius_px": radius, "seconds": seconds,
                         "images_per_s": len(idx) / seconds, "split_s": dict(search.timings),
                         "median_error_deg": float(error.median())}
    search = PoseSearch(slices, power.spectrum(), BOX)
    local = LocalOptions(radius_px=BOX // 2, step_deg=1.875, range_deg=3.75, shift_step_px=BOX / (6 * 32),
                         shift_range_px=3 * BOX / (6 * 32))
    start_shift = torch.as_tensor(particles.shifts_px[idx], dtype=torch.float32)
    start = time.perf_counter()
    found = search.local_search(spectra, ctf, true_rot.float(), start_shift, local)
    seconds = time.perf_counter() - start
    results["local_nyquist"] = {"images": len(idx), "radius_px": BOX // 2, "seconds": seconds,
                                "images_per_s": len(idx) / seconds, "split_s": dict(search.timings),
                                "median_error_deg": float(angular_distance(found.best_rotations.double(),
                                                                           true_rot).median())}
    return results


def engine(sim: Path, log: Path, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(sim.parent), "--worker-engine", str(sim)]
    run = harness.run_measured(cmd, threads=threads, log_path=log)
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.startswith(RESULT_TAG)]
    if run["returncode"] != 0 or not lines:
        raise RuntimeError(f"engine worker failed:\n{run['stdout_tail']}")
    return {**json.loads(lines[-1][len(RESULT_TAG):]), "peak_rss_mb": run["peak_rss_mb"]}


def table(result: dict[str, Any]) -> str:
    r, k, p = result["metrics"]["refine"], result["metrics"]["known_poses"], result["metrics"]["poses"]
    ref_run, known_run = result["refine_run"], result["backproject_run"]
    ratio = r["fsc_truth_0.5_A"] / k["fsc_truth_0.5_A"]
    rows = [
        ("", "refine (no poses)", "backproject (true poses)", "target"),
        ("wall time (s)", f"{ref_run['wall_s']:.0f}", f"{known_run['wall_s']:.0f}", f"refine < {TARGET_SECONDS:.0f}"),
        ("CPU time (s)", f"{ref_run['cpu_s']:.0f}", f"{known_run['cpu_s']:.0f}", ""),
        ("peak RSS (MB)", f"{ref_run['peak_rss_mb']:.0f}", f"{known_run['peak_rss_mb']:.0f}", ""),
        ("FSC=0.5 vs truth (Å)", f"{r['fsc_truth_0.5_A']:.2f}", f"{k['fsc_truth_0.5_A']:.2f}",
         f"ratio {ratio:.3f} <= {TARGET_FSC_RATIO}"),
        ("FSC=0.143 vs truth (Å)", f"{r['fsc_truth_0.143_A']:.2f}", f"{k['fsc_truth_0.143_A']:.2f}", ""),
        ("half maps FSC=0.143 (Å)", f"{r['half_maps_0.143_A']:.2f}", f"{k['half_maps_0.143_A']:.2f}", ""),
        ("median rotation error (°)", f"{p['median_rotation_error_deg']:.2f}", "0", f"< {TARGET_ROTATION_DEG}"),
        ("rotations > 10° / > 20° off", f"{p['fraction_over_10_deg']:.3f} / {p['fraction_over_20_deg']:.3f}", "", ""),
        ("median shift error (px / Å)", f"{p['median_shift_error_px']:.2f} / {p['median_shift_error_A']:.2f}", "",
         ""),
        ("iterations", str(len(result["metrics"]["refine_iterations"])), "", ""),
    ]
    for name, e in result.get("engine", {}).items():
        if isinstance(e, dict) and "images_per_s" in e:
            split = ", ".join(f"{k} {v:.1f}s" for k, v in e["split_s"].items())
            rows.append((f"engine {name} (img/s)", f"{e['images_per_s']:.0f}", f"r={e['radius_px']:.1f}px; {split}",
                         f"median err {e['median_error_deg']:.2f}°"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (data, jobs, JSON)")
    parser.add_argument("--n", type=int, default=10_000, help="particles to simulate")
    parser.add_argument("--skip-engine", action="store_true", help="leave out the engine throughput")
    parser.add_argument("--threads", type=int, default=harness.DEFAULT_THREADS,
                        help="torch/BLAS threads of every command (2 = the 2-core target; 1 is steadier on a "
                             "machine that other jobs load)")
    parser.add_argument("--worker-engine", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_engine is not None:
        print(RESULT_TAG + json.dumps(engine_worker(args.worker_engine)), flush=True)
        return 0
    out = args.out
    exe = vitreous_exe()
    sim = simulated_adk(out, args.n, args.threads)
    star = unposed(sim / "particles.star", out / "unposed.star")
    load_before = os.getloadavg()
    refine_run = measured([*exe, "refine", str(star), "--reference", str(sim / "truth" / "state_001.mrc"), "-o",
                           str(out / "refine"), "--overwrite"], out / "refine.log", args.threads)
    refine_run["load_average_1_5_15_min_before_after"] = [load_before, os.getloadavg()]
    known_run = measured([*exe, "backproject", str(sim / "particles.star"), "-o", str(out / "known"),
                          "--overwrite"], out / "backproject.log", args.threads)
    result: dict[str, Any] = {"n": args.n, "box": BOX, "apix": APIX, "snr": SNR, "threads": args.threads,
                              "refine_run": refine_run, "backproject_run": known_run,
                              "metrics": evaluate(sim, out / "refine", out / "known")}
    if not args.skip_engine:
        result["engine"] = engine(sim, out / "engine.log", args.threads)
    r, k = result["metrics"]["refine"], result["metrics"]["known_poses"]
    result["targets"] = {
        "fsc_0.5_within_10_percent": r["fsc_truth_0.5_A"] <= TARGET_FSC_RATIO * k["fsc_truth_0.5_A"],
        "median_rotation_error_below_3_deg": result["metrics"]["poses"]["median_rotation_error_deg"] < 3.0,
        "refine_under_10_min": refine_run["wall_s"] < TARGET_SECONDS,
    }
    (out / "bench_refine.json").write_text(json.dumps(result, indent=2, default=float))
    print(table(result))
    print("targets:", result["targets"])
    print(f"wrote {out / 'bench_refine.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
