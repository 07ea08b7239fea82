"""Fourier-slice projection against RELION's own ``relion_project`` output, analytic projections, adjointness
and back-projection."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vitreous.io.star import read_star
from vitreous.physics.ctf import CTFParams, compute_ctf
from vitreous.physics.fourier import (
    fft2c,
    fft3c,
    fourier_crop,
    frequency_grid_3d,
    ifft3c,
    translate_ft,
    translate_images,
)
from vitreous.physics.projection import (
    Backprojector,
    Projector,
    insert_slices,
    padded_size,
    padded_to_volume,
)
from vitreous.physics.rotations import euler_to_matrix, quaternion_to_matrix


def _corr(a: torch.Tensor, b: torch.Tensor, ndim: int = 2) -> torch.Tensor:
    """Pearson correlation over the last ``ndim`` dims."""
    a = a.flatten(-ndim)
    b = b.flatten(-ndim)
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def _random_rotations(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return quaternion_to_matrix(torch.randn(n, 4, generator=gen, dtype=torch.float64))  # uniform on SO(3)


def _shift_volume(vol: torch.Tensor, shift: float) -> torch.Tensor:
    """Move a volume's content by ``shift`` voxels along x, y and z (Fourier phase, periodic)."""
    k = frequency_grid_3d(vol.shape[-1], dtype=vol.dtype)
    return ifft3c(fft3c(vol) * torch.exp(-2j * math.pi * shift * k.sum(-1))).real


@pytest.fixture(scope="module")
def ribosome(real_data: Path) -> torch.Tensor:
    """ASPIRE's 70S ribosome volume (65^3, float64) that RELION projected."""
    return torch.from_numpy(np.load(real_data / "relion_projections" / "clean70SRibosome_vol.npy"))


