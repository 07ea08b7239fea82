"""``vitreous abinit-neural``: a complete job (ab initio stages, then the mixture of neural fields) with classes
and latents, resuming the neural stage, and bad input.  Data: 200 particles, closed and open adenylate kinase
alternating (box 24, 4 Å/px, SNR 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vitreous.data.particles import EULER, SHIFTS
from vitreous.io.mrc import read_map
from vitreous.io.star import read_star, write_star
from vitreous.neural import mixture as mixture_module
from vitreous.sim.particles import Acquisition, simulate_stack
from vitreous.sim.truth import models_truth

ADK = Path(__file__).resolve().parents[3] / "shared" / "data" / "structures" / "adk"
APIX, BOX, N = 4.0, 24, 200
FAST = ("--classes", "2", "--zdim", "1", "--iterations", "3", "--refine-iterations", "1", "--final-resolution", "16",
        "--epochs", "2", "--search-every", "1", "--batch-size", "50", "--keep-duplicates")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not ADK.is_dir():
        pytest.skip("shared data not available")
    out = tmp_path_factory.mktemp("abinit_neural_cli")
    volumes = models_truth([ADK / "adk_closed.pdb", ADK / "adk_open.pdb"], BOX, APIX).volumes
    acquisition = Acquisition(apix=APIX, snr=1.0, astigmatism_A=300.0, shift_sd_px=0.5, seed=9)
    particles = simulate_stack(volumes, np.arange(N) % 2, out / "particles.mrcs", acquisition)
    write_star(out / "particles.star", particles)
    return out


def test_abinit_neural_writes_classes_poses_and_latents(vitreous, simulated: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "job"
    real = mixture_module.refresh_poses
    calls: list[int] = []
    monkeypatch.setattr(mixture_module, "refresh_poses", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = vitreous("abinit-neural", simulated / "particles.star", "-o", out, *FAST)
    assert result.code == 0, result.err
    assert "poses in" in result.err and "are ignored" in result.err  # the simulated STAR carries true poses
    assert calls == [1]  # epoch 2 starts with a local pose search
    for name in ("class_001.mrc", "class_002.mrc", "class_001_weights.pt", "class_001_initial.mrc", "z.npy",
                 "particles.star", "report.html", "job.json", "checkpoints/mixture.pt", "checkpoints/sgd.pt",
                 "class_001_particles.star", "class_002_z.npy", "class_001_refined.mrc", "class_002_field.mrc",
                 "class_002_half_map_1.mrc"):
        assert (out / name).is_file(), name
    volume, voxel = read_map(out / "class_002.mrc")
    assert volume.shape == (BOX,) * 3 and voxel == pytest.approx(APIX) and volume.std() > 0
    assert np.load(out / "z.npy").shape == (N, 2, 1)
    table = read_star(out / "particles.star").particles
    assert {*EULER, *SHIFTS, "rlnClassNumber", "vtsClassProbability1", "vtsClassProbability2",
            "vtsLatent1"} <= set(table.columns)
    probabilities = table[["vtsClassProbability1", "vtsClassProbability2"]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-4)
    assert (probabilities.argmax(1) + 1 == table["rlnClassNumber"].to_numpy()).all()
    record = json.loads((out / "job.json").read_text())
    assert record["command"] == "abinit-neural" and record["status"] == "finished"
    saved = torch.load(out / "checkpoints/mixture.pt", weights_only=False)
    assert saved["epoch"] == 2 and len(saved["history"]) == 2 and saved["search_seconds"] > 0
    assert "mixture of neural fields" in (out / "report.html").read_text()

    # each class is a model that `vitreous analyze` / `eval-vol` read with --class
    members = int((table["rlnClassNumber"] == 1).sum())
    assert np.load(out / "class_001_z.npy").shape == (members, 1)
    assert len(read_star(out / "class_001_particles.star", load_images=False)) == members
    analyzed = vitreous("analyze", out, "--class", "1", "--kmeans", "2", "--pc", "1", "--no-umap")
    assert analyzed.code == 0, analyzed.err
    assert (out / "analysis_class_001" / "pc1" / "vol_000.mrc").is_file()
    vols = vitreous("eval-vol", out, "--class", "2", "--z-values", "0;1", "-o", tmp_path / "vols")
    assert vols.code == 0, vols.err
    assert read_map(tmp_path / "vols" / "vol_001.mrc")[0].shape == (BOX,) * 3
    vitreous("eval-vol", out, "--z-values", "0", "-o", tmp_path / "none").assert_error("--class")
    vitreous("eval-vol", out, "--class", "3", "--z-values", "0", "-o", tmp_path / "none").assert_error("class 3")


@pytest.mark.parametrize("args, fragment", [
    (("--zdim", "-1"), "--zdim"),
    (("--downsample", "4"), "--downsample"),
    (("--epochs", "0"), "--epochs"),
    (("--classes", str(N + 1)), "--classes"),
])
def test_bad_options_are_one_line(vitreous, simulated: Path, tmp_path: Path, args, fragment: str) -> None:
    out = tmp_path / "job"
    vitreous("abinit-neural", simulated / "particles.star", "-o", out, *args).assert_error(fragment)
    assert not out.exists()


@pytest.mark.parametrize("args, epochs", [((), 10), (("--zdim", "2"), 20), (("--zdim", "2", "--epochs", "3"), 3)])
def test_default_epochs_follow_the_latent(vitreous, simulated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          args, epochs: int) -> None:
    """Latents need more training than homogeneous classes: 20 epochs by default with --zdim > 0, else 10."""
    from vitreous.cli import abinit_neural

    seen = []
    monkeypatch.setattr(abinit_neural, "run_abinit_neural", lambda *a, **k: seen.append(a[3].train.epochs))
    assert vitreous("abinit-neural", simulated / "particles.star", "-o", tmp_path / "job", *args).code == 0
    assert seen == [epochs]


def test_with_latents_each_class_is_realigned_by_conformation_before_the_mixture(
        vitreous, simulated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--conformations 2: the one class's particles are realigned as `classify3d --realign` with two classes
    started from its map (results and checkpoints under conformations_001/), and the mixture starts from those
    poses; the two conformations follow closed and open adenylate kinase (adjusted Rand index 0.62, 0.70, 0.83 with
    seeds 0, 1, 2)."""
    from sklearn.metrics import adjusted_rand_score

    from vitreous.cli import abinit_neural

    monkeypatch.setattr(abinit_neural, "MIN_REALIGN", 20)
    starts = []
    real = abinit_neural.starting_mixture
    monkeypatch.setattr(abinit_neural, "starting_mixture",
                        lambda *a, **k: starts.append(a[-1]) or real(*a, **k))
    out = tmp_path / "job"
    args = [*FAST, "--classes", "1", "--conformations", "2", "--epochs", "1", "--iterations", "20"]
    result = vitreous("abinit-neural", simulated / "particles.star", "-o", out, *args)
    assert result.code == 0, result.err
    assert "realigning its 200 particles as 2 conformations" in result.err
    for name in ("conformations_001/class_001_initial.mrc", "conformations_001/class_002_initial.mrc",
                 "checkpoints/conformations_001.sgd.pt", "checkpoints/conformations_001.classes.pt",
                 "checkpoints/conformations_001.refine_class_002.pt", "checkpoints/sgd.pt"):
        assert (out / name).is_file(), name
    (rotations, shifts), = starts[0]
    assert rotations.shape == (N, 3, 3) and shifts.shape == (N, 2)
    saved = torch.load(out / "checkpoints/conformations_001.classes.pt", weights_only=False)
    split = np.asarray(saved["assignment"]["posteriors"]).argmax(1)
    assert adjusted_rand_score(np.arange(N) % 2, split) > 0.5
    assert json.loads((out / "job.json").read_text())["params"]["conformations"] == 2
