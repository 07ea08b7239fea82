"""``vitreous abinit --classes K`` on a compositional mixture of three different proteins, no poses.

One run (``--threads`` for every command, default 2; ``harness.run_measured``):

1. ``vitreous simulate`` with ``1BD2``, ``4E43`` and ``8zpm`` from ``shared/data/structures/proteins``,
   ``--n`` particles in equal proportions (default 9000), box 64, 3 Å/px (the largest, 1BD2, is 146 Å
   across), SNR 0.1; truth in ``OUT/sim/truth`` (``labels.npy``, ``state_00k.mrc``).
2. ``vitreous backproject`` of each protein's particles with their true poses: the known-pose resolution.
3. ``vitreous abinit --classes K`` for each K of ``--classes`` (default 3 and 5) on the particles without poses.
4. Adjusted Rand index of ``rlnClassNumber`` against the truth, particles per class (how many classes hold more
   than 2 %), and for each class holding more than 2 %: the protein most of its particles are, and its map's
   FSC against that protein's truth after overlay (``align_map``, either hand), against the known-pose map's.

``--command abinit-neural`` runs the neural mixture (issue 6) instead of the classical ab initio (issue 4).
``--trajectory`` replaces the third protein by the adenylate kinase closed -> open trajectory (composition plus
conformation, run with ``--extra "--zdim 1"``): its class map is scored against the middle frame, and the first
principal component of its class's latents against the true frame (Spearman).
Targets (issue 6): K = 3 ARI >= 0.9 and each class within 1.5x of its protein's known-pose FSC = 0.5; K = 5 at
most 3 classes above 2 %; trajectory class latent PC1 |Spearman| >= 0.8.  Prints a table and writes
``OUT/bench_composition_COMMAND.json``::

    .venv/bin/python benchmarks/bench_composition.py --out /tmp/bench_composition
    .venv/bin/python benchmarks/bench_composition.py --out /tmp/bench_composition --command abinit-neural \
        --extra "--epochs 4"
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

if __package__:
    from . import harness
    from .bench_abinit import map_scores
    from .bench_refine import measured, unposed, vitreous_exe
else:  # run as a script: benchmarks/ is on sys.path
    import harness
    from bench_abinit import map_scores
    from bench_refine import measured, unposed, vitreous_exe

REPO = Path(__file__).resolve().parents[1]
PROTEINS = Path(os.environ.get("VITREOUS_SHARED_DATA", REPO.parent / "shared" / "data")) / "structures" / "proteins"
MODELS = ("1BD2.cif.gz", "4E43.pdb", "8zpm.cif")
TRAJECTORY = PROTEINS.parent / "adk" / "adk_dims_traj.npz"
BOX, APIX, SNR = 64, 3.0, 0.1
TARGET_ARI, TARGET_RATIO, SMALL_CLASS = 0.9, 1.5, 0.02


def components(sim: Path) -> tuple[np.ndarray, list[str], list[int]]:
    """Per particle its component (0-based: each model, then the trajectory), the component names, and the
    state whose truth map stands for each component (a model's own; the trajectory's middle frame)."""
    import pandas as pd

    states = pd.read_csv(sim / "truth" / "states.csv")
    component = states["component"].to_numpy() - 1
    labels = np.load(sim / "truth" / "labels.npy")
    names, reference = [], []
    for c in range(component.max() + 1):
        members = np.nonzero(component == c)[0]
        names.append(states["name"].iloc[members[0]].split("_frame")[0])
        reference.append(int(members[len(members) // 2]))
    return component[labels], names, reference


def known_pose_maps(sim: Path, out: Path, threads: int) -> list[dict[str, Any]]:
    """Backprojection of each component's particles with the true poses, scored against its truth."""
    from vitreous.io.mrc import read_map
    from vitreous.io.star import read_star, write_star

    particles = read_star(sim / "particles.star")
    labels, names, reference = components(sim)
    exe = vitreous_exe()
    scores = []
    for k in range(len(names)):
        star = sim / f"protein_{k + 1}.star"
        write_star(star, particles.subset(np.nonzero(labels == k)[0]))
        run = measured([*exe, "backproject", str(star), "-o", str(out / f"known_{k + 1}"), "--overwrite"],
                       out / f"known_{k + 1}.log", threads)
        truth, voxel = read_map(sim / "truth" / f"state_{reference[k] + 1:03d}.mrc")
        scores.append({**map_scores(out / f"known_{k + 1}" / "map.mrc", truth, voxel), "wall_s": run["wall_s"],
                       "name": names[k]})
    return scores


