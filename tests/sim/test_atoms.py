"""Atomic model and trajectory loading, centring and radius (vitreous.sim.atoms) on the shared structures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vitreous.errors import InputError
from vitreous.sim.atoms import (
    Atoms,
    Trajectory,
    box_size,
    centre_of_mass,
    centred,
    load_atoms,
    load_trajectory,
    masses,
    radius,
)

# heavy atoms of the polymer (protein) part, after removing water, ligands, hydrogens and alternative confs
HEAVY_ATOMS = {
    "adk/adk_open.pdb": 1656,
    "adk/adk_closed.pdb": 1656,
    "proteins/1BD2.cif.gz": 6339,
    "proteins/1hvr.pdb": 1514,
    "proteins/1osm.pdb.gz": 1431,
    "proteins/4E43.pdb": 1571,
    "proteins/5PTI.cif.gz": 454,
    "proteins/8zpm.cif": 3140,
}


def kabsch_rmsd(p: np.ndarray, q: np.ndarray) -> float:
    """RMSD (Å) of two (N, 3) coordinate sets after optimal superposition."""
    p, q = p - p.mean(0), q - q.mean(0)
    u, s, vt = np.linalg.svd(p.T @ q)
    s[-1] *= np.sign(np.linalg.det(u @ vt))
    return float(np.sqrt(max(((p**2).sum() + (q**2).sum() - 2 * s.sum()) / len(p), 0.0)))


def test_structures_cover_all_formats(structures: Path) -> None:
    names = set(HEAVY_ATOMS)
    assert {n for n in names if n.endswith(".pdb")} and {n for n in names if n.endswith(".pdb.gz")}
    assert {n for n in names if n.endswith(".cif")} and {n for n in names if n.endswith(".cif.gz")}
    on_disk = {str(p.relative_to(structures)) for p in structures.glob("*/*") if ".pdb" in p.name or ".cif" in p.name}
    assert on_disk == names


@pytest.mark.parametrize("name", sorted(HEAVY_ATOMS))
def test_reads_every_model(structures: Path, name: str) -> None:
    atoms = load_atoms(structures / name)
    assert len(atoms) == HEAVY_ATOMS[name]
    assert atoms.coords.shape == (len(atoms), 3) and atoms.coords.dtype == np.float64
    assert set(atoms.elements) <= {"C", "N", "O", "S"}
    assert atoms.b_factors is not None and np.isfinite(atoms.b_factors).all()
    # chemistry sanity: a protein is about half carbon, and bonded neighbours sit 1.2-1.9 Å apart
    assert 0.5 < np.mean(atoms.elements == "C") < 0.7
    nearest = np.sort(np.linalg.norm(atoms.coords[:200, None] - atoms.coords[None], axis=-1), axis=1)[:, 1]
    assert np.median(nearest) == pytest.approx(1.4, abs=0.15)
    with_h = load_atoms(structures / name, hydrogens=True)
    n_h = int(np.isin(with_h.elements, ["H", "D"]).sum())
    assert len(with_h) == len(atoms) + n_h
    np.testing.assert_array_equal(with_h.coords[~np.isin(with_h.elements, ["H", "D"])], atoms.coords)


def test_water_and_ligands_are_options(structures: Path) -> None:
    plain = load_atoms(structures / "proteins/4E43.pdb")
    wet = load_atoms(structures / "proteins/4E43.pdb", keep_water=True)
    assert len(wet) == len(plain) + 188  # 188 waters, one O each
    assert (wet.elements == "O").sum() == (plain.elements == "O").sum() + 188
    with_ligand = load_atoms(structures / "proteins/1hvr.pdb", keep_ligands=True)
    assert len(with_ligand) > len(load_atoms(structures / "proteins/1hvr.pdb"))


def test_charmm_pdb_elements_match_trajectory(structures: Path) -> None:
    """adk PDBs have no element columns (CHARMM names from column 13): elements follow the atom names and
    agree with the trajectory's (MDAnalysis) elements atom by atom."""
    pdb = load_atoms(structures / "adk/adk_open.pdb", hydrogens=True)
    traj = load_trajectory(structures / "adk/adk_dims_traj.npz", hydrogens=True)
    assert len(pdb) == 3341
    np.testing.assert_array_equal(pdb.elements, traj.elements)
    counts = {e: int((pdb.elements == e).sum()) for e in ("C", "N", "O", "S", "H")}
    assert sum(counts.values()) == 3341 and counts["S"] == 7  # 6 Met SD + 1 Cys SG


