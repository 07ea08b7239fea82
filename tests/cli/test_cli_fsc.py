"""``vitreous fsc A B``: both resolutions printed, and maps that cannot be compared refused in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from vitreous.cli.fsc import compare_maps
from vitreous.io.mrc import write_map
from vitreous.physics.fourier import lowpass
from vitreous.sim.truth import models_truth

APIX, BOX = 2.5, 32
CUTOFF_A = 10.0  # shell BOX * APIX / CUTOFF_A = 8
SHELL_A = {shell: BOX * APIX / shell for shell in range(1, BOX // 2 + 1)}  # resolution (Å) of Fourier shells
PRINTED = re.compile(r"FSC=0\.5: ([\d.]+) Å   FSC=0\.143: ([\d.]+) Å   \(voxel ([\d.]+) Å\)")


@pytest.fixture(scope="module")
def maps(structures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A truth map, its copy with a hard low-pass at 10 Å, and maps that do not fit it."""
    folder = tmp_path_factory.mktemp("fsc")
    volume = models_truth([structures / "proteins/4E43.pdb"], BOX, APIX).volumes[0]
    write_map(folder / "truth.mrc", volume.numpy(), APIX)
    write_map(folder / "lowpass.mrc", lowpass(volume, CUTOFF_A, APIX, ndim=3, edge_shells=0).numpy(), APIX)
    write_map(folder / "small.mrc", volume[1:-1, 1:-1, 1:-1].numpy(), APIX)
    write_map(folder / "other_voxel.mrc", volume.numpy(), 2.0)
    write_map(folder / "flat.mrc", volume[:, :, :-2].numpy(), APIX)
    write_map(folder / "flat_too.mrc", torch.flip(volume, (0,))[:, :, :-2].numpy(), APIX)
    return folder


def test_prints_both_resolutions(vitreous, maps: Path) -> None:
    outcome = vitreous("fsc", maps / "truth.mrc", maps / "lowpass.mrc")
    assert outcome.code == 0, outcome
    lines = outcome.out.strip().splitlines()
    assert len(lines) == 1
    at_05, at_0143, voxel = map(float, PRINTED.fullmatch(lines[0]).groups())
    assert voxel == APIX
    # a map against its copy cut at |k| <= 8 (10 Å): FSC 1 up to shell 7, partial in shell 8 (radii 7.5 to 8.5),
    # 0 from shell 9 on, so both thresholds are crossed between shells 8 and 9
    assert SHELL_A[9] <= at_0143 <= at_05 <= SHELL_A[8]
    result = compare_maps(maps / "truth.mrc", maps / "lowpass.mrc")
    assert (at_05, at_0143) == (round(result["fsc_0.5_A"], 2), round(result["fsc_0.143_A"], 2))


def test_identical_maps_correlate_to_nyquist(vitreous, maps: Path) -> None:
    outcome = vitreous("fsc", maps / "truth.mrc", maps / "truth.mrc", "--mask-radius", 30)
    assert outcome.code == 0, outcome
    at_05, at_0143, _ = map(float, PRINTED.fullmatch(outcome.out.strip()).groups())
    assert at_05 == at_0143 == 2 * APIX


BAD_INPUT = {
    "different box": ("small.mrc", ["small.mrc", "does not match"]),
    "different voxel size": ("other_voxel.mrc", ["other_voxel.mrc", "voxel size 2 Å differs from 2.5 Å"]),
    "non-cubic": ("flat.mrc", ["flat.mrc", "not cubic"]),
    "missing": ("absent.mrc", ["absent.mrc", "file not found"]),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_maps_that_do_not_compare_are_refused(vitreous, maps: Path, case: str) -> None:
    other, fragments = BAD_INPUT[case]
    outcome = vitreous("fsc", maps / "truth.mrc", maps / other)
    outcome.assert_error(*fragments)
    assert outcome.out == "" and "Traceback" not in outcome.err


def test_two_non_cubic_maps_of_one_shape_are_refused(vitreous, maps: Path) -> None:
    vitreous("fsc", maps / "flat.mrc", maps / "flat_too.mrc").assert_error("flat.mrc", "not cubic")
