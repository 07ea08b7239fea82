"""Potential maps of atomic models (vitreous.sim.density): values, frame, hand, sampling and speed."""

from __future__ import annotations

import math
import time
from pathlib import Path

import gemmi
import numpy as np
import pytest
import torch

from vitreous.analysis.fsc import fsc_curve, resolution_at
from vitreous.io.mrc import read_map, write_map
from vitreous.sim.atoms import Atoms, centred, load_atoms, load_trajectory, radius
from vitreous.sim.density import auto_blur, density_map, scattering_coefficients, trajectory_maps

ADK_OPEN = "adk/adk_open.pdb"
ADK_CLOSED = "adk/adk_closed.pdb"


@pytest.fixture(scope="module")
def adk_open(structures: Path) -> Atoms:
    return centred(load_atoms(structures / ADK_OPEN))


def as_numpy(m: torch.Tensor) -> np.ndarray:
    return m.detach().cpu().numpy().astype(np.float64)


def fourier_crop(volume: np.ndarray, box: int) -> np.ndarray:
    """Resample a cubic map to a smaller box by cropping its centred spectrum (origin stays at voxel D//2)."""
    size = volume.shape[0]
    spectrum = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(volume)))
    s = size // 2 - box // 2
    cropped = spectrum[s:s + box, s:s + box, s:s + box]
    return np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(cropped))).real * (box / size) ** 3


def gaussian_filter(volume: np.ndarray, apix: float, b: float) -> np.ndarray:
    """Multiply the spectrum by ``exp(-b q^2 / 4)`` (q in 1/Å): the same blur as adding ``b`` to every atom."""
    freq = np.fft.fftfreq(volume.shape[0], apix)
    q2 = sum(g**2 for g in np.meshgrid(freq, freq, freq, indexing="ij"))
    return np.fft.ifftn(np.fft.fftn(volume) * np.exp(-b * q2 / 4)).real


