"""Projection by the Fourier-slice theorem and its adjoint (slice insertion), batched over rotations.

Conventions (RELION, see :mod:`vitreous.physics.rotations`): volumes are [z, y, x] with rotation origin at voxel
``D//2``; ``A = euler_to_matrix(rot, tilt, psi)``; an image is the projection along z of the volume rotated by
``A``, i.e. the central slice ``F_image(kx, ky) = F_volume(A^T (kx, ky, 0))`` of the centred transforms of
:mod:`vitreous.physics.fourier` (DC and phase origin at index ``D//2``).  ``project`` returns line integrals
(sums of voxel values along z, no other normalisation): ``fft2c(project(A)) == slices(A)``.

Shift sign: ``shifts_px`` are RELION origins ``(rlnOriginX, rlnOriginY)`` in pixels (``ParticleSet.shifts_px``).
RELION's particle centre sits at ``rlnCoordinate - rlnOrigin``, so ``project(A, shifts_px)`` moves the
projection by ``-shifts_px``: the particle centre lands on pixel ``D//2 - origin`` (``relion_project`` applies
``shiftImageInFourierTransform(-xoff, -yoff)``); translating an experimental image by ``+origin`` centres it.

Odd boxes: RELION undoes its FFT centring with ``CenterFFT(img, false)``, a shift by ``-(D//2)`` that for odd
``D`` puts the 2D image origin at pixel ``D//2 + 1`` (one pixel off in x and y; volumes are unaffected, their
padded box is even).  ``project(..., relion_odd_origin=True)`` reproduces RELION's odd-box images; vitreous
itself keeps the origin at ``D//2`` (RELION's own particle extraction only allows even boxes).

Sampling: the volume is divided by the trilinear gridding kernel (:func:`gridding_correction`), zero-padded to
``P = oversampling * D`` and Fourier transformed once; slices are read by trilinear interpolation on the padded
grid (periodic indexing, as the DFT is) at the pixels with ``|k| <= D/2`` (for even ``D`` without the unpaired
``-D/2`` row and column, so the set is closed under ``k -> -k``).  The real-volume symmetry
``F(-k) = conj F(k)`` halves the work: only the half-plane ``kx > 0 | (kx == 0, ky >= 0)`` is interpolated or
inserted.  :func:`insert_slices` / :class:`Backprojector` are the adjoint (trilinear scatter-add, vectorised
over particles): accumulators are ``(P, P, P)`` in the same centred layout (DC at ``P//2``); a reconstruction
is ``padded_to_volume(numerator / (denominator + eps), D, oversampling)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from vitreous.physics.fourier import fft2c, fft3c, ifft2c, ifft3c, translate_ft, window

_Rot = Tensor | np.ndarray


def padded_size(D: int, oversampling: float = 2) -> int:
    """Side ``P = round(oversampling * D)`` of the oversampled Fourier grid."""
    return int(round(oversampling * D))


def gridding_correction(D: int, oversampling: float = 2, device: torch.device | str | None = None,
                        dtype: torch.dtype = torch.float32) -> Tensor:
    """Real-space transform of the trilinear kernel on the padded grid, (D, D, D) [z, y, x].

    ``sinc^2(x/P) sinc^2(y/P) sinc^2(z/P)`` with ``sinc(t) = sin(pi t)/(pi t)``, ``x, y, z`` voxels from
    ``D//2`` and ``P = padded_size(D, oversampling)``.  :class:`Projector` divides the volume by it before
    projection; divide a volume reconstructed from trilinear-inserted slices by it (after ``ifft3c`` and
    windowing, :func:`padded_to_volume`) to undo the interpolation's real-space apodisation.
    """
    P = padded_size(D, oversampling)
    t = (torch.arange(D, device=device, dtype=torch.float64) - D // 2) / P
    s = torch.special.sinc(t) ** 2
    return (s[:, None, None] * s[None, :, None] * s[None, None, :]).to(dtype)


def padded_to_volume(f_padded: Tensor, D: int, oversampling: float = 2, gridding: bool = True) -> Tensor:
    """Centred padded Fourier volume (P, P, P) -> real volume (D, D, D): ``ifft3c``, central window, and
    (with ``gridding``) division by :func:`gridding_correction`.

    The ``ifft3c`` on the padded grid returns voxel values on the original scale (no extra factor), since
    slices carry unnormalised DFT values of the D-voxel object.
    """
    vol = window(ifft3c(f_padded).real, D, ndim=3)
    if gridding:
        vol = vol / gridding_correction(D, oversampling, vol.device, vol.dtype)
    return vol


class _SlicePoints(NamedTuple):
    """In-sphere pixels of a (D, D) centred slice, as a Hermitian half-plane and its mirror."""

    flat: Tensor  # (M,) int64 flat pixel indices of the half-plane points (kx > 0, or kx == 0 and ky >= 0)
    mirror: Tensor  # (M,) int64 flat pixel indices of their mirrors -k
    coords: Tensor  # (2, M) (kx, ky) in Fourier pixels of the padded grid
    weight: Tensor  # (M,) 1, and 1/2 at DC (its own mirror), for insertion
    full_flat: Tensor  # (M_full,) the whole set: half-plane, then the mirrors of its non-DC points
    full_coords: Tensor  # (2, M_full)


@lru_cache(maxsize=32)
def _slice_points(D: int, P: int, device: torch.device, dtype: torch.dtype) -> _SlicePoints:
    """Pixels of a slice used by projection and insertion: ``|k| <= D/2`` and, for even D, not the unpaired
    row/column ``-D/2`` (so the set is closed under ``k -> -k``), split into a half-plane and its mirror."""
    k = torch.arange(D, dtype=torch.float64) - D // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    kx, ky = kx.reshape(-1), ky.reshape(-1)
    inside = (kx**2 + ky**2 <= (D / 2) ** 2) & (kx > -D / 2) & (ky > -D / 2)
    half = inside & ((kx > 0) | ((kx == 0) & (ky >= 0)))
    flat = torch.nonzero(half).squeeze(1)
    c = D // 2
    mirror = (2 * c - (flat // D)) * D + (2 * c - flat % D)
    coords = torch.stack([kx[flat], ky[flat]]) * (P / D)
    dc = (kx[flat] == 0) & (ky[flat] == 0)
    weight = torch.where(dc, 0.5, 1.0)
    full_flat = torch.cat([flat, mirror[~dc]])
    full_coords = torch.cat([coords, -coords[:, ~dc]], dim=1)
    return _SlicePoints(flat.to(device), mirror.to(device), coords.to(device=device, dtype=dtype),
                        weight.to(device=device, dtype=dtype), full_flat.to(device),
                        full_coords.to(device=device, dtype=dtype))


def _as_tensor(x: Tensor | np.ndarray, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``x`` as a tensor on ``device`` with ``dtype`` (numpy arrays are copied, so read-only ones are fine)."""
    t = x if isinstance(x, Tensor) else torch.from_numpy(np.array(x))
    return t.to(device=device, dtype=dtype)