def class_scores(job: Path, sim: Path, classes: int) -> dict[str, Any]:
    from vitreous.analysis.metrics import adjusted_rand_index
    from vitreous.io.mrc import read_map
    from vitreous.io.star import read_star

    labels, names, reference = components(sim)
    states = np.load(sim / "truth" / "labels.npy")
    particles = read_star(job / "particles.star", load_images=False)
    assigned = particles.particles["rlnClassNumber"].to_numpy() - 1
    sizes = np.bincount(assigned, minlength=classes)
    rows = []
    for k in range(classes):
        members = labels[assigned == k]
        row: dict[str, Any] = {"class": k + 1, "fraction": float(sizes[k] / len(labels))}
        if row["fraction"] > SMALL_CLASS:
            protein = int(np.bincount(members, minlength=len(names)).argmax())
            truth, voxel = read_map(sim / "truth" / f"state_{reference[protein] + 1:03d}.mrc")
            row.update({"protein": names[protein], "purity": float(np.mean(members == protein)),
                        **map_scores(job / f"class_{k + 1:03d}.mrc", truth, voxel)})
            latents = job / f"class_{k + 1:03d}_z.npy"
            if names[protein].startswith("adk"):
                if latents.is_file():
                    row["latent_pc1_spearman"] = _latent_spearman(np.load(latents), states[assigned == k],
                                                                  members == protein)
                truly = np.nonzero((assigned == k) & (labels == protein))[0]
                row["pose_error_by_frame"] = pose_errors_by_frame(
                    particles.rotations[truly], np.load(sim / "truth" / "rotations.npy")[truly],
                    states[truly] - states[labels == protein].min())
        rows.append(row)
    return {"ari": adjusted_rand_index(assigned, labels), "sizes": sizes.tolist(),
            "classes_over_2_percent": int(np.sum(sizes > SMALL_CLASS * len(labels))), "classes": rows}


def _latent_spearman(z: np.ndarray, frames: np.ndarray, truly: np.ndarray) -> float:
    """Spearman correlation of the first principal component of a class's latents with the true frame (state
    numbers of a trajectory increase with the frame), over
    the class members that are trajectory particles."""
    from scipy.stats import spearmanr

    z = z[truly] - z[truly].mean(0)
    pc1 = z @ np.linalg.svd(z, full_matrices=False)[2][0] if z.shape[1] > 1 else z[:, 0]
    return float(spearmanr(pc1, frames[truly]).statistic)


def pose_errors_by_frame(rotations: np.ndarray, truth: np.ndarray, frames: np.ndarray,
                         bins: int = 5) -> list[dict[str, Any]]:
    """Rotation errors of a trajectory class's particles after one global alignment (either hand) to the truth,
    per quintile of their trajectory frames (0-based): which conformations the class's poses fail."""
    from vitreous.analysis.alignment import align_rotations

    errors = align_rotations(rotations, truth).errors_deg
    edges = np.quantile(frames, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, frames, side="right") - 1, 0, bins - 1)
    parts = [which == b for b in range(bins)]
    return [{"frames": [int(frames[part].min()), int(frames[part].max())], "n": int(part.sum()),
             "median_deg": float(np.median(errors[part])), "over_20_deg": float(np.mean(errors[part] > 20))}
            for part in parts if part.any()]


