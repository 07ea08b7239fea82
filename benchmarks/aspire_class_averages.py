"""ASPIRE's class averaging of a RELION particle STAR, run with the ASPIRE venv's python (``peers.ensure_aspire``).

Steps as ASPIRE's documentation runs them: ``RelionSource`` (CTF from the STAR), ``phase_flip()``, the flipped
images as an ``ArrayImageSource`` (so the rotationally invariant classification works on phase-flipped images
without per-particle CTF filters, as ASPIRE expects), ``DefaultClassAvgSource`` (``RIRClass2D`` nearest
neighbours + ``BFTAverager2D``, brute-force rotation and shift alignment), with a
``NeighborVarianceClassSelector`` choosing the ``--classes`` classes whose neighbours are closest, without
averaging every class first (the default ``GlobalVarianceClassSelector`` averages all N classes; the
repulsion selectors, which would keep the chosen classes apart, fail in 0.14.3 when they drop classes).
Writes ``averages.npy`` (K, D, D), ``members.npy`` (K, n_nbor + 1 particle indices, 0-based; the first is
the class's reference image) and ``timing.json`` (seconds per step).

    python aspire_class_averages.py particles.star OUT --classes 50 --n-nbor 50
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("star", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--n-nbor", type=int, default=50)
    args = parser.parse_args()

    from aspire.classification import NeighborVarianceClassSelector
    from aspire.denoising import DefaultClassAvgSource
    from aspire.source import ArrayImageSource, RelionSource

    args.out.mkdir(parents=True, exist_ok=True)
    timing = {}
    start = time.perf_counter()
    source = RelionSource(str(args.star))
    flipped = ArrayImageSource(source.phase_flip().images[:].asnumpy(), pixel_size=source.pixel_size)
    timing["read_and_phase_flip_s"] = time.perf_counter() - start
    averages = DefaultClassAvgSource(flipped, n_nbor=args.n_nbor,
                                     class_selector=NeighborVarianceClassSelector())
    images = averages.images[: args.classes].asnumpy()
    timing["classify_and_average_s"] = time.perf_counter() - start - timing["read_and_phase_flip_s"]
    timing["total_s"] = time.perf_counter() - start
    selected = np.asarray(averages.selection_indices[: args.classes])
    np.save(args.out / "averages.npy", images.astype(np.float32))
    np.save(args.out / "members.npy", np.asarray(averages.class_indices)[selected])
    (args.out / "timing.json").write_text(json.dumps(timing, indent=1))
    print(json.dumps(timing))


if __name__ == "__main__":
    main()
