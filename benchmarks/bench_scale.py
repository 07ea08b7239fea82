"""Data at scale: peak memory of the commands on a 1M-particle stack, and read throughput cache vs MRCS.

1. Data (``--dir``, default a temporary folder under /tmp, removed afterwards unless ``--keep``): ``K = 64``
   clean projections of the bundled adenylate kinase model (box 64, 1.5 Å/px, true poses, shifts and CTF from
   :func:`vitreous.sim.particles.simulate_stack` at SNR 1e6); particle ``i`` is projection ``i % K`` plus fresh
   white noise (SNR 0.1) with that projection's pose and CTF, so the data are consistent (a backprojection gives
   the model's map from K views).  Written chunk by chunk as float32 (16 GiB for 1M x 64^2) with a RELION 3.1
   STAR file (random half sets).
2. Memory, each command in its own process (2 threads), sampled every 50 ms from ``/proc/PID/status``:
   peak ``RssAnon`` (anonymous memory: arrays, tensors, Python objects), peak ``RssFile`` (file pages mapped by
   the process: shared libraries, memory maps; the kernel can drop them) and ``VmHWM`` (the kernel's own peak
   of their sum, exact).  Target: VmHWM < 2 GB.  Commands: ``vitreous info`` on the 1M STAR; ``vitreous
   preprocess --downsample 32`` into a float16 cache; one epoch of ``vitreous train-vae`` on ``--train-n``
   random particles of the cache; ``vitreous backproject`` of all particles of the cache (box 32) and of the
   first ``--bp-mrcs-n`` particles of the MRCS (box 64).
3. Throughput (images/s) in this process, from the float32 MRCS (box 64) and from the float16 cache (box 32),
   for sequential batches and random batches (sorted random indices, as the training loop draws them) of 1024
   images: plain reads; and the loop of :func:`vitreous.reconstruct.backproject.backproject` at box 32 (read,
   Fourier crop the MRCS images to 32, CTF, ``HalfSetBackprojector.add``) without and with
   :func:`vitreous.data.prefetch.prefetch` (depth 2: read and crop run in the background thread).  Before every
   run the page cache of both files is dropped (``posix_fadvise(DONTNEED)``), so reads come from the disk (or
   the host's cache below this VM).  Every variant runs ``--repeats`` times, interleaved: best, median and all
   rates, and the median share of the loop's time spent waiting for its next batch (the read and crop that the
   prefetcher hides).  ``--throughput-only --dir DIR`` repeats this part on the data of an earlier run.
   The loops run with ``--threads`` torch threads (default 1, leaving the second core to the prefetch thread;
   on a loaded 2-core machine 2 intra-op threads made the backprojection ~10x slower, see the issue notes).

    flock /tmp/vitreous-bench.lock .venv/bin/python benchmarks/bench_scale.py --out /tmp/bench_scale.json
    .venv/bin/python benchmarks/bench_scale.py --n 20000 --train-n 2000 --out /tmp/small.json   # quick check
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path

import numpy as np
import starfile
import torch

from harness import print_table, thread_env, write_json
from vitreous.data.prefetch import prefetch
from vitreous.io.stack import ImageStack
from vitreous.io.star import read_star
from vitreous.physics.ctf import CTFParams, compute_ctf
from vitreous.physics.fourier import fourier_crop
from vitreous.reconstruct.backproject import HalfSetBackprojector
from vitreous.sim.particles import Acquisition, simulate_stack
from vitreous.sim.truth import models_truth

APIX, SNR, VIEWS = 1.5, 0.1, 64
TARGET_MB = 2000.0
CHUNK = 8192  # images generated at once
BATCH = 1024  # images per read batch
FIELDS = ("RssAnon", "RssFile", "RssShmem", "VmHWM", "VmRSS")


# ---- data -----------------------------------------------------------------------------------------------------
def make_data(folder: Path, n: int, box: int, seed: int = 0) -> dict:
    """``folder/particles.mrcs`` + ``particles.star`` (see the module docstring); returns timings."""
    t0 = time.perf_counter()
    with resources.as_file(resources.files("vitreous.resources") / "adk_closed.pdb.gz") as pdb:
        truth = models_truth([pdb], box, APIX).volumes
    views = simulate_stack(truth, np.zeros(VIEWS, np.int64), folder / "views.mrcs",
                           Acquisition(apix=APIX, snr=1e6, astigmatism_A=300.0, shift_sd_px=1.0, seed=seed))
    clean = views.images.read(slice(None))
    sigma = float(np.sqrt(clean.var() / SNR))
    rng = np.random.default_rng(seed + 1)
    stack = folder / "particles.mrcs"
    header = _mrc_header(n, box)
    with open(stack, "wb") as fh:
        fh.write(header)
        for start in range(0, n, CHUNK):
            k = min(CHUNK, n - start)
            images = rng.standard_normal((k, box, box), dtype=np.float32)
            images *= sigma
            images += clean[np.arange(start, start + k) % VIEWS]
            fh.write(images.data)
    t_stack = time.perf_counter() - t0
    table = views.particles.drop(columns="rlnImageName").iloc[np.arange(n) % VIEWS].reset_index(drop=True)
    table.insert(0, "rlnImageName", [f"{i + 1:07d}@particles.mrcs" for i in range(n)])
    table["rlnRandomSubset"] = rng.integers(1, 3, n)
    optics = views.optics.copy()
    optics["rlnOpticsGroupName"] = "opticsGroup1"
    starfile.write({"optics": optics, "particles": table}, folder / "particles.star", overwrite=True)
    (folder / "views.mrcs").unlink()
    return {"stack_s": round(t_stack, 1), "star_s": round(time.perf_counter() - t0 - t_stack, 1),
            "stack_bytes": stack.stat().st_size}


def _mrc_header(n: int, box: int) -> bytes:
    """The 1024-byte header of a float32 stack of ``n`` images (written by mrcfile on an empty file)."""
    import mrcfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "h.mrcs"
        with mrcfile.new_mmap(path, shape=(n, box, box), mrc_mode=2) as mrc:  # sparse: nothing is written
            mrc.set_image_stack()
            mrc.voxel_size = APIX
        with open(path, "rb") as fh:
            return fh.read(1024)


def subset_star(cache_star: Path, out: Path, n: int, seed: int = 0) -> None:
    """``n`` random particles of the cache's STAR file (random access into the cache), beside it."""
    blocks = starfile.read(cache_star, always_dict=True)
    rows = np.sort(np.random.default_rng(seed).choice(len(blocks["particles"]), n, replace=False))
    blocks["particles"] = blocks["particles"].iloc[rows]
    starfile.write(blocks, out, overwrite=True)


