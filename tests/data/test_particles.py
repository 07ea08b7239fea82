"""ParticleSet column helpers: a job's class posteriors replace those of an earlier job."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vitreous.data.particles import ParticleSet


def _with_stale_probabilities() -> ParticleSet:
    table = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@a.mrcs" for i in range(4)], "rlnDefocusU": 1e4,
                          **{f"vtsClassProbability{k}": 1.0 / 3 for k in (1, 2, 3)}})
    return ParticleSet(table, pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.5]}), None)


def test_class_probabilities_replace_those_of_an_earlier_job() -> None:
    posteriors = np.array([[0.9, 0.1], [0.2, 0.8], [1.0, 0.0], [0.5, 0.5]])
    table = _with_stale_probabilities().with_class_probabilities(posteriors).particles
    assert [c for c in table.columns if c.startswith("vtsClassProbability")] == ["vtsClassProbability1",
                                                                                 "vtsClassProbability2"]
    np.testing.assert_array_equal(table[["vtsClassProbability1", "vtsClassProbability2"]].to_numpy(), posteriors)
    assert table["rlnDefocusU"].tolist() == [1e4] * 4


def test_one_class_removes_the_stale_probabilities() -> None:
    table = _with_stale_probabilities().with_class_probabilities(None).particles
    assert not any(c.startswith("vtsClassProbability") for c in table.columns)
