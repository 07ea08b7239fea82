"""``map_micrographs``: a Dask LocalCluster of 2 workers gives the same CTF results, in input order, as a serial
run (simulated 512 px micrographs of the bundled adenylate kinase model)."""

from __future__ import annotations

from functools import partial
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from vitreous.io.mrc import write_map
from vitreous.preprocess.ctf_estimate import CTFSearch, Optics
from vitreous.preprocess.curation import measure_micrograph
from vitreous.preprocess.parallel import map_micrographs

APIX = 1.0


@pytest.fixture(scope="module")
def micrographs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from vitreous.sim.micrographs import MicrographOptions, MicrographSimulator
    from vitreous.sim.truth import models_truth

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("parallel")
    with resources.as_file(resources.files("vitreous.resources") / "adk_closed.pdb.gz") as path:
        volumes = models_truth([path], None, APIX).volumes
    simulator = MicrographSimulator(volumes, MicrographOptions(size=512, apix=APIX, particles=(20, 20)))
    paths = [out / f"mic_{seed}.mrc" for seed in range(3)]
    for seed, path in enumerate(paths):
        write_map(path, simulator.simulate(seed).image, APIX)
    return paths


def test_local_cluster_matches_serial(micrographs: list[Path]) -> None:
    fn = partial(measure_micrograph, optics=Optics(APIX), search=CTFSearch())
    arrived: list[int] = []
    serial = map_micrographs(fn, micrographs, workers=0)
    parallel = map_micrographs(fn, micrographs, workers=2, on_result=lambda i, result: arrived.append(i))
    assert sorted(arrived) == [0, 1, 2]
    for a, b in zip(serial, parallel, strict=True):
        assert a.ctf is not None and b.ctf is not None
        assert a.ctf.columns() == pytest.approx(b.ctf.columns(), rel=1e-6)
        assert a.crystalline_ice == pytest.approx(b.crystalline_ice, rel=1e-6)
        np.testing.assert_array_equal(a.ctf.diagnostic, b.ctf.diagnostic)
    defoci = [r.ctf.defocus_u for r in serial]
    assert len(set(np.round(defoci))) == 3  # three different micrographs, in input order


def test_serial_map_keeps_order_and_reports_each_result() -> None:
    seen: list[tuple[int, int]] = []
    assert map_micrographs(abs, [-3, 1, -2], workers=1, on_result=lambda i, r: seen.append((i, r))) == [3, 1, 2]
    assert seen == [(0, 3), (1, 1), (2, 2)]
    assert map_micrographs(abs, [], workers=2) == []
