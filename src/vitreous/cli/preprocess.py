"""``vitreous preprocess``: write the particle cache (:mod:`vitreous.data.cache`) once, reuse it afterwards."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vitreous.cli import console
from vitreous.cli.options import Apix, Datadir, OutDir
from vitreous.errors import InputError

if TYPE_CHECKING:
    from vitreous.data.particles import ParticleSet

NORMALISATION_ID = "global-std-1000"  # the normalisation, as recorded in the cache key


def run_preprocess(particles_path: Path, out: Path, *, downsample: int | None = None, dtype: str = "float16",
                   datadir: Path | None = None, apix: float | None = None, overwrite: bool = False,
                   resume: bool = False) -> Path:
    """Build the cache in the job folder ``out`` (or reuse an identical one); returns its ``particles.star``.

    A cache built from other data or parameters is refused (InputError) unless ``overwrite``; an interrupted
    build is started again from the first image with ``resume`` (its data file is written in one go).
    """
    from vitreous.data import cache
    from vitreous.io import cache_manifest
    from vitreous.io.formats import read_particles

    if dtype not in cache.DTYPES:
        raise InputError(None, f"--dtype {dtype} is not one of {', '.join(cache.DTYPES)}", "choose one of them")
    particles = read_particles(particles_path, datadir=datadir, apix=apix)
    if particles.images is None:
        raise InputError(particles_path, "no particle images (a cryoDRGN .pkl names none)",
                         "convert it first: vitreous convert POSES.pkl particles.star --ctf CTF.pkl --stack STACK.mrcs")
    box = cache.cache_box(particles.box, downsample)
    params = {"box": box, "dtype": dtype, "apix": apix, "normalisation": NORMALISATION_ID}
    sources = cache.describe_sources(particles_path, particles.images.paths, params)
    key = cache.cache_key(sources)
    manifest = cache_manifest.read_manifest(out)
    if manifest is not None and not overwrite:
        if manifest.get("key") != key:
            changed = "; ".join(cache.source_differences(manifest.get("sources", {}), sources)) or "format"
            raise InputError(out, f"holds a particle cache built from other data or parameters (changed: {changed})",
                             "pass --overwrite to rebuild it there, or choose another -o")
        problem = cache_manifest.data_file_problem(out, manifest)
        if problem is not None:
            raise InputError(out, f"particle cache is invalid: {problem}", "pass --overwrite to rebuild it")
        if (out / cache.STAR_FILE).is_file():
            console.err.print(f"the particle cache in {out} is up to date (same data and parameters, key "
                              f"{key[:12]}): reusing it", markup=False, soft_wrap=True)
            return out / cache.STAR_FILE
    _build(particles, particles_path, out, box=box, dtype=dtype, sources=sources, key=key,
           job_params={**params, "downsample": downsample}, overwrite=overwrite, resume=resume)
    return out / cache.STAR_FILE


def _build(particles: ParticleSet, particles_path: Path, out: Path, *, box: int, dtype: str, sources: dict,
           key: str, job_params: dict, overwrite: bool, resume: bool) -> None:
    import numpy as np

    from vitreous.cli.progress import progress_bar
    from vitreous.data import cache
    from vitreous.data.particles import ParticleSet
    from vitreous.io import cache_manifest
    from vitreous.io.atomic import write_json
    from vitreous.io.stack import ImageStack
    from vitreous.io.star import write_star
    from vitreous.jobs import Job
    from vitreous.jobs.record import now
    from vitreous.neural.data import image_scale

    with Job.open(out, command="preprocess", params=job_params, inputs=[particles_path], overwrite=overwrite,
                  resume=resume) as job:
        manifest_path, data_path = job.path(cache_manifest.MANIFEST), job.path(cache.DATA_FILE)
        manifest_path.unlink(missing_ok=True)  # first: until the new manifest is written, nothing looks valid
        for stale in out.glob(f".{cache.DATA_FILE}.*.tmp"):  # left by a killed build
            stale.unlink()
        scale = image_scale(particles)
        factor = particles.box / box
        optics = particles.optics.copy()
        optics["rlnImagePixelSize"] = optics["rlnImagePixelSize"].to_numpy(np.float64) * factor
        optics["rlnImageSize"] = box
        sizes = np.unique(np.round(optics["rlnImagePixelSize"].to_numpy(), 6))
        started = time.perf_counter()
        with progress_bar(len(particles), "preprocessing") as advance:
            stats = cache.build(particles, data_path, box=box, dtype=dtype, scale=scale,
                                voxel_size=float(sizes[0]) if len(sizes) == 1 else 0.0, progress=advance)
        seconds = time.perf_counter() - started
        write_star(job.path(cache.STAR_FILE), ParticleSet(particles.particles, optics, ImageStack.from_file(data_path),
                                                          source=str(particles_path)))
        summary = {"particles": len(particles), "input box (px)": particles.box, "cache box (px)": box,
                   "pixel size (Å)": ", ".join(f"{s:g}" for s in sizes), "data type": dtype,
                   "normalisation": f"{cache.NORMALISATION}; scale = {scale:.6g}",
                   "cache size (GB)": data_path.stat().st_size / 1e9, "build time (s)": seconds,
                   "throughput (images/s)": len(particles) / max(seconds, 1e-9),
                   "read (MB/s)": len(particles) * particles.box**2 * 4 / 1e6 / max(seconds, 1e-9), "key": key}
        write_json(manifest_path, {
            "vitreous_cache": cache_manifest.FORMAT, "key": key, "built": now(), "data_file": cache.DATA_FILE,
            "data": cache_manifest.fingerprint(data_path), "star_file": cache.STAR_FILE, "count": len(particles),
            "box": box, "original_box": particles.box, "dtype": dtype, "pixel_size_A": sizes.tolist(), "scale": scale,
            "normalisation": cache.NORMALISATION, "statistics": stats, "sources": sources})
        job.write_report(_report(particles_path, summary))
        for name, value in summary.items():
            console.err.print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}",
                              markup=False, soft_wrap=True)


def _report(particles_path: Path, summary: dict[str, Any]):
    from vitreous.report import Report

    report = Report("Particle cache", str(particles_path))
    report.section("Cache").key_values(summary)
    report.paragraph("particles.mrcs holds image i of particles.star (STAR order), Fourier cropped to the cache box "
                     "and divided by the scale; cache.json records what it was built from.")
    return report


def register(app: typer.Typer) -> None:
    """Add ``preprocess`` to the app."""

    @app.command(help="Write a particle cache once: the images Fourier cropped (--downsample) and divided by one "
                      "global scale (std of the pixels of 1000 random images), in one contiguous float16/float32 "
                      "MRC stack OUT/particles.mrcs, with OUT/particles.star pointing at it (pixel size and box "
                      "of the cropped images) and OUT/cache.json (content key of the inputs and parameters).  "
                      "Run again with the same inputs it reuses the cache; with others it refuses unless "
                      "--overwrite.")
    def preprocess(
        particles: Annotated[Path, typer.Argument(help="Particles (.star or .cs) with their stacks.")],
        out: OutDir,
        downsample: Annotated[int | None, typer.Option(
            "--downsample", metavar="PX", help="Box (px, even) to Fourier crop the images to; the pixel size "
            "grows by box / PX.  Default: keep the box.")] = None,
        dtype: Annotated[str, typer.Option(
            "--dtype", help="float16 (MRC mode 12, half the size) or float32 (mode 2).")] = "float16",
        datadir: Datadir = None,
        apix: Apix = None,
        overwrite: Annotated[bool, typer.Option(
            "--overwrite", help="Rebuild the cache in OUT even if one is there (deleting its files).")] = False,
        resume: Annotated[bool, typer.Option(
            "--resume", help="Build again in the folder of an interrupted build (same options and inputs; the "
            "data file is started again from the first image).")] = False,
    ) -> None:
        run_preprocess(particles, out, downsample=downsample, dtype=dtype, datadir=datadir, apix=apix,
                       overwrite=overwrite, resume=resume)
