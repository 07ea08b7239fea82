"""``vitreous train-vae`` against cryoDRGN ``train_vae``: training images/s and accuracy at equal wall time.

One run (2 threads for every tool, ``harness.run_measured``):

1. ``vitreous simulate --trajectory adk_dims_traj.npz``: ``--n`` particles (default 10000) of the adenylate kinase
   closed -> open trajectory (98 frames), box 64, 1.5 Å/px, SNR 0.1, true poses; ``truth/labels.npy`` holds each
   particle's frame, ``truth/state_###.mrc`` the frame maps.  Reused when ``OUT/sim`` exists.
2. ``vitreous convert particles.star poses.pkl`` (cryoDRGN poses + ``poses_ctf.pkl``).
3. Speed.  vitreous: images/s of its training loop (``images/s (training)`` it prints: images seen / training
   seconds, without start-up and the initial backprojection).  cryoDRGN (defaults, ``--zdim Z``): one epoch on
   ``--peer-speed-n`` particles (default 200); images/s = particles / its own "Finished in" epoch time.
4. Accuracy at equal wall time ``--budget-min`` (default 20 min of the whole command each).  vitreous trains on
   all particles with ``--max-minutes`` (budget minus its measured start-up, so the command ends near the
   budget).  cryoDRGN cannot finish one epoch of 10k particles in 20 min (~98 min at 1.7 images/s), and it only
   writes latents at the end of an epoch, so it trains on the largest random subset it can pass over once in
   the budget (``0.8 * its images/s * budget``), ``--checkpoint 1``, killed at the budget; its last epoch is used.
5. Metrics (same code for both, on the particles each tool has latents for):
   (a) Spearman |rho| between the first principal component of z and the true frame index;
   (b) per-image FSC: for ``--fsc-images`` particles (default 200, drawn from cryoDRGN's subset so both tools
       are scored on the same images) the map decoded at the particle's z against the truth map of its frame
       (soft spherical mask radius 3D/8, edge D/10, on both): area under the FSC curve (mean over shells 1 ..
       Nyquist, i.e. frequency normalised to [0, 1]) and the resolution at FSC 0.5, averaged;
   (c) PC1 ends: maps decoded at the 5th and 95th percentile of PC1 (the other PCs at their mean), correlated
       with the closed (frame 1) and open (last frame) truth maps; "match" when each end is closest to a
       different end state.
   cryoDRGN maps (``eval_vol``) are aligned to the truth first (contrast sign, integer origin shift; as
   ``bench_backproject.align_to_truth``).

Prints one table and writes ``OUT/bench_vae.json``::

    .venv/bin/python benchmarks/bench_vae.py --out /tmp/bench_vae                  # ~1 h on 2 cores
    .venv/bin/python benchmarks/bench_vae.py --out /tmp/bench_vae --budget-min 5 --fsc-images 40
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__:
    from . import harness, peers
    from .bench_backproject import align_to_truth, measure, vitreous_exe
else:  # run as a script: benchmarks/ is on sys.path
    import harness
    import peers
    from bench_backproject import align_to_truth, measure, vitreous_exe

REPO = Path(__file__).resolve().parents[1]
TRAJECTORY = Path(os.environ.get("VITREOUS_SHARED_DATA", REPO.parent / "shared" / "data")) / \
    "structures/adk/adk_dims_traj.npz"
BOX, APIX, SNR = 64, 1.5, 0.1
EPOCH_RE = re.compile(r"Epoch: (\d+) Average.*Finished in (\d+):(\d+):([\d.]+)")
RATE_RE = re.compile(r"images/s \(training\): ([\d.]+)")
STARTUP_S = 60.0  # vitreous start-up + initial backprojection + final encoding, kept out of --max-minutes


def simulate(out: Path, n: int) -> Path:
    """The benchmark data set in ``out/sim`` (simulated once); returns its particles.star."""
    star = out / "sim" / "particles.star"
    if not star.is_file():
        measure([*vitreous_exe(), "simulate", "--trajectory", str(TRAJECTORY), "-n", str(n), "--box", str(BOX),
                 "--apix", str(APIX), "--snr", str(SNR), "-o", str(out / "sim"), "--overwrite"],
                out / "logs" / "simulate.log")
    return star


def epoch_times(log: Path) -> dict[int, float]:
    """cryoDRGN's own duration (s) of each finished epoch, from its log."""
    return {int(m[1]): int(m[2]) * 3600 + int(m[3]) * 60 + float(m[4]) for m in EPOCH_RE.finditer(log.read_text())}


def cryodrgn_train(out: Path, star_dir: Path, index: np.ndarray, zdim: int, timeout: float | None,
                   epochs: int) -> dict[str, Any]:
    """``cryodrgn train_vae`` (defaults) on the particles ``index`` (0-based); killed after ``timeout`` s."""
    exe = peers.ensure_cryodrgn()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "ind.pkl", "wb") as fh:
        pickle.dump(np.asarray(index, np.int64), fh)
    cmd = [str(exe), "train_vae", str(star_dir / "particles.mrcs"), "--poses", str(star_dir / "poses.pkl"),
           "--ctf", str(star_dir / "poses_ctf.pkl"), "--zdim", str(zdim), "-n", str(epochs), "--ind",
           str(out / "ind.pkl"), "-o", str(out / "train"), "--max-threads", str(harness.DEFAULT_THREADS),
           "--checkpoint", "1", "--no-analysis"]
    run = harness.run_measured(cmd, timeout=timeout, log_path=out / "train.log")
    times = epoch_times(out / "train.log")
    run["epoch_s"] = times
    run["images"] = len(index)
    return run


