"""``vitreous backproject`` against cryoDRGN ``backproject_voxel``: time, memory and FSC to the truth.

One run (2 threads for every tool, ``harness.run_measured``):

1. ``vitreous simulate``: ``--n`` particles (default 3000) of the closed adenylate kinase model, box 64,
   1.5 Å/px, SNR 0.1, defocus 1-2.5 µm; ground truth ``OUT/sim/truth/state_001.mrc``.
2. ``vitreous backproject OUT/sim/particles.star --compare TRUTH`` (STAR in; map, half maps, FSC, report
   out; ``--compare`` adds the FSC against the truth of the full map before and after its solvent mask to
   ``fsc.csv``, two 64^3 FSCs).
3. cryoDRGN 4.3.1 (``peers.ensure_cryodrgn``) on the same STAR: ``parse_pose_star`` and ``parse_ctf_star``
   (timed separately), then ``backproject_voxel`` as a user runs it (default: half maps and its FSC curves)
   and with ``--no-fsc-vals``.  ``--skip-peer`` leaves cryoDRGN out.  Steps 2-3 are repeated ``--repeats``
   times, interleaved (every command once per round), so both tools see the same load on a shared machine;
   cryoDRGN's own timer (image loading + insertion) is kept per run.
4. FSC against the truth of each tool's full map (and between each tool's half maps), with
   :func:`vitreous.analysis.fsc.fsc_curve` for both: as written, and inside one soft spherical mask (radius
   3D/8, edge D/10 px) applied to both maps.  Before that, the cryoDRGN map is checked for contrast sign
   (its data are inverted by default: negated if its correlation with the truth is negative) and origin
   (integer shift at the peak of its cross-correlation with the truth: rolled back if non-zero); the JSON
   records what was done.  FSC is scale-invariant, so the maps' different scales do not matter.
   vitreous' ``map.mrc`` is written with its default solvent mask (flat to 0.45 D - 4 px, cosine edge to
   0.45 D); cryoDRGN's map has none (it masks its images instead).  The FSC of vitreous' full map before its
   mask, and of its half maps with and without the mask, are read from its ``fsc.csv``.
5. Throughput in fresh processes (bounded memory: streamed batches): images/s of the forward model
   (``Projector.slices`` + origin shift + CTF + inverse FFT, i.e. ``Projector.project`` with the CTF, as
   ``vitreous.sim`` does) and of ``HalfSetBackprojector.add`` with CTF and shifts (plus its final
   ``reconstruct``), at box 128 and 256, oversampling 2.

Prints one table and writes ``OUT/bench_backproject.json``::

    .venv/bin/python benchmarks/bench_backproject.py --out /tmp/bench_bp            # ~6 min on 2 cores
    .venv/bin/python benchmarks/bench_backproject.py --out /tmp/bench_bp --skip-peer --repeats 1

Wall times are best of ``--repeats`` (median also in the JSON); ``cpu_s`` is user + system of that run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__:
    from . import harness, peers
    from .cryodrgn_backproject import run_cryodrgn_backproject
else:  # run as a script: benchmarks/ is on sys.path
    import harness
    import peers
    from cryodrgn_backproject import run_cryodrgn_backproject

REPO = Path(__file__).resolve().parents[1]
MODEL = Path(os.environ.get("VITREOUS_SHARED_DATA", REPO.parent / "shared" / "data")) / "structures/adk/adk_closed.pdb"
BOX, APIX, SNR, DEFOCUS_UM = 64, 1.5, 0.1, (1.0, 2.5)
THROUGHPUT = ((128, 2048, 256), (256, 512, 64))  # (box, images, batch)
RECONSTRUCT_MAX_BOX = 128  # HalfSetBackprojector.reconstruct is also timed up to this box (256: ~12 GB, minutes)
RESULT_TAG = "BENCH_RESULT "
INTERNAL_RE = re.compile(r"Backprojected [\d,]+ images in ([\d.]+)s")  # cryoDRGN's own timer


def vitreous_exe() -> list[str]:
    """The ``vitreous`` console script beside this Python, else the entry point through ``-c``."""
    exe = Path(sys.executable).with_name("vitreous")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from vitreous.cli.main import run; run()"]


def cpu_s(run: dict[str, Any]) -> float:
    """User + system CPU seconds of a measured run (its whole process tree that was waited for)."""
    return run["user_s"] + run["sys_s"]


def measure(cmd: Sequence[str | os.PathLike[str]], log: Path) -> dict[str, Any]:
    """One measured run of ``cmd`` (2 threads); RuntimeError if it fails."""
    run = harness.run_measured(cmd, threads=harness.DEFAULT_THREADS, log_path=log)
    if run["returncode"] != 0:
        raise RuntimeError(f"{log.stem} failed (rc={run['returncode']}):\n{run['stdout_tail']}")
    return {**run, "log": log}


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Best-of summary of repeated runs: the run with the best wall time gives CPU time and peak RSS."""
    best = min(runs, key=lambda r: r["wall_s"])
    return {"wall_s": best["wall_s"], "wall_median_s": statistics.median(r["wall_s"] for r in runs),
            "walls_s": [r["wall_s"] for r in runs], "cpu_s": cpu_s(best), "peak_rss_mb": best["peak_rss_mb"],
            "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "cmd": [str(c) for c in best["cmd"]]}


# --- maps and FSC -------------------------------------------------------------------------------------------


def _centre_of_mass(volume: np.ndarray) -> list[float]:
    """Centre of mass (z, y, x voxels) of the positive part of a map."""
    weight = np.clip(volume, 0, None)
    grid = np.indices(volume.shape).reshape(3, -1)
    return (grid @ weight.reshape(-1) / max(weight.sum(), 1e-30)).tolist()


def align_to_truth(volume: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Undo a contrast inversion (negative correlation) and an integer origin offset (cross-correlation peak)."""
    corr = float(np.corrcoef(volume.ravel(), truth.ravel())[0, 1])
    sign = -1 if corr < 0 else 1
    volume = sign * volume
    xcorr = np.fft.ifftn(np.fft.fftn(volume) * np.conj(np.fft.fftn(truth))).real
    peak = np.unravel_index(int(np.argmax(xcorr)), xcorr.shape)
    shift = [int(p) if p <= s // 2 else int(p) - s for p, s in zip(peak, xcorr.shape, strict=True)]
    if any(shift):
        volume = np.roll(volume, [-s for s in shift], axis=(0, 1, 2))
    return volume, {"correlation_with_truth": corr, "negated": sign < 0, "shift_undone_zyx_px": shift,
                    "centre_of_mass_zyx_px": _centre_of_mass(sign * volume)}


def fsc_resolutions(map1: np.ndarray, map2: np.ndarray, voxel: float, mask: np.ndarray | None = None
                    ) -> dict[str, float]:
    """Resolution (Å) at FSC 0.5 and 0.143 between two maps (vitreous' FSC, optional real-space mask)."""
    from vitreous.analysis.fsc import fsc_curve, resolution_at

    frequency, fsc = fsc_curve(map1, map2, voxel, mask=mask)
    return {"fsc_0.5_A": resolution_at(frequency, fsc, 0.5), "fsc_0.143_A": resolution_at(frequency, fsc, 0.143),
            "curve": fsc.tolist()}


def map_quality(full: Path, halves: Sequence[Path] | None, truth: Path, align: bool) -> dict[str, Any]:
    """FSC of ``full`` against the truth (unmasked and masked) and between ``halves``; alignment applied."""
    from vitreous.analysis.fsc import soft_spherical_mask
    from vitreous.io.mrc import read_map

    reference, voxel = read_map(truth)
    volume, _ = read_map(full)
    info: dict[str, Any] = {}
    if align:
        volume, info = align_to_truth(volume, reference)
    box = reference.shape[0]
    mask = soft_spherical_mask(box, 3 * box / 8, box / 10)
    out = {"alignment": info, "vs_truth": fsc_resolutions(volume, reference, voxel),
           "vs_truth_masked": fsc_resolutions(volume, reference, voxel, mask),
           "mask": {"radius_px": 3 * box / 8, "edge_px": box / 10}}
    if halves:
        out["half_maps"] = fsc_resolutions(read_map(halves[0])[0], read_map(halves[1])[0], voxel)
    return out


# --- throughput workers (run in their own process) ----------------------------------------------------------


def _vm_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def throughput_worker(kind: str, box: int, count: int, batch: int, reconstruct: bool = False,
                      seed: int = 0) -> dict[str, Any]:
    """Images/s of the forward model or of ``HalfSetBackprojector.add`` (CTF + shifts), batch by batch.

    One warm-up batch is not timed.  With ``reconstruct`` the final ``HalfSetBackprojector.reconstruct`` of
    ``backproject`` is timed on its own (``hwm_mb`` then includes it).
    """
    import torch

    from vitreous.physics.ctf import CTFParams, compute_ctf
    from vitreous.physics.fourier import ifft2c, translate_ft
    from vitreous.physics.projection import Projector
    from vitreous.physics.rotations import euler_to_matrix
    from vitreous.reconstruct.backproject import HalfSetBackprojector

    gen = np.random.default_rng(seed)

    def poses(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        euler = np.c_[gen.uniform(-180, 180, n), np.degrees(np.arccos(gen.uniform(-1, 1, n))),
                      gen.uniform(-180, 180, n)]
        rot = torch.as_tensor(euler_to_matrix(euler), dtype=torch.float32)
        shifts = torch.as_tensor(gen.normal(0, 2, (n, 2)), dtype=torch.float32)
        ctf = compute_ctf(CTFParams.create(torch.as_tensor(gen.uniform(1e4, 2.5e4, n))), box, APIX)
        return rot, shifts, ctf

    rss_start = _vm_kb("VmRSS")
    t0 = time.perf_counter()
    if kind == "project":
        projector = Projector(torch.randn(box, box, box, generator=torch.Generator().manual_seed(seed)))

        def step(n: int) -> None:
            rot, shifts, ctf = poses(n)
            ifft2c(translate_ft(projector.slices(rot), -shifts) * ctf).real  # noqa: B018 (timed work)
    else:
        accumulator = HalfSetBackprojector(box)
        images = torch.randn(batch, box, box, generator=torch.Generator().manual_seed(seed))

        def step(n: int) -> None:
            rot, shifts, ctf = poses(n)
            accumulator.add(images[:n], rot, shifts, ctf, torch.arange(n) % 2)
    step(batch)  # warm-up, not timed
    setup_s = time.perf_counter() - t0
    done, wall, cpu = 0, time.perf_counter(), time.process_time()
    while done < count:
        n = min(batch, count - done)
        step(n)
        done += n
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = {"kind": kind, "box": box, "images": done, "batch": batch, "setup_s": setup_s, "wall_s": wall,
              "cpu_s": cpu, "images_per_s": done / wall, "rss_start_mb": rss_start / 1024}
    result["hwm_add_mb"] = _vm_kb("VmHWM") / 1024
    if kind == "backproject" and reconstruct:
        t0 = time.perf_counter()
        accumulator.reconstruct(APIX)
        result["reconstruct_s"] = time.perf_counter() - t0
    result["hwm_mb"] = _vm_kb("VmHWM") / 1024
    return result


def run_throughput(out: Path, reconstruct_max_box: int = RECONSTRUCT_MAX_BOX) -> list[dict[str, Any]]:
    """Each throughput case in a fresh measured process (peak RSS of that process alone)."""
    results = []
    for box, count, batch in THROUGHPUT:
        for kind in ("project", "backproject"):
            cmd = [sys.executable, __file__, "--worker", kind, "--box", str(box), "--n", str(count),
                   "--batch", str(batch), *(["--reconstruct"] if box <= reconstruct_max_box else [])]
            run = harness.run_measured(cmd, threads=harness.DEFAULT_THREADS,
                                       log_path=out / "logs" / f"throughput_{kind}_{box}.log")
            lines = [ln for ln in run["stdout_tail"].splitlines() if ln.startswith(RESULT_TAG)]
            if run["returncode"] != 0 or not lines:
                raise RuntimeError(f"throughput {kind} {box} failed:\n{run['stdout_tail']}")
            result = json.loads(lines[-1][len(RESULT_TAG):])
            result.update(process_wall_s=run["wall_s"], peak_rss_mb=run["peak_rss_mb"])
            results.append(result)
    return results


# --- the comparison -----------------------------------------------------------------------------------------


def simulate(out: Path, n: int) -> dict[str, Any]:
    """``vitreous simulate`` of the benchmark data set into ``out/sim`` (measured once)."""
    cmd = [*vitreous_exe(), "simulate", "-o", str(out / "sim"), "--model", str(MODEL), "-n", str(n),
           "--box", str(BOX), "--apix", str(APIX), "--snr", str(SNR), "--defocus-min", str(DEFOCUS_UM[0]),
           "--defocus-max", str(DEFOCUS_UM[1]), "--overwrite"]
    return summarise([measure(cmd, out / "logs" / "simulate.log")])


def _internal_s(run: dict[str, Any]) -> float | None:
    """cryoDRGN's own ``Backprojected N images in Xs`` (image loading + insertion) from a run's log."""
    match = INTERNAL_RE.search(Path(run["log"]).read_text(errors="replace"))
    return float(match.group(1)) if match else None


def csv_resolutions(fsc_csv: Path) -> dict[str, float]:
    """Resolution (Å) at FSC 0.5 and 0.143 of each curve in a ``vitreous backproject`` fsc.csv."""
    import pandas as pd

    from vitreous.analysis.fsc import resolution_at

    table = pd.read_csv(fsc_csv)
    return {f"{column}_{threshold}_A": resolution_at(table["frequency_invA"], table[column], threshold)
            for column in table.columns if column.startswith("fsc") for threshold in (0.5, 0.143)}


def compare_tools(out: Path, star: Path, truth: Path, repeats: int, peer: bool) -> dict[str, Any]:
    """``vitreous backproject`` and (``peer``) cryoDRGN's parse + backproject_voxel steps, interleaved.

    Each repeat runs every command once (vitreous, parse_pose_star, parse_ctf_star, backproject_voxel as a
    user runs it, then with ``--no-fsc-vals``), so that both tools see the same (shared-machine) load.
    """
    logs = out / "logs"
    ours_cmd = [*vitreous_exe(), "backproject", str(star), "-o", str(out / "vitreous_bp"), "--compare", str(truth),
                "--overwrite"]
    runs: dict[str, list[dict[str, Any]]] = {"vitreous": []}
    first: dict[str, Any] = {}
    for r in range(repeats):
        runs["vitreous"].append(measure(ours_cmd, logs / f"vitreous_backproject_{r}.log"))
        if not peer:
            continue
        if r == 0:
            peers.ensure_cryodrgn()
            first = run_cryodrgn_backproject(star, out / "cryodrgn", BOX, APIX, fsc=True)  # default: FSC on
            for name in ("parse_pose", "parse_ctf", "backproject"):
                runs[name] = [{**first["runs"][name], "log": out / "cryodrgn" / "logs" / f"{name}.log"}]
            nofsc = [str(c) for c in first["commands"]["backproject"]]
            nofsc[nofsc.index("-o") + 1] = str(out / "cryodrgn" / "backproject_nofsc")
            first["commands"]["backproject_nofsc"] = [*nofsc, "--no-fsc-vals"]
            runs["backproject_nofsc"] = []
        else:
            for name in ("parse_pose", "parse_ctf", "backproject"):
                runs[name].append(measure(first["commands"][name], out / "cryodrgn" / "logs" / f"{name}_{r}.log"))
        runs["backproject_nofsc"].append(measure(first["commands"]["backproject_nofsc"],
                                                 out / "cryodrgn" / "logs" / f"backproject_nofsc_{r}.log"))
    result: dict[str, Any] = {"vitreous": summarise(runs["vitreous"])}
    if peer:
        steps = {"parse_pose": "parse_pose", "parse_ctf": "parse_ctf", "backproject_default": "backproject",
                 "backproject_no_fsc": "backproject_nofsc"}
        log_text = (out / "cryodrgn" / "logs" / "backproject.log").read_text(errors="replace")
        own = {t: float(v) for t, v in
               (line.split("res @ FSC=")[1].split(" ang")[0].split(": ") for line in log_text.splitlines()
                if "res @ FSC=" in line)}
        result["cryodrgn"] = {
            "version": peers.CRYODRGN_PIN, "steps": {k: summarise(runs[v]) for k, v in steps.items()},
            "internal_backproject_s": {k: [_internal_s(x) for x in runs[v]]
                                       for k, v in steps.items() if v.startswith("backproject")},
            "own_fsc_log_A": own, "map": first["map"], "half_maps": first["half_maps"]}
    return result


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of the printed table."""
    rows: list[dict[str, Any]] = []

    def add(name: str, run: dict[str, Any], quality: dict[str, Any] | None = None, **extra: Any) -> None:
        row = {"case": name, "wall_s": run["wall_s"], "cpu_s": run["cpu_s"], "peak_rss_mb": run["peak_rss_mb"]}
        if quality:
            for key, label in (("vs_truth", ""), ("vs_truth_masked", "mask_")):
                row[f"{label}fsc0.5_A"] = quality[key]["fsc_0.5_A"]
                row[f"{label}fsc0.143_A"] = quality[key]["fsc_0.143_A"]
        rows.append({**row, **extra})

    ours = result["vitreous"]
    add("vitreous simulate (1 run)", result["simulate"])
    add("vitreous backproject", ours["run"], ours["quality"])
    peer = result.get("cryodrgn")
    if peer:
        steps = peer["steps"]
        add("cryodrgn parse_pose_star", steps["parse_pose"])
        add("cryodrgn parse_ctf_star", steps["parse_ctf"])
        add("cryodrgn backproject_voxel (default)", steps["backproject_default"], peer["quality"])
        add("cryodrgn backproject_voxel --no-fsc-vals", steps["backproject_no_fsc"])
        add("cryodrgn parse x2 + backproject (default)", result["speedup"]["cryodrgn_total_run"])
    names = {"project": "project+CTF+shift", "backproject": "HalfSetBackprojector.add"}
    for t in result.get("throughput", []):
        rows.append({"case": f"{names[t['kind']]} box {t['box']} ({t['images']} img, batch {t['batch']})",
                     "wall_s": t["wall_s"], "cpu_s": t["cpu_s"], "peak_rss_mb": t["peak_rss_mb"],
                     "img_per_s": t["images_per_s"], "reconstruct_s": t.get("reconstruct_s")})
    return rows


def main(argv: list[str] | None = None) -> int:
    """CLI: run the whole comparison (or, with ``--worker``, one throughput case)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="working folder (data, maps, logs, bench_backproject.json)")
    p.add_argument("--n", type=int, default=3000, help="particles to simulate (images for --worker)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per command (best wall time reported)")
    p.add_argument("--skip-peer", action="store_true", help="leave cryoDRGN out")
    p.add_argument("--skip-throughput", action="store_true", help="leave the box 128/256 images/s runs out")
    p.add_argument("--worker", choices=("project", "backproject"), help=argparse.SUPPRESS)
    p.add_argument("--box", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--reconstruct", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--reconstruct-max-box", type=int, default=RECONSTRUCT_MAX_BOX,
                   help="also time HalfSetBackprojector.reconstruct up to this box (default %(default)s)")
    a = p.parse_args(argv)
    if a.worker:
        print(RESULT_TAG + json.dumps(throughput_worker(a.worker, a.box, a.n, a.batch, a.reconstruct)), flush=True)
        return 0
    if a.out is None:
        p.error("--out is required")
    out = a.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"n": a.n, "box": BOX, "apix_A": APIX, "snr": SNR, "defocus_um": DEFOCUS_UM,
                              "threads": harness.DEFAULT_THREADS, "repeats": a.repeats, "cpus": os.cpu_count(),
                              "load_avg_start": os.getloadavg()}
    result["simulate"] = simulate(out, a.n)
    star, truth = out / "sim" / "particles.star", out / "sim" / "truth" / "state_001.mrc"
    bp = out / "vitreous_bp"
    timed = compare_tools(out, star, truth, a.repeats, peer=not a.skip_peer)
    run = timed["vitreous"]
    result["vitreous"] = {"run": run, "quality": map_quality(
        bp / "map.mrc", [bp / "half_map_1.mrc", bp / "half_map_2.mrc"], truth, align=False),
        "fsc_csv": csv_resolutions(bp / "fsc.csv")}
    if not a.skip_peer:
        result["cryodrgn"] = peer = timed["cryodrgn"]
        peer["quality"] = map_quality(peer["map"], peer["half_maps"], truth, align=True)
        steps = peer["steps"]
        parts = ("parse_pose", "parse_ctf", "backproject_default")
        total = {k: sum(steps[s][k] for s in parts) for k in ("wall_s", "cpu_s")}
        total["peak_rss_mb"] = max(steps[s]["peak_rss_mb"] for s in parts)
        result["speedup"] = {
            "cryodrgn_total_run": total,
            "vs_backproject_default": steps["backproject_default"]["wall_s"] / run["wall_s"],
            "vs_backproject_no_fsc": steps["backproject_no_fsc"]["wall_s"] / run["wall_s"],
            "vs_parse_plus_backproject_default": total["wall_s"] / run["wall_s"],
            "cpu_vs_backproject_default": steps["backproject_default"]["cpu_s"] / run["cpu_s"],
            "cpu_vs_parse_plus_backproject_default": total["cpu_s"] / run["cpu_s"],
            "target": 20.0,
        }
    if not a.skip_throughput:
        result["throughput"] = run_throughput(out, a.reconstruct_max_box)
    result["load_avg_end"] = os.getloadavg()
    rows = summary_rows(result)
    columns = ["case", "wall_s", "cpu_s", "peak_rss_mb", "fsc0.5_A", "fsc0.143_A", "mask_fsc0.5_A",
               "mask_fsc0.143_A", "img_per_s", "reconstruct_s"]
    result["table"] = harness.print_table(rows, columns)
    if "speedup" in result:
        s = result["speedup"]
        print(f"speed-up (wall, best of {a.repeats}): {s['vs_backproject_default']:.1f}x vs backproject_voxel "
              f"default, {s['vs_backproject_no_fsc']:.1f}x vs --no-fsc-vals, "
              f"{s['vs_parse_plus_backproject_default']:.1f}x vs parse + backproject (target 20x)")
        q = result["cryodrgn"]["quality"]["alignment"]
        print(f"cryoDRGN map: correlation with truth {q['correlation_with_truth']:.3f} "
              f"({'negated' if q['negated'] else 'kept'}), origin shift undone {q['shift_undone_zyx_px']}")
    own = result["vitreous"]["fsc_csv"]
    print(f"vitreous fsc.csv: full map before its mask vs truth FSC=0.5 {own['fsc_vs_reference_0.5_A']:.2f} Å, "
          f"0.143 {own['fsc_vs_reference_0.143_A']:.2f} Å; half maps {own['fsc_half_maps_0.143_A']:.2f} Å "
          f"(masked {own['fsc_half_maps_masked_0.143_A']:.2f} Å) at 0.143")
    harness.write_json(out / "bench_backproject.json", result)
    print(f"wrote {out / 'bench_backproject.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