def test_trajectory(structures: Path) -> None:
    traj = load_trajectory(structures / "adk/adk_dims_traj.npz")
    closed = load_atoms(structures / "adk/adk_closed.pdb")
    opened = load_atoms(structures / "adk/adk_open.pdb")
    assert len(traj) == 98 and traj.coords.shape == (98, 1656, 3)
    np.testing.assert_array_equal(traj.elements, closed.elements)  # same atoms, same order, H removed alike
    # the transition runs from closed to open (heavy-atom RMSD after superposition, Å)
    assert kabsch_rmsd(traj.coords[0], closed.coords) < 1.0 < 6.0 < kabsch_rmsd(traj.coords[0], opened.coords)
    assert kabsch_rmsd(traj.coords[-1], opened.coords) < 2.0 < 6.0 < kabsch_rmsd(traj.coords[-1], closed.coords)
    frame = traj.frame(5)
    assert isinstance(frame, Atoms) and frame.b_factors is None
    np.testing.assert_allclose(frame.coords, traj.coords[5])


def test_centring_single_model(structures: Path) -> None:
    atoms = load_atoms(structures / "proteins/5PTI.cif.gz")
    com = centre_of_mass(atoms)
    m = masses(atoms.elements)
    np.testing.assert_allclose(com, (atoms.coords * m[:, None]).sum(0) / m.sum())
    moved = centred(atoms)
    np.testing.assert_allclose(centre_of_mass(moved), 0.0, atol=1e-9)
    assert radius(moved) == pytest.approx(radius(atoms))
    assert radius(moved, np.zeros(3)) == pytest.approx(np.linalg.norm(moved.coords, axis=1).max())
    given = centred(atoms, centre=np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(given.coords, atoms.coords - [1.0, 2.0, 3.0])
    assert given.b_factors is atoms.b_factors
    scattering = centred(atoms, weighting="scattering")
    np.testing.assert_allclose(centre_of_mass(scattering, "scattering"), 0.0, atol=1e-9)
    with pytest.raises(ValueError):
        centre_of_mass(atoms, "charge")


def test_trajectory_has_one_common_centre(structures: Path) -> None:
    traj = load_trajectory(structures / "adk/adk_dims_traj.npz")
    moved = centred(traj)
    # one rigid shift for all frames: frame-to-frame displacements are untouched
    shift = traj.coords - moved.coords
    np.testing.assert_allclose(shift, np.broadcast_to(shift[0, 0], shift.shape), atol=1e-4)
    per_frame = np.stack([centre_of_mass(moved.frame(i)) for i in range(len(moved))])
    np.testing.assert_allclose(per_frame.mean(0), 0.0, atol=1e-6)
    assert np.abs(per_frame).max() > 0.1  # the domains move, so frames are not re-centred individually
    assert radius(moved, np.zeros(3)) >= max(radius(moved.frame(i), np.zeros(3)) for i in (0, 97))


def test_box_size() -> None:
    for r, apix in ((36.0, 1.5), (20.0, 1.0), (72.8, 2.1)):
        box = box_size(r, apix, margin_A=5.0)
        assert box % 2 == 0 and box * apix >= 2 * (r + 5.0) > (box - 2) * apix


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_atoms(tmp_path / "missing.pdb")
    bad = tmp_path / "bad.npz"
    np.savez(bad, coords=np.zeros((1, 2, 3)))
    with pytest.raises(InputError, match="coords_A"):
        load_trajectory(bad)
    shape = tmp_path / "shape.npz"
    np.savez(shape, coords_A=np.zeros((1, 2, 3)), elements=np.array(["C", "N", "O"]))
    with pytest.raises(InputError, match="shape"):
        load_trajectory(shape)
    with pytest.raises(ValueError):
        Atoms(np.zeros((3, 3)), np.array(["C", "N"]))
    with pytest.raises(ValueError):
        Trajectory(np.zeros((2, 3, 2)), np.array(["C", "N", "O"]))
