"""Atomic models for simulation: PDB / mmCIF (optionally gzipped) through gemmi, and coordinate trajectories.

Coordinates are Cartesian (x, y, z) in Å, as in the file.  A model is reduced to its first model (NMR
ensembles) and to the first alternative conformation of each atom (kept at full weight).  By default only
polymer residues (protein and nucleic acid) are kept, without water and ligands, and hydrogens (H and D)
are removed: many deposited models have none, so heavy-atom-only maps are the consistent default across
models; ``hydrogens=True`` keeps those present, for PDB files and trajectories alike.

Element symbols come from the file; where a PDB file has no element columns and gemmi's guess from the
atom name is implausible inside a polymer residue (CHARMM names such as ``HG1`` or ``CA`` in column 13 read
as Hg or Ca), the element is taken from the first letter of the atom name, as the PDB naming rules imply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import gemmi
import numpy as np

from vitreous.errors import InputError

HYDROGENS = frozenset({"H", "D"})
POLYMER_ELEMENTS = frozenset({"H", "D", "C", "N", "O", "S", "P", "Se"})  # plausible in protein / nucleic acid


@dataclass(frozen=True, eq=False)
class Atoms:
    """One atomic model: ``coords`` (N, 3) float64 (x, y, z) in Å, ``elements`` (N,) capitalised symbols
    ('C', 'Se'), ``b_factors`` (N,) isotropic B in Å² or None."""

    coords: np.ndarray
    elements: np.ndarray
    b_factors: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.coords.ndim != 2 or self.coords.shape[1] != 3 or len(self.elements) != len(self.coords):
            raise ValueError(f"coords {self.coords.shape} and elements {self.elements.shape} do not match")
        if self.b_factors is not None and self.b_factors.shape != (len(self.coords),):
            raise ValueError(f"b_factors {self.b_factors.shape} do not match {len(self.coords)} atoms")

    def __len__(self) -> int:
        return len(self.coords)


@dataclass(frozen=True, eq=False)
class Trajectory:
    """Frames of one model: ``coords`` (F, N, 3) in Å sharing ``elements`` (N,)."""

    coords: np.ndarray
    elements: np.ndarray

    def __post_init__(self) -> None:
        if self.coords.ndim != 3 or self.coords.shape[2] != 3 or self.coords.shape[1] != len(self.elements):
            raise ValueError(f"coords {self.coords.shape} and elements {self.elements.shape} do not match")

    def __len__(self) -> int:
        return len(self.coords)

    def frame(self, index: int) -> Atoms:
        """Frame ``index`` as an :class:`Atoms` record (no B-factors)."""
        return Atoms(np.asarray(self.coords[index], dtype=np.float64), self.elements)


Model = Atoms | Trajectory
M = TypeVar("M", Atoms, Trajectory)


def _symbol(name: str) -> str:
    """Canonical element symbol ('CL' -> 'Cl'); raises ValueError when gemmi does not know it."""
    element = gemmi.Element(str(name).strip())
    if element.atomic_number == 0:
        raise ValueError(f"unknown element {name!r}")
    return element.name


def _fix_polymer_elements(model: gemmi.Model) -> None:
    """Replace implausible element guesses in polymer residues by the first letter of the atom name."""
    for chain in model:
        for residue in chain:
            if residue.entity_type != gemmi.EntityType.Polymer:
                continue
            for atom in residue:
                if atom.element.name not in POLYMER_ELEMENTS:
                    letters = atom.name.lstrip("0123456789")
                    if letters and letters[0].upper() in POLYMER_ELEMENTS:
                        atom.element = gemmi.Element(letters[0].upper())


def load_atoms(path: str | Path, *, keep_water: bool = False, keep_ligands: bool = False,
               hydrogens: bool = False, model: int = 0) -> Atoms:
    """Read a PDB or mmCIF file (``.gz`` too) into :class:`Atoms` (polymer only, no H unless asked)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", "check the path")
    try:
        st = gemmi.read_structure(str(path))
    except Exception as exc:  # gemmi raises RuntimeError / ValueError for unreadable files
        raise InputError(path, f"not a readable PDB/mmCIF file ({exc})", "check the file format") from None
    if len(st) <= model:
        raise InputError(path, f"model {model} requested but the file has {len(st)} model(s)")
    st.setup_entities()
    st.remove_alternative_conformations()
    chosen = st[model]
    _fix_polymer_elements(chosen)
    coords, elements, b_factors = [], [], []
    for chain in chosen:
        for residue in chain:
            polymer = residue.entity_type == gemmi.EntityType.Polymer
            if not (keep_water if residue.is_water() else polymer or keep_ligands):
                continue
            for atom in residue:
                symbol = atom.element.name
                if symbol in HYDROGENS and not hydrogens:
                    continue
                coords.append(atom.pos.tolist())
                elements.append(symbol)
                b_factors.append(atom.b_iso)
    if not coords:
        raise InputError(path, "no atoms left after removing water, ligands and hydrogens",
                         "pass keep_ligands=True for non-polymer models")
    unknown = sorted({e for e in elements if gemmi.Element(e).atomic_number == 0})
    if unknown:
        raise InputError(path, f"atoms with unknown elements {unknown}", "add element symbols (PDB columns 77-78)")
    return Atoms(np.asarray(coords, dtype=np.float64), np.asarray(elements, dtype="<U2"),
                 np.asarray(b_factors, dtype=np.float64))