def _as_rotations(rotations: _Rot, device: torch.device, dtype: torch.dtype) -> Tensor:
    return _as_tensor(rotations, device, dtype).reshape(-1, 3, 3)


def _corners(rot: Tensor, coords: Tensor, P: int, long_index: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
    """The 8 trilinear corners of the points ``A^T (kx, ky, 0) + P//2`` on the periodic (P, P, P) grid
    [z, y, x]: yields flat voxel indices (N, M) and weights (N, M).  Indices are int64 with ``long_index``
    (scatter needs them), else int32 when they fit (cheaper for gathers)."""
    pos = torch.matmul(rot[:, :2, :].transpose(1, 2), coords).add_(P // 2)  # (N, 3, M): x, y, z rows
    base = torch.floor(pos)
    frac = pos.sub_(base)
    small = not long_index and P**3 < 2**31
    lo = base.to(torch.int32 if small else torch.int64)
    # periodic grid: points lie in [-1/2, P] (|k| <= D/2), so only -1 and P wrap for the low corner
    lo.masked_fill_(lo == P, 0)
    lo.masked_fill_(lo == -1, P - 1)
    hi = lo + 1
    hi.masked_fill_(hi == P, 0)
    stride = torch.tensor([1, P, P * P], dtype=lo.dtype, device=rot.device)[None, :, None]
    lo.mul_(stride)
    hi.mul_(stride)
    ifrac = 1 - frac
    for iz, wz in ((lo[:, 2], ifrac[:, 2]), (hi[:, 2], frac[:, 2])):
        for iy, wy in ((lo[:, 1], ifrac[:, 1]), (hi[:, 1], frac[:, 1])):
            izy, wzy = iz + iy, wz * wy
            for ix, wx in ((lo[:, 0], ifrac[:, 0]), (hi[:, 0], frac[:, 0])):
                yield izy + ix, wzy * wx


class Projector:
    """Fourier-slice projector of one real (D, D, D) volume [z, y, x], on the volume's device and dtype.

    ``oversampling`` zero-pads the volume to ``P = oversampling * D`` before the FFT (RELION's padding factor,
    default 2); with ``gridding`` the volume is first divided by :func:`gridding_correction`.  Memory: one
    complex (P, P, P) array, plus about 100 N D^2 bytes (float32) during a call: batch N to bound it.
    """

    def __init__(self, volume: Tensor, oversampling: float = 2, gridding: bool = True) -> None:
        if volume.ndim != 3 or len(set(volume.shape)) != 1:
            raise ValueError(f"Projector needs a cubic (D, D, D) volume, got {tuple(volume.shape)}")
        if not volume.is_floating_point():
            volume = volume.float()
        self.D = int(volume.shape[-1])
        self.oversampling = oversampling
        self.P = padded_size(self.D, oversampling)
        self.dtype = volume.dtype
        self.device = volume.device
        self.gridding = gridding
        if gridding:
            volume = volume / gridding_correction(self.D, oversampling, volume.device, volume.dtype)
        self.volume_ft = fft3c(window(volume, self.P, ndim=3)).reshape(-1)

    def slices(self, rotations: _Rot) -> Tensor:
        """Central slices (N, D, D) complex, centred layout, for RELION matrices ``A`` (N, 3, 3).

        ``slice(kx, ky) = F_volume(A^T (kx, ky, 0))`` for ``|k| <= D/2``, zero elsewhere (and, for even D, on
        the unpaired ``-D/2`` row and column).
        """
        rot = _as_rotations(rotations, self.device, self.dtype)
        pts = _slice_points(self.D, self.P, self.device, self.dtype)
        N, M = rot.shape[0], pts.flat.shape[0]
        vals = torch.zeros(N, M, dtype=self.volume_ft.dtype, device=self.device)
        for idx, w in _corners(rot, pts.coords, self.P, long_index=False):
            vals += self.volume_ft.index_select(0, idx.reshape(-1)).view(N, M) * w
        out = torch.zeros(N, self.D * self.D, dtype=vals.dtype, device=self.device)
        out[:, pts.mirror] = vals.conj()
        out[:, pts.flat] = vals  # after the mirror, so DC keeps its own value
        return out.view(N, self.D, self.D)

    def project(self, rotations: _Rot, shifts_px: Tensor | np.ndarray | None = None,
                relion_odd_origin: bool = False) -> Tensor:
        """Real projections (N, D, D) [y, x] for RELION matrices ``A`` (N, 3, 3).

        ``shifts_px`` (N, 2) = RELION origins (rlnOriginX, rlnOriginY) in pixels: the projection is moved by
        ``-shifts_px`` (particle centre at pixel ``D//2 - origin``).  ``relion_odd_origin`` moves odd-box
        images by a further (+1, +1) pixel, where RELION's odd-box images have their origin.
        """
        f = self.slices(rotations)
        move = torch.zeros(f.shape[0], 2, dtype=self.dtype, device=self.device)
        if shifts_px is not None:
            move = move - _as_tensor(shifts_px, self.device, self.dtype).reshape(-1, 2)
        if relion_odd_origin and self.D % 2 == 1:
            move = move + 1.0
        if shifts_px is not None or (relion_odd_origin and self.D % 2 == 1):
            f = translate_ft(f, move)
        return ifft2c(f).real

    def adjoint(self, images: Tensor, rotations: _Rot, shifts_px: Tensor | np.ndarray | None = None) -> Tensor:
        """Exact adjoint of :meth:`project` (real images (N, D, D) -> real volume (D, D, D)): unweighted
        back-projection, ``<project(A, s) v, y> == <v, adjoint(y, A, s)>``."""
        images = images.to(device=self.device, dtype=self.dtype)
        f = fft2c(images) / (self.D * self.D)  # adjoint of Re(ifft2c(.)) for real images
        if shifts_px is not None:
            f = translate_ft(f, _as_tensor(shifts_px, self.device, self.dtype).reshape(-1, 2))
        acc = torch.zeros(self.P, self.P, self.P, dtype=f.dtype, device=self.device)
        insert_slices(f, None, rotations, acc, None, self.oversampling)
        vol = window(ifft3c(acc).real, self.D, ndim=3) * self.P**3  # adjoint of fft3c and zero-padding
        if self.gridding:
            vol = vol / gridding_correction(self.D, self.oversampling, vol.device, vol.dtype)
        return vol


def _check_accumulator(acc: Tensor | None, P: int, D: int, oversampling: float) -> None:
    if acc is not None and (tuple(acc.shape) != (P, P, P) or not acc.is_contiguous()):
        raise ValueError(f"accumulators must be contiguous {(P, P, P)} for D={D}, oversampling={oversampling}; "
                         f"got {tuple(acc.shape)}")


def _scatter(slices: Tensor, weights: Tensor | None, rot: Tensor, numerator: Tensor | None,
             denominator: Tensor | None, P: int, half: bool) -> None:
    """Trilinear scatter-add of slice pixels: the half-plane only (``half``) or half-plane plus mirror."""
    N, D = slices.shape[0], slices.shape[-1]
    pts = _slice_points(D, P, rot.device, rot.dtype)
    flat, coords, scale = (pts.flat, pts.coords, pts.weight) if half else (pts.full_flat, pts.full_coords, None)
    num_vals = den_vals = None
    if numerator is not None:
        num_vals = slices.reshape(N, D * D)[:, flat].to(numerator.dtype)
        if scale is not None:
            num_vals = num_vals * scale
        num_flat = numerator.view(-1)
    if denominator is not None and weights is not None:
        den_vals = weights.reshape(N, D * D)[:, flat].to(denominator.dtype)
        if scale is not None:
            den_vals = den_vals * scale
        den_flat = denominator.view(-1)
    for idx, w in _corners(rot, coords, P):
        idx = idx.reshape(-1)
        if num_vals is not None:
            num_flat.scatter_add_(0, idx, (num_vals * w).reshape(-1))
        if den_vals is not None:
            den_flat.scatter_add_(0, idx, (den_vals * w).reshape(-1))


def insert_slices(slices: Tensor, weights: Tensor | None, rotations: _Rot, numerator: Tensor | None,
                  denominator: Tensor | None, oversampling: float = 2) -> None:
    """Accumulate central slices into padded Fourier accumulators, in place: the exact adjoint of
    :meth:`Projector.slices` (trilinear scatter-add, vectorised over particles).

    ``slices`` (N, D, D) complex, centred layout (e.g. ``CTF * fft2c(image)``) go into ``numerator``
    (P, P, P) complex; ``weights`` (N, D, D) real (e.g. ``CTF**2``) into ``denominator`` (P, P, P) real, with
    the trilinear weights at ``A^T (kx, ky, 0) * P / D + P//2`` (periodic).  ``P = padded_size(D,
    oversampling)``; either accumulator may be None.  Every pixel of the slice set is inserted (no symmetry
    assumed); :class:`Backprojector` is twice as fast for FTs of real images.  Temporary memory is about
    150 N D^2 bytes (float32): batch N to bound it.
    """
    D = slices.shape[-1]
    P = padded_size(D, oversampling)
    _check_accumulator(numerator, P, D, oversampling)
    _check_accumulator(denominator, P, D, oversampling)
    real_dtype = slices.real.dtype if slices.is_complex() else slices.dtype
    rot = _as_rotations(rotations, slices.device, real_dtype)
    _scatter(slices, weights, rot, numerator, denominator, P, half=False)


def hermitian_symmetrize(x: Tensor, ndim: int = 3, out: Tensor | None = None) -> Tensor:
    """``x(k) + conj(x(-k))`` on a centred grid over the last ``ndim`` dims (periodic mirror
    ``i -> (2*(n//2) - i) mod n``: index 0 stays for even n, ``i -> n-1-i`` for odd n); for real ``x`` that is
    ``x(k) + x(-k)``.  ``out=x`` works in place (a flipped copy of one block at a time is made)."""
    dims = range(x.ndim - ndim, x.ndim)
    choices = []
    for d in dims:
        if x.shape[d] % 2:
            choices.append([(slice(None), True)])
        else:  # even: plane 0 is its own mirror, the rest reverses
            choices.append([(slice(0, 1), False), (slice(1, None), True)])
    result = x.clone() if out is None else out
    for combo in itertools.product(*choices):  # each block is its own mirror image, so in place is safe
        index = (Ellipsis,) + tuple(sl for sl, _ in combo)
        flip = tuple(d for d, (_, f) in zip(dims, combo, strict=True) if f)
        part = x[index].flip(flip) if flip else x[index].clone()
        result[index] += part.conj() if part.is_complex() else part
    return result


class Backprojector:
    """Fast accumulation of real images' slices into ``(P, P, P)`` Fourier accumulators.

    Inserts only the Hermitian half-plane of each slice and adds the mirror once, in :meth:`result`; so the
    slices must be FTs of real images and the weights centrosymmetric (``w(-k) == w(k)``, true of ``CTF**2``).
    The result equals :func:`insert_slices` over all inserted batches.  Accumulators: complex numerator and real
    denominator (P, P, P) on ``device`` with real ``dtype``; each call needs about 100 N D^2 bytes (float32)
    more, so batch N.
    """

    def __init__(self, D: int, oversampling: float = 2, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        self.D = D
        self.oversampling = oversampling
        self.P = padded_size(D, oversampling)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        cdtype = (torch.ones((), dtype=dtype) * 1j).dtype
        self._num = torch.zeros((self.P,) * 3, dtype=cdtype, device=self.device)
        self._den = torch.zeros((self.P,) * 3, dtype=dtype, device=self.device)
        self.count = 0
        self._finished = False

    def insert(self, slices: Tensor, weights: Tensor | None, rotations: _Rot) -> None:
        """Add Hermitian slices (N, D, D) complex and centrosymmetric weights (N, D, D) (or None) at RELION
        matrices ``A`` (N, 3, 3)."""
        if slices.shape[-1] != self.D:
            raise ValueError(f"slices of size {slices.shape[-1]} into a Backprojector of size {self.D}")
        if self._finished:
            raise RuntimeError("Backprojector.result(inplace=True) already symmetrised the accumulators")
        rot = _as_rotations(rotations, self.device, self.dtype)
        slices = slices.to(self.device)
        weights = None if weights is None else weights.to(self.device)
        _scatter(slices, weights, rot, self._num, self._den, self.P, half=True)
        self.count += slices.shape[0]

    def insert_images(self, images: Tensor, rotations: _Rot, shifts_px: Tensor | np.ndarray | None = None,
                      ctf: Tensor | None = None) -> None:
        """Back-project real images (N, D, D): ``CTF * F`` into the numerator and ``CTF**2`` (1 without CTF)
        into the denominator, after centring each image by ``+shifts_px`` (RELION origins, px)."""
        images = images.to(device=self.device, dtype=self.dtype)
        f = fft2c(images)
        if shifts_px is not None:
            f = translate_ft(f, _as_tensor(shifts_px, self.device, self.dtype).reshape(-1, 2))
        if ctf is None:
            weights = torch.ones(1, 1, 1, dtype=self.dtype, device=self.device).expand(images.shape)
        else:
            ctf = ctf.to(device=self.device, dtype=self.dtype)
            f, weights = f * ctf, ctf * ctf
        self.insert(f, weights, rotations)

    def decay(self, factor: float) -> None:
        """Multiply the accumulated data by ``factor`` (an exponential memory over batches, as online EM)."""
        self._num.mul_(factor)
        self._den.mul_(factor)

    def accumulators(self) -> tuple[Tensor, Tensor]:
        """The raw half-plane accumulators (numerator, denominator), e.g. to checkpoint them."""
        return self._num, self._den

    def load_accumulators(self, numerator: Tensor, denominator: Tensor, count: int) -> None:
        """Replace the accumulators by saved ones (from :meth:`accumulators` of a Backprojector like this)."""
        if numerator.shape != self._num.shape or denominator.shape != self._den.shape:
            raise ValueError(f"accumulators of shape {tuple(numerator.shape)} for a grid of {tuple(self._num.shape)}")
        self._num.copy_(numerator)
        self._den.copy_(denominator)
        self.count = count

    def result(self, inplace: bool = False) -> tuple[Tensor, Tensor]:
        """(numerator (P, P, P) complex, denominator (P, P, P) real) with the mirror half added.

        By default the accumulators are kept (more batches may follow); ``inplace=True`` symmetrises them in
        place and returns them, saving memory for large boxes, after which :meth:`insert` refuses more data.
        """
        if self._finished:
            return self._num, self._den
        if inplace:
            hermitian_symmetrize(self._num, out=self._num)
            hermitian_symmetrize(self._den, out=self._den)
            self._finished = True
            return self._num, self._den
        return hermitian_symmetrize(self._num), hermitian_symmetrize(self._den)


__all__ = ["Backprojector", "Projector", "gridding_correction", "hermitian_symmetrize", "insert_slices",
           "padded_size", "padded_to_volume"]
