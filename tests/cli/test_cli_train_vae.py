"""``vitreous train-vae``: a complete job folder that ``load_trained`` reads back (the contract of ``analyze`` and
``eval-vol``), Fourier cropping, resume after an interruption, and bad input (one line, exit code 2).
Data: 300 simulated particles of the bundled adenylate kinase model (box 32, 3 Å/px, SNR 1), true poses."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from vitreous.errors import InputError
from vitreous.io.star import read_star, write_star
from vitreous.neural import train as train_module
from vitreous.neural.trained import load_trained
from vitreous.sim.particles import Acquisition, simulate_stack
from vitreous.sim.truth import models_truth

APIX, BOX, N = 3.0, 32, 300
FAST = ("--epochs", "1", "--batch-size", "100", "--rank", "2")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train_vae_cli")
    with resources.as_file(resources.files("vitreous.resources") / "adk_closed.pdb.gz") as path:
        truth = models_truth([path], BOX, APIX).volumes
    acquisition = Acquisition(apix=APIX, snr=1.0, astigmatism_A=300.0, shift_sd_px=1.0, seed=5)
    write_star(out / "particles.star", simulate_stack(truth, np.zeros(N, np.int64), out / "particles.mrcs",
                                                      acquisition))
    return out / "particles.star"


def test_train_vae_writes_a_job_that_load_trained_reads(vitreous, simulated: Path, tmp_path: Path) -> None:
    out = tmp_path / "vae"
    result = vitreous("train-vae", simulated, "--zdim", 2, "-o", out, *FAST)
    assert result.code == 0, result.err
    for name in ("z.npy", "particles.star", "weights.pt", "report.html", "job.json", "run.log",
                 "checkpoints/training.pt"):
        assert (out / name).is_file(), name
    z = np.load(out / "z.npy")
    assert z.shape == (N, 2) and np.isfinite(z).all()
    written = read_star(out / "particles.star")
    assert np.allclose(written.latents, z, atol=1e-6) and written.images is not None
    report = (out / "report.html").read_text()
    assert "Latent space" in report and "Loss per epoch" in report and "data:image/png" in report
    assert json.loads((out / "job.json").read_text())["status"] == "finished"
    assert "images/s" in result.err

    trained = load_trained(out)
    assert (trained.zdim, trained.box, trained.pixel_size) == (2, BOX, pytest.approx(APIX))
    assert np.array_equal(trained.z, z) and trained.particles_path == out / "particles.star"
    volumes = list(trained.volumes(z[:3], batch_size=2))
    assert len(volumes) == 3 and all(v.shape == (BOX,) * 3 and v.dtype == np.float32 for v in volumes)


def test_downsampled_training_decodes_at_the_smaller_box(vitreous, simulated: Path, tmp_path: Path) -> None:
    out = tmp_path / "vae"
    assert vitreous("train-vae", simulated, "--zdim", 1, "-o", out, "--downsample", 24, *FAST).code == 0
    trained = load_trained(out)
    assert trained.box == 24 and trained.pixel_size == pytest.approx(APIX * BOX / 24)
    assert next(trained.volumes(np.zeros((1, 1)))).shape == (24, 24, 24)


def test_an_interrupted_run_resumes_after_its_last_epoch(vitreous, simulated: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "vae"
    real = train_module.negative_elbo
    calls = [0]

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 4:  # the first step of epoch 2 (3 batches per epoch)
            raise KeyboardInterrupt("stopped by the test")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "negative_elbo", interrupted)
    args = ("train-vae", simulated, "--zdim", 1, "-o", out, "--epochs", 2, "--batch-size", 100, "--rank", 2)
    assert vitreous(*args).code == 130  # Ctrl-C: exit code 128 + SIGINT
    assert json.loads((out / "job.json").read_text())["status"] == "interrupted"
    result = vitreous(*args, "--resume")
    assert result.code == 0, result.err
    assert "resuming after epoch 1" in result.err
    assert torch.load(out / "checkpoints/training.pt", weights_only=False)["epoch"] == 2


def test_resuming_with_other_particles_is_refused(vitreous, simulated: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "vae"
    monkeypatch.setattr(train_module, "encode_all", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert vitreous("train-vae", simulated, "--zdim", 1, "-o", out, *FAST).code == 130
    other = tmp_path / "other.star"
    particles = read_star(simulated)
    write_star(other, particles.subset(np.arange(N // 2)))
    vitreous("train-vae", other, "--zdim", 1, "-o", out, *FAST, "--resume").assert_error("cannot resume")


def test_nan_loss_fails_with_one_line_and_keeps_the_checkpoint(vitreous, simulated: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "vae"
    real = train_module.negative_elbo
    calls = [0]

    def poisoned(predicted, *args, **kwargs):
        calls[0] += 1
        return real(predicted * torch.nan if calls[0] > 3 else predicted, *args, **kwargs)

    monkeypatch.setattr(train_module, "negative_elbo", poisoned)
    result = vitreous("train-vae", simulated, "--zdim", 1, "-o", out, "--epochs", 2, "--batch-size", 100)
    last = result.err.strip().splitlines()[-1]  # after the log lines of the run: one error line, exit code 2
    assert result.code == 2 and last.startswith("vitreous: error: the loss became nan in epoch 2")
    assert "checkpoint of epoch 1 is kept" in last and "--lr" in last
    assert torch.load(out / "checkpoints/training.pt", weights_only=False)["epoch"] == 1
    assert json.loads((out / "job.json").read_text())["status"] == "failed"


def test_bad_input_is_one_line_before_the_folder_is_touched(vitreous, simulated: Path, tmp_path: Path) -> None:
    out = tmp_path / "vae"
    vitreous("train-vae", simulated, "--zdim", 0, "-o", out).assert_error("--zdim 0", "train-field")
    unposed = tmp_path / "unposed.star"
    particles = read_star(simulated)
    write_star(unposed, type(particles)(particles.particles.drop(columns=["rlnAngleRot", "rlnAngleTilt",
                                                                         "rlnAnglePsi"]), particles.optics))
    vitreous("train-vae", unposed, "--zdim", 1, "-o", out, "--datadir", simulated.parent).assert_error(
        "no poses", "vitreous refine", "vitreous abinit")
    vitreous("train-vae", simulated, "--zdim", 1, "-o", out, "--downsample", 40).assert_error(
        "cannot train at box 40 from 32-px images")
    assert not out.exists()


def test_load_trained_refuses_other_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not a train-vae"):
        load_trained(tmp_path)