def gemmi_density(atoms: Atoms, box: int, apix: float, blur: float) -> np.ndarray:
    """gemmi's DensityCalculatorE on a P1 cell of side box*apix, atoms shifted by D//2 voxels, as [z, y, x]."""
    side = box * apix
    st = gemmi.Structure()
    st.cell = gemmi.UnitCell(side, side, side, 90, 90, 90)
    st.spacegroup_hm = "P 1"
    model, chain, residue = gemmi.Model("1"), gemmi.Chain("A"), gemmi.Residue()
    residue.name, residue.seqid = "UNK", gemmi.SeqId(1, " ")
    for xyz, element in zip(atoms.coords + box // 2 * apix, atoms.elements, strict=True):
        atom = gemmi.Atom()
        atom.name, atom.element, atom.pos, atom.b_iso, atom.occ = element, gemmi.Element(element), \
            gemmi.Position(*xyz), 0.0, 1.0
        residue.add_atom(atom)
    chain.add_residue(residue)
    model.add_chain(chain)
    st.add_model(model)
    calc = gemmi.DensityCalculatorE()
    calc.blur, calc.cutoff = blur, 1e-7
    calc.grid.set_unit_cell(st.cell)
    calc.grid.spacegroup = st.find_spacegroup()
    calc.grid.set_size(box, box, box)
    calc.add_model_density_to_grid(st[0])
    return np.array(calc.grid, copy=False).astype(np.float64).transpose(2, 1, 0)  # gemmi grids are [x, y, z]


def test_scattering_coefficients_are_itc_4322() -> None:
    a, b = scattering_coefficients(np.array(["C", "O", "C", "S"]))
    assert a.shape == b.shape == (4, 5)
    np.testing.assert_allclose(a[0], a[2])
    # Peng et al. 1996 / ITC C 4.3.2.2 carbon: f(0) = 2.5088 Å, first term (0.0893, 0.2465)
    assert a[0].sum() == pytest.approx(2.5088, abs=1e-4)
    assert (a[0, 0], b[0, 0]) == pytest.approx((0.0893, 0.2465))
    with pytest.raises(ValueError):
        scattering_coefficients(np.array(["X"]))


def test_matches_gemmi_density_calculator(adk_open: Atoms) -> None:
    """Same values, frame and hand as gemmi's electron density calculator (independent implementation)."""
    box, apix = 64, 1.5
    ours = as_numpy(density_map(adk_open, box, apix, dtype=torch.float64))
    reference = gemmi_density(adk_open, box, apix, auto_blur(apix))
    assert np.abs(ours - reference).max() < 1e-4 * reference.max()
    assert ours.sum() * apix**3 == pytest.approx(scattering_coefficients(adk_open.elements)[0].sum(), rel=1e-4)


def test_matches_analytic_fourier_transform() -> None:
    """The map's DFT equals the continuous transform ``sum_j f_j(q) exp(-B q^2/4) exp(-2 pi i q.r_j)`` at the
    DFT frequencies, well inside Nyquist (where aliases are negligible): scale, centring and hand."""
    rng = np.random.default_rng(0)
    atoms = Atoms(rng.uniform(-8, 8, (25, 3)), rng.choice(np.array(["C", "N", "O", "S"]), 25))
    box, apix, b_factor = 32, 1.2, 15.0
    blur = auto_blur(apix)
    volume = as_numpy(density_map(atoms, box, apix, b_factor=b_factor, dtype=torch.float64))
    k = np.fft.fftfreq(box, 1 / box)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    # voxel i is at (i - D//2) apix: undo that origin shift to get the transform about r = 0
    dft = np.fft.fftn(volume) * np.exp(2j * np.pi * (kx + ky + kz) * (box // 2) / box) * apix**3
    q = np.stack([kx, ky, kz], -1) / (box * apix)  # (x, y, z) frequencies, 1/Å
    q2 = (q**2).sum(-1)
    low = q2 < (0.5 * 0.5 / apix) ** 2  # half Nyquist
    a, b = scattering_coefficients(atoms.elements)
    form = (a[:, None, :] * np.exp(-(b[:, None, :] + b_factor + blur) * q2[low][None, :, None] / 4)).sum(-1)
    phase = np.exp(-2j * np.pi * atoms.coords @ q[low].T)
    analytic = (form * phase).sum(0)
    assert np.abs(dft[low] - analytic).max() < 2e-3 * np.abs(analytic).max()
    mirrored = (form * np.exp(-2j * np.pi * (atoms.coords * [-1, 1, 1]) @ q[low].T)).sum(0)
    assert np.abs(dft[low] - mirrored).max() > 0.1 * np.abs(analytic).max()


def test_hand_voxel_indices(tmp_path: Path) -> None:
    """Atoms at +x, +y, +z (distinct elements) land on array[z, y, x], also after an MRC round trip."""
    box, apix = 48, 1.0
    positions = {"S": (10.0, 0.0, 0.0), "O": (0.0, 6.0, 0.0), "N": (0.0, 0.0, -12.0), "C": (3.0, -4.0, 5.0)}
    c = box // 2
    expected = {"S": (c, c, c + 10), "O": (c, c + 6, c), "N": (c - 12, c, c), "C": (c + 5, c - 4, c + 3)}
    for element, xyz in positions.items():
        volume = as_numpy(density_map(Atoms(np.array([xyz]), np.array([element])), box, apix))
        assert np.unravel_index(np.argmax(volume), volume.shape) == expected[element]
    chiral = Atoms(np.array(list(positions.values())), np.array(list(positions)))
    path = tmp_path / "chiral.mrc"
    write_map(path, as_numpy(density_map(chiral, box, apix)), apix)
    data, voxel = read_map(path)
    assert voxel == pytest.approx(apix)
    for element, index in expected.items():
        window = data[tuple(slice(i - 1, i + 2) for i in index)]
        assert data[index] == window.max() > 0.1 * data.max(), element


def test_subvoxel_position_and_centring(structures: Path) -> None:
    """A half-voxel offset moves the peak centroid by half a voxel; a centred model's map has its centroid
    at voxel D//2 (to a fraction of a voxel for centre of mass, exactly for scattering-weighted centring)."""
    box, apix = 32, 1.0
    for shift in (0.0, 0.5, 0.25):
        volume = as_numpy(density_map(Atoms(np.array([[shift, 0.0, 0.0]]), np.array(["C"])), box, apix))
        grid = np.arange(box) - box // 2
        assert (volume.sum((0, 1)) * grid).sum() / volume.sum() == pytest.approx(shift, abs=1e-3)
    atoms = load_atoms(structures / "proteins/8zpm.cif")
    for weighting, tolerance in (("mass", 0.35), ("scattering", 0.01)):
        model = centred(atoms, weighting=weighting)
        apix = 1.0
        box = int(2 * math.ceil(radius(model) + 8))
        volume = as_numpy(density_map(model, box, apix))
        grid = np.arange(box) - box // 2
        centroid = [(volume.sum(axis=tuple(j for j in range(3) if j != ax)) * grid).sum() / volume.sum()
                    for ax in range(3)]
        assert np.abs(centroid).max() < tolerance, weighting


def test_mirror_has_lower_fsc(adk_open: Atoms) -> None:
    """The mirrored map is the grid mirror of the map and correlates far worse with the true reference."""
    box, apix = 64, 1.5
    volume = as_numpy(density_map(adk_open, box, apix))
    mirror_atoms = Atoms(adk_open.coords * [-1.0, 1.0, 1.0], adk_open.elements)
    mirror = as_numpy(density_map(mirror_atoms, box, apix))
    # x -> -x about voxel D//2 is index i -> D - i (mod D)
    np.testing.assert_allclose(mirror, np.roll(volume[:, :, ::-1], 1, axis=2), atol=1e-5 * volume.max())
    reference = gemmi_density(adk_open, box, apix, auto_blur(apix))
    freq, true_fsc = fsc_curve(volume, reference, apix)
    _, mirror_fsc = fsc_curve(mirror, reference, apix)
    assert true_fsc[1:].min() > 0.999
    assert resolution_at(freq, mirror_fsc, 0.5) > 15.0
    assert (mirror_fsc[4:] < true_fsc[4:] - 0.2).all()


def test_pixel_sizes_agree_after_resampling(adk_open: Atoms) -> None:
    """Maps at 0.75 and 1.5 Å/px of the same model agree once the fine one is Fourier-cropped and given the
    coarse map's larger blur: differences are the aliasing left near Nyquist, a few percent."""
    fine = as_numpy(density_map(adk_open, 128, 0.75, dtype=torch.float64))
    coarse = as_numpy(density_map(adk_open, 64, 1.5, dtype=torch.float64))
    resampled = gaussian_filter(fourier_crop(fine, 64), 1.5, auto_blur(1.5) - auto_blur(0.75))
    assert np.linalg.norm(resampled - coarse) < 0.03 * np.linalg.norm(coarse)
    assert np.abs(resampled - coarse).max() < 0.05 * coarse.max()
    freq, fsc = fsc_curve(resampled, coarse, 1.5)
    assert fsc[freq < 0.8 / 3.0].min() > 0.99  # up to 0.8 Nyquist
    assert fsc.min() > 0.9


def test_open_and_closed_differ(structures: Path) -> None:
    box, apix = 64, 1.5
    opened = centred(load_atoms(structures / ADK_OPEN))
    closed = centred(load_atoms(structures / ADK_CLOSED))
    freq, fsc = fsc_curve(as_numpy(density_map(opened, box, apix)), as_numpy(density_map(closed, box, apix)), apix)
    assert fsc[1] > 0.8  # same protein, same mass
    assert resolution_at(freq, fsc, 0.5) > 12.0  # 7 Å CA RMSD: no agreement at secondary-structure detail
    assert fsc[-8:].max() < 0.5


def test_b_factors_and_blur(adk_open: Atoms) -> None:
    box, apix = 48, 2.0
    sharp = as_numpy(density_map(adk_open, box, apix))
    soft = as_numpy(density_map(adk_open, box, apix, b_factor=100.0))
    # a global B multiplies the spectrum by exp(-B q^2 / 4) (compared inside half Nyquist, free of aliases)
    freq = np.fft.fftfreq(box, apix)
    q2 = sum(g**2 for g in np.meshgrid(freq, freq, freq, indexing="ij"))
    low = q2 < (0.25 / apix) ** 2
    expected = np.fft.fftn(sharp)[low] * np.exp(-100.0 * q2[low] / 4)
    assert np.abs(np.fft.fftn(soft)[low] - expected).max() < 1e-3 * np.abs(expected).max()
    with_model_b = as_numpy(density_map(adk_open, box, apix, use_atom_b=True))
    assert with_model_b.max() < sharp.max()
    assert with_model_b.sum() == pytest.approx(sharp.sum(), rel=1e-3)
    with pytest.raises(ValueError):
        density_map(Atoms(adk_open.coords, adk_open.elements), box, apix, use_atom_b=True)
    with pytest.raises(ValueError):
        density_map(adk_open, box, apix, blur=0.0, b_factor=-1.0)
    # atoms outside the box are cut, not wrapped
    outside = Atoms(np.array([[60.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), np.array(["C", "C"]))
    volume = as_numpy(density_map(outside, box, apix))
    single = as_numpy(density_map(Atoms(np.zeros((1, 3)), np.array(["C"])), box, apix))
    np.testing.assert_allclose(volume, single, atol=1e-7)


def test_trajectory_batch(structures: Path) -> None:
    traj = centred(load_trajectory(structures / "adk/adk_dims_traj.npz"))
    box, apix = 64, 1.5
    maps = trajectory_maps(traj, box, apix, frames=np.array([0, 1, 49, 97]))
    assert maps.shape == (4, box, box, box)
    for k, i in enumerate((0, 1, 49, 97)):
        torch.testing.assert_close(maps[k], density_map(traj.frame(i), box, apix), rtol=0, atol=1e-6)
    freq, near = fsc_curve(maps[0], maps[1], apix)
    _, far = fsc_curve(maps[0], maps[3], apix)
    assert resolution_at(freq, near, 0.5) < 4.0 < 12.0 < resolution_at(freq, far, 0.5)


def test_speed(adk_open: Atoms, structures: Path) -> None:
    """Well under a second for adk with hydrogens (3341 atoms) at D = 64."""
    atoms = centred(load_atoms(structures / ADK_OPEN, hydrogens=True))
    assert len(atoms) == 3341
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        volume = density_map(atoms, 64, 1.5)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.5
    assert float(volume.max()) > 0
