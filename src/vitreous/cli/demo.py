"""``vitreous demo``: simulate particles from the bundled adenylate-kinase model, reconstruct, report."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Annotated

import typer

from vitreous.cli import console
from vitreous.cli.options import OutDir, Overwrite

DEMO_MODEL = "adk_closed.pdb.gz"


def run_demo(out: Path, *, n: int = 3000, box: int = 64, apix: float = 1.5, snr: float = 0.1,
             overwrite: bool = False) -> Path:
    """Simulate -> backproject (FSC against the truth) -> one report linking both; returns the report."""
    from vitreous.cli.backproject import run_backproject
    from vitreous.cli.simulate import run_simulate
    from vitreous.jobs import Job
    from vitreous.report import Report

    model = Path(str(files("vitreous.resources").joinpath(DEMO_MODEL)))
    params = {"n": n, "box": box, "apix": apix, "snr": snr}
    with Job.open(out, command="demo", params=params, inputs=[model], overwrite=overwrite) as job:
        star = run_simulate(job.path("simulate"), models=[model], trajectory=None, n=n, box=box, apix=apix,
                            snr=snr, astigmatism=500.0, shift_sd=1.0, overwrite=overwrite)
        run_backproject(star, job.path("backproject"), compare=star.parent / "truth" / "state_001.mrc",
                        overwrite=overwrite)
        report = Report("vitreous demo", f"{n} simulated particles of adenylate kinase (closed), box {box} px, "
                                         f"{apix} Å/px, SNR {snr}")
        report.section("Steps").links({"1. simulate: particles and ground truth": "simulate/report.html",
                                       "2. backproject: map, half maps, FSC against the truth":
                                           "backproject/report.html"})
        path = job.write_report(report)
    console.out.print(f"demo report: {path}", markup=False, soft_wrap=True)  # one line, whatever its length
    return path


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the app."""

    @app.command(help="End-to-end demo on bundled data: simulate particles from an adenylate-kinase model "
                      "(3000 particles, box 64, 1.5 Å/px, SNR 0.1), reconstruct them with backproject and "
                      "write OUT/report.html linking each step.")
    def demo(
        out: OutDir,
        n: Annotated[int, typer.Option("-n", help="Number of particles.")] = 3000,
        overwrite: Overwrite = False,
    ) -> None:
        run_demo(out, n=n, overwrite=overwrite)
