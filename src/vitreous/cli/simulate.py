"""``vitreous simulate``: particle stacks from atomic models (mixtures) or a trajectory, with the truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vitreous.cli import console
from vitreous.cli.options import OutDir, Overwrite
from vitreous.errors import InputError

MODEL_SUFFIXES = (".pdb", ".cif", ".mmcif", ".ent")


def _check_model(path: Path) -> None:
    name = path.name.lower().removesuffix(".gz")
    if not path.is_file():
        raise InputError(path, "file not found", "check the path")
    if not name.endswith(MODEL_SUFFIXES):
        raise InputError(path, "not a PDB or mmCIF file", f"give a model ending in {', '.join(MODEL_SUFFIXES)}")


def parse_proportions(text: str | None) -> list[float] | None:
    """'0.5,0.3,0.2' -> [0.5, 0.3, 0.2]."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(None, f"--proportions '{text}' is not a comma-separated list of numbers",
                         "write e.g. --proportions 0.5,0.5") from None


def run_simulate(out: Path, *, models: list[Path], trajectory: Path | None, n: int, box: int | None,
                 apix: float, snr: float = 0.1, defocus_um: tuple[float, float] = (1.0, 2.5),
                 astigmatism: float = 0.0, shift_sd: float = 0.0, proportions: list[float] | None = None,
                 voltage: float = 300.0, cs: float = 2.7, amplitude_contrast: float = 0.1, bfactor: float = 0.0,
                 seed: int = 0, overwrite: bool = False) -> Path:
    """Simulate particles into the job folder ``out``; returns the path of ``particles.star``."""
    from vitreous.cli.progress import progress_bar
    from vitreous.io.mrc import write_map
    from vitreous.io.star import write_star
    from vitreous.jobs import Job
    from vitreous.sim.particles import Acquisition, simulate_stack
    from vitreous.sim.truth import draw_states, mixture_truth

    if not models and trajectory is None:
        raise InputError(None, "no source of truth", "give --model (one or more) and/or --trajectory")
    for path in models:
        _check_model(path)
    if n < 1 or not snr > 0 or not apix > 0 or not 0 < defocus_um[0] <= defocus_um[1]:
        raise InputError(None, f"need n >= 1, snr > 0, apix > 0 and 0 < defocus-min <= defocus-max "
                         f"(got n={n}, snr={snr}, apix={apix}, defocus={defocus_um})", "fix the options")
    if not (shift_sd >= 0 and astigmatism >= 0 and voltage > 0 and 0 <= amplitude_contrast < 1):
        raise InputError(None, f"need --shift-sd >= 0, --astigmatism >= 0, --voltage > 0 and 0 <= "
                         f"--amplitude-contrast < 1 (got {shift_sd}, {astigmatism}, {voltage}, {amplitude_contrast})",
                         "fix the options")
    if trajectory is not None and not trajectory.is_file():
        raise InputError(trajectory, "file not found", "check the path")
    truth = mixture_truth(models, trajectory, box, apix)
    states = draw_states(n, truth.components, proportions, seed)
    acquisition = Acquisition(apix=apix, snr=snr, defocus_um=defocus_um, astigmatism_A=astigmatism,
                              voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast, bfactor=bfactor,
                              shift_sd_px=shift_sd, seed=seed)
    params = {"n": n, "box": truth.box, "apix": apix, "snr": snr, "defocus_um": list(defocus_um),
              "astigmatism_A": astigmatism, "shift_sd_px": shift_sd, "proportions": proportions,
              "voltage_kV": voltage, "cs_mm": cs, "amplitude_contrast": amplitude_contrast,
              "bfactor_A2": bfactor, "seed": seed}
    inputs = [*models, *([trajectory] if trajectory else [])]
    with Job.open(out, command="simulate", params=params, inputs=inputs, overwrite=overwrite) as job:
        for k in range(len(truth.names)):
            write_map(job.path(f"truth/state_{k + 1:03d}.mrc"), truth.volumes[k].numpy(), apix)
        with progress_bar(n, "simulating particles") as advance:
            particles = simulate_stack(truth.volumes, states, job.path("particles.mrcs"), acquisition,
                                       progress=advance)
        star = job.path("particles.star")
        write_star(star, particles)
        _write_truth(job, truth.names, truth.components, states, particles)
        job.write_report(_report(particles, truth, states, apix))
        console.err.print(f"wrote {n} particles of {len(truth.names)} state(s) to {star}", markup=False,
                          soft_wrap=True)
    return star


