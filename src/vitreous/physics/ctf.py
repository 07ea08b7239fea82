"""RELION's contrast transfer function (``ctf.h``, ``CTF::getCTF``), batched over particles in PyTorch.

Units: defocus U/V in Å (positive = underfocus), defocus angle in degrees measured from the image x axis towards
y (RELION's ``atan2(ky, kx) - azimuth``), Cs in mm, voltage in kV, phase shift in degrees, B-factor in Å^2,
pixel size in Å.  With ``k`` in 1/Å,
``gamma = -pi lambda Df(theta) k^2 + (pi/2) Cs lambda^3 k^4 - phase_shift - atan(Q/sqrt(1-Q^2))``,
``Df(theta) = (U+V)/2 + (U-V)/2 cos(2 (theta - angle))`` and
``CTF = -sin(gamma) * exp(-B k^2 / 4) * scale``: ``CTF(0) = Q * scale`` and the first lobe is positive, so a
projection of positive density times the CTF shows white particles (RELION's contrast-inverted particle
stacks).  Images are in the centred-FT layout of
:mod:`vitreous.physics.fourier` ([y, x], DC at ``D//2``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from vitreous.physics.fourier import fft2c, frequencies_1d, ifft2c

_FIELDS = ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast", "phase_shift",
           "bfactor", "scale")


def electron_wavelength(voltage_kv: Tensor | float) -> Tensor | float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV (RELION's formula)."""
    v = voltage_kv * 1e3
    if isinstance(v, Tensor):
        return 12.2643247 / torch.sqrt(v * (1.0 + v * 0.978466e-6))
    return 12.2643247 / math.sqrt(v * (1.0 + v * 0.978466e-6))


