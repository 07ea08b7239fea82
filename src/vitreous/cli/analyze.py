"""``vitreous analyze``: the latent space of a trained VAE: PCA, UMAP, k-means, trajectories, selections.

Numbering: clusters 0..K-1 (as ``kmeans20/vol_###.mrc``, ``labels.npy`` and cryoDRGN); particles 1..N in the
order of the training STAR file (the app's convention), except in ``centers_ind.txt`` which holds 0-based rows
of ``z.npy`` as cryoDRGN writes it.  See :mod:`vitreous.analysis.latent_embedding` and
:mod:`vitreous.analysis.latent_paths` for the methods.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vitreous.cli import console
from vitreous.cli.eval_vol import TRAINED_HELP, ClassOption, add_series, decode_series, load_model
from vitreous.cli.options import Datadir, Overwrite
from vitreous.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from vitreous.analysis.latent_embedding import Clusters, PCAResult
    from vitreous.analysis.latent_paths import Trajectory
    from vitreous.analysis.latent_series import VolumeSeries
    from vitreous.data.particles import ParticleSet

CLUSTER_COLUMN = "vtsKmeansCluster"  # k-means cluster (0-based) in selected.star


@dataclass(frozen=True)
class AnalyzeOptions:
    """What ``analyze`` does; numbering as in the module docstring."""

    kmeans: int = 20  # clusters (0: none)
    pcs: int = 2  # principal components with a trajectory (capped at zdim)
    pc_points: int = 10
    pc_low: float = 5.0  # percentiles of each PC spanned by its trajectory
    pc_high: float = 95.0
    pc_on_data: bool = False  # snap trajectory points to the nearest particle
    path: tuple[str, str] | None = None  # endpoints: particle number (1-based) or 'cK' (centre of cluster K)
    path_neighbours: int = 10
    path_points: int = 10  # 0: every particle on the path
    select_clusters: tuple[int, ...] = ()
    umap: bool = True
    seed: int = 0
    batch_size: int = 8
    device: str = "cpu"
    class_number: int | None = None  # a class of an abinit-neural folder


def parse_clusters(text: str | None) -> tuple[int, ...]:
    """``"3,7"`` -> (3, 7); InputError on anything but comma-separated whole numbers."""
    if not text:
        return ()
    try:
        return tuple(sorted({int(v) for v in text.replace(" ", "").split(",") if v}))
    except ValueError:
        raise InputError(None, f"--select-clusters '{text}' is not a list of cluster numbers",
                         "give numbers from 0 as in kmeansK/vol_###.mrc, e.g. '3,7'") from None


def check_options(options: AnalyzeOptions, n: int, zdim: int) -> None:
    """Refuse options that cannot work for N particles in a zdim-dimensional latent space."""
    if options.kmeans < 0 or options.kmeans > n:
        raise InputError(None, f"--kmeans {options.kmeans} for {n} particles",
                         f"give 0 (no clustering) to {n} clusters")
    if options.pcs < 0 or options.pc_points < 2 or not 0 <= options.pc_low < options.pc_high <= 100:
        raise InputError(None, "--pc must be 0 or more, --pc-points 2 or more, and the percentiles 0 <= low < "
                         "high <= 100", "fix the options")
    if options.path_neighbours < 1 or options.path_points == 1 or options.path_points < 0:
        raise InputError(None, "--path-neighbours must be 1 or more and --path-points 0 (every particle) or 2 "
                         "or more", "fix the options")
    if options.batch_size < 1:
        raise InputError(None, f"--batch-size {options.batch_size} is not positive", "give 1 or more")
    if options.select_clusters:
        if not options.kmeans:
            raise InputError(None, "--select-clusters needs clusters", "give --kmeans K (1 or more)")
        wrong = [c for c in options.select_clusters if not 0 <= c < options.kmeans]
        if wrong:
            raise InputError(None, f"cluster {wrong[0]} does not exist: --kmeans {options.kmeans} makes clusters "
                             f"0..{options.kmeans - 1}", "choose clusters in that range")
    if options.path is not None:
        ends = [endpoint(end, n, options.kmeans) for end in options.path]
        if ends[0] == ends[1]:
            raise InputError(None, f"--path {' '.join(options.path)} starts and ends at the same point",
                             "give two different endpoints")


def endpoint(text: str, n: int, kmeans: int) -> tuple[str, int]:
    """A --path endpoint: ('particle', 0-based row) for a number 1..N, ('centre', cluster) for 'cK'."""
    spec = text.strip().lower()
    centre = spec.startswith("c")
    try:
        value = int(spec[1:] if centre else spec)
    except ValueError:
        raise InputError(None, f"--path endpoint '{text}' is neither a particle number nor 'cK'",
                         "give particle numbers 1..N or cluster centres as c0, c1 ...") from None
    if centre:
        if not 0 <= value < kmeans:
            raise InputError(None, f"--path endpoint '{text}': there are {kmeans} clusters (0..{kmeans - 1})",
                             "choose an existing cluster, or raise --kmeans")
        return "centre", value
    if not 1 <= value <= n:
        raise InputError(None, f"--path endpoint '{text}': particles are numbered 1..{n}", "choose one of them")
    return "particle", value - 1


def run_analyze(out_dir: Path, analysis: Path | None = None, options: AnalyzeOptions | None = None, *,
                datadir: Path | None = None, overwrite: bool = False) -> Path:
    """Analyse the latent space of the trained folder ``out_dir`` into the job folder ``analysis`` (default
    ``out_dir/analysis``); returns the job folder.  Inputs are checked before it is touched."""
    import logging

    from vitreous.jobs import Job

    options = options or AnalyzeOptions()
    default = "analysis" if options.class_number is None else f"analysis_class_{options.class_number:03d}"
    analysis = analysis if analysis is not None else out_dir / default
    trained = load_model(out_dir, options.device, options.class_number)
    if trained.z is None or trained.zdim == 0:
        raise InputError(out_dir, "the model has no latent space (no z.npy: a train-field job?)",
                         "analyze the folder of vitreous train-vae")
    z = trained.z
    if len(z) < 2 or z.ndim != 2 or z.shape[1] != trained.zdim:
        raise InputError(out_dir / "z.npy", f"latent array of shape {z.shape} for zdim {trained.zdim}",
                         "analyze a complete train-vae folder with at least two particles")
    check_options(options, len(z), trained.zdim)
    particles = _selection_particles(trained, len(z), datadir) if options.select_clusters else None
    log = logging.getLogger("vitreous.analyze")
    with Job.open(analysis, command="analyze", params={**asdict(options), "datadir": datadir},
                  inputs=[out_dir / "z.npy", trained.particles_path], overwrite=overwrite) as job:
        _Analysis(job, trained, z, options, log).run(particles)
    return analysis


def _selection_particles(trained: Any, n: int, datadir: Path | None) -> ParticleSet:
    """The training particles (images where found), checked to match z and to be writable as .cs."""
    from vitreous.cli.loading import load_particles

    particles, problem = load_particles(trained.particles_path, datadir=datadir)
    if len(particles) != n:
        raise InputError(trained.particles_path, f"{len(particles)} particles but {n} latent points in z.npy",
                         "analyze the folder train-vae wrote, unchanged")
    if not particles.box:
        raise InputError(trained.particles_path, f"images not found ({problem}), and the box size a .cs file "
                         "needs is unknown", "pass --datadir with the particle stacks")
    if problem is not None:
        console.err.print(f"warning: images not found ({problem}); image names are copied unchanged",
                          markup=False, soft_wrap=True)
    return particles


class _Analysis:
    """The steps of one analysis, writing into ``job`` and collecting the report."""

    def __init__(self, job, trained: Any, z: np.ndarray, options: AnalyzeOptions, log) -> None:
        from vitreous.report import Report

        self.job, self.trained, self.z, self.options, self.log = job, trained, z, options, log
        self.report = Report("Latent space analysis", str(trained.particles_path))
        self.summary: dict[str, Any] = {"particles": len(z), "zdim": z.shape[1], "box (px)": trained.box,
                                        "voxel size (Å)": trained.pixel_size}
        self.series: dict[str, VolumeSeries] = {}

    def run(self, particles: ParticleSet | None) -> None:
        import numpy as np

        from vitreous.analysis.latent_embedding import principal_components

        pca = principal_components(self.z)
        np.save(self.job.path("pc.npy"), pca.coords)
        self._write_csv("pca_variance.csv", {"component": np.arange(1, len(pca.explained) + 1),
                                             "explained_fraction": pca.explained})
        self.summary["variance on PC1"] = float(pca.explained[0])
        embedded = self._umap()
        clusters = self._kmeans() if self.options.kmeans else None
        trajectories = self._pc_trajectories(pca)
        path = self._path(clusters) if self.options.path is not None else None
        if clusters is not None and self.options.select_clusters:
            self._select(particles, clusters)
        self._report(pca, embedded, clusters, trajectories, path)

    # ---- steps ---------------------------------------------------------------------------------------
    def _umap(self) -> np.ndarray | None:
        import numpy as np

        from vitreous.analysis.latent_embedding import UMAP_MIN_PARTICLES, umap_embedding

        if not self.options.umap:
            return None
        if len(self.z) < UMAP_MIN_PARTICLES:
            self.log.warning("UMAP skipped: %d particles, it needs at least %d", len(self.z), UMAP_MIN_PARTICLES)
            return None
        self.log.info("UMAP of %d latent points", len(self.z))
        embedded = umap_embedding(self.z, seed=self.options.seed)
        np.save(self.job.path("umap.npy"), embedded)
        return embedded

    def _kmeans(self) -> Clusters:
        import numpy as np

        from vitreous.analysis.latent_embedding import kmeans_clusters

        k = self.options.kmeans
        clusters = kmeans_clusters(self.z, k, seed=self.options.seed)
        name = f"kmeans{k}"
        folder = self.job.path(name)
        folder.mkdir(exist_ok=True)
        np.save(folder / "labels.npy", clusters.labels)
        np.savetxt(folder / "centers.txt", clusters.centers, fmt="%.8g")
        np.savetxt(folder / "centers_ind.txt", clusters.center_indices, fmt="%d")
        self._write_csv(f"{name}/clusters.csv", {
            "cluster": np.arange(k), "particles": clusters.sizes, "fraction": clusters.sizes / len(self.z),
            "centre_particle": clusters.center_indices + 1})
        self._decode(name, clusters.centers, f"k-means centres ({k})", play=False)
        return clusters

    def _pc_trajectories(self, pca: PCAResult) -> dict[str, Trajectory]:
        from vitreous.analysis.latent_paths import pc_trajectory

        options = self.options
        count = min(options.pcs, pca.components.shape[0])
        if count < options.pcs:
            self.log.info("trajectories along %d principal components (zdim %d)", count, self.z.shape[1])
        trajectories = {}
        for pc in range(1, count + 1):
            trajectory = pc_trajectory(pca, pc, n_points=options.pc_points, low=options.pc_low,
                                       high=options.pc_high, z=self.z if options.pc_on_data else None)
            self._decode(f"pc{pc}", trajectory.z, f"PC{pc} trajectory", particles=trajectory.indices)
            trajectories[f"PC{pc}"] = trajectory
        return trajectories

    def _path(self, clusters: Clusters | None) -> Trajectory:
        import numpy as np

        from vitreous.analysis.latent_paths import graph_path, path_trajectory, resample_path

        options = self.options
        assert options.path is not None
        rows = []
        for end in options.path:
            kind, value = endpoint(end, len(self.z), options.kmeans)
            if kind == "centre":
                assert clusters is not None  # check_options: a centre needs --kmeans
                value = int(clusters.center_indices[value])
            rows.append(value)
        try:
            nodes = graph_path(self.z, rows[0], rows[1], neighbours=options.path_neighbours)
        except ValueError as exc:
            raise InputError(None, f"--path {' '.join(options.path)}: {exc}",
                             "choose other endpoints or raise --path-neighbours") from None
        along = path_trajectory(self.z, nodes)
        folder = self.job.path("path")
        folder.mkdir(exist_ok=True)
        np.savetxt(folder / "path_particles.txt", nodes + 1, fmt="%d")
        self.summary["graph path"] = (f"particles {rows[0] + 1} -> {rows[1] + 1}: {len(nodes)} particles, "
                                      f"length {along.position[-1]:.4g} in z")
        decoded = along if options.path_points == 0 else resample_path(along.z, options.path_points)
        self._decode("path", decoded.z, "graph path", particles=decoded.indices)
        return along

    def _select(self, particles: ParticleSet | None, clusters: Clusters) -> None:
        import numpy as np

        from vitreous.io.formats import write_particles

        assert particles is not None
        chosen = np.isin(clusters.labels, self.options.select_clusters)
        selected = particles.with_columns(**{CLUSTER_COLUMN: clusters.labels}).subset(np.flatnonzero(chosen))
        for name in ("selected.star", "selected.cs"):
            write_particles(self.job.path(name), selected)
        self.summary["selected"] = (f"{len(selected)} particles of clusters "
                                    f"{', '.join(map(str, self.options.select_clusters))} -> selected.star, "
                                    "selected.cs")
        console.err.print(f"selected {len(selected)} particles: {self.job.path('selected.star')}", markup=False)

    def _decode(self, name: str, z: np.ndarray, description: str, *, particles: np.ndarray | None = None,
                play: bool = True) -> None:
        """Volumes at ``z`` into ``name/``, their points in ``name/z_values.txt`` and ``name.cxc``."""
        import numpy as np

        from vitreous.analysis.latent_series import chimerax_script

        folder = self.job.path(name)
        folder.mkdir(exist_ok=True)
        np.savetxt(folder / "z_values.txt", z, fmt="%.8g")
        if particles is not None:
            np.savetxt(folder / "particles.txt", particles + 1, fmt="%d")
        series = decode_series(self.trained, z, folder, description, self.options.batch_size)
        chimerax_script(self.job.path(f"{name}.cxc"), series, play=play)
        self.series[name] = series

    def _write_csv(self, name: str, columns: dict[str, Any]) -> None:
        import pandas as pd

        from vitreous.io.atomic import atomic_path

        with atomic_path(self.job.path(name)) as tmp:
            pd.DataFrame(columns).to_csv(tmp, index=False)

    # ---- report --------------------------------------------------------------------------------------
    def _report(self, pca: PCAResult, embedded: np.ndarray | None, clusters: Clusters | None,
                trajectories: dict[str, Trajectory], path: Trajectory | None) -> None:
        from vitreous.analysis.latent_plots import (
            clusters_figure,
            density_figure,
            paths_figure,
            sizes_figure,
            variance_figure,
        )

        report, pcs = self.report, pca.coords[:, :2]
        pc_names = ["PC1", "PC2"][: pcs.shape[1]]
        report.section("Summary").key_values(self.summary)
        report.links({f"{name}.cxc (ChimeraX volume series)": f"{name}.cxc" for name in self.series})
        report.section("PCA").figure(density_figure(pcs, pc_names), "Latent points on the first principal "
                                     "components: scatter and density")
        report.figure(variance_figure(pca.explained), "Fraction of the latent variance per principal component")
        if embedded is not None:
            report.section("UMAP").figure(density_figure(embedded, ["UMAP1", "UMAP2"]),
                                          "UMAP embedding of the latent points")
        if clusters is not None:
            report.section(f"k-means ({len(clusters.centers)} clusters)")
            if pcs.shape[1] == 2:
                report.figure(clusters_figure(pcs, clusters.labels, pcs[clusters.center_indices], pc_names),
                              "Clusters on PC1/PC2; numbers at the centre particles")
            if embedded is not None:
                report.figure(clusters_figure(embedded, clusters.labels, embedded[clusters.center_indices],
                                              ["UMAP1", "UMAP2"]), "Clusters on the UMAP embedding")
            report.figure(sizes_figure(clusters.sizes), "Particles per cluster")
            self._gallery(f"kmeans{len(clusters.centers)}", "cluster", "volume at each cluster centre")
        if trajectories or path is not None:
            report.section("Trajectories")
            if pcs.shape[1] == 2:
                lines = {name: _pc_coords(pca, t.z) for name, t in trajectories.items()}
                if path is not None:
                    lines["graph path"] = pcs[path.indices]
                report.figure(paths_figure(pcs, lines, pc_names), "Trajectories on PC1/PC2 (point 0 marked)")
            if path is not None and embedded is not None:
                report.figure(paths_figure(embedded, {"graph path": embedded[path.indices]}, ["UMAP1", "UMAP2"]),
                              "The graph path on the UMAP embedding")
            for name in trajectories:
                self._gallery(name.lower(), "point", f"{name} trajectory, {self.options.pc_low:g}th to "
                              f"{self.options.pc_high:g}th percentile")
            if path is not None:
                self._gallery("path", "point", "graph path")
        self.job.write_report(report)

    def _gallery(self, name: str, unit: str, caption: str) -> None:
        series = self.series[name]
        labels = [f"{unit} {i}" for i in range(len(series.files))]
        add_series(self.report, series, labels, f"{name}/: {caption} (projections along z); "
                   f"ChimeraX: open {name}.cxc")


def _pc_coords(pca: PCAResult, z: np.ndarray) -> np.ndarray:
    """PC1/PC2 coordinates of latent points."""
    return (z - pca.mean) @ pca.components[:2].T


def register(app: typer.Typer) -> None:
    """Add ``analyze`` to the app."""

    @app.command(help="Analyse the latent space of a trained VAE (train-vae folder OUT): PCA and UMAP plots, "
                      "k-means with the volume at each cluster centre (kmeansK/vol_###.mrc, voxels in Å; labels.npy, "
                      "centers.txt), volume series along principal components (pc1/ ...) and along a "
                      "nearest-neighbour-graph path (path/), a ChimeraX script per series (NAME.cxc, volume "
                      "series), particles of chosen clusters as selected.star and selected.cs, report.html.  "
                      "Clusters are numbered from 0, particles from 1.")
    def analyze(
        trained: Annotated[Path, typer.Argument(metavar="OUT", help=TRAINED_HELP)],
        out: Annotated[Path | None, typer.Option(
            "--out", "-o", metavar="DIR", help="Job folder for the analysis (default OUT/analysis, with --class K "
                                          "OUT/analysis_class_00K).")] = None,
        kmeans: Annotated[int, typer.Option("--kmeans", metavar="K", help="k-means clusters (0: none).")] = 20,
        pc: Annotated[int, typer.Option(
            "--pc", metavar="N", help="Volume series along the first N principal components (0: none).")] = 2,
        pc_points: Annotated[int, typer.Option("--pc-points", help="Volumes per PC trajectory.")] = 10,
        pc_range: Annotated[tuple[float, float], typer.Option(
            "--pc-range", metavar="LOW HIGH", help="Percentiles of each PC spanned by its trajectory.")] = (5.0,
                                                                                                            95.0),
        pc_on_data: Annotated[bool, typer.Option(
            "--pc-on-data", help="Replace each PC trajectory point by the nearest particle's latent point.")] = False,
        path: Annotated[tuple[str, str] | None, typer.Option(
            "--path", metavar="A B", help="Volume series along the shortest nearest-neighbour-graph path from A "
                                          "to B: particle numbers (1-based) or cluster centres cK (e.g. c3).")] = None,
        path_neighbours: Annotated[int, typer.Option(
            "--path-neighbours", help="Neighbours of each particle in the path's graph.")] = 10,
        path_points: Annotated[int, typer.Option(
            "--path-points", help="Volumes evenly spaced along the path (0: one per particle on it).")] = 10,
        select_clusters: Annotated[str | None, typer.Option(
            "--select-clusters", metavar="3,7", help="Write the particles of these clusters (numbers from 0) "
                                                     "as selected.star and selected.cs.")] = None,
        no_umap: Annotated[bool, typer.Option("--no-umap", help="Skip the UMAP embedding (slow for large N).")] = False,
        seed: Annotated[int, typer.Option("--seed", help="Seed of k-means and UMAP.")] = 0,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Volumes decoded at once (memory).")] = 8,
        device: Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1 ...")] = "cpu",
        datadir: Datadir = None,
        class_number: ClassOption = None,
        overwrite: Overwrite = False,
    ) -> None:
        options = AnalyzeOptions(
            kmeans=kmeans, pcs=pc, pc_points=pc_points, pc_low=pc_range[0], pc_high=pc_range[1],
            pc_on_data=pc_on_data, path=path, path_neighbours=path_neighbours, path_points=path_points,
            select_clusters=parse_clusters(select_clusters), umap=not no_umap, seed=seed, batch_size=batch_size,
            device=device, class_number=class_number)
        run_analyze(trained, out, options, datadir=datadir, overwrite=overwrite)