def load_trajectory(path: str | Path, *, hydrogens: bool = False) -> Trajectory:
    """Read an ``.npz`` with ``coords_A`` (F, N, 3) in Å and ``elements`` (N,); hydrogens dropped unless asked."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", "check the path")
    try:
        with np.load(path) as data:
            coords = np.asarray(data["coords_A"])
            raw = data["elements"]
    except KeyError as exc:
        raise InputError(path, f"missing array {exc}", "save coords_A (F, N, 3) and elements (N,)") from None
    except Exception as exc:
        raise InputError(path, f"not a readable .npz file ({exc})") from None
    try:
        elements = np.asarray([_symbol(e) for e in raw], dtype="<U2")
    except ValueError as exc:
        raise InputError(path, str(exc), "use element symbols such as C, N, O") from None
    if coords.ndim != 3 or coords.shape[1:] != (len(elements), 3):
        raise InputError(path, f"coords_A has shape {coords.shape}, expected (F, {len(elements)}, 3)")
    keep = np.ones(len(elements), bool) if hydrogens else ~np.isin(elements, list(HYDROGENS))
    return Trajectory(coords[:, keep], elements[keep])


def masses(elements: np.ndarray) -> np.ndarray:
    """Atomic masses (u) of element symbols (N,)."""
    return _per_element(elements, lambda e: e.weight)


def scattering_weights(elements: np.ndarray) -> np.ndarray:
    """Electron scattering factors at zero angle ``f(0)`` (Å, ITC 4.3.2.2) of element symbols (N,): each
    atom's integral of potential, so centring on these weights puts the centroid of its map at the origin."""
    return _per_element(elements, lambda e: sum(e.c4322.a))


def _per_element(elements: np.ndarray, value: Callable[[gemmi.Element], float]) -> np.ndarray:
    symbols, inverse = np.unique(np.asarray(elements), return_inverse=True)
    table = np.array([value(gemmi.Element(str(s))) for s in symbols], dtype=np.float64)
    return table[inverse.reshape(-1)]


def centre_of_mass(model: Model, weighting: str = "mass") -> np.ndarray:
    """Weighted centre (3,) in Å (x, y, z), by atomic ``"mass"`` or by ``"scattering"`` (``f(0)``) weights;
    for a trajectory the mean over frames (one common centre)."""
    if weighting not in ("mass", "scattering"):
        raise ValueError(f"weighting must be 'mass' or 'scattering', not {weighting!r}")
    weights = masses(model.elements) if weighting == "mass" else scattering_weights(model.elements)
    coords = np.asarray(model.coords, dtype=np.float64)
    com = np.einsum("...ni,n->...i", coords, weights) / weights.sum()
    return com.mean(axis=0) if com.ndim == 2 else com


def centred(model: M, centre: np.ndarray | None = None, weighting: str = "mass") -> M:
    """``model`` translated so that ``centre`` (Å; default :func:`centre_of_mass` with ``weighting``) is at
    the origin.

    A trajectory is moved as one rigid whole, so its frames stay in one frame of reference.
    """
    centre = centre_of_mass(model, weighting) if centre is None else np.asarray(centre, np.float64).reshape(3)
    return replace(model, coords=np.asarray(model.coords, dtype=np.float64) - centre)


def radius(model: Model, centre: np.ndarray | None = None) -> float:
    """Largest distance (Å) of any atom (in any frame) from ``centre`` (default :func:`centre_of_mass`)."""
    centre = centre_of_mass(model) if centre is None else np.asarray(centre, dtype=np.float64).reshape(3)
    return float(np.sqrt(((np.asarray(model.coords, dtype=np.float64) - centre) ** 2).sum(-1)).max())


def box_size(radius_A: float, apix: float, margin_A: float = 5.0) -> int:
    """Smallest even box (voxels) whose side ``D * apix`` holds a sphere of ``radius_A + margin_A`` Å."""
    side = 2.0 * (radius_A + margin_A) / apix
    return int(2 * np.ceil(side / 2.0))
