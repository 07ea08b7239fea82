"""Exposure curation: crystalline-ice rings in simulated micrographs, relative ice thickness, skipped
micrographs and the ``--select`` conditions."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vitreous.errors import InputError
from vitreous.io.mrc import write_map
from vitreous.preprocess.ctf_estimate import CTFSearch, Optics, periodogram
from vitreous.preprocess.curation import (
    check_selection,
    crystalline_ice_score,
    measure_micrograph,
    parse_selection,
    relative_ice_thickness,
    select,
)

APIX = 1.0


def test_crystalline_ice_rings_are_detected() -> None:
    from vitreous.sim.micrographs import MicrographOptions, MicrographSimulator
    from vitreous.sim.truth import models_truth

    torch.set_num_threads(1)
    with resources.as_file(resources.files("vitreous.resources") / "adk_closed.pdb.gz") as path:
        volumes = models_truth([path], None, APIX).volumes
    scores = {}
    for crystalline in (0.0, 1.0):
        options = MicrographOptions(size=1024, apix=APIX, particles=(30, 30), crystalline=crystalline)
        micrograph = MicrographSimulator(volumes, options).simulate(5)
        assert micrograph.crystalline == bool(crystalline)
        scores[crystalline] = crystalline_ice_score(periodogram(torch.from_numpy(micrograph.image), 512), APIX)
    assert 0.8 < scores[0.0] < 1.5 and scores[1.0] > 3.0, scores


def test_crystalline_ice_is_nan_beyond_nyquist() -> None:
    power = torch.ones(128, 128)
    assert math.isnan(crystalline_ice_score(power, 1.8))  # Nyquist 3.6 Å
    assert crystalline_ice_score(power, 1.6) == pytest.approx(1.0)  # flat spectrum, low-resolution baseline only


def test_relative_ice_thickness_is_beer_lambert_from_the_brightest() -> None:
    means = np.array([0.9, 0.9 * math.exp(-0.3), -0.1, np.nan])
    thickness = relative_ice_thickness(means)
    assert thickness[:2] == pytest.approx([0.0, 0.3])
    assert np.isnan(thickness[2:]).all()


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_unusable_micrographs_are_skipped(tmp_path: Path) -> None:
    zeros, nans = tmp_path / "zeros.mrc", tmp_path / "nans.mrc"
    write_map(zeros, np.zeros((256, 256), np.float32), APIX)
    image = np.ones((256, 256), np.float32)
    image[10:20] = np.nan
    write_map(nans, image, APIX)
    for path, reason in ((zeros, "constant"), (nans, "2560 NaN")):
        result = measure_micrograph(path, Optics(APIX), CTFSearch())
        assert result.ctf is None and reason in result.skipped


def test_selection_conditions() -> None:
    conditions = parse_selection("rlnCtfMaxResolution<6, vtsCrystallineIce<=2,rlnDefocusU>=1e4")
    assert conditions == [("rlnCtfMaxResolution", "<", 6.0), ("vtsCrystallineIce", "<=", 2.0),
                          ("rlnDefocusU", ">=", 10000.0)]
    table = pd.DataFrame({"rlnCtfMaxResolution": [4.0, 4.0, 7.0, 4.0], "vtsCrystallineIce": [1.0, 2.0, 1.0, np.nan],
                          "rlnDefocusU": [2e4, 2e4, 2e4, 2e4]})
    assert select(table, conditions).tolist() == [True, True, False, False]
    for bad in ("rlnCtfMaxResolution", "rlnCtfMaxResolution<<6", "x<abc", " , "):
        with pytest.raises(InputError):
            parse_selection(bad)
    with pytest.raises(InputError, match="unknown column rlnFoo"):
        check_selection(parse_selection("rlnFoo<1"), list(table.columns))
