"""``vitreous pick``: particle picking by template matching (a map or 2D class averages) or a learned picker."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vitreous.cli import console
from vitreous.cli.options import OutDir, Overwrite
from vitreous.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from vitreous.io.micrographs import MicrographTable
    from vitreous.preprocess.pick_learned import LearnedPicker
    from vitreous.preprocess.pick_template import TemplateBank, TemplateOptions
    from vitreous.preprocess.picking import Picks
    from vitreous.report import Report

CTF_COLUMNS = ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift"]
SHOWN = 4  # micrographs drawn with their picks in the report


def _usable(path: str) -> tuple[Any, str | None]:
    """The micrograph's pixels, or None and why it is skipped (all zero, NaN or infinite values)."""
    import numpy as np

    from vitreous.io.micrographs import read_micrograph

    image = read_micrograph(path)
    if not np.isfinite(image).all():
        return None, "NaN or infinite values"
    if float(image.std()) == 0.0:
        return None, "constant (e.g. all zero)"
    return image, None


def _template_task(item: tuple[str, dict], bank: TemplateBank, options: TemplateOptions, pixel_size: float,
                   delocalisation: float) -> Picks | str:
    """One Dask task: template candidate picks of one micrograph (or the reason it was skipped)."""
    import pandas as pd

    from vitreous.physics.ctf import CTFParams
    from vitreous.preprocess.pick_template import pick_micrograph

    image, skipped = _usable(item[0])
    if skipped:
        return skipped
    ctf = CTFParams.from_table(pd.DataFrame([item[1]]))
    return pick_micrograph(image, pixel_size, bank, ctf, options, delocalisation)


def _learned_task(path: str, state: dict, pixel_size: float, min_distance: float) -> Picks | str:
    """One Dask task: learned candidate picks of one micrograph (or the reason it was skipped)."""
    from vitreous.preprocess.pick_learned import LearnedPicker

    image, skipped = _usable(path)
    if skipped:
        return skipped
    return LearnedPicker.from_state(state).pick(image, pixel_size, min_distance=min_distance)


def _template_bank(template: Path | None, averages: Path | None, options: TemplateOptions,
                   pixel_size: float) -> TemplateBank:
    import torch

    from vitreous.io.mrc import read_header, read_map
    from vitreous.preprocess.pick_template import templates_from_averages, templates_from_map

    working = options.working_pixel(pixel_size)
    if template is not None:
        volume, voxel = read_map(template)
        if voxel <= 0:
            raise InputError(template, "no voxel size in the map header", "write the map with its voxel size")
        return templates_from_map(torch.from_numpy(volume), voxel, working, options.direction_level,
                                  options.inplane_step_deg)
    assert averages is not None
    from vitreous.io.stack import ImageStack

    header = read_header(averages)
    if header.voxel_size <= 0:
        raise InputError(averages, "no pixel size in the stack header", "write the averages with their pixel size")
    images = ImageStack.from_file(averages).read(slice(None))
    return templates_from_averages(torch.as_tensor(images), header.voxel_size, working, options.diameter_A,
                                   options.inplane_step_deg)


def _training_set(path: Path, pixel_size: float) -> tuple[list[Any], list[Any]]:
    """Micrographs and their particle centres (K, 2) from a coordinates STAR (checked)."""
    import numpy as np

    from vitreous.io.micrographs import COORDINATES, read_micrograph_star

    coordinates = read_micrograph_star(path, block="particles")
    if abs(coordinates.pixel_size() - pixel_size) > 1e-3 * pixel_size:
        raise InputError(path, f"training micrographs at {coordinates.pixel_size()} Å/px, the micrographs to pick "
                               f"at {pixel_size} Å/px", "train on micrographs of the same pixel size")
    paths = coordinates.paths()
    images, centres = [], []
    for name in dict.fromkeys(paths):
        if not name.is_file():
            raise InputError(path, f"micrograph {name} does not exist", "fix the STAR file or the path")
        image, skipped = _usable(str(name))
        if skipped:
            raise InputError(name, f"training micrograph is unusable ({skipped})", "remove it from the STAR file")
        rows = np.array([p == name for p in paths])
        images.append(image)
        centres.append(coordinates.table.loc[rows, COORDINATES].to_numpy(np.float64))
    return images, centres