def _write_truth(job, names: list[str], components, states, particles) -> None:
    import numpy as np
    import pandas as pd

    from vitreous.io.atomic import atomic_path

    counts = np.bincount(states, minlength=len(names))
    table = pd.DataFrame({"state": np.arange(1, len(names) + 1), "name": names, "component": components + 1,
                          "particles": counts,
                          "map": [f"state_{k + 1:03d}.mrc" for k in range(len(names))]})
    with atomic_path(job.path("truth/states.csv")) as tmp:
        table.to_csv(tmp, index=False)
    arrays = {"labels": states, "rotations": particles.rotations, "shifts_px": particles.shifts_px}
    for name, values in arrays.items():
        with atomic_path(job.path(f"truth/{name}.npy")) as tmp, open(tmp, "wb") as fh:
            np.save(fh, values)


def _report(particles, truth, states, apix: float):
    import numpy as np

    from vitreous.report import Report
    from vitreous.report.figures import map_views, orientation_plot, particle_gallery

    report = Report("Simulated particles", f"{len(particles)} particles, box {truth.box} px, {apix} Å/px")
    report.section("Particles").figure(particle_gallery(particles.images.read(np.arange(min(16, len(particles))))))
    report.figure(orientation_plot(particles.euler), "True orientations (RELION rot/tilt)")
    report.section("Ground truth")
    counts = np.bincount(states, minlength=len(truth.names))
    shown = np.unique(np.linspace(0, len(truth.names) - 1, min(4, len(truth.names))).round().astype(int))
    for k in shown:
        report.figure(map_views(truth.volumes[k].numpy(), apix, title=truth.names[k]),
                      f"state {k + 1} ({truth.names[k]}): {counts[k]} particles")
    return report


def register(app: typer.Typer) -> None:
    """Add ``simulate`` to the app."""

    @app.command(help="Simulate a particle stack (RELION STAR + MRCS) from atomic models, a trajectory or both, with "
                      "the ground truth (maps per state, per-particle state labels, poses) in OUT/truth.  "
                      "Poses are uniform, CTF follows RELION (defocus in µm here, Å in the STAR), noise is "
                      "white Gaussian at the given SNR (signal variance over the whole box).")
    def simulate(
        out: OutDir,
        model: Annotated[list[Path] | None, typer.Option(
            "--model", help="Atomic model (PDB/mmCIF, .gz allowed); repeat for a compositional mixture.")] = None,
        trajectory: Annotated[Path | None, typer.Option(
            "--trajectory", help="Trajectory .npz (coords_A (F,N,3) Å, elements): one state per frame, "
                                 "particles spread uniformly over the frames; with --model: one more component of "
                                 "the mixture.")] = None,
        n: Annotated[int, typer.Option("-n", "--n-particles", help="Number of particles.")] = 1000,
        box: Annotated[int | None, typer.Option("--box", help="Box size in pixels (default: fits the "
                                                             "largest model with a 5 Å margin).")] = None,
        apix: Annotated[float, typer.Option("--apix", help="Pixel size in Å/px.")] = 1.5,
        snr: Annotated[float, typer.Option("--snr", help="Signal-to-noise ratio (variance ratio).")] = 0.1,
        defocus_min: Annotated[float, typer.Option("--defocus-min", help="Minimum defocus in µm.")] = 1.0,
        defocus_max: Annotated[float, typer.Option("--defocus-max", help="Maximum defocus in µm.")] = 2.5,
        astigmatism: Annotated[float, typer.Option(
            "--astigmatism", help="Maximum |defocus U - V| in Å (uniform; angle uniform).")] = 0.0,
        shift_sd: Annotated[float, typer.Option(
            "--shift-sd", help="Standard deviation of the origin shifts in pixels.")] = 0.0,
        proportions: Annotated[str | None, typer.Option(
            "--proportions", help="Fractions of the models (then of the trajectory), comma-separated "
                               "(default equal).")] = None,
        voltage: Annotated[float, typer.Option("--voltage", help="Acceleration voltage in kV.")] = 300.0,
        cs: Annotated[float, typer.Option("--cs", help="Spherical aberration in mm.")] = 2.7,
        amplitude_contrast: Annotated[float, typer.Option("--amplitude-contrast")] = 0.1,
        bfactor: Annotated[float, typer.Option("--bfactor", help="CTF B-factor in Å².")] = 0.0,
        seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
        overwrite: Overwrite = False,
    ) -> None:
        run_simulate(out, models=model or [], trajectory=trajectory, n=n, box=box, apix=apix, snr=snr,
                     defocus_um=(defocus_min, defocus_max), astigmatism=astigmatism, shift_sd=shift_sd,
                     proportions=parse_proportions(proportions), voltage=voltage, cs=cs,
                     amplitude_contrast=amplitude_contrast, bfactor=bfactor, seed=seed, overwrite=overwrite)
