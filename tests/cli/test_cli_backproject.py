"""``vitreous backproject``: outputs (masked map, unfiltered half maps, FSC table, report, job record), reruns,
symmetry, and bad input that leaves earlier outputs untouched."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from vitreous.analysis.fsc import fsc_curve, resolution_at
from vitreous.data.particles import DEFOCUS, ParticleSet
from vitreous.io.mrc import read_map, write_map
from vitreous.io.star import read_star, write_star
from vitreous.jobs import Job
from vitreous.reconstruct.backproject import MASK_EDGE_PX, solvent_mask
from vitreous.sim.particles import Acquisition, simulate_stack
from vitreous.sim.truth import models_truth

APIX = 3.0


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def simulated(structures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """particles.star (+ .mrcs) and truth/state_001.mrc: 500 particles of the HIV-1 protease dimer with origins
    and astigmatism, as ``vitreous simulate`` writes them."""
    out = tmp_path_factory.mktemp("bp") / "sim"
    truth = models_truth([structures / "proteins/4E43.pdb"], None, APIX)
    acq = Acquisition(apix=APIX, snr=0.3, astigmatism_A=300.0, shift_sd_px=1.0)
    particles = simulate_stack(truth.volumes, np.zeros(500, np.int64), out / "particles.mrcs", acq)
    write_star(out / "particles.star", particles)
    write_map(out / "truth" / "state_001.mrc", truth.volumes[0].numpy(), APIX)
    return out


@pytest.fixture(scope="module")
def finished_job(simulated: Path) -> Path:
    """A finished backproject job folder (as the Job API leaves it): the target of refused runs and a rerun."""
    out = simulated.parent / "finished"
    with Job.open(out, command="backproject", console=False) as job:
        for name in ("map.mrc", "half_map_1.mrc", "half_map_2.mrc"):
            write_map(job.path(name), np.zeros((8, 8, 8), np.float32), APIX)
    return out


@pytest.fixture(scope="module")
def inputs(simulated: Path) -> Path:
    """Bad inputs beside the simulation: particles without CTF or with one half set, maps that do not fit."""
    folder = simulated.parent / "inputs"
    folder.mkdir()
    particles = read_star(simulated / "particles.star")
    write_star(folder / "no_ctf.star", ParticleSet(particles.particles.drop(columns=DEFOCUS), particles.optics,
                                                   particles.images))
    write_star(folder / "one_half.star", particles.with_columns(rlnRandomSubset=np.ones(len(particles), np.int64)))
    truth, voxel = read_map(simulated / "truth" / "state_001.mrc")
    write_map(folder / "small_box.mrc", truth[1:-1, 1:-1, 1:-1], voxel)
    write_map(folder / "other_voxel.mrc", truth, 2.0)
    return folder


def test_rerun_needs_overwrite_and_writes_outputs(vitreous, simulated: Path, finished_job: Path) -> None:
    out, truth = finished_job, simulated / "truth" / "state_001.mrc"
    args = ("backproject", simulated / "particles.star", "-o", out, "--compare", truth)
    before = snapshot(out)
    vitreous(*args).assert_error(str(out), "finished", "--overwrite")
    assert snapshot(out) == before
    outcome = vitreous(*args, "--overwrite")
    assert outcome.code == 0, outcome
    assert snapshot(out)["map.mrc"] != before["map.mrc"]
    assert json.loads((out / "job.json").read_text())["status"] == "finished"

    box = read_star(simulated / "particles.star").box
    maps = {}
    for name in ("map.mrc", "half_map_1.mrc", "half_map_2.mrc"):
        with mrcfile.open(out / name) as mrc:
            assert mrc.data.shape == (box, box, box)
            assert all(np.isclose(mrc.voxel_size[axis], APIX) for axis in "xyz")
            maps[name] = np.array(mrc.data)
    assert not np.array_equal(maps["half_map_1.mrc"], maps["half_map_2.mrc"])

    # map.mrc is masked (default: the mask ends at 90 % of the box); the half maps are not
    mask = solvent_mask(box, APIX)
    k = np.arange(box) - box // 2
    radius = np.sqrt(sum(g**2 for g in np.meshgrid(k, k, k, indexing="ij")))
    assert (maps["map.mrc"][radius >= 0.45 * box] == 0).all()
    assert (maps["half_map_1.mrc"][radius >= 0.45 * box] != 0).mean() > 0.99

    table = pd.read_csv(out / "fsc.csv")
    curves = ["fsc_half_maps", "fsc_half_maps_masked", "fsc_vs_reference", "fsc_vs_reference_masked"]
    assert list(table.columns) == ["frequency_invA", "resolution_A", *curves]
    assert len(table) == box // 2 + 1
    np.testing.assert_allclose(table["frequency_invA"], np.arange(box // 2 + 1) / (box * APIX))
    np.testing.assert_allclose(table["resolution_A"][1:], 1 / table["frequency_invA"][1:])
    halves, reference = (maps["half_map_1.mrc"], maps["half_map_2.mrc"]), read_map(truth)[0]
    np.testing.assert_allclose(table["fsc_half_maps"], fsc_curve(*halves)[1], atol=1e-6)
    np.testing.assert_allclose(table["fsc_half_maps_masked"], fsc_curve(*halves, mask=mask)[1], atol=1e-6)
    np.testing.assert_allclose(table["fsc_vs_reference_masked"], fsc_curve(maps["map.mrc"], reference * mask)[1],
                               atol=1e-6)
    assert table["fsc_vs_reference"][1:4].min() > 0.9  # the reconstruction is of the simulated particle
    # the mask removes noise, not signal
    assert (table["fsc_half_maps_masked"][1:] >= table["fsc_half_maps"][1:] - 0.02).all()
    # the printed resolutions are those of the table's curves
    printed = dict(line.rsplit(": ", 1) for line in outcome.err.splitlines() if line.startswith("FSC="))
    for column in curves:
        for threshold in ("0.5", "0.143"):
            what = column.removeprefix("fsc_").replace("_", " ")
            expected = resolution_at(table["frequency_invA"], table[column], float(threshold))
            assert float(printed[f"FSC={threshold} ({what}, Å)"]) == pytest.approx(expected, rel=1e-3)

    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 3 and "run.log" in report


def test_no_ctf_option_reconstructs_particles_without_ctf(vitreous, inputs: Path, tmp_path: Path) -> None:
    outcome = vitreous("backproject", inputs / "no_ctf.star", "-o", tmp_path / "bp", "--no-ctf")
    assert outcome.code == 0, outcome
    assert read_map(tmp_path / "bp" / "map.mrc")[0].shape[0] == read_star(inputs / "no_ctf.star").box


def test_symmetry_and_mask_diameter(vitreous, simulated: Path, tmp_path: Path) -> None:
    out = tmp_path / "c2"
    outcome = vitreous("backproject", simulated / "particles.star", "-o", out, "--symmetry", "c2",
                       "--mask-diameter", 45)
    assert outcome.code == 0, outcome
    params = json.loads((out / "job.json").read_text())["params"]
    assert params["symmetry"] == "C2" and params["mask_diameter_A"] == 45
    volume = read_map(out / "map.mrc")[0]
    box = volume.shape[0]
    # a half turn about z through voxel D//2 (rows 1 .. D-1 are centred on it) leaves the map as it is
    inner = volume[:, 1:, 1:]
    assert np.abs(np.rot90(inner, 2, axes=(1, 2)) - inner).max() < 1e-5 * np.abs(inner).max()
    k = np.arange(box) - box // 2
    radius = np.sqrt(sum(g**2 for g in np.meshgrid(k, k, k, indexing="ij")))
    assert (volume[radius >= 45 / (2 * APIX) + MASK_EDGE_PX] == 0).all()
    assert "symmetry: C2" in outcome.err


BAD_INPUT = {
    "particles without ctf": (["{inputs}/no_ctf.star"], ["no_ctf.star", "no CTF", "--no-ctf"]),
    "one half set": (["{inputs}/one_half.star"], ["half set is empty"]),
    "compare box": (["{sim}/particles.star", "--compare", "{inputs}/small_box.mrc"], ["small_box.mrc", "^3"]),
    "compare voxel size": (["{sim}/particles.star", "--compare", "{inputs}/other_voxel.mrc"],
                           ["other_voxel.mrc", "voxel size 2 Å"]),
    "compare missing": (["{sim}/particles.star", "--compare", "{inputs}/absent.mrc"], ["absent.mrc", "not found"]),
    "particles missing": (["{inputs}/absent.star"], ["absent.star"]),
    "batch size": (["{sim}/particles.star", "--batch-size", "0"], ["--batch-size >= 1"]),
    "unknown symmetry": (["{sim}/particles.star", "--symmetry", "X3"], ["unknown symmetry 'X3'", "Cn"]),
    "improper symmetry": (["{sim}/particles.star", "--symmetry", "C4v"], ["'C4v'", "mirror", "C4"]),
    "mask diameter": (["{sim}/particles.star", "--mask-diameter", "-10"], ["--mask-diameter must be positive"]),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_and_keeps_outputs(vitreous, simulated: Path, inputs: Path, finished_job: Path,
                                                 case: str) -> None:
    args, fragments = BAD_INPUT[case]
    before = snapshot(finished_job)
    outcome = vitreous("backproject", "-o", finished_job, "--overwrite",
                       *[a.format(sim=simulated, inputs=inputs) for a in args])
    outcome.assert_error(*fragments)
    assert "Traceback" not in outcome.err
    assert snapshot(finished_job) == before