def run_pick(micrographs_path: Path, out: Path, diameter: float, *, template: Path | None = None,
             averages: Path | None = None, train: Path | None = None, model: Path | None = None,
             threshold: float | None = None, max_per_micrograph: int | None = None, min_distance: float = 0.8,
             contrast: str = "dark", working_pixel: float | None = None, steps: int = 400,
             expected_particles: float | None = None, seed: int = 0, workers: int = 1, scheduler: str | None = None,
             device: str = "cpu", overwrite: bool = False) -> Path:
    """Pick particles into the job folder ``out``; returns the path of ``coordinates.star``."""
    from functools import partial

    import numpy as np
    import torch

    from vitreous.cli.ctf import load_micrographs
    from vitreous.cli.progress import progress_bar
    from vitreous.io.mrc import read_header
    from vitreous.jobs import Job
    from vitreous.preprocess.parallel import map_micrographs
    from vitreous.preprocess.picking import automatic_threshold, count_threshold

    sources = [p for p in (template, averages, train, model) if p is not None]
    if len(sources) != 1:
        raise InputError(None, "give exactly one of --template, --averages, --train and --model",
                         "choose template matching (a map or class averages) or a learned picker")
    if diameter <= 0 or min_distance <= 0 or (max_per_micrograph is not None and max_per_micrograph < 1):
        raise InputError(None, "--diameter and --min-distance must be positive, --max-per-micrograph at least 1",
                         "fix the options")
    if contrast not in ("dark", "white"):
        raise InputError(None, f"--contrast must be dark or white, not {contrast}", "fix the option")
    for path in sources:
        if not path.is_file():
            raise InputError(path, "no such file", "check the path")
    micrographs = load_micrographs([micrographs_path], None, None, None, None)
    pixel_size = micrographs.pixel_size()
    paths = [str(p) for p in micrographs.paths()]
    params = {"diameter_A": diameter, "threshold": threshold, "max_per_micrograph": max_per_micrograph,
              "min_distance": min_distance, "contrast": contrast, "working_pixel_A": working_pixel,
              "steps": steps, "expected_particles": expected_particles, "seed": seed}
    learned = train is not None or model is not None
    if learned:
        training = _training_set(train, pixel_size) if train is not None else None
        state = _load_model(model) if model is not None else {}
        items: list[Any] = paths
    else:
        from vitreous.physics.ctf import CTFParams
        from vitreous.preprocess.pick_template import TemplateOptions, delocalisation_px

        options = TemplateOptions(diameter_A=diameter, working_pixel_A=working_pixel, contrast=contrast,
                                  min_distance=min_distance)
        ctf = micrographs.ctf_table()
        bank = _template_bank(template, averages, options, pixel_size)
        bank = type(bank)(bank.images.to(device), bank.pixel_size)
        delocalisation = delocalisation_px(CTFParams.from_table(ctf), bank.pixel_size)
        items = list(zip(paths, ctf.to_dict("records"), strict=True))
        task = partial(_template_task, bank=bank, options=options, pixel_size=pixel_size,
                       delocalisation=delocalisation)
    with Job.open(out, command="pick", params=params, inputs=[micrographs_path, *sources],
                  overwrite=overwrite) as job:
        picker = None
        if learned:
            from vitreous.preprocess.pick_learned import LearnedOptions, LearnedPicker, train_picker

            if training is not None:
                learned_options = LearnedOptions(diameter_A=diameter, working_pixel_A=working_pixel, steps=steps,
                                                 expected_particles=expected_particles, seed=seed)
                with progress_bar(steps, "training the picker") as advance:
                    picker = train_picker(training[0], pixel_size, training[1], learned_options,
                                          progress=lambda step, loss: advance(1))
                state = picker.state()
                torch.save(state, job.path("picker.pt"))
            else:
                picker = LearnedPicker.from_state(state)
            task = partial(_learned_task, state=state, pixel_size=pixel_size, min_distance=min_distance)
        with progress_bar(len(items), "picking") as advance:
            results = map_micrographs(task, items, workers=workers, scheduler=scheduler,
                                      on_result=lambda i, r: advance(1))
        found = np.concatenate([r.fom for r in results if not isinstance(r, str)] or [np.zeros(0)])
        if threshold is not None:
            cut = threshold
        elif picker is not None:
            area = sum(read_header(p).nx * read_header(p).ny for p, r in zip(paths, results, strict=True)
                       if not isinstance(r, str)) * pixel_size**2
            cut = count_threshold(found, picker.density * area)
        else:
            cut = automatic_threshold(found)
        _write_results(job, micrographs, results, cut, max_per_micrograph, diameter, picker, threshold is None)
    return job.path("coordinates.star")


def _load_model(path: Path) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for foreign files
        raise InputError(path, f"not a picker weights file ({type(exc).__name__})",
                         "give picker.pt from an earlier `vitreous pick --train` job") from None
    if not isinstance(state, dict) or not {"weights", "options", "pixel_size", "density"} <= set(state):
        raise InputError(path, "not a picker weights file", "give picker.pt from an earlier `vitreous pick --train`")
    return state