def cryodrgn_latents(train_dir: Path) -> tuple[np.ndarray, Path] | None:
    """The latents and weights of cryoDRGN's last saved epoch, or None if none was saved."""
    saved = sorted(train_dir.glob("weights.*.pkl"), key=lambda p: int(p.stem.split(".")[1]))
    if not saved:
        return None
    epoch = saved[-1].stem.split(".")[1]
    with open(train_dir / f"z.{epoch}.pkl", "rb") as fh:
        return np.asarray(pickle.load(fh), np.float64), saved[-1]


def cryodrgn_volumes(weights: Path, z: np.ndarray, folder: Path) -> list[np.ndarray]:
    """cryoDRGN ``eval_vol`` maps at the rows of ``z``."""
    from vitreous.io.mrc import read_map

    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / "z.txt", z)
    cmd = [str(peers.ensure_cryodrgn()), "eval_vol", str(weights), "-c", str(weights.parent / "config.yaml"),
           "--zfile", str(folder / "z.txt"), "-o", str(folder), "--Apix", str(APIX)]
    subprocess.run(cmd, check=True, env=harness.thread_env(), capture_output=True)
    return [read_map(p)[0] for p in sorted(folder.glob("vol_*.mrc"))]


def vitreous_volumes(job: Path, z: np.ndarray) -> list[np.ndarray]:
    from vitreous.neural.trained import load_trained

    return list(load_trained(job).volumes(z.astype(np.float32)))


# --- metrics --------------------------------------------------------------------------------------------------


