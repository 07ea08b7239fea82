"""Backproject a RELION STAR file with cryoDRGN's own tools (peer side of the benchmark).

Three measured subprocesses, all run from the peer venv (see ``peers.py``) with the same thread
limits as vitreous (``harness.run_measured``)::

    cryodrgn parse_pose_star STAR -o OUT/pose.pkl -D D --Apix APIX
    cryodrgn parse_ctf_star  STAR -o OUT/ctf.pkl  -D D --Apix APIX
    cryodrgn backproject_voxel PARTICLES --poses OUT/pose.pkl --ctf OUT/ctf.pkl -o OUT/backproject \\
        [--datadir STAR_DIR] [--no-fsc-vals | --no-half-maps]

PARTICLES is the STAR itself (image paths resolved against ``--datadir``, the STAR's folder) unless
an ``.mrcs`` stack is given, which must then be in STAR row order.

What cryoDRGN 4.3.1 ``backproject_voxel`` does by default (read from its source):

* images are windowed by a soft circular mask (radius 0.85-0.99 of the box), sign-inverted
  (``--uninvert-data`` turns that off), Hartley-transformed and padded to D+1; no intensity
  normalisation (it passes ``norm=(0, 1)``), translations are applied as Hartley phase shifts;
* CTF ``--ctf-alg mul`` (default): sums ``CTF * image`` and ``CTF**2`` (``flip`` = phase flip);
* insertion is not trilinear: each Fourier sample is splatted into the 8 surrounding voxels
  (floor/ceil corners) with weight ``max(0, 1 - euclidean distance)``; samples outside the
  circle of radius D/2 are dropped;
* reconstruction = sums / (counts + ``--reg-weight`` (1.0) * mean(counts)), rescaled, inverse
  Hartley transform; no gridding correction, no mask, no symmetry; runs on GPU if available;
* always writes ``backproject.mrc`` (D**3 float32, voxel size from the CTF pkl); by default also
  ``half_map_a.mrc``/``half_map_b.mrc`` from images alternately assigned in file order (not
  ``rlnRandomSubset``), and ``fsc-vals.txt`` + ``fsc-plot.png``: cryoSPARC-style FSC curves
  (columns ``pixres NoMask Spherical Loose Tight Corrected``; phase-randomised correction).
  That FSC step costs minutes on CPU at D=256 (about 4.5 min on 2 busy cores, versus under a
  second of backprojection for 5 images), so it is off here unless ``fsc=True``.

The log line ``Backprojected N images in Xs`` (cryoDRGN's own timer, from the start of its
``main``: image and CTF loading plus all insertions; not imports, the final division/inverse
transform, file writing or FSC) is parsed into ``internal_backproject_s``. Each ``cryodrgn``
call spends ~8 s importing its CLI, so ``parse_s`` is mostly start-up. Map scale and sign follow
cryoDRGN's conventions (inverted data, its CTF sign), so compare maps by correlation, checking sign.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

if __package__:
    from . import harness, peers
else:  # run as a script: benchmarks/ is on sys.path
    import harness
    import peers

_INTERNAL_RE = re.compile(r"Backprojected [\d,]+ images in ([\d.]+)s")


def run_cryodrgn_backproject(
    star: str | Path,
    outdir: str | Path,
    D: int,
    apix: float,
    particles: str | Path | None = None,
    *,
    half_maps: bool = True,
    fsc: bool = False,
    threads: int = harness.DEFAULT_THREADS,
    extra_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Parse ``star`` with cryoDRGN and backproject it into ``outdir``; return timings and paths.

    Args:
        star: RELION 3.0/3.1 particle STAR with angles, origins and CTF.
        outdir: created if needed; receives ``pose.pkl``, ``ctf.pkl``, ``logs/`` and ``backproject/``.
        D: box size in pixels; apix: pixel size in Å (both passed to the parsers as overrides).
        particles: an ``.mrcs`` stack in STAR order; default the STAR itself with ``--datadir``.
        half_maps: write half maps (cryoDRGN default); fsc: also compute its FSC curves (slow).
        threads: OMP/torch threads, the same as for vitreous.
        extra_args: appended to the ``backproject_voxel`` command line.

    Returns:
        dict with ``parse_s`` (pose + CTF parsing), ``backproject_s`` (the backproject_voxel call),
        ``internal_backproject_s``, ``peak_rss_mb`` (backprojection), ``map``, ``half_maps``,
        ``fsc_vals``, ``pose_pkl``, ``ctf_pkl``, ``commands`` and the raw ``runs`` per step.
    """
    exe = str(peers.ensure_cryodrgn())
    star = Path(star).resolve()
    out = Path(outdir).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pose_pkl, ctf_pkl, bp_dir = out / "pose.pkl", out / "ctf.pkl", out / "backproject"
    box = ["-D", str(D), "--Apix", str(apix)]

    bp_cmd = [exe, "backproject_voxel"]
    bp_cmd += [str(Path(particles).resolve())] if particles is not None else [str(star), "--datadir", str(star.parent)]
    bp_cmd += ["--poses", str(pose_pkl), "--ctf", str(ctf_pkl), "-o", str(bp_dir)]
    if not half_maps:
        bp_cmd.append("--no-half-maps")
    elif not fsc:
        bp_cmd.append("--no-fsc-vals")
    bp_cmd += list(extra_args)
    commands = {
        "parse_pose": [exe, "parse_pose_star", str(star), "-o", str(pose_pkl), *box],
        "parse_ctf": [exe, "parse_ctf_star", str(star), "-o", str(ctf_pkl), *box],
        "backproject": bp_cmd,
    }

    runs: dict[str, dict[str, Any]] = {}
    for step, cmd in commands.items():
        runs[step] = harness.run_measured(cmd, cwd=out, threads=threads, log_path=logs / f"{step}.log")
        if runs[step]["returncode"] != 0:
            raise RuntimeError(f"cryodrgn {step} failed (rc={runs[step]['returncode']}):\n{runs[step]['stdout_tail']}")

    match = _INTERNAL_RE.search((logs / "backproject.log").read_text(errors="replace"))
    halves = [bp_dir / "half_map_a.mrc", bp_dir / "half_map_b.mrc"]
    return {
        "tool": "cryodrgn",
        "version": peers.CRYODRGN_PIN.split("==")[1],
        "threads": threads,
        "parse_s": runs["parse_pose"]["wall_s"] + runs["parse_ctf"]["wall_s"],
        "backproject_s": runs["backproject"]["wall_s"],
        "internal_backproject_s": float(match.group(1)) if match else None,
        "peak_rss_mb": runs["backproject"]["peak_rss_mb"],
        "map": bp_dir / "backproject.mrc",
        "half_maps": halves if half_maps else None,
        "fsc_vals": bp_dir / "fsc-vals.txt" if half_maps and fsc else None,
        "pose_pkl": pose_pkl,
        "ctf_pkl": ctf_pkl,
        "commands": commands,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: run the cryoDRGN pipeline, print a timing table and write ``OUTDIR/cryodrgn_backproject.json``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("star", type=Path)
    p.add_argument("-o", "--outdir", type=Path, required=True)
    p.add_argument("-D", type=int, required=True, help="box size (px)")
    p.add_argument("--apix", type=float, required=True, help="pixel size (Å)")
    p.add_argument("--mrcs", type=Path, help="particle stack in STAR order (default: the STAR + --datadir)")
    p.add_argument("--no-half-maps", action="store_true")
    p.add_argument("--fsc", action="store_true", help="also let cryoDRGN compute FSC curves (minutes at D=256)")
    p.add_argument("--threads", type=int, default=harness.DEFAULT_THREADS)
    a = p.parse_args(argv)
    res = run_cryodrgn_backproject(
        a.star, a.outdir, a.D, a.apix, a.mrcs, half_maps=not a.no_half_maps, fsc=a.fsc, threads=a.threads
    )
    rows = [
        {"step": step, "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"], "user_s": r["user_s"]}
        for step, r in res["runs"].items()
    ]
    harness.print_table(rows)
    print(f"internal backprojection: {res['internal_backproject_s']} s\nmap: {res['map']}")
    harness.write_json(Path(a.outdir) / "cryodrgn_backproject.json", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