def _select(picks: Picks, cut: float, max_per_micrograph: int | None) -> Picks:
    from vitreous.preprocess.picking import Picks

    keep = picks.fom >= cut
    xy, fom = picks.xy[keep][:max_per_micrograph], picks.fom[keep][:max_per_micrograph]
    return Picks(xy, fom)


def _write_results(job, micrographs: MicrographTable, results: list, cut: float, max_per_micrograph: int | None,
                   diameter: float, picker: LearnedPicker | None, automatic: bool) -> None:
    import numpy as np
    import pandas as pd

    from vitreous.io.micrographs import NAME, write_micrograph_star

    paths = micrographs.paths()
    skipped = pd.DataFrame({"micrograph": [str(paths[i]) for i, r in enumerate(results) if isinstance(r, str)],
                            "reason": [r for r in results if isinstance(r, str)]})
    for name, reason in skipped.itertuples(index=False):
        console.err.print(f"warning: {name}: skipped ({reason})", markup=False, soft_wrap=True)
    candidates = {i: r for i, r in enumerate(results) if not isinstance(r, str)}
    if not candidates:
        raise InputError(micrographs.source, "no micrograph could be used (all skipped)", "check the micrographs")
    chosen = {i: _select(r, cut, max_per_micrograph) for i, r in candidates.items()}
    rows = []
    for i, picks in chosen.items():
        row = micrographs.table.iloc[i]
        frame = pd.DataFrame({NAME: row[NAME], "rlnCoordinateX": picks.xy[:, 0], "rlnCoordinateY": picks.xy[:, 1],
                              "rlnAutopickFigureOfMerit": picks.fom, "rlnOpticsGroup": row["rlnOpticsGroup"]})
        for column in CTF_COLUMNS:
            if column in row:
                frame[column] = row[column]
        rows.append(frame)
    table = pd.concat(rows, ignore_index=True)
    write_micrograph_star(job.path("coordinates.star"), micrographs.with_table(table), block="particles")
    counts = pd.DataFrame({"micrograph": [paths[i].name for i in chosen], "picks": [len(p) for p in chosen.values()],
                           "candidates": [len(candidates[i]) for i in chosen]})
    summary = {
        "picker": "learned (PU-trained CNN)" if picker is not None else "template matching",
        "micrographs picked": len(chosen), "micrographs skipped": len(skipped), "particles": len(table),
        "mean picks per micrograph": float(counts["picks"].mean()),
        "threshold (rlnAutopickFigureOfMerit)": cut,
        "threshold from": ("the expected particle density of training" if picker is not None else
                           "two-Gaussian split of all candidates' scores") if automatic else "--threshold",
        "diameter (Å)": diameter, "pixel size (Å)": micrographs.pixel_size(),
    }
    all_fom = np.concatenate([r.fom for r in candidates.values()])
    job.write_report(_report(micrographs, chosen, summary, all_fom, cut, counts, skipped, diameter, picker))
    console.err.print(f"{len(table)} particles in {len(chosen)} micrographs (threshold {cut:.4g})", markup=False)


def _report(micrographs: MicrographTable, chosen: dict, summary: dict, all_fom: np.ndarray, cut: float,
            counts: pd.DataFrame, skipped: pd.DataFrame, diameter: float, picker: LearnedPicker | None) -> Report:
    from vitreous.report import Report

    report = Report("Particle picking", str(micrographs.source))
    report.section("Summary").key_values(summary)
    report.section("Micrographs")
    for i in list(chosen)[:SHOWN]:
        report.figure(_picks_figure(micrographs.image(i), chosen[i], diameter / micrographs.pixel_size()),
                      f"{micrographs.paths()[i].name}: {len(chosen[i])} picks (circles of the particle diameter)")
    report.section("Scores").figure(_histogram(all_fom, cut), "rlnAutopickFigureOfMerit of all candidate peaks "
                                                              "(after non-maximum suppression); the threshold")
    report.table(counts, "Picks per micrograph")
    if len(skipped):
        report.section("Skipped micrographs").table(skipped)
    if picker is not None and picker.history:
        report.section("Training").figure(_loss_plot(picker.history), "nnPU training loss per step")
    return report


def _picks_figure(image: np.ndarray, picks: Picks, diameter_px: float):
    import torch
    from matplotlib.patches import Circle

    from vitreous.preprocess.picking import binned_shape, fourier_bin
    from vitreous.report.imaging import display_range, new_figure

    shape = binned_shape(image.shape, 1.0, max(image.shape) / 512)
    small = fourier_bin(torch.as_tensor(image), shape).numpy()
    scale = shape[1] / image.shape[1]
    fig = new_figure(6, 6 * shape[0] / shape[1])
    ax = fig.subplots()
    low, high = display_range(small)
    ax.imshow(small, cmap="gray", vmin=low, vmax=high)
    for x, y in picks.xy * scale:
        ax.add_patch(Circle((x, y), 0.5 * diameter_px * scale, fill=False, color="#ffcc00", linewidth=0.8))
    ax.set_axis_off()
    return fig


