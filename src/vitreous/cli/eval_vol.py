"""``vitreous eval-vol``: volumes decoded by a trained VAE (or neural field) at given latent points.

Also the pieces ``vitreous analyze`` shares: loading the trained folder, reading latent points, and decoding
a series of volumes (batched through ``trained.volumes``) into ``vol_###.mrc`` files with a ChimeraX script.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vitreous.cli.options import Overwrite
from vitreous.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from vitreous.analysis.latent_series import VolumeSeries
    from vitreous.report import Report

TRAINED_HELP = ("Job folder of `vitreous train-vae`, `vitreous train-field` or `vitreous abinit-neural` (its -o "
                "folder; with --class).")
ClassOption = Annotated[int | None, typer.Option(
    "--class", metavar="K", help="Class (1-based) of an abinit-neural folder: its field and its particles.")]


def load_model(out_dir: Path, device: str = "cpu", class_number: int | None = None) -> Any:
    """The trained model of a train-vae/train-field folder, or of class ``class_number`` of an abinit-neural
    folder (:func:`vitreous.neural.trained.load_trained`)."""
    from vitreous.neural.trained import load_trained

    return load_trained(out_dir, device=device, class_number=class_number)


def read_latents(path: Path) -> np.ndarray:
    """Latent points from a ``.npy`` array (float64, as stored) or a text file (one point per line, values
    separated by spaces or commas; (M, Z)); InputError when unreadable."""
    import numpy as np

    if not path.is_file():
        raise InputError(path, "file not found", "give a .npy array or a text file of latent points")
    try:
        if path.suffix.lower() == ".npy":
            return np.asarray(np.load(path, allow_pickle=False), np.float64)
        return np.loadtxt(path.read_text().replace(",", " ").splitlines(), ndmin=2)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable array of latent points ({exc})".replace("\n", " "),
                         "write it with numpy.save or as text, one point per line") from None


def parse_latents(text: str) -> np.ndarray:
    """Points given on the command line: ``"0.1,0.2;0.3,0.4"`` (';' between points, ',' within)."""
    import numpy as np

    try:
        rows = [[float(v) for v in row.replace(",", " ").split()] for row in text.split(";") if row.strip()]
    except ValueError:
        raise InputError(None, f"--z-values '{text}' is not a list of numbers",
                         "give points as '0.1,0.2;0.3,0.4' (';' between points, ',' between values)") from None
    if not rows or len({len(r) for r in rows}) != 1:
        raise InputError(None, f"--z-values '{text}' gives points of different lengths or none",
                         "give every point the same number of values") from None
    return np.array(rows, np.float64)


def check_latents(z: np.ndarray, zdim: int, source: str | Path | None) -> np.ndarray:
    """``z`` as finite (M, zdim) float64 points with M >= 1; a 1D array is one point (or, for zdim 1, a column
    of points).  InputError naming ``source`` otherwise."""
    import numpy as np

    z = np.asarray(z, np.float64)
    if z.ndim == 1:
        z = z[:, None] if zdim == 1 else z[None, :]
    if z.ndim != 2 or z.shape[1] != zdim or len(z) == 0:
        raise InputError(source, f"latent points of shape {tuple(z.shape)} do not fit the model's zdim {zdim}",
                         f"give an (M, {zdim}) array, one row per volume")
    if not np.isfinite(z).all():
        raise InputError(source, "latent points contain NaN or infinite values", "give finite values")
    return z


def decode_series(trained: Any, z: np.ndarray, folder: Path, description: str,
                  batch_size: int = 8) -> VolumeSeries:
    """Decode one volume per row of ``z`` (batched) into ``folder/vol_###.mrc`` with the model's voxel size."""
    from vitreous.analysis.latent_series import write_series
    from vitreous.cli.progress import progress_bar

    with progress_bar(len(z), description) as advance:
        return write_series(trained.volumes(z, batch_size=batch_size), folder, trained.pixel_size, len(z),
                            advance=advance)


def add_series(report: Report, series: VolumeSeries, labels: list[str], caption: str) -> Report:
    """A gallery of the series' previews (projections along z of evenly chosen maps)."""
    shown = sorted(series.previews)
    return report.gallery([series.previews[i] for i in shown], [labels[i] for i in shown], caption)


