"""``vitreous eval-vol``: one MRC per latent point with the model's voxel size, a ChimeraX series script, and
bad input (one line, exit code 2, no job folder).  The trained model is a stand-in with the attributes of
:func:`vitreous.neural.trained.load_trained`'s result, whose volume at z is ``z[0] * ramp + z[1]``."""

from __future__ import annotations

import json
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from vitreous.errors import InputError
from vitreous.io.mrc import read_map

BOX, APIX = 12, 2.5
RAMP = np.arange(BOX**3, dtype=np.float32).reshape((BOX,) * 3) / BOX**3


class FakeTrained:
    """What eval-vol uses of a trained model; records the batch sizes asked for."""

    def __init__(self, zdim: int) -> None:
        self.zdim, self.box, self.pixel_size = zdim, BOX, APIX
        self.z = None
        self.batch_sizes: list[int] = []

    def volumes(self, z: np.ndarray, batch_size: int = 8) -> Iterator[np.ndarray]:
        self.batch_sizes.append(batch_size)
        for row in z:
            yield (row[0] * RAMP + row[1]).astype(np.float32) if self.zdim else RAMP


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, FakeTrained]:
    """A folder standing for a train-vae job with zdim 2, its model served by a stand-in load_trained."""
    folder = tmp_path / "train"
    folder.mkdir()
    trained = FakeTrained(2)

    def load_trained(out_dir: Path, device: str = "cpu", class_number: int | None = None) -> FakeTrained:
        if Path(out_dir) != folder:
            raise InputError(out_dir, "not a train-vae or train-field job folder", "give the folder they wrote")
        return trained

    monkeypatch.setitem(sys.modules, "vitreous.neural.trained", types.SimpleNamespace(load_trained=load_trained))
    return folder, trained


def test_eval_vol_writes_one_map_per_row_with_the_models_voxel_size(vitreous, model, tmp_path: Path) -> None:
    folder, trained = model
    z = np.array([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]])
    np.save(tmp_path / "z.npy", z)
    out = tmp_path / "vols"
    result = vitreous("eval-vol", folder, "--z", tmp_path / "z.npy", "-o", out, "--batch-size", 2)
    assert result.code == 0, result.err
    files = sorted(out.glob("vol_*.mrc"))
    assert [f.name for f in files] == ["vol_000.mrc", "vol_001.mrc", "vol_002.mrc"]
    for row, path in zip(z, files, strict=True):
        volume, voxel = read_map(path)
        assert voxel == pytest.approx(APIX) and volume.shape == (BOX,) * 3
        np.testing.assert_allclose(volume, row[0] * RAMP + row[1], atol=1e-6)  # row order kept
    assert trained.batch_sizes == [2]
    np.testing.assert_allclose(np.loadtxt(out / "z_values.txt"), z)
    script = (out / "series.cxc").read_text()
    pattern = re.search(r"^open (\S+) vseries true$", script, re.M).group(1)
    assert sorted(out.glob(pattern)) == files  # ChimeraX runs a .cxc from its own folder
    level = float(re.search(r"level (\S+)", script).group(1))
    assert min(read_map(f)[0].min() for f in files) < level < max(read_map(f)[0].max() for f in files)
    record = json.loads((out / "job.json").read_text())
    assert record["status"] == "finished" and record["command"] == "eval-vol"
    assert "data:image/png" in (out / "report.html").read_text()


def test_eval_vol_takes_points_on_the_command_line_and_as_text(vitreous, model, tmp_path: Path) -> None:
    folder, _ = model
    result = vitreous("eval-vol", folder, "--z-values", "1,0; 0, 2", "-o", tmp_path / "a")
    assert result.code == 0, result.err
    np.testing.assert_allclose(read_map(tmp_path / "a" / "vol_001.mrc")[0], RAMP * 0 + 2, atol=1e-6)
    (tmp_path / "centers.txt").write_text("1 0\n0 2\n")
    result = vitreous("eval-vol", folder, "--z", tmp_path / "centers.txt", "-o", tmp_path / "b")
    assert result.code == 0, result.err
    for name in ("vol_000.mrc", "vol_001.mrc"):
        np.testing.assert_array_equal(read_map(tmp_path / "a" / name)[0], read_map(tmp_path / "b" / name)[0])


def test_eval_vol_of_a_field_without_latent_space_writes_its_one_volume(vitreous, model, tmp_path: Path) -> None:
    folder, trained = model
    trained.zdim = 0
    result = vitreous("eval-vol", folder, "-o", tmp_path / "field")
    assert result.code == 0, result.err
    assert [f.name for f in (tmp_path / "field").glob("vol_*.mrc")] == ["vol_000.mrc"]
    vitreous("eval-vol", folder, "--z-values", "1", "-o", tmp_path / "x").assert_error("no latent space")


@pytest.mark.parametrize(("args", "fragments"), [
    (("--z-values", "1,2,3"), ("(1, 3)", "zdim 2")),
    (("--z-values", "1,2;3"), ("different lengths",)),
    (("--z-values", "1,a"), ("not a list of numbers",)),
    (("--z-values", "1,nan"), ("NaN",)),
    (("--z-values", "1,2", "--z", "missing.npy"), ("exclude each other",)),
    ((), ("no latent points given",)),
    (("--z", "missing.npy"), ("missing.npy", "file not found")),
    (("--z-values", "1,2", "--batch-size", "0"), ("--batch-size 0",)),
])
def test_eval_vol_bad_input_is_one_line_and_touches_nothing(vitreous, model, tmp_path: Path, args,
                                                            fragments) -> None:
    folder, _ = model
    out = tmp_path / "vols"
    vitreous("eval-vol", folder, "-o", out, *args).assert_error(*fragments)
    assert not out.exists()


def test_eval_vol_refuses_an_unreadable_z_file(vitreous, model, tmp_path: Path) -> None:
    folder, _ = model
    (tmp_path / "z.txt").write_text("1 2\n3\n")
    vitreous("eval-vol", folder, "--z", tmp_path / "z.txt", "-o", tmp_path / "v").assert_error("z.txt",
                                                                                            "not a readable")
    np.save(tmp_path / "z3.npy", np.zeros((4, 3)))
    vitreous("eval-vol", folder, "--z", tmp_path / "z3.npy", "-o", tmp_path / "v").assert_error("z3.npy", "zdim 2")


def test_eval_vol_refuses_a_folder_that_is_not_a_trained_model(vitreous, tmp_path: Path) -> None:
    """With the real loader (skipped until vitreous.neural.trained exists)."""
    pytest.importorskip("vitreous.neural.trained")
    vitreous("eval-vol", tmp_path / "nowhere", "--z-values", "0", "-o", tmp_path / "v").assert_error("nowhere")
    assert not (tmp_path / "v").exists()
