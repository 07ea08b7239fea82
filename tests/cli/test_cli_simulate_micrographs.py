"""``vitreous simulate-micrographs``: job folder, micrographs, truth STAR files and maps, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vitreous.io.micrographs import read_micrograph_star
from vitreous.io.mrc import read_header, read_map
from vitreous.io.star import read_star_blocks

ADK = Path(__file__).resolve().parents[2] / "src" / "vitreous" / "resources" / "adk_closed.pdb.gz"
BPTI = "proteins/5PTI.cif.gz"


def test_two_models_with_truth(vitreous, tmp_path: Path, structures: Path) -> None:
    out, apix = tmp_path / "sim", 2.5
    outcome = vitreous("simulate-micrographs", "--model", ADK, "--model", structures / BPTI, "-n", 3, "--size", 256,
                       "--apix", apix, "--particles-per-micrograph", "20-30", "--defocus-min", 1, "--defocus-max",
                       2, "--carbon", 1, "--seed", 5, "-o", out)
    assert outcome.code == 0, outcome
    assert json.loads((out / "job.json").read_text())["status"] == "finished"
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 1

    micrographs = read_micrograph_star(out / "micrographs.star")
    assert len(micrographs) == 3 and micrographs.pixel_size() == apix
    assert "rlnDefocusU" not in micrographs.table  # what `vitreous ctf` is for
    for path in micrographs.paths():
        header = read_header(path)
        assert (header.n, header.ny, header.nx) == (1, 256, 256) and header.voxel_size == apix

    truth_ctf = read_micrograph_star(out / "truth" / "micrographs_ctf.star")
    assert [p.name for p in truth_ctf.paths()] == ["mic_0000.mrc", "mic_0001.mrc", "mic_0002.mrc"]
    defocus = truth_ctf.table[["rlnDefocusU", "rlnDefocusV"]].to_numpy()
    mean, astigmatism = defocus.mean(1), defocus[:, 0] - defocus[:, 1]
    assert (mean >= 1e4).all() and (mean <= 2e4).all() and (astigmatism >= 0).all() and (astigmatism <= 1000).all()
    assert truth_ctf.table["vtsCarbon"].tolist() == [1, 1, 1]

    coordinates = read_micrograph_star(out / "truth" / "coordinates.star", block="particles")
    table = coordinates.table
    counts = table.groupby("rlnMicrographName").size().to_numpy()
    assert len(counts) == 3 and counts.sum() == truth_ctf.table["vtsParticles"].sum() and counts.max() <= 30
    assert set(table["vtsModel"]) == {1, 2}
    for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnDefocusU", "rlnDefocusAngle"):
        assert column in table
    # each particle row carries its micrograph's CTF
    merged = table.merge(truth_ctf.table, on="rlnMicrographName", suffixes=("", "_mic"))
    assert np.array_equal(merged["rlnDefocusU"], merged["rlnDefocusU_mic"])
    assert {p.resolve() for p in coordinates.paths()} == {p.resolve() for p in micrographs.paths()}

    for k in (1, 2):
        volume, voxel = read_map(out / "truth" / f"model_{k:03d}.mrc")
        assert voxel == apix and volume.shape[0] == volume.shape[2]
    assert read_star_blocks(out / "truth" / "coordinates.star")["optics"]["rlnMicrographPixelSize"].iloc[0] == apix


def test_bad_input_is_one_line(vitreous, tmp_path: Path) -> None:
    out = tmp_path / "bad"
    vitreous("simulate-micrographs", "--model", tmp_path / "missing.pdb", "-o", out).assert_error("missing.pdb",
                                                                                                  "not found")
    vitreous("simulate-micrographs", "--model", ADK, "--particles-per-micrograph", "30-10", "-o", out
             ).assert_error("--particles-per-micrograph")
    vitreous("simulate-micrographs", "--model", ADK, "--carbon", 2, "-o", out).assert_error("--carbon")
    vitreous("simulate-micrographs", "--model", ADK, "--proportions", "1,2", "-o", out).assert_error("--proportions")
    assert not out.exists()