# ---- memory ---------------------------------------------------------------------------------------------------
def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in FIELDS:
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


def measure(args: list[str], log: Path, poll_s: float = 0.05) -> dict:
    """Run a command (2 threads); exit code, wall time and peak RssAnon / RssFile / VmHWM (MB, sampled)."""
    peaks = dict.fromkeys(FIELDS, 0)
    stop = threading.Event()
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=thread_env(2))

        def sample() -> None:
            while not stop.is_set():
                for key, value in _status_kb(proc.pid).items():
                    peaks[key] = max(peaks[key], value)
                stop.wait(poll_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        sampler.join()
    result = {"exit_code": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
              "peak_anon_mb": round(peaks["RssAnon"] / 1024, 1), "peak_file_mb": round(peaks["RssFile"] / 1024, 1),
              "hwm_mb": round(peaks["VmHWM"] / 1024, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}
    if proc.returncode != 0:
        result["log_tail"] = log.read_text(errors="replace")[-2000:]
    return result


def vitreous_command() -> list[str]:
    script = Path(sys.executable).parent / "vitreous"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from vitreous.cli.main import run; run()"]


# ---- throughput -----------------------------------------------------------------------------------------------
def drop_page_cache(*paths: Path) -> None:
    """Ask the kernel to drop its cached pages of these files (no root needed, other files untouched)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def batch_orders(n: int, count: int, random: bool, seed: int) -> list[np.ndarray]:
    """``count`` batches of BATCH indices: consecutive from a random start, or sorted random draws."""
    rng = np.random.default_rng(seed)
    if random:
        return [np.sort(rng.choice(n, BATCH, replace=False)) for _ in range(count)]
    start = int(rng.integers(0, max(n - count * BATCH, 1)))
    return [np.arange(start + k * BATCH, min(start + (k + 1) * BATCH, n)) for k in range(count)]


def backprojection_loop(star: Path, box: int):
    """``(prepare, compute)``: Fourier crop of a batch to ``box`` (producer side) and its CTF +
    ``HalfSetBackprojector.add`` (consumer side), as :func:`vitreous.reconstruct.backproject.backproject` runs."""
    particles = read_star(star, load_images=False)
    original = int(particles.optics["rlnImageSize"].iloc[0])
    rotations = torch.as_tensor(particles.rotations, dtype=torch.float32)
    shifts = torch.as_tensor(particles.shifts_px * box / original, dtype=torch.float32)
    halves = torch.as_tensor(particles.half_sets - 1)
    ctf = CTFParams.from_table(particles.ctf_table())
    accumulator = HalfSetBackprojector(box, 2, "cpu", "C1")
    apix = particles.single_pixel_size() * original / box

    def prepare(images: np.ndarray) -> torch.Tensor:
        images = torch.from_numpy(images)
        return fourier_crop(images, box) if images.shape[-1] != box else images

    def compute(idx: np.ndarray, images: torch.Tensor) -> None:
        accumulator.add(images, rotations[idx], shifts[idx], compute_ctf(ctf[idx], box, apix), halves[idx])

    return prepare, compute


def loop_rate(stack: ImageStack, orders: list[np.ndarray], depth: int, prepare=None, compute=None) -> tuple:
    """(images/s, fraction of the time the loop waited for its next batch) of reading (and ``prepare``) in
    the producer and ``compute`` in the consumer, with prefetch ``depth``."""
    prepare = prepare or (lambda images: images)
    batches = prefetch(((idx, prepare(stack.read(idx))) for idx in orders), depth)
    t0 = time.perf_counter()
    images, waited = 0, 0.0
    while True:
        t_wait = time.perf_counter()
        item = next(batches, None)
        waited += time.perf_counter() - t_wait
        if item is None:
            break
        if compute is not None:
            compute(*item)
        images += len(item[1])
    elapsed = time.perf_counter() - t0
    return images / elapsed, waited / elapsed


def throughput(folder: Path, cache: Path, n: int, box: int, read_n: int, compute_n: int, repeats: int) -> list[dict]:
    sources = {"MRCS float32": folder / "particles.mrcs", "cache float16": cache / "particles.mrcs"}
    prepare, compute = backprojection_loop(folder / "particles.star", box)
    loops = {"read": (0, None, None, read_n), f"read + backproject at {box}": (0, prepare, compute, compute_n),
             f"read + backproject at {box}, prefetch 2": (2, prepare, compute, compute_n)}
    stacks = {name: ImageStack.from_file(path) for name, path in sources.items()}
    rows = {(a, s, lo): [] for a in ("sequential", "random") for s in sources for lo in loops}
    for repeat in range(repeats):
        for (access, name, label), runs in rows.items():
            depth, prep, work, count = loops[label]
            drop_page_cache(*sources.values())
            orders = batch_orders(n, max(count // BATCH, 1), access == "random", seed=repeat)
            runs.append(loop_rate(stacks[name], orders, depth, prep, work))
            print(access, name, label, runs[-1], flush=True)
    return [{"source": name, "batches": access, "loop": label, "images": max(loops[label][3] // BATCH, 1) * BATCH,
             "images_per_s": round(max(r for r, _ in runs)),
             "median_images_per_s": round(np.median([r for r, _ in runs])),
             "median_waiting_pct": round(100 * np.median([w for _, w in runs]), 1),
             "all_runs": [round(r) for r, _ in runs]} for (access, name, label), runs in rows.items()]


# ---- driver ---------------------------------------------------------------------------------------------------
def run(folder: Path, n: int, box: int, downsample: int, train_n: int, bp_mrcs_n: int, read_n: int,
        compute_n: int, repeats: int, commands: bool = True) -> dict:
    result: dict = {"particles": n, "box_px": box, "cache_box_px": downsample, "target_mb": TARGET_MB,
                    "load_before": os.getloadavg()}
    if not (folder / "particles.star").exists():
        result["create"] = make_data(folder, n, box)
        print("data:", result["create"], flush=True)
    star, cache = folder / "particles.star", folder / "cache"
    if not commands:  # throughput only, on the data and cache of an earlier run
        result["throughput"] = throughput(folder, cache, n, downsample, read_n, compute_n, repeats)
        result["load_after"] = os.getloadavg()
        return result
    mrcs_subset = folder / "first.star"
    blocks = starfile.read(star, always_dict=True)
    blocks["particles"] = blocks["particles"].iloc[:bp_mrcs_n]
    starfile.write(blocks, mrcs_subset, overwrite=True)
    del blocks
    cmd = vitreous_command()
    steps = {
        "info": [*cmd, "info", str(star)],
        f"preprocess --downsample {downsample} (float16)": [*cmd, "preprocess", str(star), "-o", str(cache),
                                                              "--downsample", str(downsample), "--overwrite"],
        "preprocess again (same inputs: reuses the cache)": [*cmd, "preprocess", str(star), "-o", str(cache),
                                                             "--downsample", str(downsample)],
        f"train-vae, 1 epoch, {train_n} random particles of the cache": [
            *cmd, "train-vae", str(cache / "subset.star"), "-o", str(folder / "vae"), "--zdim", "8", "--epochs", "1",
            "--overwrite"],
        f"backproject, all {n} particles of the cache (box {downsample})": [
            *cmd, "backproject", str(cache / "particles.star"), "-o", str(folder / "bp_cache"), "--overwrite"],
        f"backproject, first {bp_mrcs_n} particles of the MRCS (box {box})": [
            *cmd, "backproject", str(mrcs_subset), "-o", str(folder / "bp_mrcs"), "--overwrite"],
    }
    result["memory"] = {}
    for k, (name, args) in enumerate(steps.items()):
        if name.startswith("train-vae"):
            subset_star(cache / "particles.star", cache / "subset.star", train_n)
        result["memory"][name] = measure(args, folder / f"step{k}.log")
        print(name, result["memory"][name], flush=True)
    result["preprocess_log_tail"] = (folder / "step1.log").read_text(errors="replace")[-1500:]
    result["throughput"] = throughput(folder, cache, n, downsample, read_n, compute_n, repeats)
    result["load_after"] = os.getloadavg()
    result["stack_bytes"] = (folder / "particles.mrcs").stat().st_size
    result["cache_bytes"] = (cache / "particles.mrcs").stat().st_size
    return result


def _verdict(step: dict, target_mb: float) -> str:
    if step["exit_code"] != 0:
        return "FAILED"
    if step["hwm_mb"] < target_mb:
        return "ok"
    return "HWM over, anon ok" if step["peak_anon_mb"] < target_mb else "OVER"


def print_tables(result: dict) -> None:
    print(f"\n{result['particles']} particles, box {result['box_px']} (cache {result['cache_box_px']}); "
          f"target VmHWM < {result['target_mb']:.0f} MB; load {result['load_before']} -> {result['load_after']}")
    if "memory" not in result:
        print_table(result["throughput"])
        return
    rows = [{"command": k, **{c: v[c] for c in ("exit_code", "wall_s", "cpu_s", "peak_anon_mb", "peak_file_mb",
                                                 "hwm_mb")},
             "verdict": _verdict(v, result["target_mb"])}
            for k, v in result["memory"].items()]
    print_table(rows)
    print()
    print_table(result["throughput"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="folder for the data (kept); default: a temporary one under /tmp")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--n", type=int, default=1_000_000, help="particles")
    parser.add_argument("--box", type=int, default=64, help="image size (px)")
    parser.add_argument("--downsample", type=int, default=32, help="box of the cache (px)")
    parser.add_argument("--train-n", type=int, default=20_000, help="particles of the train-vae epoch")
    parser.add_argument("--bp-mrcs-n", type=int, default=50_000, help="particles backprojected from the MRCS")
    parser.add_argument("--read-n", type=int, default=51_200, help="images per plain-read throughput run")
    parser.add_argument("--compute-n", type=int, default=20_480, help="images per read + backproject run")
    parser.add_argument("--repeats", type=int, default=2, help="runs of every throughput variant (interleaved)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of this process (the throughput loops; the commands get 2)")
    parser.add_argument("--throughput-only", action="store_true",
                        help="skip the commands: measure throughput on the data and cache already in --dir")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="vitreous-scale-", dir="/tmp"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        result = run(folder, args.n, args.box, args.downsample, args.train_n, args.bp_mrcs_n, args.read_n,
                     args.compute_n, args.repeats, commands=not args.throughput_only)
    finally:
        if args.dir is None and not args.keep:
            shutil.rmtree(folder)
    result["torch_threads"] = args.threads
    print_tables(result)
    if args.out is not None:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
