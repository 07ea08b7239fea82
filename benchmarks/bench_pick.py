"""``vitreous pick`` on simulated micrographs: precision and recall of the template and learned pickers, time.

1. ``vitreous simulate-micrographs`` writes ``--n`` test micrographs (default 20) and ``--train`` training
   micrographs (default 3, other seeds) with the simulator's defaults: 1024 px at 1 Å/px, 150 closed adenylate
   kinase particles per micrograph at SNR 0.1 in 300-600 Å of vitreous ice, defocus 0.5-3 µm, astigmatism up to
   1000 Å.  The particle diameter given to the pickers is twice the simulator's particle radius
   (``map_radius``), the box is the truth map's (64 px).
2. Template picker: ``vitreous pick truth/micrographs_ctf.star --template truth/model_001.mrc`` (the true map
   and the true CTFs, so that CTF estimation errors are not counted here; ``bench_ctf.py`` measures those),
   default settings (working pixel = diameter / 10, 48 directions x 36 in-plane angles, automatic threshold).
3. Learned picker: ``vitreous pick micrographs.star --train TRAIN/truth/coordinates.star`` (the training
   micrographs' true coordinates), default settings (400 steps, threshold from the expected particle density).

Scoring: per micrograph, picks and true centres are matched one-to-one (Hungarian, on distance) and a match
within 0.25 of the box (16 px) is a hit; precision = hits / picks, recall = hits / true particles, over all
test micrographs.  Target (issue 7): both >= 0.9 for both pickers.  Times are wall and CPU seconds of the whole
command in a fresh process (``harness.run_measured``, 2 threads).  Prints a table; writes
``OUT/bench_pick.json``::

    flock /tmp/vitreous-bench.lock .venv/bin/python benchmarks/bench_pick.py --out /tmp/bench_pick  # ~10 min

Measured (10 test micrographs, load 9-12): template 0.997 / 0.989, learned 0.960 / 0.960 (see README).
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
MODEL = REPO / "src/vitreous/resources/adk_closed.pdb.gz"
TARGET = 0.9
HIT = 0.25  # of the box


def vitreous_exe() -> list[str]:
    exe = Path(sys.executable).with_name("vitreous")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from vitreous.cli.main import run; run()"]


def run(args: list[Any], log: Path) -> dict[str, Any]:
    result = harness.run_measured([*vitreous_exe(), *map(str, args)], log_path=log)
    if result["returncode"] != 0:
        raise RuntimeError(f"{' '.join(map(str, args[:2]))} failed:\n{result['stdout_tail']}")
    return result


def simulate(folder: Path, n: int, size: int, seed: int) -> None:
    if not (folder / "truth" / "coordinates.star").is_file():
        run(["simulate-micrographs", "-o", folder, "--model", MODEL, "-n", n, "--size", size, "--seed", seed,
             "--overwrite"], folder.with_suffix(".log"))


def diameter_and_box(truth_map: Path) -> tuple[float, int]:
    """Particle diameter (Å, twice the simulator's radius of the map) and the map's box (px)."""
    import torch

    from vitreous.io.mrc import read_map
    from vitreous.sim.micrographs import map_radius

    volume, voxel = read_map(truth_map)
    return 2 * map_radius(torch.from_numpy(volume), voxel), volume.shape[-1]


def score(picked: Path, truth: Path, tolerance: float) -> dict[str, Any]:
    """Precision and recall of picks against the true coordinates (one-to-one matching per micrograph)."""
    from vitreous.io.micrographs import COORDINATES, read_micrograph_star
    from vitreous.preprocess.picking import match_picks

    found, true = read_micrograph_star(picked, "particles"), read_micrograph_star(truth, "particles")
    found_names = np.array([p.name for p in found.paths()])
    true_names = np.array([p.name for p in true.paths()])
    hits = false_pos = false_neg = 0
    per_micrograph = []
    for name in np.unique(true_names):
        f = found.table.loc[found_names == name, COORDINATES].to_numpy(np.float64)
        t = true.table.loc[true_names == name, COORDINATES].to_numpy(np.float64)
        h, fp, fn = match_picks(f, t, tolerance)
        hits, false_pos, false_neg = hits + h, false_pos + fp, false_neg + fn
        per_micrograph.append({"micrograph": name, "true": len(t), "picked": len(f), "hits": h})
    return {"precision": hits / max(hits + false_pos, 1), "recall": hits / max(hits + false_neg, 1),
            "picks": hits + false_pos, "true_particles": hits + false_neg, "per_micrograph": per_micrograph}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=20, help="test micrographs")
    parser.add_argument("--train", type=int, default=3, help="training micrographs of the learned picker")
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    test, train = out / "test", out / "train"
    simulate(test, args.n, args.size, 1)
    simulate(train, args.train, args.size, 1000)
    diameter, box = diameter_and_box(test / "truth" / "model_001.mrc")
    tolerance = HIT * box
    rows = []
    jobs = {
        "template": ["pick", test / "truth" / "micrographs_ctf.star", "-o", out / "template", "--diameter",
                     f"{diameter:.2f}", "--template", test / "truth" / "model_001.mrc", "--overwrite"],
        "learned": ["pick", test / "micrographs.star", "-o", out / "learned", "--diameter", f"{diameter:.2f}",
                    "--train", train / "truth" / "coordinates.star", "--overwrite"],
    }
    for name, command in jobs.items():
        measured = run(command, out / f"{name}.log")
        result = score(out / name / "coordinates.star", test / "truth" / "coordinates.star", tolerance)
        rows.append({"picker": name, "precision": result["precision"], "recall": result["recall"],
                     "picks": result["picks"], "true": result["true_particles"], "wall_s": measured["wall_s"],
                     "cpu_s": measured["user_s"] + measured["sys_s"],
                     "meets_target": result["precision"] >= TARGET and result["recall"] >= TARGET,
                     "per_micrograph": result["per_micrograph"]})
    table = harness.print_table([{k: v for k, v in r.items() if k != "per_micrograph"} for r in rows])
    print(f"\n{args.n} test micrographs {args.size}^2 at 1 Å/px, diameter {diameter:.1f} Å, hit within "
          f"{tolerance:.0f} px; load {os.getloadavg()[0]:.2f}")
    harness.write_json(out / "bench_pick.json", {
        "micrographs": args.n, "training_micrographs": args.train, "size": args.size, "diameter_A": diameter,
        "box": box, "tolerance_px": tolerance, "load_average": os.getloadavg(), "results": rows, "table": table})


if __name__ == "__main__":
    main()
