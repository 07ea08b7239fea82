"""``vitreous extract``: particles.star + stacks from a coordinates STAR, edge and empty-micrograph handling,
and bad input (one line, exit 2, no job folder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vitreous.io.formats import read_particles
from vitreous.io.micrographs import MicrographTable, read_micrograph_star, write_micrograph_star
from vitreous.io.mrc import write_map
from vitreous.sim.micrographs import MicrographOptions, MicrographSimulator, micrograph_optics
from vitreous.sim.truth import models_truth

ADK = Path(__file__).resolve().parents[2] / "src" / "vitreous" / "resources" / "adk_closed.pdb.gz"
APIX = 2.0


@pytest.fixture(scope="module")
def coordinates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two simulated micrographs and an all-zero one, with the true coordinates (and their CTF) as picks."""
    folder = tmp_path_factory.mktemp("picks")
    options = MicrographOptions(size=256, apix=APIX, particles=(25, 25))
    simulator = MicrographSimulator(models_truth([ADK], None, APIX).volumes, options)
    rows = []
    for i in range(2):
        micrograph = simulator.simulate(i)
        write_map(folder / f"mic_{i}.mrc", micrograph.image, APIX)
        rows.append(micrograph.particles.assign(rlnMicrographName=str(folder / f"mic_{i}.mrc")))
    write_map(folder / "blank.mrc", np.zeros((256, 256), np.float32), APIX)
    rows.append(rows[0].iloc[:3].assign(rlnMicrographName=str(folder / "blank.mrc")))
    table = pd.concat(rows, ignore_index=True).drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"])
    star = folder / "coords.star"
    write_micrograph_star(star, MicrographTable(table.assign(rlnOpticsGroup=1), micrograph_optics(options), star),
                          "particles")
    return star


def test_extract_with_edges_and_an_empty_micrograph(vitreous, coordinates: Path, tmp_path: Path) -> None:
    out = tmp_path / "extract"
    outcome = vitreous("extract", coordinates, "--box", 48, "--downsample", 32, "-o", out)
    assert outcome.code == 0, outcome
    assert json.loads((out / "job.json").read_text())["status"] == "finished"
    picks = read_micrograph_star(coordinates, block="particles").table
    real = picks[~picks["rlnMicrographName"].str.endswith("blank.mrc")]
    xy = real[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    corner = np.floor(xy + 0.5) - 24
    expected_inside = ((corner >= 0) & (corner + 48 <= 256)).all(1)
    assert 0 < expected_inside.sum() < len(real)

    particles = read_particles(out / "particles.star")
    assert len(particles) == expected_inside.sum()
    assert particles.box == 32 and particles.single_pixel_size() == pytest.approx(APIX * 48 / 32)
    assert sorted(p.name for p in (out / "Particles").iterdir()) == ["mic_0.mrcs", "mic_1.mrcs"]
    images = particles.images.read(np.arange(len(particles)))
    axis = np.arange(32) - 16
    outside = axis[:, None] ** 2 + axis[None, :] ** 2 > 12**2
    assert np.abs(images[:, outside].mean(1)).max() < 1e-4 and np.allclose(images[:, outside].std(1), 1, atol=1e-3)
    assert images[:, 14:18, 14:18].mean() > 0.3  # inverted: the particles are white on average
    assert particles.has_ctf and "rlnCoordinateX" in particles.particles

    log = (out / "run.log").read_text()
    assert f"dropped {len(real) - expected_inside.sum()} boxes beyond the micrograph edge" in log
    assert "blank.mrc" in log and "blank.mrc" in (out / "report.html").read_text()
    assert "skipped" in outcome.err


def test_bad_input_is_one_line(vitreous, coordinates: Path, tmp_path: Path) -> None:
    out = tmp_path / "bad"
    vitreous("extract", coordinates, "--box", 47, "-o", out).assert_error("--box", "even")
    vitreous("extract", coordinates, "--box", 48, "--downsample", 64, "-o", out).assert_error("--downsample")
    vitreous("extract", coordinates, "--box", 48, "--bg-radius", 30, "-o", out).assert_error("--bg-radius")
    vitreous("extract", coordinates, "--box", 400, "-o", out).assert_error("beyond", "--box")

    table = read_micrograph_star(coordinates, block="particles")
    table = table.with_table(table.table.assign(rlnMicrographName=[str(p) for p in table.paths()]))  # absolute
    moved = tmp_path / "moved.star"
    renamed = table.table.assign(rlnMicrographName=table.table["rlnMicrographName"].str.replace("mic_1", "gone"))
    write_micrograph_star(moved, MicrographTable(renamed, table.optics, moved), "particles")
    vitreous("extract", moved, "--box", 48, "-o", out).assert_error("gone.mrc", "does not exist")

    no_ctf = tmp_path / "no_ctf.star"
    write_micrograph_star(no_ctf, MicrographTable(table.table.drop(columns=["rlnDefocusU", "rlnDefocusV"]),
                                                  table.optics, no_ctf), "particles")
    vitreous("extract", no_ctf, "--box", 48, "-o", out).assert_error("CTF")

    two = tmp_path / "two_sizes.star"
    optics = pd.concat([table.optics, table.optics.assign(rlnOpticsGroup=2, rlnMicrographPixelSize=1.0)])
    groups = table.table.assign(rlnOpticsGroup=np.where(np.arange(len(table)) % 2, 1, 2))
    write_micrograph_star(two, MicrographTable(groups, optics, two), "particles")
    vitreous("extract", two, "--box", 48, "-o", out).assert_error("differing pixel sizes")
    assert not out.exists()
