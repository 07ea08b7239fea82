"""``vitreous simulate``: job folder, ground truth, state counts, and bad input (one line, exit 2, outputs kept)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from vitreous.io.mrc import read_map
from vitreous.io.star import read_star
from vitreous.jobs import Job
from vitreous.physics.ctf import CTFParams, compute_ctf
from vitreous.physics.fourier import fft2c, ifft2c
from vitreous.physics.projection import Projector

PROTEASE = "proteins/4E43.pdb"
BPTI = "proteins/5PTI.cif.gz"
TRAJECTORY = "adk/adk_dims_traj.npz"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished simulate job folder (as the Job API leaves it): the target of refused runs and a rerun."""
    out = tmp_path_factory.mktemp("finished") / "sim"
    with Job.open(out, command="simulate", console=False) as job:
        job.path("truth").mkdir()
        for name in ("particles.star", "particles.mrcs", "truth/state_001.mrc"):
            job.path(name).write_text(name)
    return out


def test_rerun_needs_overwrite_then_mixture_with_truth(vitreous, finished_job: Path, structures: Path) -> None:
    out, n, apix = finished_job, 400, 3.0
    args = ("simulate", "-o", out, "--model", structures / PROTEASE, "--model", structures / BPTI,
            "--proportions", "0.25,0.75", "-n", n, "--apix", apix, "--snr", 0.5, "--shift-sd", 1.5,
            "--astigmatism", 300, "--seed", 4)
    before = snapshot(out)
    vitreous(*args).assert_error(str(out), "finished", "--overwrite")
    assert snapshot(out) == before
    outcome = vitreous(*args, "--overwrite")
    assert outcome.code == 0, outcome
    assert snapshot(out)["particles.mrcs"] != before["particles.mrcs"]
    assert json.loads((out / "job.json").read_text())["status"] == "finished"
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 3

    truth = out / "truth"
    assert sorted(p.name for p in truth.iterdir()) == ["labels.npy", "rotations.npy", "shifts_px.npy",
                                                         "state_001.mrc", "state_002.mrc", "states.csv"]
    table = pd.read_csv(truth / "states.csv")
    labels = np.load(truth / "labels.npy")
    assert table["name"].tolist() == ["4E43", "5PTI"] and table["map"].tolist() == ["state_001.mrc", "state_002.mrc"]
    np.testing.assert_array_equal(table["particles"], np.bincount(labels, minlength=2))
    assert abs(table["particles"][0] - n / 4) < 4 * np.sqrt(n * 0.25 * 0.75)  # 4 binomial sd

    particles = read_star(out / "particles.star")
    assert len(particles) == n and particles.single_pixel_size() == apix
    np.testing.assert_allclose(np.load(truth / "rotations.npy"), particles.rotations, atol=1e-9)
    np.testing.assert_allclose(np.load(truth / "shifts_px.npy"), particles.shifts_px, atol=1e-9)
    assert np.abs(particles.shifts_px).max() > 1.5

    maps = [read_map(truth / name) for name in table["map"]]
    box = particles.box
    assert all(m.shape == (box, box, box) and voxel == pytest.approx(apix) for m, voxel in maps)
    # each image is explained by the state its label names: compare with both states' clean images
    ctf = compute_ctf(CTFParams.from_table(particles.ctf_table()), box, apix)
    images = torch.from_numpy(particles.images.read(np.arange(n))).double()
    scores = []
    for volume, _ in maps:
        clean = ifft2c(fft2c(Projector(torch.from_numpy(volume)).project(particles.rotations, particles.shifts_px))
                       * ctf).real.double()
        scores.append(-((images - clean) ** 2).sum((1, 2)))
    np.testing.assert_array_equal(torch.stack(scores).argmax(0).numpy(), labels)


