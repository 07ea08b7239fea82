"""``vitreous pick``: template and learned picking jobs on simulated micrographs, reusing a trained picker,
an all-zero micrograph (skipped and listed), and bad input (one line, exit 2, no job folder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vitreous.io.micrographs import COORDINATES, MicrographTable, read_micrograph_star, write_micrograph_star
from vitreous.io.mrc import write_map
from vitreous.preprocess.picking import match_picks
from vitreous.sim.micrographs import MicrographOptions, MicrographSimulator, micrograph_optics
from vitreous.sim.truth import models_truth

ADK = Path(__file__).resolve().parents[2] / "src" / "vitreous" / "resources" / "adk_closed.pdb.gz"
APIX, SIZE, N = 2.0, 384, 35
CTF = ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """micrographs_ctf.star (two simulated micrographs with their true CTF, and an all-zero one), the truth
    map, the true coordinates (coords.star) and the particle diameter."""
    torch.set_num_threads(1)  # torch is fastest with one thread on the 2 shared cores
    folder = tmp_path_factory.mktemp("pick")
    options = MicrographOptions(size=SIZE, apix=APIX, particles=(N, N))
    volume = models_truth([ADK], None, APIX).volumes[0]
    simulator = MicrographSimulator([volume], options)
    rows, truth = [], []
    for i in range(2):
        micrograph = simulator.simulate(i)
        write_map(folder / f"mic_{i}.mrc", micrograph.image, APIX)
        rows.append({"rlnMicrographName": f"mic_{i}.mrc", "rlnOpticsGroup": 1, **micrograph.ctf})
        truth.append(micrograph.particles.assign(rlnMicrographName=f"mic_{i}.mrc", rlnOpticsGroup=1))
    write_map(folder / "blank.mrc", np.zeros((SIZE, SIZE), np.float32), APIX)
    rows.append({**rows[0], "rlnMicrographName": "blank.mrc"})
    optics = micrograph_optics(options)
    star = folder / "micrographs_ctf.star"
    write_micrograph_star(star, MicrographTable(pd.DataFrame(rows), optics, star))
    coords = folder / "coords.star"
    write_micrograph_star(coords, MicrographTable(pd.concat(truth, ignore_index=True), optics, coords), "particles")
    write_map(folder / "truth.mrc", volume.numpy(), APIX)
    return {"star": star, "coords": coords, "map": folder / "truth.mrc", "diameter": 2 * float(simulator.radii[0]),
            "box": volume.shape[-1]}


def picks_by_name(path: Path) -> dict[str, np.ndarray]:
    table = read_micrograph_star(path, "particles").table
    names = table["rlnMicrographName"].map(lambda n: Path(n).name)
    return {name: table.loc[names == name, COORDINATES].to_numpy() for name in sorted(set(names))}


def test_template_picking_writes_a_complete_job(vitreous, data: dict, tmp_path: Path) -> None:
    out = tmp_path / "job"
    outcome = vitreous("pick", data["star"], "-o", out, "--diameter", data["diameter"], "--template", data["map"])
    assert outcome.code == 0, outcome
    for name in ("coordinates.star", "report.html", "job.json", "run.log"):
        assert (out / name).is_file(), name
    assert "blank.mrc: skipped (constant (e.g. all zero))" in outcome.err
    picked = read_micrograph_star(out / "coordinates.star", "particles")
    assert picked.pixel_size() == APIX and all(p.is_file() for p in picked.paths())
    table = picked.table
    assert {"rlnAutopickFigureOfMerit", *CTF} <= set(table.columns)
    micrographs = read_micrograph_star(data["star"]).table.set_index("rlnMicrographName")
    for name, group in table.groupby(table["rlnMicrographName"].map(lambda n: Path(n).name)):
        assert (group[CTF].to_numpy() == micrographs.loc[name, CTF].to_numpy(np.float64)).all()
        assert (np.diff(group["rlnAutopickFigureOfMerit"].to_numpy()) <= 0).all()
    found, truth = picks_by_name(out / "coordinates.star"), picks_by_name(data["coords"])
    assert set(found) == {"mic_0.mrc", "mic_1.mrc"}
    hits, false_pos, false_neg = np.sum([match_picks(found[n], truth[n], 0.25 * data["box"]) for n in truth], axis=0)
    assert hits / (hits + false_pos) >= 0.9 and hits / (hits + false_neg) >= 0.9
    report = (out / "report.html").read_text()
    assert "Particle picking" in report and "Skipped micrographs" in report and "blank.mrc" in report
    assert report.count("data:image/png") >= 3
    record = json.loads((out / "job.json").read_text())
    assert record["status"] == "finished" and record["command"] == "pick"


def test_learned_picker_trains_saves_and_is_reused(vitreous, data: dict, tmp_path: Path) -> None:
    trained, reused = tmp_path / "trained", tmp_path / "reused"
    outcome = vitreous("pick", data["star"], "-o", trained, "--diameter", data["diameter"], "--train", data["coords"],
                       "--steps", 20, "--max-per-micrograph", 10)
    assert outcome.code == 0, outcome
    assert (trained / "picker.pt").is_file()
    first = read_micrograph_star(trained / "coordinates.star", "particles").table
    assert 0 < len(first) <= 20 and first.groupby("rlnMicrographName").size().max() <= 10
    assert "Training" in (trained / "report.html").read_text()
    outcome = vitreous("pick", data["star"], "-o", reused, "--diameter", data["diameter"], "--model",
                       trained / "picker.pt", "--max-per-micrograph", 10)
    assert outcome.code == 0, outcome
    second = read_micrograph_star(reused / "coordinates.star", "particles").table
    pd.testing.assert_frame_equal(first, second)


def test_bad_input_is_one_line_and_leaves_no_job(vitreous, data: dict, tmp_path: Path) -> None:
    out = tmp_path / "job"
    common = ("-o", out, "--diameter", data["diameter"])
    vitreous("pick", data["star"], *common).assert_error("exactly one of --template")
    vitreous("pick", data["star"], *common, "--template", data["map"], "--train", data["coords"]).assert_error(
        "exactly one of")
    micrographs = read_micrograph_star(data["star"])
    missing = tmp_path / "missing.star"
    table = micrographs.table.assign(rlnMicrographName=[str(data["star"].parent / "nowhere.mrc")] * 3)
    write_micrograph_star(missing, MicrographTable(table, micrographs.optics, missing))
    vitreous("pick", missing, *common, "--template", data["map"]).assert_error("nowhere.mrc", "does not exist")
    mixed = tmp_path / "mixed.star"
    optics = pd.concat([micrographs.optics, micrographs.optics.assign(rlnOpticsGroup=2, rlnMicrographPixelSize=1.0)])
    table = micrographs.table.assign(rlnMicrographName=[str(p) for p in micrographs.paths()], rlnOpticsGroup=[1, 2, 1])
    write_micrograph_star(mixed, MicrographTable(table, optics, mixed))
    vitreous("pick", mixed, *common, "--template", data["map"]).assert_error("differing pixel sizes")
    vitreous("pick", data["star"], *common, "--model", data["map"]).assert_error("not a picker weights file")
    no_ctf = tmp_path / "no_ctf.star"
    table = micrographs.table.drop(columns=CTF).assign(rlnMicrographName=[str(p) for p in micrographs.paths()])
    write_micrograph_star(no_ctf, MicrographTable(table, micrographs.optics, no_ctf))
    vitreous("pick", no_ctf, *common, "--template", data["map"]).assert_error("no CTF columns", "vitreous ctf")
    assert not out.exists()
