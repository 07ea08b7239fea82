"""``vitreous ctf``: CTF estimation and exposure curation of micrographs, in parallel with Dask."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vitreous.cli import console
from vitreous.cli.options import Apix, OutDir, Overwrite, Resume
from vitreous.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from vitreous.io.micrographs import MicrographTable
    from vitreous.preprocess.ctf_estimate import CTFSearch, Optics
    from vitreous.preprocess.curation import MicrographMeasures
    from vitreous.report import Report

RESULT_COLUMNS = ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfMaxResolution",
                  "rlnCtfFigureOfMerit", "vtsIceThickness", "vtsCrystallineIce"]
GALLERY = 24  # spectra shown in the report


def load_micrographs(inputs: list[Path], apix: float | None, voltage: float | None, cs: float | None,
                     amplitude_contrast: float | None) -> MicrographTable:
    """One micrographs STAR file or MRC files as a table with optics (given values override the STAR's);
    checks that the files exist and that all pixel sizes agree (InputError otherwise)."""
    from vitreous.io.micrographs import PIXEL_SIZE, micrographs_from_files, read_micrograph_star
    from vitreous.io.mrc import read_header

    for path in inputs:
        if not path.is_file():
            raise InputError(path, "no such file", "check the path")
    if inputs[0].suffix == ".star":
        if len(inputs) > 1:
            raise InputError(inputs[1], "give one micrographs STAR file or MRC files, not both",
                             "pass the STAR file alone")
        micrographs = read_micrograph_star(inputs[0])
        optics = micrographs.optics.copy()
        for column, value in (("rlnVoltage", voltage), ("rlnSphericalAberration", cs),
                              ("rlnAmplitudeContrast", amplitude_contrast), (PIXEL_SIZE, apix)):
            if value is not None:
                optics[column] = value
        micrographs = type(micrographs)(micrographs.table, optics, micrographs.source)
    else:
        micrographs = micrographs_from_files(inputs, apix, 300.0 if voltage is None else voltage,
                                             2.7 if cs is None else cs,
                                             0.1 if amplitude_contrast is None else amplitude_contrast)
    micrographs.pixel_size()
    for path in micrographs.paths():
        if not path.is_file():
            raise InputError(micrographs.source, f"micrograph {path} does not exist", "fix the STAR file or the path")
        read_header(path)
    return micrographs


def _optics(micrographs: MicrographTable) -> list[Optics]:
    from vitreous.io.micrographs import PIXEL_SIZE
    from vitreous.preprocess.ctf_estimate import Optics

    columns = [micrographs.optics_column(c) if c in micrographs.optics else None
               for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")]
    pixel = micrographs.optics_column(PIXEL_SIZE)
    defaults = (300.0, 2.7, 0.1)
    return [Optics(float(pixel[i]), *(float(c[i]) if c is not None else d for c, d in zip(columns, defaults,
                                                                                         strict=True)))
            for i in range(len(micrographs))]


def _measure(item: tuple[str, Optics, CTFSearch]) -> MicrographMeasures:
    """One Dask task: CTF fit and curation measures of one micrograph."""
    from vitreous.preprocess.curation import measure_micrograph

    return measure_micrograph(*item)


def run_ctf(inputs: list[Path], out: Path, search: CTFSearch, *, apix: float | None = None,
            voltage: float | None = None, cs: float | None = None, amplitude_contrast: float | None = None,
            workers: int = 2, scheduler: str | None = None, selection: str | None = None, resume: bool = False,
            overwrite: bool = False) -> Path:
    """Estimate CTFs into the job folder ``out``; returns the path of ``micrographs_ctf.star``."""
    from dataclasses import asdict

    from vitreous.cli.progress import progress_bar
    from vitreous.jobs import Job
    from vitreous.preprocess.curation import check_selection, parse_selection
    from vitreous.preprocess.parallel import map_micrographs

    micrographs = load_micrographs(inputs, apix, voltage, cs, amplitude_contrast)
    conditions = parse_selection(selection) if selection is not None else None
    if conditions is not None:
        check_selection(conditions, RESULT_COLUMNS)
    items = [(str(p), o, search) for p, o in zip(micrographs.paths(), _optics(micrographs), strict=True)]
    params = {**asdict(search), "apix": apix, "voltage": voltage, "cs": cs, "amplitude_contrast": amplitude_contrast,
              "select": selection}
    with Job.open(out, command="ctf", params=params, inputs=inputs, overwrite=overwrite, resume=resume) as job:
        names = [f"micrograph-{i:06d}" for i in range(len(items))]
        results = {i: job.load_checkpoint(name) for i, name in enumerate(names) if job.has_checkpoint(name)}
        if results:
            console.err.print(f"resuming: {len(results)} of {len(items)} micrographs done", markup=False)
        todo = [i for i in range(len(items)) if i not in results]
        with progress_bar(len(todo), "CTF estimation") as advance:

            def finished(k: int, result: MicrographMeasures) -> None:
                job.save_checkpoint(names[todo[k]], result)
                advance(1)

            computed = map_micrographs(_measure, [items[i] for i in todo], workers=workers, scheduler=scheduler,
                                       on_result=finished)
        results.update(zip(todo, computed, strict=True))
        _write_results(job, micrographs, [results[i] for i in range(len(items))], conditions)
    return job.path("micrographs_ctf.star")


def _write_results(job, micrographs: MicrographTable, results: list[MicrographMeasures],
                   conditions: list | None) -> None:
    import numpy as np
    import pandas as pd

    from vitreous.io.micrographs import write_micrograph_star
    from vitreous.preprocess.curation import relative_ice_thickness, select

    fitted = [i for i, r in enumerate(results) if r.ctf is not None]
    skipped = pd.DataFrame({"micrograph": [str(micrographs.paths()[i]) for i, r in enumerate(results)
                                           if r.ctf is None],
                            "reason": [r.skipped for r in results if r.ctf is None]})
    for name, reason in skipped.itertuples(index=False):
        console.err.print(f"warning: {name}: skipped ({reason})", markup=False, soft_wrap=True)
    if not fitted:
        raise InputError(micrographs.source, "no micrograph could be used (all skipped)", "check the micrographs")
    table = micrographs.table.iloc[fitted].reset_index(drop=True)
    columns = pd.DataFrame([results[i].ctf.columns() for i in fitted])
    columns["vtsIceThickness"] = relative_ice_thickness(np.array([results[i].mean_intensity for i in fitted]))
    columns["vtsCrystallineIce"] = [results[i].crystalline_ice for i in fitted]
    table = pd.concat([table.drop(columns=[c for c in RESULT_COLUMNS if c in table]), columns], axis=1)
    result = micrographs.with_table(table)
    write_micrograph_star(job.path("micrographs_ctf.star"), result)
    kept = None
    if conditions is not None:
        kept = select(table, conditions)
        write_micrograph_star(job.path("micrographs_selected.star"), result.subset(np.flatnonzero(kept)))
        console.err.print(f"selected {int(kept.sum())} of {len(table)} micrographs", markup=False)
    summary = {
        "micrographs": len(results), "fitted": len(fitted), "skipped": len(skipped),
        "pixel size (Å)": micrographs.pixel_size(),
        "median defocus (Å)": float(np.median(0.5 * (table["rlnDefocusU"] + table["rlnDefocusV"]))),
        "median astigmatism U-V (Å)": float(np.median(table["rlnDefocusU"] - table["rlnDefocusV"])),
        "median fit resolution (Å)": float(np.median(table["rlnCtfMaxResolution"])),
        "median figure of merit": float(np.median(table["rlnCtfFigureOfMerit"])),
    }
    if kept is not None:
        summary["selected"] = int(kept.sum())
    for key in ("fitted", "median defocus (Å)", "median fit resolution (Å)"):
        value = summary[key]
        console.err.print(f"{key}: {value:.5g}" if isinstance(value, float) else f"{key}: {value}", markup=False)
    job.write_report(_report(result, [results[i] for i in fitted], summary, skipped, kept))


def _report(micrographs: MicrographTable, results: list[MicrographMeasures], summary: dict, skipped: pd.DataFrame,
            kept) -> Report:
    import numpy as np

    from vitreous.report import Report

    table = micrographs.table
    report = Report("CTF estimation", str(micrographs.source))
    report.section("Summary").key_values(summary)
    report.figure(_histograms(table), "Mean defocus, fit resolution and ice measures over the micrographs")
    shown = np.unique(np.linspace(0, len(results) - 1, min(GALLERY, len(results))).round().astype(int))
    names = [Path(p).name for p in micrographs.paths()]
    report.section("Spectra").gallery(
        [results[i].ctf.diagnostic.astype(np.float32) for i in shown],
        [f"{names[i]}: {0.5 * (results[i].ctf.defocus_u + results[i].ctf.defocus_v):.0f} Å" for i in shown],
        "Background-subtracted amplitude spectrum (left) and the fitted CTF² (right), up to the fitting band's "
        "high-resolution end")
    report.figure(_profiles([results[i] for i in shown[:6]], [names[i] for i in shown[:6]]),
                  "Rotational (equiphase) average of the spectrum along the fitted rings, the fitted CTF², and their "
                  "windowed correlation (the fit resolution is where it first drops below 0.5)")
    report.section("Micrographs")
    frame = table[["rlnMicrographName", *RESULT_COLUMNS]].copy()
    frame["rlnMicrographName"] = names
    if kept is not None:
        frame["selected"] = kept
    report.table(frame.round(3), "Per micrograph (defocus Å, angle and phase shift degrees, resolution Å)",
                 max_rows=1000)
    if len(skipped):
        report.section("Skipped micrographs").table(skipped, "Not fitted (left out of micrographs_ctf.star)")
    return report


def _histograms(table: pd.DataFrame):
    import numpy as np

    from vitreous.report.imaging import new_figure

    fig = new_figure(10, 2.8)
    axes = fig.subplots(1, 4)
    panels = (("defocus (µm)", 0.5e-4 * (table["rlnDefocusU"] + table["rlnDefocusV"])),
              ("fit resolution (Å)", table["rlnCtfMaxResolution"]),
              ("relative ice thickness", table["vtsIceThickness"]),
              ("crystalline ice score", table["vtsCrystallineIce"]))
    for ax, (label, values) in zip(axes, panels, strict=True):
        values = np.asarray(values, np.float64)
        values = values[np.isfinite(values)]
        if len(values):
            ax.hist(values, bins=min(30, max(5, len(values) // 2)))
        ax.set_xlabel(label)
    axes[0].set_ylabel("micrographs")
    return fig


def _profiles(results: list[MicrographMeasures], names: list[str]):
    from vitreous.report.imaging import new_figure

    fig = new_figure(10, 1.8 * len(results))
    axes = fig.subplots(len(results), 1, squeeze=False)[:, 0]
    for ax, result, name in zip(axes, results, names, strict=True):
        k, epa, fit, correlation = result.ctf.profile
        ax.plot(k, epa, lw=0.8, label="spectrum")
        ax.plot(k, fit, lw=0.8, label="fit CTF²")
        ax.plot(k, correlation, lw=1.2, color="k", label="correlation")
        ax.axvline(1 / result.ctf.max_resolution, color="r", lw=0.8, ls="--")
        ax.set_title(f"{name}: fit to {result.ctf.max_resolution:.1f} Å", fontsize=8)
        ax.set_xlim(0, k[-1])
    axes[0].legend(fontsize=7, ncols=3)
    axes[-1].set_xlabel("spatial frequency (1/Å)")
    return fig


def register(app: typer.Typer) -> None:
    """Add ``ctf`` to the app."""

    @app.command(help="CTF estimation (CTFFIND4-like: averaged tile spectra, box-car background subtraction, "
                      "1D then 2D search and L-BFGS refinement of defocus U/V, angle and optionally phase shift "
                      "against RELION's CTF) and exposure curation (fit resolution, relative ice thickness, "
                      "crystalline ice), in parallel over micrographs with Dask.  Writes OUT/micrographs_ctf.star "
                      "(RELION), micrographs_selected.star with --select, report.html.")
    def ctf(
        micrographs: Annotated[list[Path], typer.Argument(
            metavar="MICROGRAPHS",
            help="One micrographs STAR file (data_optics + data_micrographs) or MRC micrographs.")],
        out: OutDir,
        apix: Apix = None,
        voltage: Annotated[float | None, typer.Option(
            "--voltage", metavar="KV", help="Acceleration voltage in kV (MRC input: default 300).")] = None,
        cs: Annotated[float | None, typer.Option(
            "--cs", metavar="MM", help="Spherical aberration in mm (MRC input: default 2.7).")] = None,
        amplitude_contrast: Annotated[float | None, typer.Option(
            "--amplitude-contrast", help="Amplitude contrast fraction (MRC input: default 0.1).")] = None,
        workers: Annotated[int, typer.Option(
            "--workers", help="Dask worker processes of a local cluster (0 or 1: serial in this process).")] = 2,
        scheduler: Annotated[str | None, typer.Option(
            "--scheduler", metavar="ADDRESS", help="Address of a running Dask scheduler (tcp://host:8786), "
                                                   "e.g. of a dask-jobqueue SLURMCluster; --workers is ignored.")
        ] = None,
        phase_shift: Annotated[bool, typer.Option(
            "--phase-shift", help="Also fit a phase shift (phase plate data).")] = False,
        min_defocus: Annotated[float, typer.Option("--min-defocus", metavar="Å", help="Smallest defocus.")] = 2000.0,
        max_defocus: Annotated[float, typer.Option("--max-defocus", metavar="Å", help="Largest defocus.")] = 50000.0,
        max_astigmatism: Annotated[float, typer.Option(
            "--max-astigmatism", metavar="Å", help="Largest grid astigmatism U-V in Å.")] = 3000.0,
        low_resolution: Annotated[float, typer.Option(
            "--low-res", metavar="Å", help="Low-resolution end of the fitting band.")] = 30.0,
        high_resolution: Annotated[float, typer.Option(
            "--high-res", metavar="Å", help="High-resolution end of the fitting band (kept below Nyquist and "
                                            "below aliasing of the rings).")] = 5.0,
        tile: Annotated[int, typer.Option(
            "--tile", metavar="PX", help="Tile size of the averaged spectrum (at most half the micrograph).")] = 512,
        selection: Annotated[str | None, typer.Option(
            "--select", metavar="CONDITIONS",
            help="Keep micrographs meeting all conditions COLUMN OP VALUE, comma-separated (OP: < <= > >= == !=; "
                 "columns: " + ", ".join(RESULT_COLUMNS) + "), e.g. 'rlnCtfMaxResolution<6,vtsCrystallineIce<2'; "
                 "writes OUT/micrographs_selected.star.")] = None,
        resume: Resume = False,
        overwrite: Overwrite = False,
    ) -> None:
        from vitreous.preprocess.ctf_estimate import CTFSearch

        if not 0 < min_defocus < max_defocus or max_astigmatism < 0:
            raise InputError(None, "need 0 < --min-defocus < --max-defocus and --max-astigmatism >= 0",
                             "fix the defocus range")
        if not low_resolution > high_resolution > 0:
            raise InputError(None, "need --low-res > --high-res > 0", "fix the fitting band")
        if tile < 64 or workers < 0:
            raise InputError(None, "--tile must be at least 64 and --workers at least 0", "fix the options")
        search = CTFSearch(min_defocus=min_defocus, max_defocus=max_defocus, max_astigmatism=max_astigmatism,
                           low_resolution=low_resolution, high_resolution=high_resolution, tile=tile,
                           phase_shift=phase_shift)
        run_ctf(micrographs, out, search, apix=apix, voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast,
                workers=workers, scheduler=scheduler, selection=selection, resume=resume, overwrite=overwrite)
