"""Every real file under shared/data/real either reads or raises a one-line InputError that says what to do.

Parametrized over globs, so files added to the data folder are covered without touching this test.
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from vitreous.errors import InputError
from vitreous.io.cryodrgn import read_ctf_pkl, read_pose_pkl
from vitreous.io.formats import read_particles
from vitreous.io.mrc import read_header, read_map
from vitreous.io.stack import ImageStack

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"


def _files(*patterns: str) -> list[Path]:
    found = sorted({p for pattern in patterns for p in REAL.glob(f"**/{pattern}")}) if REAL.is_dir() else []
    return [pytest.param(p, id=str(p.relative_to(REAL))) for p in found]


METADATA = _files("*.star", "*.cs")
MRC = _files("*.mrc", "*.mrcs", "*.map")
PICKLES = _files("*.pkl")


@pytest.mark.parametrize("path", METADATA)
def test_metadata_reads_or_explains(path: Path, one_line_error) -> None:
    try:
        particles = read_particles(path)
    except InputError as exc:
        message = one_line_error(exc, path)
        if "not found" in message:
            assert "--datadir" in message
        else:
            assert any(s in message for s in ("no particle table", "no data loop", "--apix")), message
        return
    assert len(particles) > 0 and particles.images is not None
    assert len(particles.images) == len(particles) and particles.box > 0
    assert np.all(particles.pixel_size > 0)
    first = particles.images.read([0])
    assert first.shape == (1, particles.box, particles.box) and first.dtype == np.float32


@pytest.mark.parametrize("path", METADATA)
def test_metadata_reads_without_images(path: Path, one_line_error) -> None:
    """Metadata alone: particle files read (stacks or not); other STAR files are refused as such."""
    try:
        particles = read_particles(path, load_images=False)
    except InputError as exc:
        message = one_line_error(exc, path)
        assert any(s in message for s in ("no particle table", "no data loop", "--apix")), message
        return
    assert len(particles) > 0 and particles.images is None
    assert "rlnImageName" in particles.particles


def test_expected_outcomes(real_data: Path) -> None:
    """The cases the issue names: stacks missing -> --datadir; model.star -> no particle table."""
    with pytest.raises(InputError, match="--datadir"):
        read_particles(real_data / "metadata/empiar10330_pfcrt/FinalRefinement-OriginalParticles-PfCRT.star")
    with pytest.raises(InputError, match="--datadir"):
        read_particles(real_data / "metadata/cryosparc_dnatet_2019ptcl/cryosparc_P12_J24_001_particles.cs")
    with pytest.raises(InputError, match="no particle table"):
        read_particles(real_data / "metadata/misc/relion_model_example.star")
    relion5 = read_particles(real_data / "metadata/misc/relion5.star", load_images=False)
    assert relion5.single_pixel_size() == pytest.approx(0.89)
    groups = read_particles(real_data / "particles/relion31_5ptcl/relion31.6opticsgroups.star", load_images=False)
    assert len(groups) == 139 and len(groups.optics) == 6


@pytest.mark.filterwarnings("ignore:.*(Map ID|machine stamp):RuntimeWarning")  # old headers, read by mrcfile
@pytest.mark.parametrize("path", MRC)
def test_mrc_reads(path: Path, one_line_error) -> None:
    header = read_header(path)
    with mrcfile.open(path, permissive=True) as mrc:
        expected = np.asarray(mrc.data, np.float32).reshape(header.n, header.ny, header.nx)
    if header.ny == header.nx:
        stack = ImageStack.from_file(path)
        assert len(stack) == header.n
        np.testing.assert_array_equal(stack.read([header.n - 1, 0]), expected[[header.n - 1, 0]])
    else:  # e.g. the MicroED map EMD-3001: fine as a map, not as particle images
        with pytest.raises(InputError, match="not square") as info:
            ImageStack.from_file(path)
        one_line_error(info.value, path)
    if path.relative_to(REAL).parts[0] == "maps":  # maps (stacks named .mrc are read as stacks above)
        volume, voxel = read_map(path)
        np.testing.assert_array_equal(volume, expected)
        assert voxel == pytest.approx(header.voxel_size) and voxel > 0


@pytest.mark.parametrize("path", PICKLES)
def test_cryodrgn_pickles_read(path: Path) -> None:
    if "pose" in path.name:
        rot, trans = read_pose_pkl(path)
        np.testing.assert_allclose(rot @ rot.swapaxes(1, 2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)
        assert trans is not None and trans.shape == (len(rot), 2)
    else:
        ctf = read_ctf_pkl(path)
        assert ctf.shape[1] == 9 and np.all(ctf[:, :2] > 0)
