"""``vitreous analyze``: the complete analysis folder (PCA/UMAP, k-means volumes and selection, PC and graph
trajectories, ChimeraX scripts, report) and bad input (one line, exit code 2, no job folder).

The trained model is a stand-in with the attributes of :func:`vitreous.neural.trained.load_trained`'s result:
120 particles (simulated images, box 16) whose latent points lie along a line, z = (t, 0.2 noise), and a
decoder whose volume at z is a Gaussian blob at x = 8 + 2 z[0], y = 8 + 2 z[1] voxels: so the volumes along
PC1 must move the blob monotonically along x.
"""

from __future__ import annotations

import json
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from vitreous.analysis import latent_embedding
from vitreous.errors import InputError
from vitreous.io.formats import read_particles
from vitreous.io.mrc import read_map
from vitreous.io.star import write_star
from vitreous.sim.particles import Acquisition, simulate_stack

BOX, APIX, N = 16, 3.0, 120
NO_UMAP = ("--no-umap",)


class FakeTrained:
    """What analyze uses of a trained model (zdim 2); counts the volumes decoded."""

    def __init__(self, folder: Path) -> None:
        self.zdim, self.box, self.pixel_size = 2, BOX, APIX
        self.z = np.load(folder / "z.npy")
        self.particles_path = folder / "particles.star"
        self.decoded = 0

    def volumes(self, z: np.ndarray, batch_size: int = 8) -> Iterator[np.ndarray]:
        grid = np.arange(BOX, dtype=np.float32)
        for row in z:
            self.decoded += 1
            x, y = BOX / 2 + 2 * row[0], BOX / 2 + 2 * row[1]
            yield np.exp(-((grid[None, None] - x) ** 2 + (grid[None, :, None] - y) ** 2
                           + (grid[:, None, None] - BOX / 2) ** 2) / 4.0).astype(np.float32)


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """particles.star (+ .mrcs) and z.npy, as train-vae leaves them."""
    folder = tmp_path_factory.mktemp("train")
    blob = torch.zeros((1, BOX, BOX, BOX))
    blob[0, 6:10, 6:10, 6:10] = 1.0
    particles = simulate_stack(blob, np.zeros(N, np.int64), folder / "particles.mrcs", Acquisition(apix=APIX, seed=3))
    write_star(folder / "particles.star", particles)
    rng = np.random.default_rng(0)
    np.save(folder / "z.npy", np.stack([rng.uniform(-2, 2, N), 0.2 * rng.normal(size=N)], axis=1))
    return folder


