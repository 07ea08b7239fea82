"""Gold-standard backprojection (vitreous.reconstruct.backproject) of simulated particles with known poses.

Acceptance: the map of 2000 particles of the HIV-1 protease dimer (box 32, 2.5 Å/px, SNR 0.1) matches the
truth, not its mirror image; origin shifts are undone with the right sign; the CTF correction matters; a point
group inserts every particle at its symmetry mates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vitreous.analysis.fsc import fsc_curve, resolution_at
from vitreous.data.particles import DEFOCUS, EULER, ParticleSet
from vitreous.errors import InputError
from vitreous.physics.projection import padded_size, padded_to_volume
from vitreous.physics.symmetry import symmetrize_volume, symmetry_expand
from vitreous.reconstruct.backproject import (
    MASK_EDGE_PX,
    HalfMaps,
    HalfSetBackprojector,
    _to_volume,
    assign_halves,
    backproject,
    solvent_mask,
)
from vitreous.sim.particles import Acquisition, simulate_stack
from vitreous.sim.truth import models_truth

APIX, BOX, N, SNR = 2.5, 32, 2000, 0.1
NYQUIST_A = 2 * APIX
# Bar for FSC(map, truth) = 0.5: 10 Å = 4 px, half-way in frequency to Nyquist (5 Å).  The map of 2000 particles
# at SNR 0.1 reaches ~7.5 Å here; a wrong hand, shift sign or ignored CTF leaves it beyond 19 Å.
ACCEPTANCE_A = 10.0


@pytest.fixture(scope="module")
def truth(structures: Path) -> torch.Tensor:
    """(1, D, D, D) potential of the HIV-1 protease dimer."""
    return models_truth([structures / "proteins/4E43.pdb"], BOX, APIX).volumes


def simulate(truth: torch.Tensor, folder: Path, *, n: int = N, snr: float = SNR, shift_sd: float = 0.0,
             seed: int = 1) -> ParticleSet:
    acq = Acquisition(apix=APIX, snr=snr, defocus_um=(1.0, 2.5), astigmatism_A=300.0, shift_sd_px=shift_sd,
                      seed=seed)
    return simulate_stack(truth, np.zeros(n, np.int64), folder / f"n{n}_snr{snr}_sd{shift_sd}.mrcs", acq)


@pytest.fixture(scope="module")
def centred_set(truth: torch.Tensor, tmp_path_factory: pytest.TempPathFactory) -> ParticleSet:
    return simulate(truth, tmp_path_factory.mktemp("centred"))


@pytest.fixture(scope="module")
def shifted_set(truth: torch.Tensor, tmp_path_factory: pytest.TempPathFactory) -> ParticleSet:
    """The same poses, CTFs and noise as ``centred_set`` (same seed), with origins of 2 px sd."""
    return simulate(truth, tmp_path_factory.mktemp("shifted"), shift_sd=2.0)


@pytest.fixture(scope="module")
def centred_maps(centred_set: ParticleSet) -> HalfMaps:
    return backproject(centred_set)


def against(maps: HalfMaps, reference: np.ndarray) -> np.ndarray:
    return fsc_curve(maps.full, reference, APIX)[1]


def resolution(maps: HalfMaps, reference: np.ndarray, threshold: float = 0.5) -> float:
    return resolution_at(maps.frequency, against(maps, reference), threshold)


def mirrored(volume: np.ndarray) -> np.ndarray:
    """The mirror image through the centre voxel D//2 (a flip alone would move the centre to D//2 - 1)."""
    return np.roll(np.flip(volume, (0, 1, 2)), 1, (0, 1, 2))


def test_map_matches_the_truth_and_not_its_mirror(centred_maps: HalfMaps, truth: torch.Tensor) -> None:
    reference = truth[0].numpy()
    assert np.abs(mirrored(mirrored(reference)) - reference).max() == 0
    resolution_truth = resolution(centred_maps, reference)
    assert NYQUIST_A <= resolution_truth < ACCEPTANCE_A
    # gold standard: FSC(map, truth) = sqrt(2F / (1 + F)) for half-map FSC F, so 0.5 against the truth is where
    # the half maps cross 0.143
    half_143 = resolution_at(centred_maps.frequency, centred_maps.fsc, 0.143)
    assert resolution_truth == pytest.approx(half_143, rel=0.15)
    # the mirror shares the low-resolution envelope, not the secondary structure
    band = slice(6, 11)  # 13 Å to 8 Å
    fsc_truth, fsc_mirror = against(centred_maps, reference), against(centred_maps, mirrored(reference))
    assert fsc_truth[band].mean() > 0.7 and fsc_mirror[band].mean() < 0.2
    assert resolution(centred_maps, mirrored(reference)) > 1.5 * ACCEPTANCE_A