@dataclass
class CTFParams:
    """Per-particle CTF parameters, each an (N,) tensor on one device (RELION units, see module docstring).

    ``pixel_size`` (Å, (N,)) is optional; :func:`compute_ctf` uses it when no pixel size is passed.
    """

    defocus_u: Tensor
    defocus_v: Tensor
    defocus_angle: Tensor
    voltage: Tensor
    cs: Tensor
    amplitude_contrast: Tensor
    phase_shift: Tensor
    bfactor: Tensor
    scale: Tensor
    pixel_size: Tensor | None = None

    @classmethod
    def from_table(cls, df: pd.DataFrame, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> CTFParams:
        """From ``ParticleSet.ctf_table()`` (columns defocus_u, defocus_v, defocus_angle, voltage, cs,
        amplitude_contrast, phase_shift, bfactor, scale and optionally pixel_size)."""
        missing = [c for c in _FIELDS[:3] if c not in df]
        if missing:
            raise ValueError(f"CTF table lacks columns {missing}")
        defaults = {"voltage": 300.0, "cs": 2.7, "amplitude_contrast": 0.1, "phase_shift": 0.0, "bfactor": 0.0,
                    "scale": 1.0}

        def col(name: str) -> Tensor:
            values = np.array(df[name], dtype=np.float64) if name in df else np.full(len(df), defaults[name])
            return torch.as_tensor(values, dtype=dtype, device=device)

        pixel = col("pixel_size") if "pixel_size" in df else None
        return cls(*(col(name) for name in _FIELDS), pixel_size=pixel)

    @classmethod
    def create(cls, defocus_u: Tensor | float, defocus_v: Tensor | float | None = None,
               defocus_angle: Tensor | float = 0.0, voltage: Tensor | float = 300.0, cs: Tensor | float = 2.7,
               amplitude_contrast: Tensor | float = 0.1, phase_shift: Tensor | float = 0.0,
               bfactor: Tensor | float = 0.0, scale: Tensor | float = 1.0, pixel_size: Tensor | float | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> CTFParams:
        """From scalars or (N,) values, broadcast to a common N."""
        defocus_v = defocus_u if defocus_v is None else defocus_v
        values = [defocus_u, defocus_v, defocus_angle, voltage, cs, amplitude_contrast, phase_shift, bfactor, scale]
        tensors = [torch.as_tensor(v, dtype=dtype, device=device).reshape(-1) for v in values]
        if pixel_size is not None:
            tensors.append(torch.as_tensor(pixel_size, dtype=dtype, device=device).reshape(-1))
        tensors = [t.contiguous() for t in torch.broadcast_tensors(*tensors)]
        return cls(*tensors[:9], pixel_size=tensors[9] if pixel_size is not None else None)

    def __len__(self) -> int:
        return self.defocus_u.shape[0]

    def _map(self, fn) -> CTFParams:
        return CTFParams(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                            for f in fields(self)})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> CTFParams:
        """A copy on ``device`` (and/or with float ``dtype``)."""
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def __getitem__(self, index: int | slice | Tensor | np.ndarray) -> CTFParams:
        """Subset by integer positions, slice or boolean mask (an int keeps a length-1 set)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        elif isinstance(index, np.ndarray):
            index = torch.as_tensor(index, device=self.defocus_u.device)
        elif isinstance(index, Tensor):
            index = index.to(self.defocus_u.device)
        return self._map(lambda t: t[index])

    subset = __getitem__

    @property
    def device(self) -> torch.device:
        return self.defocus_u.device

    @property
    def dtype(self) -> torch.dtype:
        return self.defocus_u.dtype


def ctf_from_frequencies(params: CTFParams, kx: Tensor, ky: Tensor) -> Tensor:
    """RELION CTF at spatial frequencies ``kx, ky`` in 1/Å of shape (N or 1, ...) -> (N, ...).

    The leading axis is the particle (size 1 to share one grid); params are (N,).  Uses
    ``Df(theta) k^2 = (U+V)/2 k^2 + (U-V)/2 ((kx^2 - ky^2) cos 2a + 2 kx ky sin 2a)``, which equals RELION's
    ``cos(2 (atan2(ky, kx) - a))`` form.
    """
    p = params

    def per(t: Tensor) -> Tensor:
        return t.reshape((-1,) + (1,) * (kx.ndim - 1))

    lam = electron_wavelength(p.voltage)
    a2 = p.defocus_angle * (math.pi / 90.0)  # 2 * angle in radians
    half_sum, half_diff = 0.5 * (p.defocus_u + p.defocus_v), 0.5 * (p.defocus_u - p.defocus_v)
    kx2, ky2 = kx * kx, ky * ky
    k2 = kx2 + ky2
    defocus_k2 = per(half_sum) * k2 + per(half_diff * torch.cos(a2)) * (kx2 - ky2) + per(
        half_diff * torch.sin(a2)) * (2.0 * kx * ky)
    k3 = torch.atan(p.amplitude_contrast / torch.sqrt(1.0 - p.amplitude_contrast**2))
    gamma = (per(-math.pi * lam) * defocus_k2 + per((0.5 * math.pi * 1e7) * p.cs * lam**3) * (k2 * k2)
             - per(p.phase_shift * (math.pi / 180.0) + k3))
    return -torch.sin(gamma) * torch.exp(per(-0.25 * p.bfactor) * k2) * per(p.scale)


def compute_ctf(params: CTFParams, D: int, pixel_size: float | Tensor | None = None) -> Tensor:
    """CTF images (N, D, D) in the centred-FT layout [ky, kx] (DC at ``D//2``), in the params' dtype/device.

    ``pixel_size`` in Å: a scalar or (N,); defaults to ``params.pixel_size``.  Frequencies are
    ``(i - D//2) / (D * pixel_size)`` 1/Å.
    """
    if pixel_size is None:
        if params.pixel_size is None:
            raise ValueError("compute_ctf needs a pixel size (argument or params.pixel_size)")
        pixel_size = params.pixel_size
    k = frequencies_1d(D, params.device, params.dtype)  # cycles/pixel
    apix = torch.as_tensor(pixel_size, dtype=params.dtype, device=params.device).reshape(-1, 1, 1)
    kx = k[None, None, :] / apix  # (N or 1, 1, D)
    ky = k[None, :, None] / apix  # (N or 1, D, 1)
    kx, ky = torch.broadcast_tensors(kx, ky)
    return ctf_from_frequencies(params, kx, ky)


def phase_flip(images: Tensor, ctf: Tensor) -> Tensor:
    """Real images (N, D, D) with each Fourier component multiplied by ``sign(CTF)`` (0 where CTF == 0)."""
    return ifft2c(fft2c(images) * torch.sign(ctf).to(images.dtype)).real


def wiener_filter(images: Tensor, ctf: Tensor, snr: float | Tensor) -> Tensor:
    """Wiener-filtered real images: ``F * CTF / (CTF^2 + 1/snr)``; ``snr`` scalar or broadcastable to (N, D, D)."""
    snr = torch.as_tensor(snr, dtype=images.dtype, device=images.device)
    ctf = ctf.to(images.dtype)
    return ifft2c(fft2c(images) * (ctf / (ctf * ctf + 1.0 / snr))).real