def _histogram(values: np.ndarray, cut: float):
    from vitreous.report.imaging import new_figure

    fig = new_figure(6, 3.5)
    ax = fig.subplots()
    ax.hist(values, bins=60, color="#4477aa")
    ax.axvline(cut, color="#cc3311", label=f"threshold {cut:.3g}")
    ax.set_xlabel("rlnAutopickFigureOfMerit")
    ax.set_ylabel("candidates")
    ax.legend(fontsize=8)
    return fig


def _loss_plot(history: list[float]):
    from vitreous.report.imaging import new_figure

    fig = new_figure(6, 3.5)
    ax = fig.subplots()
    ax.plot(history, linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("nnPU risk")
    return fig


def register(app: typer.Typer) -> None:
    """Add ``pick`` to the app."""

    @app.command(help="Pick particles in micrographs: template matching (locally normalised FFT correlation with "
                      "CTF-aware templates from a map or 2D class averages, non-maximum suppression) or a small "
                      "CNN trained positive-unlabelled on a few labelled micrographs (Topaz-style).  Writes "
                      "OUT/coordinates.star (rlnMicrographName, rlnCoordinateX/Y, rlnAutopickFigureOfMerit, the "
                      "micrograph's CTF), report.html and, after training, picker.pt.")
    def pick(
        micrographs: Annotated[Path, typer.Argument(help="Micrographs STAR (with CTF for template matching), "
                                                         "e.g. OUT/micrographs_ctf.star of `vitreous ctf`.")],
        out: OutDir,
        diameter: Annotated[float, typer.Option("--diameter", metavar="Å", help="Particle diameter in Å.")],
        template: Annotated[Path | None, typer.Option(
            "--template", metavar="MAP.mrc", help="3D map of the particle (positive density) for templates.")] = None,
        averages: Annotated[Path | None, typer.Option(
            "--averages", metavar="AVERAGES.mrcs", help="2D class averages (white particles) for templates.")] = None,
        train: Annotated[Path | None, typer.Option(
            "--train", metavar="COORDS.star", help="Coordinates of particles in a few micrographs (hand- or "
                                                   "template-picked) to train the learned picker on.")] = None,
        model: Annotated[Path | None, typer.Option(
            "--model", metavar="WEIGHTS.pt", help="A trained picker (picker.pt of an earlier --train job).")] = None,
        threshold: Annotated[float | None, typer.Option(
            "--threshold", help="Least rlnAutopickFigureOfMerit kept (template: correlation, default from a "
                                "two-Gaussian split of all candidates; learned: mean probability near the centre, "
                                "default: keep the number of best candidates that the expected particle density "
                                "gives).")] = None,
        max_per_micrograph: Annotated[int | None, typer.Option(
            "--max-per-micrograph", help="Keep at most this many best picks per micrograph.")] = None,
        min_distance: Annotated[float, typer.Option(
            "--min-distance", help="Least distance between picks, in particle diameters.")] = 0.8,
        contrast: Annotated[str, typer.Option(
            "--contrast", help="Particles 'dark' (raw micrographs, RELION) or 'white' on the background.")] = "dark",
        working_pixel: Annotated[float | None, typer.Option(
            "--working-pixel", metavar="Å", help="Pixel size micrographs are binned to (default diameter/10).")] = None,
        steps: Annotated[int, typer.Option("--steps", help="Training steps of the learned picker.")] = 400,
        expected_particles: Annotated[float | None, typer.Option(
            "--expected-particles", help="Particles expected per training micrograph (learned picker's class "
                                         "prior and default threshold; default: the mean number labelled).")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the learned picker's training.")] = 0,
        workers: Annotated[int, typer.Option(
            "--workers", help="Dask worker processes of a local cluster (0 or 1: serial in this process).")] = 1,
        scheduler: Annotated[str | None, typer.Option(
            "--scheduler", metavar="ADDRESS", help="Address of a running Dask scheduler (tcp://host:8786).")] = None,
        device: Annotated[str, typer.Option("--device", help="torch device for template matching.")] = "cpu",
        overwrite: Overwrite = False,
    ) -> None:
        if steps < 1 or workers < 0:
            raise InputError(None, "--steps must be at least 1 and --workers at least 0", "fix the options")
        run_pick(micrographs, out, diameter, template=template, averages=averages, train=train, model=model,
                 threshold=threshold, max_per_micrograph=max_per_micrograph, min_distance=min_distance,
                 contrast=contrast, working_pixel=working_pixel, steps=steps, expected_particles=expected_particles,
                 seed=seed, workers=workers, scheduler=scheduler, device=device, overwrite=overwrite)