def run_eval_vol(out_dir: Path, vols: Path, *, z_file: Path | None = None, z_values: str | None = None,
                 batch_size: int = 8, device: str = "cpu", class_number: int | None = None,
                 overwrite: bool = False) -> list[Path]:
    """Decode the volumes into the job folder ``vols``; returns the MRC paths.  Inputs are checked first."""
    import numpy as np

    from vitreous.analysis.latent_series import chimerax_script
    from vitreous.jobs import Job
    from vitreous.report import Report
    from vitreous.report.figures import map_views

    if batch_size < 1:
        raise InputError(None, f"--batch-size {batch_size} is not positive", "give 1 or more")
    if z_file is not None and z_values is not None:
        raise InputError(None, "--z and --z-values exclude each other", "give only one of them")
    trained = load_model(out_dir, device, class_number)
    z = _requested_latents(trained.zdim, z_file, z_values, out_dir)
    params = {"z": str(z_file) if z_file is not None else z_values, "batch_size": batch_size, "device": device,
              "class": class_number}
    inputs = [out_dir] + ([z_file] if z_file is not None else [])
    with Job.open(vols, command="eval-vol", params=params, inputs=inputs, overwrite=overwrite) as job:
        np.savetxt(job.path("z_values.txt"), z, fmt="%.8g")
        series = decode_series(trained, z, job.folder, "decoding volumes", batch_size)
        chimerax_script(job.path("series.cxc"), series, play=len(z) > 1)
        labels = [f.stem for f in series.files]
        report = Report("Volumes at latent points", str(out_dir))
        report.section("Summary").key_values({
            "volumes": len(z), "zdim": trained.zdim, "box (px)": trained.box, "voxel size (Å)": trained.pixel_size,
            "ChimeraX": f"open {job.path('series.cxc').name} (contour level {series.level:.4g})"})
        report.section("Volumes")
        add_series(report, series, labels, "projection along z of each volume")
        report.figure(map_views(np.asarray(_first_volume(series)), trained.pixel_size, title=labels[0]),
                      f"{labels[0]}: central slices and projections")
        job.write_report(report)
    return series.files


def _requested_latents(zdim: int, z_file: Path | None, z_values: str | None, out_dir: Path) -> np.ndarray:
    """The points asked for; a model without latent space (train-field, zdim 0) has one volume."""
    import numpy as np

    if zdim == 0:
        if z_file is not None or z_values is not None:
            raise InputError(out_dir, "the model has no latent space (zdim 0, vitreous train-field)",
                             "leave out --z and --z-values to decode its one volume")
        return np.zeros((1, 0))
    if z_file is None and z_values is None:
        raise InputError(None, "no latent points given", f"pass --z Z.npy (e.g. {out_dir / 'z.npy'}) or --z-values")
    raw = read_latents(z_file) if z_file is not None else parse_latents(z_values or "")
    return check_latents(raw, zdim, z_file)


def _first_volume(series: VolumeSeries) -> np.ndarray:
    from vitreous.io.mrc import read_map

    return read_map(series.files[0])[0]


def register(app: typer.Typer) -> None:
    """Add ``eval-vol`` to the app."""

    @app.command("eval-vol", help="Decode the volume of a trained VAE at each latent point (rows of --z, or "
                                  "--z-values).  Writes VOLS/vol_000.mrc ... (row order; voxel size in Å of the "
                                  "model in the header), z_values.txt, series.cxc (ChimeraX: opens them as a "
                                  "volume series) and report.html.")
    def eval_vol(
        trained: Annotated[Path, typer.Argument(metavar="OUT", help=TRAINED_HELP)],
        out: Annotated[Path, typer.Option("--out", "-o", metavar="VOLS", help="Job folder for the volumes.")],
        z: Annotated[Path | None, typer.Option(
            "--z", metavar="Z.npy", help="Latent points, one per row: (M, zdim) .npy, or text with one point "
                                         "per line (e.g. OUT/z.npy, or centers.txt of vitreous analyze).")] = None,
        z_values: Annotated[str | None, typer.Option(
            "--z-values", metavar="'a,b;c,d'", help="Latent points on the command line: ';' between points, ',' "
                                                    "between coordinates.")] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Volumes decoded at once (memory).")] = 8,
        device: Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1 ...")] = "cpu",
        class_number: ClassOption = None,
        overwrite: Overwrite = False,
    ) -> None:
        run_eval_vol(trained, out, z_file=z, z_values=z_values, batch_size=batch_size, device=device,
                     class_number=class_number, overwrite=overwrite)