def table(result: dict[str, Any]) -> str:
    lines = ["known poses: " + ", ".join(f"{s['name']} {s['fsc_truth_0.5_A']:.2f} Å" for s in result["known"])]
    known = {s["name"]: s["fsc_truth_0.5_A"] for s in result["known"]}
    for key, run in result["runs"].items():
        s = run["scores"]
        lines.append(f"{key}: ARI {s['ari']:.3f} (target >= {TARGET_ARI} for K=3), sizes {s['sizes']}, classes > 2 %: "
                     f"{s['classes_over_2_percent']}, wall {run['wall_s']:.0f} s, peak RSS {run['peak_rss_mb']:.0f} MB")
        for row in s["classes"]:
            if "protein" in row:
                ratio = row["fsc_truth_0.5_A"] / known[row["protein"]]
                lines.append(f"  class {row['class']}: {row['fraction']:.3f} of particles, {row['protein']} "
                             f"(purity {row['purity']:.3f}), FSC=0.5 vs truth {row['fsc_truth_0.5_A']:.2f} Å "
                             f"(ratio {ratio:.2f}, target <= {TARGET_RATIO})"
                             + (f", latent PC1 Spearman {row['latent_pc1_spearman']:.3f} (target |rho| >= 0.8)"
                                if "latent_pc1_spearman" in row else ""))
                for part in row.get("pose_error_by_frame", []):
                    lines.append(f"    frames {part['frames'][0]}-{part['frames'][1]} ({part['n']}): median rotation "
                                 f"error {part['median_deg']:.1f}°, {100 * part['over_20_deg']:.0f} % over 20°")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (data, jobs, JSON)")
    parser.add_argument("--n", type=int, default=9000, help="particles to simulate (equal thirds)")
    parser.add_argument("--classes", type=int, nargs="+", default=[3, 5], help="values of K to run")
    parser.add_argument("--threads", type=int, default=harness.DEFAULT_THREADS, help="threads of every command")
    parser.add_argument("--command", default="abinit", choices=["abinit", "abinit-neural"],
                        help="the classical ab initio, or it followed by the mixture of neural fields")
    parser.add_argument("--extra", default="", help="more options for the command (one string)")
    parser.add_argument("--trajectory", action="store_true",
                        help="replace the third protein by the adenylate kinase trajectory")
    args = parser.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    exe = vitreous_exe()
    sim = out / "sim"
    if not (sim / "particles.star").is_file():
        models = [arg for name in MODELS[:2 if args.trajectory else 3] for arg in ("--model", str(PROTEINS / name))]
        if args.trajectory:
            models += ["--trajectory", str(TRAJECTORY)]
        measured([*exe, "simulate", *models, "--proportions", "1,1,1", "-n", str(args.n),
                  "--box", str(BOX), "--apix", str(APIX), "--snr", str(SNR), "-o", str(sim), "--overwrite"],
                 out / "simulate.log", args.threads)
    star = unposed(sim / "particles.star", out / "unposed.star")
    result: dict[str, Any] = {"n": args.n, "box": BOX, "apix": APIX, "snr": SNR, "threads": args.threads,
                              "known": known_pose_maps(sim, out, args.threads), "runs": {}}
    name = args.command.replace("-", "_")
    for k in args.classes:
        job = out / f"{name}_K{k}"
        load = os.getloadavg()
        run = measured([*exe, args.command, str(star), "--classes", str(k), *args.extra.split(), "-o", str(job),
                        "--overwrite"], out / f"{name}_K{k}.log", args.threads)
        run["load_average_before_after"] = [load, os.getloadavg()]
        result["runs"][f"{args.command} K={k}"] = {**run, "scores": class_scores(job, sim, k)}
        (out / f"bench_composition_{name}.json").write_text(json.dumps(result, indent=2, default=str))
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
