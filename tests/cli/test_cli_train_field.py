"""``vitreous train-field``: the homogeneous model (zdim 0) writes map.mrc (voxel size in the header) that matches
the truth about as well as ``vitreous backproject`` of the same particles, and ``load_trained`` decodes the same
map.  Data: 600 simulated particles of the bundled adenylate kinase model (box 32, 3 Å/px, SNR 0.3)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from vitreous.analysis.fsc import fsc_curve, resolution_at
from vitreous.io.mrc import read_map, write_map
from vitreous.io.star import write_star
from vitreous.neural.trained import load_trained
from vitreous.sim.particles import Acquisition, simulate_stack
from vitreous.sim.truth import models_truth

APIX, BOX, N = 3.0, 32, 600


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train_field_cli")
    with resources.as_file(resources.files("vitreous.resources") / "adk_closed.pdb.gz") as path:
        truth = models_truth([path], BOX, APIX).volumes
    acquisition = Acquisition(apix=APIX, snr=0.3, astigmatism_A=300.0, shift_sd_px=1.0, seed=11)
    write_star(out / "particles.star", simulate_stack(truth, np.zeros(N, np.int64), out / "particles.mrcs",
                                                      acquisition))
    write_map(out / "truth.mrc", truth[0].numpy(), APIX)
    return out


def test_train_field_map_is_comparable_to_backprojection(vitreous, simulated: Path, tmp_path: Path) -> None:
    star, truth = simulated / "particles.star", read_map(simulated / "truth.mrc")[0]
    result = vitreous("train-field", star, "-o", tmp_path / "field", "--epochs", 3, "--batch-size", 32)
    assert result.code == 0, result.err
    assert vitreous("backproject", star, "-o", tmp_path / "bp").code == 0
    field, voxel = read_map(tmp_path / "field" / "map.mrc")
    assert field.shape == (BOX,) * 3 and voxel == pytest.approx(APIX)
    frequency, fsc_field = fsc_curve(field, truth, APIX)
    _, fsc_bp = fsc_curve(read_map(tmp_path / "bp" / "map.mrc")[0], truth, APIX)
    # gradient descent on the likelihood has no Wiener prior: within 10 % of the regularised backprojection
    assert resolution_at(frequency, fsc_field, 0.5) <= 1.1 * resolution_at(frequency, fsc_bp, 0.5)
    # the same intensity scale as backprojection (within the regularisation's shrinkage)
    scale = float((field * truth).sum() / (truth * truth).sum())
    scale_bp = float((read_map(tmp_path / "bp" / "map.mrc")[0] * truth).sum() / (truth * truth).sum())
    assert scale == pytest.approx(scale_bp, rel=0.2)

    trained = load_trained(tmp_path / "field")
    assert trained.zdim == 0 and trained.z is None
    (decoded,) = trained.volumes(np.zeros((1, 0)))
    np.testing.assert_allclose(decoded, field, atol=1e-5 * float(np.abs(field).max()))
    assert "Neural field (homogeneous)" in (tmp_path / "field" / "report.html").read_text()