def _relion_set(real_data: Path, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ps = read_star(real_data / "relion_projections" / f"rln_proj_{name}.star", apix=1.0)
    images = torch.from_numpy(ps.images.read(slice(None))).double()
    return images, torch.from_numpy(ps.rotations), torch.from_numpy(ps.shifts_px)


# name, volume offset in voxels: rln_proj_64 (no _centered/_shifted suffix) was made by an older ASPIRE whose
# 65 -> 64 downsampling put the centre at (L-1)/2 = 31.5 instead of L//2 = 32, i.e. content half a voxel lower
# in x, y and z relative to RELION's centre (a fitted 3D offset converges to -0.49 on all three axes).
RELION_SETS = [("64", -0.5), ("64_centered", 0.0), ("64_shifted", 0.0), ("65", 0.0), ("65_centered", 0.0),
               ("65_shifted", 0.0)]


@pytest.mark.parametrize(("name", "offset"), RELION_SETS)
def test_reproduces_relion_project(real_data: Path, ribosome: torch.Tensor, name: str, offset: float) -> None:
    """Every RELION projection, shifts straight from the STAR file (legacy rlnOriginX/Y px labels)."""
    images, rotations, shifts = _relion_set(real_data, name)
    D = images.shape[-1]
    vol = _shift_volume(ribosome, offset) if offset else ribosome
    if vol.shape[-1] != D:
        vol = fourier_crop(vol, D, ndim=3)  # ASPIRE's Volume.downsample
    ours = Projector(vol).project(rotations, shifts_px=shifts, relion_odd_origin=True)
    corr = _corr(ours, images)
    assert corr.min() >= 0.9999, corr
    if name.endswith("shifted"):
        assert shifts.abs().min() > 1  # the shifts really are exercised


def test_relion_findings_odd_origin_shift_sign_and_half_voxel(real_data: Path, ribosome: torch.Tensor) -> None:
    """Without the (+1, +1) odd-box origin, with the opposite shift sign, or with the plain downsampled
    volume for ``rln_proj_64``, RELION's images are not reproduced."""
    images, rotations, shifts = _relion_set(real_data, "65_centered")
    pr = Projector(ribosome)
    assert _corr(pr.project(rotations), images).max() < 0.95
    ours = pr.project(rotations, relion_odd_origin=True)
    assert torch.allclose(translate_images(pr.project(rotations), torch.ones(2, dtype=torch.float64)), ours)
    images, rotations, shifts = _relion_set(real_data, "64_shifted")
    pr64 = Projector(fourier_crop(ribosome, 64, ndim=3))
    assert _corr(pr64.project(rotations, -shifts), images).max() < 0.2
    images, rotations, _ = _relion_set(real_data, "64")
    assert _corr(pr64.project(rotations), images).min() < 0.99


def test_projection_of_offcentre_gaussian_follows_rotation_convention() -> None:
    """A blob at volume position p projects, in the image of ``A``, to (A p)[:2] with its line integral."""
    D, sigma = 32, 1.6
    p = torch.tensor([5.0, -3.0, 2.0], dtype=torch.float64)  # (x, y, z) voxels from the centre D//2
    c = torch.arange(D, dtype=torch.float64) - D // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * sigma**2))
    rotations = torch.cat([torch.eye(3, dtype=torch.float64)[None],
                           euler_to_matrix(torch.tensor([[30.0, 60.0, -45.0], [170.0, 100.0, 20.0]],
                                                        dtype=torch.float64))])
    images = Projector(vol).project(rotations)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    for A, img in zip(rotations, images, strict=True):
        q = A @ p
        expected = sigma * math.sqrt(2 * math.pi) * torch.exp(-((xx - q[0]) ** 2 + (yy - q[1]) ** 2) / (2 * sigma**2))
        assert float(_corr(img, expected)) > 0.9995
        peak_y, peak_x = divmod(int(img.argmax()), D)
        assert (peak_x - D // 2, peak_y - D // 2) == (round(float(q[0])), round(float(q[1])))
        # trilinear gridding at 2x oversampling (RELION's scheme) is accurate to a few per cent
        assert (img - expected).abs().max() < 0.04 * expected.max()


@pytest.mark.parametrize("D", [16, 17])
def test_project_is_inverse_ft_of_slices_and_shifts_by_minus_origin(D: int) -> None:
    gen = torch.Generator().manual_seed(D)
    pr = Projector(torch.randn(D, D, D, generator=gen, dtype=torch.float64))
    rot = _random_rotations(3, D)
    f = pr.slices(rot)
    img = pr.project(rot)
    assert torch.allclose(fft2c(img), f, atol=1e-9)
    shifts = torch.tensor([[1.5, -2.25], [0.0, 3.0], [-4.0, 0.5]], dtype=torch.float64)
    assert torch.allclose(pr.project(rot, shifts), translate_images(img, -shifts), atol=1e-10)


@pytest.mark.parametrize(("D", "oversampling"), [(16, 2), (17, 2), (15, 3)])
def test_projection_and_insertion_are_adjoint(D: int, oversampling: int) -> None:
    gen = torch.Generator().manual_seed(7 * D)
    vol = torch.randn(D, D, D, generator=gen, dtype=torch.float64)
    images = torch.randn(5, D, D, generator=gen, dtype=torch.float64)
    rot = _random_rotations(5, D)
    shifts = torch.randn(5, 2, generator=gen, dtype=torch.float64) * 3
    pr = Projector(vol, oversampling=oversampling)
    lhs = (pr.project(rot, shifts) * images).sum()
    rhs = (vol * pr.adjoint(images, rot, shifts)).sum()
    assert abs(float(lhs - rhs)) < 1e-10 * float(pr.project(rot, shifts).norm() * images.norm())


@pytest.mark.parametrize("D", [16, 17])
def test_backprojector_equals_full_insertion(D: int) -> None:
    """The Hermitian half-plane fast path gives the same accumulators as inserting every pixel."""
    gen = torch.Generator().manual_seed(D)
    images = torch.randn(6, D, D, generator=gen, dtype=torch.float64)
    rot = _random_rotations(6, 3 * D)
    shifts = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    ctf = compute_ctf(CTFParams.create(torch.linspace(8000, 20000, 6, dtype=torch.float64), pixel_size=2.0,
                                       defocus_angle=33.0, dtype=torch.float64), D)
    bp = Backprojector(D, dtype=torch.float64)
    bp.insert_images(images[:4], rot[:4], shifts[:4], ctf[:4])
    bp.insert_images(images[4:], rot[4:], shifts[4:], ctf[4:])
    num, den = bp.result()
    P = padded_size(D)
    num_ref = torch.zeros(P, P, P, dtype=torch.complex128)
    den_ref = torch.zeros(P, P, P, dtype=torch.float64)
    f = translate_ft(fft2c(images), shifts)
    insert_slices(f * ctf, ctf * ctf, rot, num_ref, den_ref)
    assert bp.count == 6
    assert torch.allclose(num, num_ref, atol=1e-9 * float(num_ref.abs().max()))
    assert torch.allclose(den, den_ref, atol=1e-12)
    assert float(den.sum()) > 0
    num_in, den_in = bp.result(inplace=True)  # same values, symmetrised in the accumulators themselves
    assert torch.equal(num_in, num) and torch.equal(den_in, den)
    with pytest.raises(RuntimeError):
        bp.insert_images(images[:1], rot[:1])


def test_backprojection_recovers_the_volume(ribosome: torch.Tensor) -> None:
    """Projections at uniform random rotations, inserted and divided by the weights, give back the volume
    (within the Nyquist sphere that projections sample)."""
    D = 32
    vol = fourier_crop(ribosome, D, ndim=3)
    rot = _random_rotations(1500, 11)
    images = Projector(vol).project(rot)
    bp = Backprojector(D, dtype=torch.float64)
    for i in range(0, len(rot), 500):
        bp.insert_images(images[i:i + 500], rot[i:i + 500])
    num, den = bp.result()
    assert (den[padded_size(D) // 2].abs() > 0).any()
    rec = padded_to_volume(num / den.clamp_min(1e-3), D)
    k = frequency_grid_3d(D, dtype=torch.float64).norm(dim=-1)
    in_sphere = ifft3c(fft3c(vol) * (k <= 0.5)).real  # what central slices of |k| <= D/2 can hold
    assert float(_corr(rec, in_sphere, 3)) > 0.999
    assert float((rec * in_sphere).sum() / (in_sphere**2).sum()) == pytest.approx(1.0, abs=0.01)
    assert float(_corr(rec, vol, 3)) > 0.99


def test_device_dtype_and_validation() -> None:
    vol = torch.randn(12, 12, 12)
    pr = Projector(vol)
    rot = _random_rotations(2, 0).numpy()  # numpy float64 rotations are accepted
    assert pr.slices(rot).dtype == torch.complex64 and pr.project(rot).dtype == torch.float32
    assert pr.project(rot, np.zeros((2, 2))).shape == (2, 12, 12)
    bp = Backprojector(12)
    bp.insert_images(torch.randn(2, 12, 12, dtype=torch.float64), rot)
    num, den = bp.result()
    assert num.dtype == torch.complex64 and den.dtype == torch.float32 and num.shape == (24, 24, 24)
    with pytest.raises(ValueError):
        Projector(torch.zeros(4, 4, 5))
    with pytest.raises(ValueError):
        insert_slices(torch.zeros(1, 12, 12, dtype=torch.complex64), None, rot[:1],
                      torch.zeros(12, 12, 12, dtype=torch.complex64), None)


def test_tensors_stay_on_the_input_device() -> None:
    """Every step runs on the device of its inputs (``meta`` stands in for CUDA: a CPU tensor mixed in fails)."""
    dev = torch.device("meta")
    rot = torch.eye(3, device=dev).expand(2, 3, 3)
    shifts = torch.zeros(2, 2, device=dev)
    pr = Projector(torch.empty(16, 16, 16, device=dev))
    assert pr.project(rot, shifts, relion_odd_origin=True).device == dev
    assert pr.adjoint(torch.empty(2, 16, 16, device=dev), rot, shifts).device == dev
    ctf = compute_ctf(CTFParams.create([1e4, 2e4], pixel_size=[1.0, 2.0], device=dev), 16)
    assert ctf.device == dev
    bp = Backprojector(16, device=dev)
    bp.insert_images(torch.empty(2, 16, 16, device=dev), rot, shifts, ctf)
    num, den = bp.result()
    assert num.device == dev and padded_to_volume(num / den, 16).shape == (16, 16, 16)
