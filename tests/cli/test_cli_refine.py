"""``vitreous refine``: a complete job folder, resuming an interrupted run, symmetry, and bad input (one line,
exit code 2).  Data: 200 simulated particles of the bundled adenylate kinase model (box 32, 3 Å/px, SNR 1)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vitreous.data.particles import DEFOCUS, EULER, SHIFTS, ParticleSet
from vitreous.io.mrc import read_map, write_map
from vitreous.io.star import read_star, write_star
from vitreous.physics.fourier import fourier_pad
from vitreous.reconstruct import refine as refine_module
from vitreous.reconstruct.refine import RefineOptions, RefineState
from vitreous.sim.particles import Acquisition, simulate_stack
from vitreous.sim.truth import models_truth

APIX, BOX, N = 3.0, 32, 200
FAST = ("--iterations", "2", "--batch-size", "100")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """particles.star (+ .mrcs) with true poses, and truth.mrc, as ``vitreous simulate`` writes them."""
    out = tmp_path_factory.mktemp("refine_cli")
    with resources.as_file(resources.files("vitreous.resources") / "adk_closed.pdb.gz") as path:
        truth = models_truth([path], BOX, APIX).volumes
    acquisition = Acquisition(apix=APIX, snr=1.0, astigmatism_A=300.0, shift_sd_px=1.0, seed=7)
    particles = simulate_stack(truth, np.zeros(N, np.int64), out / "particles.mrcs", acquisition)
    write_star(out / "particles.star", particles)
    write_map(out / "truth.mrc", truth[0].numpy(), APIX)
    return out


def test_refine_writes_a_complete_job(vitreous, simulated: Path, tmp_path: Path) -> None:
    out = tmp_path / "job"
    result = vitreous("refine", simulated / "particles.star", "--reference", simulated / "truth.mrc", "-o", out,
                      *FAST)
    assert result.code == 0, result.err
    for name in ("map.mrc", "half_map_1.mrc", "half_map_2.mrc", "particles.star", "fsc.csv", "report.html",
                 "job.json", "run.log", "checkpoints/refine.pt"):
        assert (out / name).is_file(), name
    volume, voxel = read_map(out / "map.mrc")
    assert volume.shape == (BOX,) * 3 and voxel == pytest.approx(APIX)
    refined = read_star(out / "particles.star")
    assert len(refined) == N and refined.images is not None  # image names still lead to the stack
    table = refined.particles
    assert set(table["rlnRandomSubset"]) == {1, 2}
    assert ((table["rlnMaxValueProbDistribution"] > 0) & (table["rlnMaxValueProbDistribution"] <= 1)).all()
    assert {"rlnNrOfSignificantSamples", *EULER, *SHIFTS} <= set(table.columns)
    fsc = pd.read_csv(out / "fsc.csv")
    assert {"frequency_invA", "resolution_A", "fsc_half_maps", "fsc_half_maps_masked", "fsc_iteration_1",
            "fsc_iteration_2"} <= set(fsc.columns)
    assert len(fsc) == BOX // 2 + 1 and fsc["fsc_half_maps"].iloc[1] > 0.9
    report = (out / "report.html").read_text()
    assert "3D refinement" in report and "Resolution per iteration" in report and "data:image/png" in report
    record = json.loads((out / "job.json").read_text())
    assert record["status"] == "finished" and record["command"] == "refine"
    assert "FSC=0.143 (half maps, Å)" in result.err


def test_an_interrupted_run_resumes_from_its_last_iteration(vitreous, simulated: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    from vitreous.cli.refine import run_refine

    out = tmp_path / "job"
    real = refine_module.refine_iteration
    calls: list[int] = []

    def interrupted_second(particles, state, options, progress=None, **kwargs):
        calls.append(state.iteration)
        if state.iteration == 1:
            raise KeyboardInterrupt("stopped by the test")
        return real(particles, state, options, progress, **kwargs)

    monkeypatch.setattr(refine_module, "refine_iteration", interrupted_second)
    options = RefineOptions(max_iterations=2, batch_size=100)  # what FAST asks for, the other options default
    with pytest.raises(KeyboardInterrupt):
        run_refine(simulated / "particles.star", simulated / "truth.mrc", out, options)
    assert json.loads((out / "job.json").read_text())["status"] == "interrupted"
    saved = RefineState.from_dict(torch.load(out / "checkpoints/refine.pt", weights_only=False))
    assert saved.iteration == 1 and not (out / "map.mrc").exists()

    calls.clear()
    capsys.readouterr()  # drop the interrupted run's output

    def counted(particles, state, options, progress=None, **kwargs):
        calls.append(state.iteration)
        return real(particles, state, options, progress, **kwargs)

    monkeypatch.setattr(refine_module, "refine_iteration", counted)
    refused = vitreous("refine", simulated / "particles.star", "--reference", simulated / "truth.mrc", "-o", out,
                       *FAST)
    refused.assert_error("--resume")  # an unfinished job is not silently replaced
    result = vitreous("refine", simulated / "particles.star", "--reference", simulated / "truth.mrc", "-o", out,
                      *FAST, "--resume")
    assert result.code == 0, result.err
    assert calls == [1]  # only the second iteration ran
    assert "resuming after iteration 1" in result.err
    final = RefineState.from_dict(torch.load(out / "checkpoints/refine.pt", weights_only=False))
    assert final.iteration == 2 and final.history[0] == saved.history[0]
    np.testing.assert_array_equal(final.fsc[0], saved.fsc[0])
    record = json.loads((out / "job.json").read_text())
    assert record["status"] == "finished" and [a["status"] for a in record["attempts"]] == ["interrupted"]


def test_a_symmetric_refinement_gives_a_symmetric_map(vitreous, simulated: Path, tmp_path: Path) -> None:
    out = tmp_path / "c2"
    result = vitreous("refine", simulated / "particles.star", "--reference", simulated / "truth.mrc", "-o", out,
                      "--iterations", "1", "--symmetry", "c2")
    assert result.code == 0, result.err
    volume, _ = read_map(out / "map.mrc")
    turned = np.roll(np.flip(volume, (1, 2)), 1, (1, 2))  # V(-x, -y, z) about voxel D // 2: C2 about z
    inside = (slice(None), slice(1, None), slice(1, None))  # x or y = -D/2 has no mirror inside the box
    assert np.abs(turned - volume)[inside].max() < 1e-4 * np.abs(volume).max()


def test_a_reference_on_another_grid_is_resampled_with_a_warning(vitreous, simulated: Path,
                                                                 tmp_path: Path) -> None:
    truth, _ = read_map(simulated / "truth.mrc")
    write_map(tmp_path / "fine.mrc", fourier_pad(torch.as_tensor(truth), 48, ndim=3).numpy(), 2.0)
    result = vitreous("refine", simulated / "particles.star", "--reference", tmp_path / "fine.mrc", "-o",
                      tmp_path / "job", "--iterations", "1")
    assert result.code == 0, result.err
    assert "warning" in result.err and "resampled from 2 Å (48 voxels) to 3 Å (32 voxels)" in result.err


@pytest.fixture(scope="module")
def bad_inputs(simulated: Path) -> Path:
    folder = simulated / "bad"
    folder.mkdir()
    particles = read_star(simulated / "particles.star")
    write_star(folder / "no_ctf.star", ParticleSet(particles.particles.drop(columns=DEFOCUS), particles.optics,
                                                   particles.images))
    write_star(folder / "no_poses.star", ParticleSet(particles.particles.drop(columns=EULER), particles.optics,
                                                     particles.images))
    truth, _ = read_map(simulated / "truth.mrc")
    write_map(folder / "odd_voxel.mrc", truth, 1.37)
    return folder


@pytest.mark.parametrize(("case", "extra", "fragments"), [
    ("no_ctf", (), ("no CTF",)),
    ("odd_voxel", (), ("cannot be resampled", "1.37")),
    ("symmetry", ("--symmetry", "X5"), ("unknown symmetry",)),
    ("local_only", ("--local-only",), ("--local-only needs poses",)),
    ("iterations", ("--iterations", "0"), ("at least 1",)),
])
def test_bad_input_is_one_line(vitreous, simulated: Path, bad_inputs: Path, tmp_path: Path, case: str,
                               extra: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    star = bad_inputs / {"no_ctf": "no_ctf.star", "local_only": "no_poses.star"}.get(case, "../particles.star")
    reference = bad_inputs / "odd_voxel.mrc" if case == "odd_voxel" else simulated / "truth.mrc"
    out = tmp_path / "job"
    result = vitreous("refine", star, "--reference", reference, "-o", out, *extra)
    result.assert_error(*fragments)
    assert not out.exists()  # refused before the job folder was made