def pc1(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First principal component scores of z, its direction and the mean."""
    mean = z.mean(0)
    _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
    return (z - mean) @ vt[0], vt[0], mean


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def perimage_fsc(volumes: list[np.ndarray], frames: np.ndarray, truth_dir: Path, align: bool) -> dict[str, Any]:
    """Mean FSC AUC and resolution at 0.5 of each map against the truth map of its frame (soft mask)."""
    from vitreous.analysis.fsc import fsc_curve, resolution_at, soft_spherical_mask
    from vitreous.io.mrc import read_map

    mask = soft_spherical_mask(BOX, 3 * BOX / 8, BOX / 10)
    aucs, resolutions = [], []
    for volume, frame in zip(volumes, frames, strict=True):
        truth = read_map(truth_dir / f"state_{frame + 1:03d}.mrc")[0]
        if align:
            volume, _ = align_to_truth(volume, truth)
        frequency, fsc = fsc_curve(volume, truth, APIX, mask=mask)
        aucs.append(float(np.mean(fsc[1:])))
        resolutions.append(resolution_at(frequency, fsc, 0.5))
    return {"fsc_auc": float(np.mean(aucs)), "fsc_0.5_A": float(np.mean(resolutions)), "images": len(volumes)}


def pc1_ends(z: np.ndarray, decode, truth_dir: Path, n_frames: int, align: bool) -> dict[str, Any]:
    """Correlation of the maps at the PC1 5th/95th percentiles with the closed and open truth maps."""
    from vitreous.io.mrc import read_map

    scores, direction, mean = pc1(z)
    ends = np.stack([mean + np.percentile(scores, q) * direction for q in (5, 95)])
    maps = decode(ends)
    truths = [read_map(truth_dir / f"state_{f:03d}.mrc")[0] for f in (1, n_frames)]
    corr = np.zeros((2, 2))
    for i, volume in enumerate(maps):
        if align:
            volume, _ = align_to_truth(volume, truths[0])
        for j, truth in enumerate(truths):
            corr[i, j] = np.corrcoef(volume.ravel(), truth.ravel())[0, 1]
    closest = corr.argmax(1)
    return {"corr_low_end_closed_open": corr[0].tolist(), "corr_high_end_closed_open": corr[1].tolist(),
            "ends_match_closed_open": bool(closest[0] != closest[1])}


def score(z: np.ndarray, index: np.ndarray, fsc_index: np.ndarray, decode, labels: np.ndarray, truth_dir: Path,
          align: bool) -> dict[str, Any]:
    """Metrics (a)-(c) for latents ``z`` of particles ``index``; per-image FSC on ``fsc_index`` (subset)."""
    scores, _, _ = pc1(z)
    rows = np.searchsorted(index, fsc_index)
    n_frames = int(labels.max()) + 1
    return {"spearman_pc1_frame": abs(spearman(scores, labels[index])), "particles": len(index),
            **perimage_fsc(decode(z[rows]), labels[fsc_index], truth_dir, align),
            **pc1_ends(z, decode, truth_dir, n_frames, align)}


# --- the benchmark ------------------------------------------------------------------------------------------------


def run(out: Path, n: int, zdim: int, budget_min: float, fsc_images: int, peer_speed_n: int,
        skip_peer: bool) -> dict[str, Any]:
    (out / "logs").mkdir(parents=True, exist_ok=True)
    star = simulate(out, n)
    sim = star.parent
    labels = np.load(sim / "truth" / "labels.npy")
    budget = 60.0 * budget_min
    result: dict[str, Any] = {"n": n, "box": BOX, "apix": APIX, "snr": SNR, "zdim": zdim, "budget_min": budget_min,
                              "load_before": os.getloadavg()}
    rng = np.random.default_rng(0)

    ours_dir = out / "vitreous"
    cmd = [*vitreous_exe(), "train-vae", str(star), "--zdim", str(zdim), "-o", str(ours_dir), "--overwrite",
           "--epochs", "1000", "--max-minutes", f"{max(budget - STARTUP_S, 30.0) / 60.0:.3f}"]
    ours = measure(cmd, out / "logs" / "vitreous_train_vae.log")
    rate = float(RATE_RE.findall(ours["stdout_tail"])[-1])
    result["vitreous"] = {"wall_s": ours["wall_s"], "cpu_s": ours["user_s"] + ours["sys_s"],
                          "peak_rss_mb": ours["peak_rss_mb"], "images_per_s": rate}

    peer_index = np.arange(n)
    if not skip_peer:
        peer_dir = out / "cryodrgn"
        if not (sim / "poses.pkl").is_file():
            measure([*vitreous_exe(), "convert", str(star), str(sim / "poses.pkl")], out / "logs" / "convert.log")
        speed = cryodrgn_train(peer_dir / "speed", sim, np.sort(rng.choice(n, peer_speed_n, replace=False)), zdim,
                               None, 1)
        peer_rate = peer_speed_n / speed["epoch_s"][min(speed["epoch_s"])]
        size = min(n, int(0.8 * peer_rate * (budget - speed["wall_s"] + speed["epoch_s"][min(speed["epoch_s"])])))
        peer_index = np.sort(rng.choice(n, max(size, 2 * zdim), replace=False))
        accuracy = cryodrgn_train(peer_dir / "budget", sim, peer_index, zdim, budget, 1000)
        result["cryodrgn"] = {"images_per_s": peer_rate, "speed_run_wall_s": speed["wall_s"],
                              "budget_subset": len(peer_index), "budget_run_wall_s": accuracy["wall_s"],
                              "epochs_finished": len(accuracy["epoch_s"])}
    fsc_index = np.sort(rng.choice(peer_index, min(fsc_images, len(peer_index)), replace=False))

    z_ours = np.load(ours_dir / "z.npy").astype(np.float64)
    result["vitreous"].update(score(z_ours, np.arange(n), fsc_index, lambda z: vitreous_volumes(ours_dir, z),
                                    labels, sim / "truth", align=False))
    if not skip_peer:
        latents = cryodrgn_latents(peer_dir / "budget" / "train")
        if latents is None:
            result["cryodrgn"]["note"] = "no epoch finished within the budget"
        else:
            z_peer, weights = latents
            counter = iter(range(10**6))

            def decode(z: np.ndarray) -> list[np.ndarray]:
                return cryodrgn_volumes(weights, z, peer_dir / f"volumes_{next(counter)}")

            result["cryodrgn"].update(score(z_peer, peer_index, fsc_index, decode, labels, sim / "truth", align=True))
        result["speedup"] = result["vitreous"]["images_per_s"] / result["cryodrgn"]["images_per_s"]
    result["load_after"] = os.getloadavg()
    return result


COLUMNS = ("tool", "images_per_s", "particles", "spearman_pc1_frame", "fsc_auc", "fsc_0.5_A",
           "ends_match_closed_open")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="working folder (data, jobs, logs, bench_vae.json)")
    p.add_argument("--n", type=int, default=10000, help="particles to simulate")
    p.add_argument("--zdim", type=int, default=8, help="latent dimension of both tools")
    p.add_argument("--budget-min", type=float, default=20.0, help="wall-clock budget of each tool (minutes)")
    p.add_argument("--fsc-images", type=int, default=200, help="particles scored by per-image FSC")
    p.add_argument("--peer-speed-n", type=int, default=200, help="particles of cryoDRGN's speed epoch")
    p.add_argument("--skip-peer", action="store_true", help="leave cryoDRGN out")
    args = p.parse_args(argv)
    started = time.perf_counter()
    result = run(args.out, args.n, args.zdim, args.budget_min, args.fsc_images, args.peer_speed_n, args.skip_peer)
    result["bench_wall_s"] = time.perf_counter() - started
    rows = [{"tool": tool, **{k: v for k, v in result[tool].items() if k in COLUMNS}}
            for tool in ("vitreous", "cryodrgn") if tool in result]
    harness.print_table(rows, COLUMNS)
    if "speedup" in result:
        print(f"training images/s: vitreous {result['speedup']:.1f}x cryoDRGN")
    harness.write_json(args.out / "bench_vae.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
