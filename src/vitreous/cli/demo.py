"""``vitreous demo``: the whole front of the pipeline on micrographs simulated from the bundled adenylate-kinase
model: simulate-micrographs -> ctf -> pick -> extract -> class2d -> abinit -> refine, then the refined map
overlaid on the truth (either hand) and one report linking every step."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import typer

from vitreous.cli import console
from vitreous.cli.options import OutDir, Overwrite

DEMO_MODEL = "adk_closed.pdb.gz"
DIAMETER_A = 60.0  # adenylate kinase, with a margin


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo (micrographs of ``size`` px at 1 Å/px; particles extracted in a 96-px box and
    Fourier-cropped to 64 px, 1.5 Å/px); ``fast`` cuts every iterative step short (a smoke test)."""

    micrographs: int = 20
    size: int = 1024
    classes_2d: int = 10
    fast: bool = False


def run_demo(out: Path, settings: DemoSettings = DemoSettings(), *, overwrite: bool = False) -> Path:
    """Run every step into sub-folders of ``out``; returns the path of the linking report."""
    from vitreous.classify.class2d import Class2DOptions
    from vitreous.cli.abinit import run_abinit
    from vitreous.cli.class2d import run_class2d
    from vitreous.cli.ctf import run_ctf
    from vitreous.cli.extract import run_extract
    from vitreous.cli.pick import run_pick
    from vitreous.cli.refine import run_refine
    from vitreous.cli.simulate_micrographs import run_simulate_micrographs
    from vitreous.jobs import Job
    from vitreous.preprocess.ctf_estimate import CTFSearch
    from vitreous.reconstruct.abinit import AbinitOptions
    from vitreous.reconstruct.refine import RefineOptions
    from vitreous.report import Report

    model = Path(str(files("vitreous.resources").joinpath(DEMO_MODEL)))
    fast = settings.fast
    with Job.open(out, command="demo", params=vars(settings), inputs=[model], overwrite=overwrite) as job:
        micrographs = run_simulate_micrographs(job.path("simulate"), models=[model], n=settings.micrographs,
                                               size=settings.size, overwrite=overwrite)
        truth = micrographs.parent / "truth" / "model_001.mrc"
        ctf = run_ctf([micrographs], job.path("ctf"), CTFSearch(), workers=0, overwrite=overwrite)
        coordinates = run_pick(ctf, job.path("pick"), DIAMETER_A, template=truth, overwrite=overwrite)
        particles = run_extract(coordinates, job.path("extract"), box=96, downsample=64, overwrite=overwrite)
        run_class2d(particles, job.path("class2d"),
                    Class2DOptions(classes=settings.classes_2d, iterations=4 if fast else 25,
                                   full_iterations=1 if fast else 5, diameter_A=DIAMETER_A + 20),
                    overwrite=overwrite)
        run_abinit(particles, job.path("abinit"),
                   AbinitOptions(iterations=4 if fast else 40, refine_iterations=0 if fast else 6),
                   overwrite=overwrite)
        refined = run_refine(particles, job.path("abinit") / "map.mrc", job.path("refine"),
                             RefineOptions(max_iterations=1 if fast else 10), overwrite=overwrite)
        report = Report("vitreous demo", f"{settings.micrographs} simulated micrographs of adenylate kinase "
                                         f"(closed), {settings.size} px at 1 Å/px, to a refined map")
        report.section("Steps").links({
            "1. simulate-micrographs: micrographs and ground truth": "simulate/report.html",
            "2. ctf: defocus, astigmatism, fit resolution, ice": "ctf/report.html",
            "3. pick: template matching with the model's map": "pick/report.html",
            "4. extract: particles (96 px box, Fourier-cropped to 64 px)": "extract/report.html",
            "5. class2d: 2D class averages": "class2d/report.html",
            "6. abinit: ab initio map without poses or reference": "abinit/report.html",
            "7. refine: gold-standard refinement": "refine/report.html"})
        report.section("Refined map against the truth").table(_against_truth(refined, truth),
                                                              "After overlay on the model's map (either hand)")
        path = job.write_report(report)
    console.out.print(f"demo report: {path}", markup=False, soft_wrap=True)  # one line, whatever its length
    return path


def _against_truth(refined: Path, truth: Path):
    """FSC = 0.5 / 0.143 resolutions of the refined map against the truth map, after overlaying it."""
    import numpy as np
    import pandas as pd
    import torch

    from vitreous.analysis.alignment import align_map
    from vitreous.analysis.fsc import fsc_curve, resolution_at
    from vitreous.io.mrc import read_map
    from vitreous.physics.fourier import fourier_crop

    volume, voxel = read_map(refined)
    reference, truth_voxel = read_map(truth)
    box = 2 * round(reference.shape[0] * truth_voxel / voxel / 2)  # the truth resampled to the refined voxel size
    reference = fourier_crop(torch.as_tensor(reference), box, ndim=3).numpy()
    D = volume.shape[0]  # ... and centred in the refined map's box (padded or cut)
    padded = np.zeros((max(D, box),) * 3, np.float32)
    start = (len(padded) - box) // 2
    padded[start:start + box, start:start + box, start:start + box] = reference
    start = (len(padded) - D) // 2
    reference = padded[start:start + D, start:start + D, start:start + D]
    aligned = align_map(volume, reference, voxel)
    frequency, curve = fsc_curve(aligned.aligned, reference, voxel)
    return pd.DataFrame({"FSC = 0.5 (Å)": [resolution_at(frequency, curve, 0.5)],
                         "FSC = 0.143 (Å)": [resolution_at(frequency, curve, 0.143)],
                         "hand flipped": [aligned.mirrored]})


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the app."""

    @app.command(help="End-to-end demo on bundled data: micrographs simulated from an adenylate-kinase model "
                      "(20 of 1024 px at 1 Å/px), CTF estimation, template picking, extraction (64 px, 1.5 Å), "
                      "2D classification, ab initio, refinement, and OUT/report.html linking each step with the "
                      "refined map's FSC against the truth.")
    def demo(
        out: OutDir,
        micrographs: Annotated[int, typer.Option("--micrographs", help="Number of micrographs.")] = 20,
        size: Annotated[int, typer.Option("--size", help="Micrograph size in pixels (1 Å/px).")] = 1024,
        fast: Annotated[bool, typer.Option("--fast", help="Cut every iterative step short (smoke test).")] = False,
        overwrite: Overwrite = False,
    ) -> None:
        run_demo(out, DemoSettings(micrographs=micrographs, size=size, fast=fast), overwrite=overwrite)
