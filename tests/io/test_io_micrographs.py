"""Micrograph and coordinate STAR files round-trip; bad input gives one-line errors."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vitreous.errors import InputError
from vitreous.io.micrographs import (
    micrographs_from_files,
    read_micrograph,
    read_micrograph_star,
    write_micrograph_star,
)
from vitreous.io.mrc import write_map


def _micrographs(tmp_path: Path, n: int = 2, apix: float = 1.2) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = [tmp_path / f"mic_{i}.mrc" for i in range(n)]
    for p in paths:
        write_map(p, rng.standard_normal((40, 60)).astype(np.float32), apix)
    return paths


def test_round_trip_with_ctf_and_relative_names(tmp_path):
    paths = _micrographs(tmp_path)
    mics = micrographs_from_files(paths, None, voltage=200.0)
    assert mics.pixel_size() == pytest.approx(1.2)
    assert mics.image(1).shape == (40, 60)
    mics = mics.with_table(mics.table.assign(rlnDefocusU=[1e4, 2e4], rlnDefocusV=[1.1e4, 2.1e4],
                                             rlnDefocusAngle=[5.0, 30.0]))
    (tmp_path / "job").mkdir()
    write_micrograph_star(tmp_path / "job" / "micrographs.star", mics)
    assert "../mic_0.mrc" in (tmp_path / "job" / "micrographs.star").read_text()
    back = read_micrograph_star(tmp_path / "job" / "micrographs.star")
    assert [p.resolve() for p in back.paths()] == [p.resolve() for p in paths]
    ctf = back.ctf_table()
    np.testing.assert_allclose(ctf["defocus_v"], [1.1e4, 2.1e4])
    np.testing.assert_allclose(ctf["voltage"], 200.0)
    np.testing.assert_allclose(ctf["pixel_size"], 1.2)
    np.testing.assert_array_equal(back.image(0), read_micrograph(paths[0]))


def test_coordinates_block_needs_coordinates(tmp_path):
    mics = micrographs_from_files(_micrographs(tmp_path, 1), 1.0)
    coords = mics.with_table(pd.DataFrame({"rlnMicrographName": mics.table["rlnMicrographName"].repeat(3),
                                           "rlnOpticsGroup": 1, "rlnCoordinateX": [1.0, 2.0, 3.0],
                                           "rlnCoordinateY": [4.0, 5.0, 6.0]}))
    write_micrograph_star(tmp_path / "coords.star", coords, block="particles")
    back = read_micrograph_star(tmp_path / "coords.star", block="particles")
    np.testing.assert_allclose(back.table["rlnCoordinateY"], [4.0, 5.0, 6.0])
    write_micrograph_star(tmp_path / "bad.star", coords.with_table(coords.table.drop(columns="rlnCoordinateX")),
                          block="particles")
    with pytest.raises(InputError, match="rlnCoordinateX"):
        read_micrograph_star(tmp_path / "bad.star", block="particles")


def test_mixed_pixel_sizes_and_stacks_are_refused(tmp_path):
    a, b = _micrographs(tmp_path, 2)
    write_map(b, np.zeros((40, 60), np.float32), 2.0)
    with pytest.raises(InputError, match="pixel sizes"):
        micrographs_from_files([a, b], None)
    write_map(tmp_path / "stack.mrcs", np.zeros((3, 8, 8), np.float32), 1.0)
    with pytest.raises(InputError, match="one 2D micrograph"):
        read_micrograph(tmp_path / "stack.mrcs")
