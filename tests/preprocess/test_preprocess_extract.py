"""Extraction: box geometry (integer cut + sub-pixel origin), normalisation, inversion, down-sampling, edges,
empty micrographs, and the end-to-end convention check: simulated micrographs -> extract at the true
coordinates -> back-projection with the true poses reproduces the truth map with the right hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vitreous.analysis.fsc import fsc_curve, resolution_at
from vitreous.io.formats import read_particles
from vitreous.io.micrographs import MicrographTable
from vitreous.io.mrc import write_map
from vitreous.io.star import write_star
from vitreous.preprocess.extract import ExtractOptions, box_corners, cut_boxes, extract_particles, process_boxes
from vitreous.reconstruct.backproject import backproject
from vitreous.sim.micrographs import MicrographOptions, MicrographSimulator, micrograph_optics
from vitreous.sim.truth import models_truth

ADK = Path(__file__).resolve().parents[2] / "src" / "vitreous" / "resources" / "adk_closed.pdb.gz"


def coordinates_table(rows: pd.DataFrame, apix: float, folder: Path) -> MicrographTable:
    optics = micrograph_optics(MicrographOptions(apix=apix))
    return MicrographTable(rows.assign(rlnOpticsGroup=1), optics, folder / "coordinates.star")


def test_sub_pixel_centre_is_box_centre_minus_origin() -> None:
    """A Gaussian blob at (x, y) = (40.3, 25.8) is cut at (40, 26); its centroid in the box is box//2 - origin."""
    yy, xx = np.mgrid[0:64, 0:80]
    x, y = 40.3, 25.8
    image = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.2**2))
    corners, origins, inside = box_corners(np.array([[x, y]]), 16, image.shape)
    assert inside.all() and corners.tolist() == [[32, 18]]
    assert origins[0] == pytest.approx([40 - x, 26 - y])
    box = cut_boxes(image, corners, 16)[0]
    centroid = np.array([(box * np.arange(16)[None, :]).sum(), (box * np.arange(16)[:, None]).sum()]) / box.sum()
    assert centroid == pytest.approx(8 - origins[0], abs=1e-3)


def test_edges_are_dropped() -> None:
    xy = np.array([[8.0, 8.0], [7.4, 30.0], [56.0, 20.0], [56.6, 20.0], [30.0, 56.49]])
    _, _, inside = box_corners(xy, 16, (64, 64))
    # corner = round - 8 must be >= 0 and corner + 16 <= 64
    assert inside.tolist() == [True, False, True, False, True]


def test_processing_normalises_background_inverts_and_downsamples() -> None:
    rng = np.random.default_rng(0)
    boxes = rng.normal(5.0, 3.0, (4, 64, 64))
    boxes[:, 28:36, 28:36] -= 20.0  # a dark particle
    out = process_boxes(boxes, ExtractOptions(box=64, out_box=32, bg_radius=10.0))
    assert out.shape == (4, 32, 32) and out.dtype == np.float32
    axis = np.arange(32) - 16
    outside = axis[:, None] ** 2 + axis[None, :] ** 2 > 100
    assert np.abs(out[:, outside].mean(1)).max() < 1e-5
    assert out[:, outside].std(1) == pytest.approx(np.ones(4), rel=1e-3)
    assert (out[:, 15:17, 15:17] > 2).all()  # inverted: the particle is white
    kept = process_boxes(boxes, ExtractOptions(box=64, invert=False))
    assert kept.shape == (4, 64, 64) and (kept[:, 30:34, 30:34] < -2).all()


