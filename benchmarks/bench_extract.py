"""Micrograph simulation speed and the extraction convention end to end: ``vitreous simulate-micrographs`` ->
``vitreous extract`` at the true coordinates -> ``vitreous backproject`` with the true poses, against the truth.

One run (``--threads`` for every command, default 1: on a shared 2-core machine torch's small operations are
much faster single-threaded; ``harness.run_measured``):

1. ``vitreous simulate-micrographs``: ``--n`` micrographs (default 50) of ``--size`` px (1024) at 1 Å/px with
   150 closed adenylate kinase particles each, default SNR 0.1, defocus 0.5-3 µm, astigmatism up to 1000 Å:
   wall and CPU time.
2. ``vitreous extract OUT/sim/truth/coordinates.star --box 96 --downsample 64`` (1.5 Å/px): wall time, boxes
   dropped at the edges.
3. ``vitreous backproject`` of the extracted particles (with the true poses the truth STAR carries) and, as the
   reference of what these particles can give, of a ``vitreous simulate`` stack of the same number of
   particles, box 64, 1.5 Å/px, defocus 0.5-3 µm, at the SNR of the same noise power per Å² (both SNRs are
   signal variance over a box / noise variance, but over different boxes and pixels: the micrographs' over
   the 68-Å map box in 1-Å pixels, the stack's over its 96-Å box in 1.5-Å pixels, so the stack gets
   ``0.1 * 1.5^2 * (68 / 96)^2 = 0.113``; the micrographs' amorphous ice adds a little more noise):
   FSC = 0.5 / 0.143 of each full map (as written, with backproject's default mask) against the model's map
   at 1.5 Å/px, box 64, and against its mirror image (the wrong hand must fit far worse).

Prints a table and writes ``OUT/bench_extract.json``::

    .venv/bin/python benchmarks/bench_extract.py --out /tmp/bench_extract      # ~3 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__:
    from . import harness
    from .bench_refine import measured, vitreous_exe
else:  # run as a script: benchmarks/ is on sys.path
    import harness
    from bench_refine import measured, vitreous_exe

MODEL = Path(__file__).resolve().parents[1] / "src" / "vitreous" / "resources" / "adk_closed.pdb.gz"
APIX, BOX, OUT_BOX = 1.0, 96, 64  # micrograph pixel size, extraction box and the box written (1.5 Å/px)


def map_scores(path: Path, truth: np.ndarray, voxel: float) -> dict[str, float]:
    """FSC = 0.5 / 0.143 resolutions (Å) of the map at ``path`` against the truth and its mirror image."""
    from vitreous.analysis.fsc import fsc_curve, resolution_at
    from vitreous.io.mrc import read_map

    volume = read_map(path)[0]
    scores = {}
    for name, reference in (("truth", truth), ("mirror", truth[::-1].copy())):
        frequency, fsc = fsc_curve(volume, reference, voxel)
        scores[f"fsc05_{name}_A"] = resolution_at(frequency, fsc, 0.5)
        scores[f"fsc0143_{name}_A"] = resolution_at(frequency, fsc, 0.143)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=50, help="micrographs")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    out, exe, threads = args.out, vitreous_exe(), args.threads
    out.mkdir(parents=True, exist_ok=True)
    from vitreous.io.mrc import write_map
    from vitreous.io.star import read_star
    from vitreous.sim.truth import models_truth

    voxel = APIX * BOX / OUT_BOX
    truth = models_truth([MODEL], OUT_BOX, voxel).volumes[0].numpy()
    write_map(out / "truth.mrc", truth, voxel)
    rows: list[dict[str, Any]] = []

    started = time.time()
    sim = measured([*exe, "simulate-micrographs", "--model", str(MODEL), "-n", str(args.n), "--size", str(args.size),
                    "--apix", str(APIX), "-o", str(out / "sim"), "--overwrite"], out / "sim.log", threads)
    rows.append({"step": f"simulate-micrographs ({args.n} x {args.size}²)", **sim})
    extract = measured([*exe, "extract", str(out / "sim" / "truth" / "coordinates.star"), "--box", str(BOX),
                        "--downsample", str(OUT_BOX), "-o", str(out / "extract"), "--overwrite"],
                       out / "extract.log", threads)
    n_particles = len(read_star(out / "extract" / "particles.star"))
    rows.append({"step": f"extract ({n_particles} particles)", **extract})
    bp = measured([*exe, "backproject", str(out / "extract" / "particles.star"), "-o", str(out / "bp_extracted"),
                   "--overwrite"], out / "bp_extracted.log", threads)
    rows.append({"step": "backproject extracted", **bp, **map_scores(out / "bp_extracted" / "map.mrc", truth, voxel)})
    map_side = models_truth([MODEL], None, APIX).box * APIX  # the box over which the micrographs' SNR is defined
    snr = 0.1 * (voxel / APIX) ** 2 * (map_side / (OUT_BOX * voxel)) ** 2  # same noise power per Å² and signal
    measured([*exe, "simulate", "--model", str(MODEL), "-n", str(n_particles), "--box", str(OUT_BOX), "--apix",
              str(voxel), "--snr", f"{snr:.4f}", "--defocus-min", "0.5", "--defocus-max", "3", "--astigmatism", "1000",
              "-o", str(out / "stack"), "--overwrite"], out / "stack.log", threads)
    bp = measured([*exe, "backproject", str(out / "stack" / "particles.star"), "-o", str(out / "bp_stack"),
                   "--overwrite"], out / "bp_stack.log", threads)
    rows.append({"step": "backproject simulate stack (reference)", **bp,
                 **map_scores(out / "bp_stack" / "map.mrc", truth, voxel)})
    for row in rows:
        row.pop("cmd", None)
    print(harness.print_table(rows))
    harness.write_json(out / "bench_extract.json", {"rows": rows, "n_micrographs": args.n, "size": args.size,
                                                    "particles": n_particles, "threads": threads,
                                                    "total_s": time.time() - started})


if __name__ == "__main__":
    main()
