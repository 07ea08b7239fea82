"""Peak memory and wall time of ``vitreous info`` on a large particle set (default 100k images of 64 px).

Creates a RELION 3.1 STAR file and a float32 MRCS stack (written in batches with StackWriter, never all in
RAM) under ``--dir`` (kept) or a temporary folder (removed), runs ``vitreous info`` on them in a subprocess,
and reports its peak resident memory (``wait4`` rusage of that process) and wall time.  Target: < 500 MB.

    .venv/bin/python benchmarks/bench_info_memory.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from vitreous.io.mrc import StackWriter

TARGET_MB = 500.0
PIXEL_SIZE = 1.5  # Å
BATCH = 4096  # images per write


def make_stack(path: Path, n: int, box: int, seed: int = 0) -> None:
    """A float32 noise stack of ``n`` images, written batch by batch."""
    rng = np.random.default_rng(seed)
    with StackWriter(path, n, box, PIXEL_SIZE) as writer:
        for start in range(0, n, BATCH):
            k = min(BATCH, n - start)
            writer.write(start, rng.standard_normal((k, box, box), dtype=np.float32))


def make_star(path: Path, stack: Path, n: int, box: int, seed: int = 0) -> None:
    """A RELION 3.1 particle STAR file for ``stack`` with poses, shifts (Å), CTF, classes and half sets."""
    rng = np.random.default_rng(seed)
    defocus = rng.uniform(8000, 30000, n)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [PIXEL_SIZE], "rlnImageSize": [box], "rlnImageDimensionality": [2]})
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@{stack.name}" for i in range(n)],
        "rlnOpticsGroup": 1,
        "rlnAngleRot": rng.uniform(-180, 180, n), "rlnAngleTilt": np.degrees(np.arccos(rng.uniform(-1, 1, n))),
        "rlnAnglePsi": rng.uniform(-180, 180, n),
        "rlnOriginXAngst": rng.normal(0, 3, n), "rlnOriginYAngst": rng.normal(0, 3, n),
        "rlnDefocusU": defocus + 200, "rlnDefocusV": defocus - 200, "rlnDefocusAngle": rng.uniform(0, 180, n),
        "rlnClassNumber": rng.integers(1, 4, n), "rlnRandomSubset": rng.integers(1, 3, n),
    })
    starfile.write({"optics": optics, "particles": particles}, path, overwrite=True)


def vitreous_command() -> list[str]:
    """The installed console script beside this Python, else the entry point through ``-c``."""
    script = Path(sys.executable).parent / "vitreous"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from vitreous.cli.main import run; run()"]


# Linux keeps a process's peak RSS across fork and exec, so a child forked from this (large) process would
# report at least our own size: a bare Python launcher forks the command and reports its child's peak.
LAUNCHER = """
import os, subprocess, sys
with open(sys.argv[1], "w") as out:
    proc = subprocess.Popen(sys.argv[2:], stdout=out, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def measure(args: list[str], log: Path) -> dict[str, float | int]:
    """Run a command; its exit code, wall time (s) and peak resident memory (MB, Linux ru_maxrss in kB)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, str(log), *args], capture_output=True, text=True,
                          check=True)
    code, maxrss_kb = (int(v) for v in done.stdout.split())
    return {"exit_code": code, "wall_s": round(time.perf_counter() - start, 2),
            "peak_rss_mb": round(maxrss_kb / 1024, 1)}


def run(folder: Path, n: int, box: int) -> dict:
    """Create the data set (unless there) and measure ``info`` with and without image statistics."""
    stack, star = folder / "particles.mrcs", folder / "particles.star"
    t0 = time.perf_counter()
    if not stack.exists():
        make_stack(stack, n, box)
    if not star.exists():
        make_star(star, stack, n, box)
    created = round(time.perf_counter() - t0, 1)
    cases = {
        "info (1000 sampled images)": [str(star)],
        "info --json": [str(star), "--json"],
        "info --sample 0 (metadata only)": [str(star), "--sample", "0"],
        "info on the .mrcs stack": [str(stack)],
    }
    results = {}
    for name, extra in cases.items():
        log = folder / f"{name.split()[0]}_{len(results)}.log"
        results[name] = measure([*vitreous_command(), "info", *extra], log)
        if results[name]["exit_code"] != 0:
            print(log.read_text(), file=sys.stderr)
    check = json.loads((folder / "info_1.log").read_text())
    return {"particles": n, "box_px": box, "stack_bytes": stack.stat().st_size, "create_s": created,
            "target_mb": TARGET_MB, "info_reports_particles": check["particles"], "cases": results}


def print_table(result: dict) -> None:
    print(f"{result['particles']} particles, {result['box_px']} px, stack {result['stack_bytes'] / 2**30:.2f} GiB "
          f"(created in {result['create_s']} s); target peak RSS < {result['target_mb']:.0f} MB")
    print(f"{'case':<34} {'exit':>4} {'wall (s)':>9} {'peak RSS (MB)':>14}  verdict")
    for name, r in result["cases"].items():
        verdict = "ok" if r["exit_code"] == 0 and r["peak_rss_mb"] < result["target_mb"] else "OVER/FAILED"
        print(f"{name:<34} {r['exit_code']:>4} {r['wall_s']:>9} {r['peak_rss_mb']:>14}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="folder for the data set (kept); default: a temporary one")
    parser.add_argument("--n", type=int, default=100_000, help="number of particles")
    parser.add_argument("--box", type=int, default=64, help="image size (px)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        result = run(args.dir, args.n, args.box)
    else:
        with tempfile.TemporaryDirectory(prefix="vitreous-bench-") as tmp:
            result = run(Path(tmp), args.n, args.box)
    print_table(result)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
