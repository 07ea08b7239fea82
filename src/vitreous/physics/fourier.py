"""Centred Fourier and Hartley transforms, frequency grids, resampling, shifts, masks and filters (PyTorch).

Conventions: images are [..., y, x], volumes [..., z, y, x]; the real-space centre (phase origin) is index
``D // 2`` on every axis for even and odd ``D``.  The *centred* transform puts the DC term at index ``D // 2``:
``fft2c(x) = fftshift(fft2(ifftshift(x)))``, unnormalised forward (``ifft2c`` divides by ``D**2``).  Frequency
index ``i`` means ``k = (i - D // 2) / D`` cycles/pixel; ``(kx, ky)`` pairs follow the (x, y) order.  The Hartley
transform is ``H = Re(F) - Im(F)`` of the same centred transform (``cas`` kernel).  Every function works on the
input's device and dtype and broadcasts over leading batch dimensions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_DIMS2 = (-2, -1)
_DIMS3 = (-3, -2, -1)


# ---- centred transforms ----------------------------------------------------------------------------------
def fft2c(x: Tensor) -> Tensor:
    """Centred 2D DFT over the last two dims (DC at index D//2, phase origin at pixel D//2), unnormalised."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=_DIMS2)), dim=_DIMS2)


def ifft2c(f: Tensor) -> Tensor:
    """Inverse of :func:`fft2c` (divides by the number of pixels); returns complex, take ``.real`` for images."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(f, dim=_DIMS2)), dim=_DIMS2)


def fft3c(x: Tensor) -> Tensor:
    """Centred 3D DFT over the last three dims [z, y, x], unnormalised."""
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=_DIMS3), dim=_DIMS3), dim=_DIMS3)


def ifft3c(f: Tensor) -> Tensor:
    """Inverse of :func:`fft3c` (divides by the number of voxels); complex output."""
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(f, dim=_DIMS3), dim=_DIMS3), dim=_DIMS3)


def ht2c(x: Tensor) -> Tensor:
    """Centred 2D Hartley transform ``Re(fft2c(x)) - Im(fft2c(x))`` of real images."""
    f = fft2c(x)
    return f.real - f.imag


def iht2c(h: Tensor) -> Tensor:
    """Inverse of :func:`ht2c`: ``ht2c(h) / D**2`` (the Hartley transform is its own inverse up to scale)."""
    return ht2c(h) / (h.shape[-1] * h.shape[-2])


def ht3c(x: Tensor) -> Tensor:
    """Centred 3D Hartley transform of real volumes."""
    f = fft3c(x)
    return f.real - f.imag


def iht3c(h: Tensor) -> Tensor:
    """Inverse of :func:`ht3c`: ``ht3c(h) / D**3``."""
    return ht3c(h) / (h.shape[-1] * h.shape[-2] * h.shape[-3])


def flip_frequencies(x: Tensor, ndim: int = 2) -> Tensor:
    """``x(-k)`` in the centred layout over the last ``ndim`` dims (index ``i -> 2*(D//2) - i`` mod D)."""
    out = x
    for d in range(-ndim, 0):
        n = x.shape[d]
        idx = (2 * (n // 2) - torch.arange(n, device=x.device)) % n
        out = out.index_select(d, idx)
    return out


def hartley_to_fourier(h: Tensor, ndim: int = 2) -> Tensor:
    """Centred Hartley coefficients -> centred Fourier coefficients: ``F = (H(k)+H(-k))/2 - i (H(k)-H(-k))/2``."""
    hm = flip_frequencies(h, ndim)
    return torch.complex((h + hm) / 2, (hm - h) / 2)


def fourier_to_hartley(f: Tensor) -> Tensor:
    """Centred Fourier coefficients -> centred Hartley coefficients ``Re(F) - Im(F)``."""
    return f.real - f.imag


# ---- frequency grids and shells ---------------------------------------------------------------------------
def frequencies_1d(D: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Centred frequencies ``(i - D//2) / D`` in cycles/pixel, shape (D,)."""
    return (torch.arange(D, device=device, dtype=dtype) - D // 2) / D


def frequency_grid_2d(D: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """(D, D, 2) grid of ``(kx, ky)`` in cycles/pixel; ``[..., 0]`` varies along x (last axis)."""
    k = frequencies_1d(D, device, dtype)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return torch.stack([kx, ky], dim=-1)


def frequency_grid_3d(D: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """(D, D, D, 3) grid of ``(kx, ky, kz)`` in cycles/voxel on the [z, y, x] volume layout."""
    k = frequencies_1d(D, device, dtype)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    return torch.stack([kx, ky, kz], dim=-1)


def radius_grid(D: int, ndim: int = 2, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Distance (in pixels, or Fourier pixels) of every index from the centre ``D//2``; shape ``(D,) * ndim``."""
    c = torch.arange(D, device=device, dtype=dtype) - D // 2
    r2 = torch.zeros((D,) * ndim, device=device, dtype=dtype)
    for d in range(ndim):
        shape = [1] * ndim
        shape[d] = D
        r2 = r2 + (c**2).reshape(shape)
    return r2.sqrt()


def radial_index(D: int, ndim: int = 2, device: torch.device | str | None = None) -> Tensor:
    """Fourier shell number ``round(|k| * D)`` (int64) of every centred-layout index; shape ``(D,) * ndim``.

    Shell ``s`` holds frequencies ``s / D`` cycles/pixel; shells ``0 .. D//2`` lie within Nyquist.
    """
    return torch.round(radius_grid(D, ndim, device, torch.float64)).long()


def shell_index_2d(D: int, device: torch.device | str | None = None) -> Tensor:
    """(D, D) Fourier shell numbers ``round(|k| * D)`` of the centred 2D layout (see :func:`radial_index`)."""
    return radial_index(D, 2, device)


def shell_index_3d(D: int, device: torch.device | str | None = None) -> Tensor:
    """(D, D, D) Fourier shell numbers ``round(|k| * D)`` of the centred 3D layout (see :func:`radial_index`)."""
    return radial_index(D, 3, device)


def shell_sum(x: Tensor, shells: Tensor, n_shells: int | None = None) -> Tensor:
    """Sum of ``x`` over each shell; ``shells`` (int64) matches the trailing dims of ``x``.

    Returns ``(..., n_shells)`` with the leading dims of ``x``; shells >= ``n_shells`` are dropped.
    """
    n = int(shells.max()) + 1 if n_shells is None else n_shells
    flat_s = shells.reshape(-1).clamp(max=n)  # shells beyond the last go to a dropped extra bin
    lead = x.shape[: x.ndim - shells.ndim]
    out = torch.zeros(*lead, n + 1, dtype=x.dtype, device=x.device)
    out.index_add_(out.ndim - 1, flat_s, x.reshape(*lead, -1))
    return out[..., :n]


def radial_average(x: Tensor, ndim: int = 2, n_shells: int | None = None) -> Tensor:
    """Mean of ``x`` over Fourier shells of the last ``ndim`` (centred) dims -> ``(..., n_shells)``.

    ``n_shells`` defaults to ``D//2 + 1`` (shells up to Nyquist).
    """
    D = x.shape[-1]
    n = D // 2 + 1 if n_shells is None else n_shells
    shells = radial_index(D, ndim, x.device)
    counts = shell_sum(torch.ones(shells.shape, dtype=torch.float64, device=x.device), shells, n)
    return shell_sum(x, shells, n) / counts.clamp_min(1).to(x.real.dtype)


# ---- resampling and windowing ------------------------------------------------------------------------------
def _center_slices(D: int, new_D: int) -> slice:
    start = D // 2 - new_D // 2
    return slice(start, start + new_D)


def window(x: Tensor, new_D: int, ndim: int = 2, value: float = 0.0) -> Tensor:
    """Crop or pad the last ``ndim`` dims to ``new_D`` keeping index ``D//2`` at ``new_D//2`` (no rescaling).

    Works in real space (real-space windowing) and on centred Fourier arrays alike; padding uses ``value``.
    """
    D = x.shape[-1]
    if new_D == D:
        return x
    if new_D < D:
        return x[(...,) + (_center_slices(D, new_D),) * ndim]
    out = torch.full(x.shape[: x.ndim - ndim] + (new_D,) * ndim, value, dtype=x.dtype, device=x.device)
    out[(...,) + (_center_slices(new_D, D),) * ndim] = x
    return out


def _fourier_resample(x: Tensor, new_D: int, ndim: int) -> Tensor:
    D = x.shape[-1]
    fwd, inv = (fft2c, ifft2c) if ndim == 2 else (fft3c, ifft3c)
    out = inv(window(fwd(x), new_D, ndim)).real
    return out * (new_D / D) ** ndim


def fourier_crop(x: Tensor, new_D: int, ndim: int = 2) -> Tensor:
    """Downsample real images (``ndim=2``) or volumes (``ndim=3``) by cropping the centred spectrum to ``new_D``.

    Keeps frequencies ``-(new_D//2) .. (new_D-1)//2`` (DC stays at index ``new_D//2``; for even ``new_D`` the
    unpaired Nyquist bin is kept once, as ASPIRE's ``downsample`` does).  Intensity convention: the result is
    scaled by ``(new_D/D)**ndim`` so pixel values (and the image mean) stay comparable; the pixel size grows by
    ``D/new_D``.
    """
    if new_D > x.shape[-1]:
        raise ValueError(f"fourier_crop: new size {new_D} exceeds {x.shape[-1]}")
    return _fourier_resample(x, new_D, ndim)


def fourier_pad(x: Tensor, new_D: int, ndim: int = 2) -> Tensor:
    """Upsample real images/volumes by zero-padding the centred spectrum to ``new_D`` (sinc interpolation).

    Same intensity convention as :func:`fourier_crop` (pixel values preserved); an even-size Nyquist bin is split
    evenly between ``+-D/2`` by taking the real part.
    """
    if new_D < x.shape[-1]:
        raise ValueError(f"fourier_pad: new size {new_D} is below {x.shape[-1]}")
    return _fourier_resample(x, new_D, ndim)


# ---- shifts -----------------------------------------------------------------------------------------------------
def shift_phase(shifts_px: Tensor, D: int, dtype: torch.dtype | None = None) -> Tensor:
    """Phase ramps ``exp(-2 pi i (kx sx + ky sy))`` (..., D, D) that move real-space content by ``+(sx, sy)`` px.

    ``shifts_px`` is (..., 2) in (x, y) order; the complex dtype follows ``dtype`` (default: that of the shifts).
    """
    real = shifts_px.dtype if dtype is None else dtype
    if real.is_complex:
        real = torch.empty((), dtype=real).real.dtype
    k = frequencies_1d(D, shifts_px.device, real)
    s = shifts_px.to(real)
    ones = torch.ones((), dtype=real, device=shifts_px.device)
    ex = torch.polar(ones.expand(s.shape[:-1] + (D,)), (-2 * math.pi) * k * s[..., 0, None])  # (..., D) along x
    ey = torch.polar(ones.expand(s.shape[:-1] + (D,)), (-2 * math.pi) * k * s[..., 1, None])  # (..., D) along y
    return ey[..., :, None] * ex[..., None, :]


def translate_ft(f: Tensor, shifts_px: Tensor) -> Tensor:
    """Shift centred FTs ``f`` (..., D, D) so real-space content moves by ``+shifts_px`` = (x, y) pixels.

    Multiplies by ``exp(-2 pi i (kx sx + ky sy))``; ``shifts_px`` (..., 2) broadcasts against the leading dims.
    """
    shifts_px = torch.as_tensor(shifts_px, device=f.device)
    return f * shift_phase(shifts_px, f.shape[-1], f.real.dtype)


def translate_images(images: Tensor, shifts_px: Tensor) -> Tensor:
    """Real images (..., D, D) moved by ``+shifts_px`` (x, y) pixels (Fourier shift, periodic)."""
    return ifft2c(translate_ft(fft2c(images), shifts_px)).real


# ---- masks and filters ---------------------------------------------------------------------------------------
def _cosine_edge(r: Tensor, radius: float, width: float) -> Tensor:
    """1 for ``r <= radius``, raised cosine to 0 at ``radius + width``, 0 beyond (hard edge if width <= 0)."""
    if width <= 0:
        return (r <= radius).to(r.dtype)
    t = ((r - radius) / width).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def soft_circular_mask(D: int, radius: float | None = None, width: float = 3.0,
                       device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """(D, D) mask around pixel ``D//2``: 1 within ``radius`` px, cosine fall-off over ``width`` px, then 0.

    ``radius`` defaults to ``D/2 - width``.
    """
    radius = D / 2 - width if radius is None else radius
    return _cosine_edge(radius_grid(D, 2, device, dtype), radius, width)


def soft_spherical_mask(D: int, radius: float | None = None, width: float = 3.0,
                        device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """(D, D, D) spherical mask around voxel ``D//2`` with a cosine edge (as :func:`soft_circular_mask`)."""
    radius = D / 2 - width if radius is None else radius
    return _cosine_edge(radius_grid(D, 3, device, dtype), radius, width)


def lowpass_filter(D: int, cutoff_angst: float, pixel_size: float, ndim: int = 2, edge_shells: float = 2.0,
                   device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Centred low-pass filter (``(D,) * ndim``): 1 below the cutoff, raised-cosine edge, 0 above.

    The cutoff frequency ``pixel_size / cutoff_angst`` (1/Å -> shell ``D * pixel_size / cutoff_angst``) sits in
    the middle of an edge ``edge_shells`` Fourier pixels wide, where the filter is 0.5.
    """
    shell = D * pixel_size / cutoff_angst
    r = radius_grid(D, ndim, device, dtype)
    return _cosine_edge(r, shell - edge_shells / 2, edge_shells)


def lowpass(x: Tensor, cutoff_angst: float, pixel_size: float, ndim: int = 2, edge_shells: float = 2.0) -> Tensor:
    """Low-pass filter real images (``ndim=2``) or volumes (``ndim=3``); see :func:`lowpass_filter`."""
    filt = lowpass_filter(x.shape[-1], cutoff_angst, pixel_size, ndim, edge_shells, x.device, x.real.dtype)
    fwd, inv = (fft2c, ifft2c) if ndim == 2 else (fft3c, ifft3c)
    return inv(fwd(x) * filt).real