def test_origin_shifts_are_undone(centred_maps: HalfMaps, shifted_set: ParticleSet, truth: torch.Tensor) -> None:
    reference = truth[0].numpy()
    assert np.abs(shifted_set.shifts_px).max() > 4.0
    shifted_maps = backproject(shifted_set)
    # as good as without shifts (the data differ only by where the noise sits)
    assert resolution(shifted_maps, reference) == pytest.approx(resolution(centred_maps, reference), rel=0.1)
    # where FSC > 0.9 it fluctuates by ~0.01 between noise draws; images misplaced by half a pixel would lose
    # ~0.2 there (phase error pi k / 2 at k ~ 7/32 cycles/px)
    fsc_centred, fsc_shifted = against(centred_maps, reference), against(shifted_maps, reference)
    resolved = fsc_centred > 0.9
    np.testing.assert_allclose(fsc_shifted[resolved], fsc_centred[resolved], atol=0.025)
    # the opposite sign misplaces every image by twice its origin
    wrong = backproject(shifted_set.with_poses(shifts_angst=-shifted_set.shifts_angst))
    assert resolution(wrong, reference) > 2 * ACCEPTANCE_A


def test_ctf_correction_beats_ignoring_the_ctf(centred_set: ParticleSet, centred_maps: HalfMaps,
                                               truth: torch.Tensor) -> None:
    reference = truth[0].numpy()
    ignored = backproject(centred_set, use_ctf=False)
    assert resolution(ignored, reference) > 1.5 * resolution(centred_maps, reference)
    assert against(ignored, reference)[: BOX // 2].min() < -0.3  # beyond the first CTF zeros: contrast reversed


def test_more_particles_give_a_better_map(centred_set: ParticleSet, centred_maps: HalfMaps,
                                          truth: torch.Tensor) -> None:
    reference = truth[0].numpy()
    few = backproject(centred_set.subset(np.arange(N // 8)))
    assert resolution(centred_maps, reference) < 0.9 * resolution(few, reference)
    assert (resolution_at(centred_maps.frequency, centred_maps.fsc, 0.143)
            < 0.9 * resolution_at(few.frequency, few.fsc, 0.143))
    # the Wiener-filtered full map is closer to the truth than either half map
    for maps in (few, centred_maps):
        full = resolution(maps, reference)
        for half in (maps.half1, maps.half2):
            assert full < resolution_at(maps.frequency, fsc_curve(half, reference, APIX)[1], 0.5)


def test_noise_free_data_reconstruct_the_truth(truth: torch.Tensor, tmp_path: Path) -> None:
    particles = simulate(truth, tmp_path, n=600, snr=1e12)  # noise 1e-6 of the signal
    maps = backproject(particles)
    reference = truth[0].numpy()
    k = np.fft.fftfreq(BOX)
    radius = np.sqrt(sum(g**2 for g in np.meshgrid(k, k, k, indexing="ij"))) * BOX  # Fourier shell radius
    shells = np.round(radius).astype(int)
    recon, exact = np.fft.fftn(maps.full), np.fft.fftn(reference)
    band = (radius > 0) & (radius < 0.9 * BOX / 2)  # the band limit without the mean (DC)
    assert np.real(np.vdot(exact[band], recon[band])) / np.linalg.norm(exact[band]) / np.linalg.norm(recon[band]) > 0.99

    def gain(sel: np.ndarray) -> float:
        """Least-squares gain of the map against the truth over the Fourier voxels ``sel``."""
        return float(np.real(np.vdot(exact[sel], recon[sel])) / np.vdot(exact[sel], exact[sel]).real)

    # trilinear gridding of the steep lowest shells averages over neighbouring samples (a few % bias there);
    # above them the amplitudes are exact to about 1 %
    gains = {s: gain(shells == s) for s in range(1, int(0.9 * BOX / 2))}
    assert all(abs(gains[s] - 1) < 0.05 for s in range(1, 4))
    assert all(abs(gains[s] - 1) < 0.015 for s in range(4, len(gains) + 1))


def test_half_sets_follow_random_subset(centred_set: ParticleSet) -> None:
    particles = centred_set.subset(np.arange(400))
    subset = np.where(np.arange(400) < 150, 1, 2)
    labelled = particles.with_columns(rlnRandomSubset=subset)
    np.testing.assert_array_equal(assign_halves(labelled, seed=3), subset - 1)
    swapped = backproject(labelled.with_columns(rlnRandomSubset=3 - subset))
    maps = backproject(labelled)
    np.testing.assert_array_equal(maps.half1, swapped.half2)
    np.testing.assert_array_equal(maps.half2, swapped.half1)
    with pytest.raises(InputError, match="rlnRandomSubset must be 1 or 2"):
        assign_halves(particles.with_columns(rlnRandomSubset=np.where(subset == 2, 3, 1)))


def test_random_halves_are_balanced_and_seeded(centred_set: ParticleSet) -> None:
    particles = centred_set.subset(np.arange(401))
    halves = assign_halves(particles, seed=5)
    assert set(np.unique(halves)) == {0, 1} and abs(int(halves.sum()) - (401 - int(halves.sum()))) == 1
    np.testing.assert_array_equal(halves, assign_halves(particles, seed=5))
    other = assign_halves(particles, seed=6)
    assert 0.3 < (halves == other).mean() < 0.7  # a fresh random split, not a fixed pattern


def test_empty_half_set_is_refused(centred_set: ParticleSet) -> None:
    particles = centred_set.subset(np.arange(20))
    with pytest.raises(InputError, match="half set is empty"):
        backproject(particles.with_columns(rlnRandomSubset=np.ones(20, np.int64)))
    with pytest.raises(InputError, match="half set is empty"):
        backproject(particles.subset(np.arange(1)))
    accumulator = HalfSetBackprojector(BOX)
    images = torch.as_tensor(particles.images.read(np.arange(20)))
    rotations = torch.as_tensor(particles.rotations, dtype=torch.float32)
    accumulator.add(images, rotations, torch.zeros(20, 2), None, torch.zeros(20, dtype=torch.int64))
    with pytest.raises(InputError, match=r"particles per half: \[20, 0\]"):
        accumulator.reconstruct(APIX)


def test_missing_poses_or_ctf_are_refused(centred_set: ParticleSet) -> None:
    particles = centred_set.subset(np.arange(20))
    no_ctf = ParticleSet(particles.particles.drop(columns=DEFOCUS), particles.optics, particles.images)
    with pytest.raises(InputError, match="no CTF parameters"):
        backproject(no_ctf)
    assert backproject(no_ctf, use_ctf=False).full.shape == (BOX, BOX, BOX)
    no_poses = ParticleSet(particles.particles.drop(columns=EULER), particles.optics, particles.images)
    with pytest.raises(InputError, match="no poses"):
        backproject(no_poses)


def test_half_maps_come_unfiltered_and_filtered(centred_set: ParticleSet) -> None:
    particles = centred_set.subset(np.arange(400))
    maps = backproject(particles)
    # the FSC is that of the unfiltered half maps (N / W), which keep their noise at high frequency
    np.testing.assert_allclose(maps.fsc, fsc_curve(maps.half1_unfiltered, maps.half2_unfiltered, APIX)[1],
                               atol=1e-6)
    k = np.fft.fftfreq(BOX) * BOX
    shells = np.round(np.sqrt(sum(g**2 for g in np.meshgrid(k, k, k, indexing="ij")))).astype(int)

    def power_near_nyquist(volume: np.ndarray) -> float:
        """Fourier power in the last 4 shells, where the FSC is ~0."""
        return float(np.square(np.abs(np.fft.fftn(volume)))[(shells > BOX // 2 - 4) & (shells <= BOX // 2)].sum())

    for filtered, unfiltered in ((maps.half1, maps.half1_unfiltered), (maps.half2, maps.half2_unfiltered)):
        assert power_near_nyquist(filtered) < 0.1 * power_near_nyquist(unfiltered)
    # without the filtered halves the rest is the same
    lean = backproject(particles, filtered_halves=False)
    assert lean.half1 is None and lean.half2 is None
    np.testing.assert_array_equal(lean.full, maps.full)
    np.testing.assert_array_equal(lean.half1_unfiltered, maps.half1_unfiltered)


def test_symmetry_inserts_the_symmetry_mates(centred_set: ParticleSet) -> None:
    """Backprojecting with C4 is backprojecting the symmetry-expanded particles (RELION's
    relion_particle_symmetry_expand), each copy in its particle's half set."""
    particles = centred_set.subset(np.arange(150))
    particles = particles.with_columns(rlnRandomSubset=assign_halves(particles) + 1)
    symmetric = backproject(particles, symmetry="C4")
    expanded = backproject(symmetry_expand(particles, "C4"))
    scale = np.abs(expanded.full).max()
    for name in ("full", "half1_unfiltered", "half2_unfiltered"):
        np.testing.assert_allclose(getattr(symmetric, name), getattr(expanded, name), atol=1e-4 * scale)
    assert not np.allclose(symmetric.full, backproject(particles).full, atol=1e-2 * scale)


def test_symmetry_improves_a_symmetric_map(truth: torch.Tensor, tmp_path: Path) -> None:
    reference = symmetrize_volume(truth[0], "C4").numpy()  # exact: C4 about z permutes the voxels
    particles = simulate(torch.as_tensor(reference)[None], tmp_path, n=300)
    plain, symmetric = backproject(particles), backproject(particles, symmetry="C4")
    # the symmetric map is C4-symmetric, the plain one is not: a quarter turn about z through voxel D//2 (the
    # y, x rows 1 .. D-1 are centred on it; row 0, at -D/2, has no partner)
    def asymmetry(volume: np.ndarray) -> float:
        inner = volume[:, 1:, 1:]
        return float(np.abs(np.rot90(inner, 1, axes=(1, 2)) - inner).max() / np.abs(inner).max())

    assert asymmetry(reference) < 1e-6
    assert asymmetry(symmetric.full) < 1e-5 and asymmetry(plain.full) > 1e-2
    # and closer to the truth: four times the data
    assert resolution(symmetric, reference) < 0.85 * resolution(plain, reference)
    assert (resolution_at(symmetric.frequency, symmetric.fsc, 0.143)
            < 0.85 * resolution_at(plain.frequency, plain.fsc, 0.143))


def test_solvent_mask_default_and_diameter() -> None:
    box, voxel = 64, 1.5
    k = np.arange(box) - box // 2
    radius = np.sqrt(sum(g**2 for g in np.meshgrid(k, k, k, indexing="ij")))
    default = solvent_mask(box, voxel)
    assert default.shape == (box,) * 3 and default.dtype == np.float32
    # RELION's particle diameter: flat inside, the cosine edge outside; the default ends at 90 % of the box
    assert (default[radius <= 0.45 * box - MASK_EDGE_PX] == 1).all() and (default[radius >= 0.45 * box] == 0).all()
    given = solvent_mask(box, voxel, diameter_A=60.0)  # 20 px radius
    assert (given[radius <= 20] == 1).all() and (given[radius >= 20 + MASK_EDGE_PX] == 0).all()
    edge = (radius > 20) & (radius < 20 + MASK_EDGE_PX)
    assert ((given[edge] > 0) & (given[edge] < 1)).all()


@pytest.mark.parametrize(("box", "oversampling"), [(16, 2), (15, 2), (15, 1), (12, 3)])
def test_fast_inverse_transform_is_padded_to_volume(box: int, oversampling: int) -> None:
    P = padded_size(box, oversampling)
    gen = torch.Generator().manual_seed(box)
    spectrum = torch.complex(torch.randn(P, P, P, generator=gen), torch.randn(P, P, P, generator=gen))
    expected = padded_to_volume(spectrum, box, oversampling)
    torch.testing.assert_close(_to_volume(spectrum, box, oversampling), expected, atol=1e-5, rtol=1e-5)