@pytest.fixture
def model(trained_folder: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTrained:
    trained = FakeTrained(trained_folder)

    def load_trained(out_dir: Path, device: str = "cpu", class_number: int | None = None) -> FakeTrained:
        if Path(out_dir) != trained_folder:
            raise InputError(out_dir, "not a train-vae or train-field job folder", "give the folder they wrote")
        return trained

    monkeypatch.setitem(sys.modules, "vitreous.neural.trained", types.SimpleNamespace(load_trained=load_trained))
    return trained


def _blob_x(path: Path) -> float:
    volume, _ = read_map(path)
    profile = volume.sum(axis=(0, 1))
    return float((profile * np.arange(BOX)).sum() / profile.sum())


def _check_script(script: Path, folder: Path, count: int) -> None:
    """The .cxc opens exactly the ``count`` maps of ``folder`` as a series, at a level inside their range."""
    text = script.read_text()
    pattern = re.search(r"^open (\S+) vseries true$", text, re.M).group(1)
    files = sorted(script.parent.glob(pattern))
    assert files == sorted(folder.glob("vol_*.mrc")) and len(files) == count
    level = float(re.search(r"level (\S+)", text).group(1))
    maps = [read_map(f)[0] for f in files]
    assert min(m.min() for m in maps) < level < max(m.max() for m in maps)


def test_analyze_writes_a_complete_analysis(vitreous, model: FakeTrained, trained_folder: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # UMAP itself is tested in tests/analysis (its first call compiles for ~10 s); here a quick stand-in
    monkeypatch.setattr(latent_embedding, "umap_embedding", lambda z, seed=0: z[:, ::-1] * 2.0)
    out = trained_folder / "analysis"
    result = vitreous("analyze", trained_folder, "--kmeans", 5, "--pc", 2, "--pc-points", 6, "--path", "c0", "c4",
                      "--path-points", 4, "--select-clusters", "1,3", "--batch-size", 3)
    assert result.code == 0, result.err
    z = model.z
    # PCA and UMAP
    pc = np.load(out / "pc.npy")
    assert pc.shape == (N, 2) and abs(np.corrcoef(pc[:, 0], z[:, 0])[0, 1]) > 0.99
    np.testing.assert_allclose(np.load(out / "umap.npy"), z[:, ::-1] * 2.0)
    # k-means: labels, centres on the data, one volume per centre
    kmeans = out / "kmeans5"
    labels = np.load(kmeans / "labels.npy")
    assert labels.shape == (N,) and set(labels) == set(range(5))
    rows = np.loadtxt(kmeans / "centers_ind.txt", dtype=int)
    np.testing.assert_allclose(np.loadtxt(kmeans / "centers.txt"), z[rows], rtol=1e-6)
    np.testing.assert_array_equal(labels[rows], np.arange(5))
    for path in kmeans.glob("vol_*.mrc"):
        assert read_map(path)[1] == pytest.approx(APIX)
    _check_script(out / "kmeans5.cxc", kmeans, 5)
    # PC trajectories: 6 maps each; along PC1 the blob moves monotonically in x
    for name in ("pc1", "pc2"):
        _check_script(out / f"{name}.cxc", out / name, 6)
    x = [_blob_x(p) for p in sorted((out / "pc1").glob("vol_*.mrc"))]
    assert np.all(np.diff(x) > 0) or np.all(np.diff(x) < 0)
    assert abs(x[-1] - x[0]) > 2 * 0.8 * (np.percentile(z[:, 0], 95) - np.percentile(z[:, 0], 5))
    # graph path between the centres of clusters 0 and 4
    path = np.loadtxt(out / "path" / "path_particles.txt", dtype=int)
    assert path[0] == rows[0] + 1 and path[-1] == rows[4] + 1
    _check_script(out / "path.cxc", out / "path", 4)
    np.testing.assert_allclose(np.loadtxt(out / "path" / "z_values.txt")[[0, -1]], z[rows[[0, 4]]], atol=1e-6)
    # selection, as STAR and .cs, with the images still found
    chosen = np.isin(labels, [1, 3])
    star = read_particles(out / "selected.star")
    np.testing.assert_array_equal(star.particles["vtsKmeansCluster"], labels[chosen])
    original = read_particles(trained_folder / "particles.star")
    np.testing.assert_array_equal(star.images.read(slice(None)), original.images.read(np.flatnonzero(chosen)))
    cs = read_particles(out / "selected.cs")
    assert len(cs) == chosen.sum()
    np.testing.assert_allclose(cs.euler, original.euler[chosen], atol=1e-3)
    # volumes came from the model, in batches; the report and record
    assert model.decoded == 5 + 6 + 6 + 4
    report = (out / "report.html").read_text()
    assert "UMAP" in report and "k-means (5 clusters)" in report and report.count("data:image/png") > 10
    record = json.loads((out / "job.json").read_text())
    assert record["status"] == "finished" and record["command"] == "analyze"


def test_analyze_pc_trajectories_on_data_and_every_particle_of_the_path(vitreous, model: FakeTrained,
                                                                       trained_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "a"
    result = vitreous("analyze", trained_folder, "-o", out, "--kmeans", 0, "--pc", 1, "--pc-on-data",
                      "--path", 1, N, "--path-points", 0, *NO_UMAP)
    assert result.code == 0, result.err
    particles = np.loadtxt(out / "pc1" / "particles.txt", dtype=int)
    np.testing.assert_allclose(np.loadtxt(out / "pc1" / "z_values.txt"), model.z[particles - 1], rtol=1e-6)
    path = np.loadtxt(out / "path" / "path_particles.txt", dtype=int)
    assert path[0] == 1 and path[-1] == N
    assert len(list((out / "path").glob("vol_*.mrc"))) == len(path)
    assert not (out / "kmeans20").exists() and not (out / "umap.npy").exists()


def test_analyze_skips_umap_for_a_handful_of_particles(vitreous, model: FakeTrained, trained_folder: Path,
                                                      tmp_path: Path) -> None:
    model.z = model.z[:8]
    out = tmp_path / "a"
    result = vitreous("analyze", trained_folder, "-o", out, "--kmeans", 2, "--pc", 1, "--pc-points", 2)
    assert result.code == 0, result.err
    assert not (out / "umap.npy").exists() and np.load(out / "pc.npy").shape == (8, 2)
    assert "UMAP skipped: 8 particles" in (out / "run.log").read_text()
    assert len(list((out / "kmeans2").glob("vol_*.mrc"))) == 2


@pytest.mark.parametrize(("args", "fragments"), [
    (("--kmeans", 4, "--select-clusters", "7"), ("cluster 7 does not exist", "0..3")),
    (("--kmeans", 0, "--select-clusters", "1"), ("needs clusters",)),
    (("--select-clusters", "a,b"), ("not a list of cluster numbers",)),
    (("--kmeans", N + 1), (f"--kmeans {N + 1}",)),
    (("--path", 0, 5), ("particles are numbered 1..120",)),
    (("--path", "c1", "c20", "--kmeans", 4), ("there are 4 clusters",)),
    (("--path", 3, 3), ("same point",)),
    (("--path", "x", 3), ("neither a particle number",)),
    (("--pc-points", 1), ("--pc-points",)),
])
def test_analyze_bad_options_are_one_line_and_touch_nothing(vitreous, model, trained_folder: Path, tmp_path: Path,
                                                            args, fragments) -> None:
    out = tmp_path / "a"
    vitreous("analyze", trained_folder, "-o", out, *NO_UMAP, *map(str, args)).assert_error(*fragments)
    assert not out.exists()


def test_analyze_refuses_a_model_without_latent_space_and_z_of_the_wrong_width(vitreous, model: FakeTrained,
                                                                               trained_folder: Path,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "a"
    model.z = np.zeros((N, 3))
    vitreous("analyze", trained_folder, "-o", out).assert_error("z.npy", "(120, 3)", "zdim 2")
    model.z, model.zdim = None, 0
    vitreous("analyze", trained_folder, "-o", out).assert_error("no latent space")
    assert not out.exists()


def test_analyze_and_eval_vol_on_a_real_trained_model(vitreous, trained_folder: Path, tmp_path: Path) -> None:
    """A tiny train-vae job (1 epoch) read through the real load_trained: maps with its voxel size, latent
    columns of the selection equal to the rows of z.npy, eval-vol at the k-means centres equal to analyze's."""
    pytest.importorskip("vitreous.neural.trained")
    train = tmp_path / "vae"
    result = vitreous("train-vae", trained_folder / "particles.star", "--zdim", 2, "-o", train, "-n", 1, "-b", 60,
                      "--rank", 2, "--enc-dim", 32, "--dec-dim", 32)
    assert result.code == 0, result.err
    out = tmp_path / "analysis"
    result = vitreous("analyze", train, "-o", out, "--kmeans", 3, "--pc", 1, "--pc-points", 3, "--path", "c0", "c2",
                      "--path-points", 2, "--select-clusters", 2, *NO_UMAP)
    assert result.code == 0, result.err
    z = np.load(train / "z.npy")
    for name, count in (("kmeans3", 3), ("pc1", 3), ("path", 2)):
        files = sorted((out / name).glob("vol_*.mrc"))
        assert len(files) == count and all(read_map(f)[1] == pytest.approx(APIX) for f in files)
        _check_script(out / f"{name}.cxc", out / name, count)
    labels = np.load(out / "kmeans3" / "labels.npy")
    selected = read_particles(out / "selected.star")
    np.testing.assert_allclose(selected.latents, z[labels == 2], rtol=1e-5)
    result = vitreous("eval-vol", train, "--z", out / "kmeans3" / "centers.txt", "-o", tmp_path / "vols")
    assert result.code == 0, result.err
    for name in ("vol_000.mrc", "vol_002.mrc"):
        np.testing.assert_allclose(read_map(tmp_path / "vols" / name)[0], read_map(out / "kmeans3" / name)[0],
                                   rtol=1e-4, atol=1e-6)


def test_analyze_refuses_a_folder_that_is_not_a_trained_model(vitreous, tmp_path: Path) -> None:
    """With the real loader (skipped until vitreous.neural.trained exists)."""
    pytest.importorskip("vitreous.neural.trained")
    vitreous("analyze", tmp_path / "nowhere", "-o", tmp_path / "a").assert_error("nowhere")
    assert not (tmp_path / "a").exists()