def test_empty_micrograph_is_skipped(tmp_path: Path) -> None:
    write_map(tmp_path / "zero.mrc", np.zeros((64, 64), np.float32), 2.0)
    nan = np.ones((64, 64), np.float32)
    nan[3, 3] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):
        write_map(tmp_path / "nan.mrc", nan, 2.0)
    write_map(tmp_path / "good.mrc", np.random.default_rng(1).normal(size=(64, 64)).astype(np.float32), 2.0)
    rows = pd.DataFrame({"rlnMicrographName": [str(tmp_path / n) for n in ("zero.mrc", "nan.mrc", "good.mrc")],
                         "rlnCoordinateX": 32.0, "rlnCoordinateY": 32.0, "rlnDefocusU": 1e4, "rlnDefocusV": 1e4})
    result = extract_particles(coordinates_table(rows, 2.0, tmp_path), ExtractOptions(box=16), tmp_path)
    assert [Path(p).name for p in result.empty] == ["zero.mrc", "nan.mrc"]
    assert len(result.particles) == 1 and result.dropped_at_edge == 0
    assert result.particles.particles["rlnImageName"].iloc[0] == "000001@Particles/good.mrcs"


def test_extract_true_coordinates_then_backproject_gives_the_truth_map(tmp_path: Path) -> None:
    """The key convention check of the front end: simulate -> extract -> back-project with true poses."""
    apix = 2.5
    truth = models_truth([ADK], None, apix)
    simulator = MicrographSimulator(truth.volumes, MicrographOptions(size=384, apix=apix, particles=(200, 200),
                                                                     snr=1.0))
    rows = []
    for i in range(4):
        micrograph = simulator.simulate((1, i))
        write_map(tmp_path / f"mic_{i}.mrc", micrograph.image, apix)
        rows.append(micrograph.particles.assign(rlnMicrographName=str(tmp_path / f"mic_{i}.mrc")))
    coordinates = coordinates_table(pd.concat(rows, ignore_index=True), apix, tmp_path)
    result = extract_particles(coordinates, ExtractOptions(box=48), tmp_path)
    assert result.dropped_at_edge > 0 and len(result.particles) + result.dropped_at_edge == len(coordinates)
    write_star(tmp_path / "particles.star", result.particles)
    particles = read_particles(tmp_path / "particles.star")
    assert particles.box == 48 and particles.single_pixel_size() == apix
    assert np.abs(particles.shifts_px).max() <= 0.5
    full = backproject(particles).full
    reference = models_truth([ADK], 48, apix).volumes[0].numpy()
    frequency, fsc = fsc_curve(full, reference, apix)
    mirrored = fsc_curve(full, reference[::-1].copy(), apix)[1]
    resolution, mirrored_resolution = resolution_at(frequency, fsc, 0.5), resolution_at(frequency, mirrored, 0.5)
    assert resolution < 12.0  # measured 10.4 Å (Nyquist 5 Å) from ~480 particles at SNR 1
    assert mirrored_resolution > 1.5 * resolution  # the right hand: the mirror image fits far worse
    assert np.corrcoef(full.ravel(), reference.ravel())[0, 1] > 0.85


def test_downsampled_particles_keep_the_origin_in_angstrom(tmp_path: Path) -> None:
    apix = 2.0
    truth = models_truth([ADK], None, apix)
    micrograph = MicrographSimulator(truth.volumes, MicrographOptions(size=256, apix=apix, particles=(20, 20))
                                     ).simulate(3)
    write_map(tmp_path / "mic.mrc", micrograph.image, apix)
    rows = micrograph.particles.assign(rlnMicrographName=str(tmp_path / "mic.mrc"))
    result = extract_particles(coordinates_table(rows, apix, tmp_path), ExtractOptions(box=64, out_box=40),
                               tmp_path)
    particles = result.particles
    assert particles.single_pixel_size() == pytest.approx(apix * 64 / 40)
    optics = particles.optics.iloc[0]
    assert optics["rlnImageSize"] == 40 and optics["rlnMicrographOriginalPixelSize"] == apix
    table = particles.particles
    xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    assert table[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() == pytest.approx((np.floor(xy + 0.5) - xy) * apix)
    assert table["rlnDefocusU"].iloc[0] == micrograph.ctf["rlnDefocusU"]