def test_trajectory_states_spread_over_frames(vitreous, structures: Path, tmp_path: Path) -> None:
    with np.load(structures / TRAJECTORY) as data:  # every 15th frame of the closed -> open transition
        frames, elements = data["coords_A"][::15], data["elements"]
    path, out, n = tmp_path / "adk_frames.npz", tmp_path / "traj", 350
    np.savez(path, coords_A=frames, elements=elements)
    outcome = vitreous("simulate", "-o", out, "--trajectory", path, "-n", n, "--apix", 5.0)
    assert outcome.code == 0, outcome
    table = pd.read_csv(out / "truth" / "states.csv")
    assert table["name"].tolist() == [f"frame_{i:03d}" for i in range(len(frames))]
    assert len(list((out / "truth").glob("state_*.mrc"))) == len(frames)
    labels = np.load(out / "truth" / "labels.npy")
    np.testing.assert_array_equal(table["particles"], np.bincount(labels, minlength=len(frames)))
    assert stats.chisquare(table["particles"]).pvalue > 1e-4  # uniform over the frames
    closed, opened = (read_map(out / "truth" / name)[0] for name in (table["map"].iloc[0], table["map"].iloc[-1]))
    # the same atoms (equal integrals) in another shape: the LID and NMP domains open (CA RMSD ~7 Å)
    assert closed.sum() == pytest.approx(opened.sum(), rel=1e-4)
    assert np.corrcoef(closed.ravel(), opened.ravel())[0, 1] < 0.95


def test_models_and_trajectory_mix_composition_and_conformation(vitreous, structures: Path, tmp_path: Path) -> None:
    with np.load(structures / TRAJECTORY) as data:
        frames, elements = data["coords_A"][::30], data["elements"]
    path, out, n = tmp_path / "adk_frames.npz", tmp_path / "mix", 300
    np.savez(path, coords_A=frames, elements=elements)
    outcome = vitreous("simulate", "-o", out, "--model", structures / PROTEASE, "--trajectory", path, "-n", n,
                       "--apix", 5.0, "--proportions", "1,2")
    assert outcome.code == 0, outcome
    table = pd.read_csv(out / "truth" / "states.csv")
    assert table["name"].tolist() == ["4E43"] + [f"adk_frames_frame_{i:03d}" for i in range(len(frames))]
    assert table["component"].tolist() == [1] + [2] * len(frames)
    labels = np.load(out / "truth" / "labels.npy")
    assert abs(np.mean(labels == 0) - 1 / 3) < 4 * np.sqrt(2 / 9 / n)
    protease, first_frame = (read_map(out / "truth" / name)[0] for name in table["map"].iloc[:2])
    assert protease.shape == first_frame.shape  # one box fits both
    assert np.corrcoef(protease.ravel(), first_frame.ravel())[0, 1] < 0.9  # two proteins (0.77 at 5 Å/px)


BAD_INPUT = {
    "missing model": (["--model", "{data}/proteins/absent.pdb"], ["absent.pdb", "file not found"]),
    "not a model": (["--model", "{data}/" + TRAJECTORY], ["not a PDB or mmCIF"]),
    "no model": ([], ["no source of truth", "--trajectory"]),
    "negative snr": (["--model", "{data}/" + PROTEASE, "--snr", "-1"], ["snr > 0", "snr=-1"]),
    "negative shift sd": (["--model", "{data}/" + PROTEASE, "--shift-sd", "-2"], ["--shift-sd >= 0"]),
    "box too small": (["--model", "{data}/" + PROTEASE, "--box", "12", "--apix", "3"],
                      ["4E43.pdb", "does not fit a 12-px box"]),
    "proportions count": (["--model", "{data}/" + PROTEASE, "--model", "{data}/" + BPTI, "--proportions", "0.5"],
                          ["--proportions needs 2"]),
    "proportions text": (["--model", "{data}/" + PROTEASE, "--proportions", "a,b"], ["comma-separated"]),
    "proportions with trajectory": (["--model", "{data}/" + PROTEASE, "--trajectory", "{data}/" + TRAJECTORY,
                                     "--proportions", "0.5,0.3,0.2"], ["--proportions needs 2"]),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_and_keeps_outputs(vitreous, finished_job: Path, structures: Path, case: str) -> None:
    args, fragments = BAD_INPUT[case]
    before = snapshot(finished_job)
    outcome = vitreous("simulate", "-o", finished_job, "--overwrite", "-n", 10,
                       *[a.format(data=structures) for a in args])
    outcome.assert_error(*fragments)
    assert "Traceback" not in outcome.err
    assert snapshot(finished_job) == before
