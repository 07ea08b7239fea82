"""``vitreous simulate-micrographs``: micrographs of particles in vitreous ice, with the true coordinates, poses
and CTF (see :mod:`vitreous.sim.micrographs` for the image formation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vitreous.cli import console
from vitreous.cli.options import OutDir, Overwrite
from vitreous.cli.simulate import _check_model, parse_proportions
from vitreous.errors import InputError

THUMBNAILS = 4  # micrographs shown in the report


def parse_count(text: str) -> tuple[int, int]:
    """'150' -> (150, 150); '100-200' -> (100, 200)."""
    try:
        low, _, high = text.partition("-")
        pair = (int(low), int(high or low))
    except ValueError:
        raise InputError(None, f"--particles-per-micrograph '{text}' is not N or MIN-MAX",
                         "write e.g. 150 or 100-200") from None
    if not 0 <= pair[0] <= pair[1]:
        raise InputError(None, f"--particles-per-micrograph '{text}' needs 0 <= MIN <= MAX", "fix the range")
    return pair


def run_simulate_micrographs(out: Path, *, models: list[Path], n: int, size: int = 1024, apix: float = 1.0,
                             particles: tuple[int, int] = (150, 150), proportions: list[float] | None = None,
                             defocus_um: tuple[float, float] = (0.5, 3.0), astigmatism: float = 1000.0,
                             snr: float = 0.1, dose: float | None = None,
                             ice_thickness: tuple[float, float] = (300.0, 600.0), carbon: float = 0.0,
                             contamination: float = 0.0, crystalline: float = 0.0, voltage: float = 300.0,
                             cs: float = 2.7, amplitude_contrast: float = 0.1, seed: int = 0,
                             overwrite: bool = False) -> Path:
    """Simulate ``n`` micrographs into the job folder ``out``; returns the path of ``micrographs.star``."""
    import numpy as np
    import pandas as pd

    from vitreous.cli.progress import progress_bar
    from vitreous.io.micrographs import MicrographTable, write_micrograph_star
    from vitreous.io.mrc import write_map
    from vitreous.jobs import Job
    from vitreous.sim.micrographs import CTF_COLUMNS, MicrographOptions, MicrographSimulator, micrograph_optics
    from vitreous.sim.truth import models_truth

    if not models:
        raise InputError(None, "no --model given", "give one or more atomic models (PDB/mmCIF)")
    for path in models:
        _check_model(path)
    if n < 1 or size < 64 or not apix > 0 or not 0 < defocus_um[0] <= defocus_um[1] or not astigmatism >= 0:
        raise InputError(None, f"need -n >= 1, --size >= 64, --apix > 0, 0 < defocus-min <= defocus-max and "
                         f"--astigmatism-max >= 0 (got {n}, {size}, {apix}, {defocus_um}, {astigmatism})",
                         "fix the options")
    if not snr > 0 or (dose is not None and not dose > 0) or not 0 < ice_thickness[0] <= ice_thickness[1]:
        raise InputError(None, f"need --snr > 0, --dose > 0 and 0 < ice-min <= ice-max (got {snr}, {dose}, "
                         f"{ice_thickness})", "fix the options")
    if not (0 <= carbon <= 1 and 0 <= crystalline <= 1 and contamination >= 0):
        raise InputError(None, f"--carbon and --crystalline are fractions of micrographs (0-1), --contamination a "
                         f"mean count >= 0 (got {carbon}, {crystalline}, {contamination})", "fix the options")
    if proportions is not None and (len(proportions) != len(models) or min(proportions) < 0
                                    or not sum(proportions) > 0):
        raise InputError(None, f"--proportions needs {len(models)} non-negative numbers, got {proportions}",
                         "give one proportion per model")
    truth = models_truth(models, None, apix)
    options = MicrographOptions(size=size, apix=apix, particles=particles, proportions=proportions,
                                defocus_um=defocus_um, astigmatism_A=astigmatism, voltage=voltage, cs=cs,
                                amplitude_contrast=amplitude_contrast, snr=snr, dose=dose,
                                ice_thickness_A=ice_thickness, carbon=carbon, contamination=contamination,
                                crystalline=crystalline)
    params = {"n": n, "size": size, "apix": apix, "particles_per_micrograph": list(particles),
              "proportions": proportions, "defocus_um": list(defocus_um), "astigmatism_max_A": astigmatism,
              "snr": snr, "dose_e_per_A2": dose, "ice_thickness_A": list(ice_thickness), "carbon": carbon,
              "contamination": contamination, "crystalline": crystalline, "voltage_kV": voltage, "cs_mm": cs,
              "amplitude_contrast": amplitude_contrast, "seed": seed}
    with Job.open(out, command="simulate-micrographs", params=params, inputs=models, overwrite=overwrite) as job:
        for k in range(len(models)):
            write_map(job.path(f"truth/model_{k + 1:03d}.mrc"), truth.volumes[k].numpy(), apix)
        simulator = MicrographSimulator(truth.volumes, options)
        rows, coordinates, thumbnails = [], [], []
        with progress_bar(n, "simulating micrographs") as advance:
            for i in range(n):
                micrograph = simulator.simulate((seed, i))
                path = job.path(f"micrographs/mic_{i:04d}.mrc")
                write_map(path, micrograph.image, apix)
                rows.append({"rlnMicrographName": str(path.resolve()), "rlnOpticsGroup": 1, **micrograph.ctf,
                             "vtsIceThicknessAngst": micrograph.ice_thickness_A,
                             "vtsCrystallineIce": int(micrograph.crystalline), "vtsCarbon": int(micrograph.carbon),
                             "vtsContamination": micrograph.contamination,
                             "vtsParticles": len(micrograph.particles)})
                coordinates.append(micrograph.particles.assign(rlnMicrographName=str(path.resolve()),
                                                               rlnOpticsGroup=1))
                if i < THUMBNAILS:
                    thumbnails.append(micrograph)
                advance(1)
        optics = micrograph_optics(options)
        table = pd.DataFrame(rows)
        star = job.path("micrographs.star")
        write_micrograph_star(star, MicrographTable(table[["rlnMicrographName", "rlnOpticsGroup"]], optics, star))
        write_micrograph_star(job.path("truth/micrographs_ctf.star"),
                              MicrographTable(table, optics, job.path("truth/micrographs_ctf.star")))
        particles = pd.concat(coordinates, ignore_index=True)
        first = ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"]
        particles = particles[first + [c for c in particles if c not in first]]
        write_micrograph_star(job.path("truth/coordinates.star"),
                              MicrographTable(particles, optics, job.path("truth/coordinates.star")), "particles")
        radius_px = float(np.max(simulator.radii)) / apix
        job.write_report(_report(table, thumbnails, radius_px, options, [p.name for p in models],
                                 simulator.sigma, CTF_COLUMNS))
        console.err.print(f"wrote {n} micrographs with {len(particles)} particles to {star}", markup=False,
                          soft_wrap=True)
    return star


def micrograph_panels(images: list, coordinates: list, radius_px: float, titles: list[str],
                      colours: tuple[str, ...] = ("#e5484d",), labels: tuple[str, ...] = ()):
    """Thumbnails (low-passed by 4x binning) of micrographs with circles of ``radius_px`` around coordinates.

    ``coordinates[i]`` is a list of (K, 2) arrays (x, y px), one per circle colour (e.g. truth and picks).
    """
    import numpy as np

    from vitreous.report.imaging import display_range, new_figure

    columns = min(len(images), 2)
    rows = -(-len(images) // columns)
    fig = new_figure(4.2 * columns, 4.2 * rows)
    for j, (image, sets, title) in enumerate(zip(images, coordinates, titles, strict=True)):
        ax = fig.add_subplot(rows, columns, j + 1)
        h, w = (image.shape[0] // 4) * 4, (image.shape[1] // 4) * 4
        binned = image[:h, :w].reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))
        vmin, vmax = display_range(binned)
        ax.imshow(binned, cmap="gray", vmin=vmin, vmax=vmax, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
        for k, xy in enumerate(sets):
            xy = np.asarray(xy).reshape(-1, 2)
            ax.scatter(xy[:, 0], xy[:, 1], s=(radius_px * 72 * 4.2 / w) ** 2 * 4, facecolors="none",
                       edgecolors=colours[k % len(colours)], linewidths=0.7,
                       label=labels[k] if k < len(labels) else None)
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
        if labels and j == 0:
            ax.legend(fontsize=7, loc="upper right")
    return fig


def _report(table, thumbnails, radius_px: float, options, names: list[str], sigma: float, ctf_columns: list[str]):
    from vitreous.report import Report

    report = Report("Simulated micrographs", f"{len(table)} micrographs of {options.size}² px at {options.apix} Å/px, "
                                             f"{int(table['vtsParticles'].sum())} particles of {', '.join(names)}")
    report.section("Micrographs").figure(
        micrograph_panels([m.image for m in thumbnails],
                          [[m.particles[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()] for m in thumbnails],
                          radius_px, [f"mic_{i:04d}: {len(m.particles)} particles, defocus "
                                      f"{(m.ctf['rlnDefocusU'] + m.ctf['rlnDefocusV']) / 2e4:.2f} µm"
                                      for i, m in enumerate(thumbnails)]),
        "The first micrographs (4x binned) with the true particle positions circled (particles are dark).")
    noise = (f"Gaussian noise sd {sigma:.4g} (per-particle SNR {options.snr})" if options.dose is None
             else f"Poisson counts at {options.dose} e/Å²")
    report.key_values({"noise": noise, "particles per micrograph": f"{options.particles[0]}-{options.particles[1]}",
                       "ice thickness (Å)": f"{options.ice_thickness_A[0]:g}-{options.ice_thickness_A[1]:g}",
                       "micrographs with carbon edge": int(table["vtsCarbon"].sum()),
                       "micrographs with crystalline ice": int(table["vtsCrystallineIce"].sum()),
                       "contamination blobs": int(table["vtsContamination"].sum())})
    report.section("True CTF and sample per micrograph")
    shown = table.drop(columns=["rlnOpticsGroup"]).assign(
        rlnMicrographName=[Path(p).name for p in table["rlnMicrographName"]])
    report.table(shown[["rlnMicrographName", *ctf_columns, *[c for c in shown if c.startswith("vts")]]])
    return report


def register(app: typer.Typer) -> None:
    """Add ``simulate-micrographs`` to the app."""

    @app.command(name="simulate-micrographs",
                 help="Simulate micrographs (MRC) of particles from atomic models at random non-overlapping "
                      "positions and uniform orientations in vitreous ice, with per-micrograph defocus and "
                      "astigmatism, RELION's CTF over the whole field and detector noise; particles are dark.  "
                      "Writes OUT/micrographs.star (no CTF: estimate it with `vitreous ctf`) and the truth in "
                      "OUT/truth: micrographs_ctf.star, coordinates.star (positions, poses, vtsModel, CTF) and "
                      "model_001.mrc... (each model's map at the micrograph pixel size).")
    def simulate_micrographs(
        out: OutDir,
        model: Annotated[list[Path], typer.Option(
            "--model", help="Atomic model (PDB/mmCIF, .gz allowed); repeat for several kinds of particle.")],
        n: Annotated[int, typer.Option("-n", "--n-micrographs", help="Number of micrographs.")] = 10,
        size: Annotated[int, typer.Option("--size", help="Micrograph side in pixels.")] = 1024,
        apix: Annotated[float, typer.Option("--apix", help="Pixel size in Å/px.")] = 1.0,
        particles: Annotated[str, typer.Option(
            "--particles-per-micrograph", help="Particles per micrograph: N or MIN-MAX (uniform); fewer "
                                               "when they do not fit.")] = "150",
        proportions: Annotated[str | None, typer.Option(
            "--proportions", help="Fractions of the models, comma-separated (default equal).")] = None,
        defocus_min: Annotated[float, typer.Option("--defocus-min", help="Minimum defocus in µm.")] = 0.5,
        defocus_max: Annotated[float, typer.Option("--defocus-max", help="Maximum defocus in µm.")] = 3.0,
        astigmatism: Annotated[float, typer.Option(
            "--astigmatism-max", help="Maximum |defocus U - V| in Å (uniform; angle uniform).")] = 1000.0,
        snr: Annotated[float, typer.Option(
            "--snr", help="Per-particle signal-to-noise ratio (variance of one particle's CTF-filtered signal "
                          "over its box / noise variance, as `vitreous simulate`).")] = 0.1,
        dose: Annotated[float | None, typer.Option(
            "--dose", help="Electrons per Å²: Poisson counts instead of Gaussian noise at --snr.")] = None,
        ice_min: Annotated[float, typer.Option("--ice-min", help="Minimum mean ice thickness in Å.")] = 300.0,
        ice_max: Annotated[float, typer.Option("--ice-max", help="Maximum mean ice thickness in Å.")] = 600.0,
        carbon: Annotated[float, typer.Option(
            "--carbon", help="Fraction of micrographs with a carbon edge (straight or curved).")] = 0.0,
        contamination: Annotated[float, typer.Option(
            "--contamination", help="Mean number of contamination blobs (ice ellipsoids) per micrograph.")] = 0.0,
        crystalline: Annotated[float, typer.Option(
            "--crystalline", help="Fraction of micrographs with crystalline ice (rings at 3.4-3.9 Å).")] = 0.0,
        voltage: Annotated[float, typer.Option("--voltage", help="Acceleration voltage in kV.")] = 300.0,
        cs: Annotated[float, typer.Option("--cs", help="Spherical aberration in mm.")] = 2.7,
        amplitude_contrast: Annotated[float, typer.Option("--amplitude-contrast")] = 0.1,
        seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
        overwrite: Overwrite = False,
    ) -> None:
        run_simulate_micrographs(out, models=model, n=n, size=size, apix=apix, particles=parse_count(particles),
                                 proportions=parse_proportions(proportions), defocus_um=(defocus_min, defocus_max),
                                 astigmatism=astigmatism, snr=snr, dose=dose, ice_thickness=(ice_min, ice_max),
                                 carbon=carbon, contamination=contamination, crystalline=crystalline,
                                 voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast, seed=seed,
                                 overwrite=overwrite)
