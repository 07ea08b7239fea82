"""Electron-scattering potential maps of atomic models, as sums of Gaussians sampled on a cubic grid.

Scattering factors: International Tables for Crystallography Vol. C Table 4.3.2.2 (Peng, Ren, Dudarev &
Whelan 1996, Acta Cryst. A52: 257), 5 Gaussians per neutral atom, ``f(s) = sum_i a_i exp(-b_i s^2)`` with
``s = q / 2`` (``q = |k|`` in 1/Å, ``a_i`` in Å, ``b_i`` in Å²), read from gemmi (``gemmi.Element(x).c4322``).
With a B-factor ``B`` (Å²) and the anti-aliasing blur ``B_blur`` each term has the real-space form

    rho(r) = sum_i a_i (4 pi / B_i)^(3/2) exp(-4 pi^2 |r - r_atom|^2 / B_i),   B_i = b_i + B + B_blur,

in Å / Å³ = Å^-2, proportional to the Coulomb potential (so ``map.sum() * apix**3`` is the sum of ``f(0)``
over the atoms).  The map holds point samples of this at the voxel centres; the blur is a Gaussian low-pass
``exp(-B_blur q^2 / 4)`` whose default (:func:`auto_blur`) has gain 0.1 at Nyquist, leaving aliasing of
~1e-3 of the signal up to half Nyquist, ~1% to 3/4 Nyquist and ~10% in the last quarter (pass a larger
``blur``, e.g. ``auto_blur(apix, 0.01)``, for less).  Each Gaussian is evaluated separably on a cube of
voxels around its atom, truncated where the widest term falls below 1e-4 of its peak.

Frame: voxel ``[z, y, x]`` of a box ``D`` is at ``((x - D//2), (y - D//2), (z - D//2)) * apix`` Å, so an
atom at (x, y, z) Å lands on ``array[z, y, x]`` (centre the model first, see ``vitreous.sim.atoms.centred``).
This is the frame of ``vitreous.io.mrc.write_map`` and of gemmi's ``DensityCalculatorE`` on a P1 cell of
side ``D * apix`` shifted by ``D//2`` voxels (checked in the tests).
"""

from __future__ import annotations

import math

import gemmi
import numpy as np
import torch

from vitreous.sim.atoms import Atoms, Trajectory

NYQUIST_GAIN = 0.1  # gain of the default blur at Nyquist
TRUNCATION = 1e-4  # each Gaussian is cut where its widest term falls below this fraction of its peak
CHUNK_VOXELS = 1 << 22  # atom-window voxels evaluated per batch (bounds temporary memory to ~50 MB)
PADDED_VOXELS = 1 << 25  # padded-grid voxels per batch of trajectory frames (128 MB in float32)


def scattering_coefficients(elements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom electron scattering Gaussians ``(a, b)``, each (N, 5): ``a`` in Å, ``b`` in Å² (ITC 4.3.2.2)."""
    symbols, inverse = np.unique(np.asarray(elements), return_inverse=True)
    a_table, b_table = [], []
    for symbol in symbols:
        element = gemmi.Element(str(symbol))
        if element.atomic_number == 0:
            raise ValueError(f"no scattering factor for element {symbol!r}")
        a_table.append(element.c4322.a)
        b_table.append(element.c4322.b)
    inverse = inverse.reshape(-1)
    return np.asarray(a_table, np.float64)[inverse], np.asarray(b_table, np.float64)[inverse]


def auto_blur(apix: float, nyquist_gain: float = NYQUIST_GAIN) -> float:
    """Blur B (Å²) whose Gaussian filter ``exp(-B q^2 / 4)`` has gain ``nyquist_gain`` at ``q = 1 / (2 apix)``."""
    return 16.0 * apix**2 * math.log(1.0 / nyquist_gain)


def _terms(atoms: Atoms, b_factor: float, use_atom_b: bool, blur: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom, per-term amplitude (Å^-2) and exponent ``4 pi^2 / B_i`` (Å^-2), each (N, 5)."""
    a, b = scattering_coefficients(atoms.elements)
    total_b = b + b_factor + blur
    if use_atom_b:
        if atoms.b_factors is None:
            raise ValueError("use_atom_b=True but the model has no B-factors")
        total_b = total_b + atoms.b_factors[:, None]
    if (total_b <= 0).any():
        raise ValueError("total B-factor must be positive (raise b_factor or blur)")
    amplitude = a * (4.0 * math.pi / total_b) ** 1.5
    return amplitude, 4.0 * math.pi**2 / total_b


def _half_width(exponent: np.ndarray, apix: float) -> int:
    """Window half-width (voxels) that holds the widest Gaussian down to ``TRUNCATION`` of its peak."""
    r_cut = math.sqrt(math.log(1.0 / TRUNCATION) / float(exponent.min()))
    return max(1, math.ceil(r_cut / apix))


def _splat(coords: torch.Tensor, amplitude: torch.Tensor, exponent: torch.Tensor, box: int, apix: float,
           half_width: int, out: torch.Tensor) -> None:
    """Add the Gaussians of atoms ``coords`` (F, N, 3) Å into ``out`` (F, D, D, D), separably per axis.

    Windows are centred on each atom's nearest voxel, clamped into the box, and scattered into a grid padded
    by the half-width (so every window fits), which is then cropped; voxels in the box within the
    truncation radius of an atom are always inside its window.
    """
    h, width, padded = half_width, 2 * half_width + 1, box + 2 * half_width
    device = coords.device
    offsets = torch.arange(-h, h + 1, device=device)
    steps = torch.arange(width, device=device)
    pattern = (steps[:, None, None] * padded**2 + steps[None, :, None] * padded + steps[None, None, :]).reshape(-1)
    frames_per_grid = max(1, PADDED_VOXELS // padded**3)
    for first in range(0, coords.shape[0], frames_per_grid):
        chunk = coords[first:first + frames_per_grid]
        frames, n_atoms = chunk.shape[:2]
        grid = torch.zeros((frames, padded, padded, padded), dtype=out.dtype, device=device)
        frame_base = torch.arange(frames, device=device) * padded**3
        per_chunk = max(1, CHUNK_VOXELS // (width**3 * frames))
        for start in range(0, n_atoms, per_chunk):
            stop = min(start + per_chunk, n_atoms)
            position = chunk[:, start:stop].double() / apix + box // 2  # fractional voxel index, (F, n, 3)
            centre = torch.round(position).long().clamp(0, box - 1)
            distance = ((centre[..., None] + offsets - position[..., None]) * apix).to(out.dtype)  # (F, n, 3, w)
            amp = amplitude[start:stop].to(out.dtype)  # (n, K)
            alpha = exponent[start:stop].to(out.dtype)
            profile = torch.exp(-alpha[None, :, :, None, None] * distance[:, :, None] ** 2)  # (F, n, K, 3, w)
            gx, gy, gz = profile[:, :, :, 0], profile[:, :, :, 1], profile[:, :, :, 2]
            terms = amp.shape[1]
            zy = ((gz * amp[None, :, :, None])[..., :, None] * gy[..., None, :]).reshape(-1, terms, width**2)
            values = torch.bmm(zy.transpose(1, 2), gx.reshape(-1, terms, width))  # (F*n, w*w, w)
            # the window start (centre - h) in padded coordinates is the centre itself
            base = frame_base[:, None] + (centre[..., 2] * padded + centre[..., 1]) * padded + centre[..., 0]
            grid.view(-1).index_add_(0, (base.reshape(-1, 1) + pattern).reshape(-1), values.reshape(-1))
        out[first:first + frames] += grid[:, h:h + box, h:h + box, h:h + box]


def _prepare(atoms: Atoms, apix: float, b_factor: float, use_atom_b: bool, blur: float | None,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    if len(atoms) == 0:
        raise ValueError("no atoms")
    blur = auto_blur(apix) if blur is None else float(blur)
    amplitude, exponent = _terms(atoms, b_factor, use_atom_b, blur)
    half_width = _half_width(exponent, apix)
    return (torch.as_tensor(amplitude, device=device), torch.as_tensor(exponent, device=device), half_width)


def density_map(atoms: Atoms, box: int, apix: float, *, b_factor: float = 0.0, use_atom_b: bool = False,
                blur: float | None = None, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu") -> torch.Tensor:
    """Potential map (D, D, D) [z, y, x] in Å^-2 of ``atoms`` (coordinates Å, origin at voxel D//2).

    ``b_factor`` (Å²) is added to every atom, ``use_atom_b`` adds the model's own B-factors, ``blur`` (Å²)
    is the anti-aliasing low-pass (default :func:`auto_blur` of ``apix``).  Atoms outside the box are cut.
    """
    device = torch.device(device)
    amplitude, exponent, half_width = _prepare(atoms, apix, b_factor, use_atom_b, blur, device)
    out = torch.zeros((1, box, box, box), dtype=dtype, device=device)
    coords = torch.as_tensor(np.asarray(atoms.coords, dtype=np.float64), device=device)[None]
    _splat(coords, amplitude, exponent, box, apix, half_width, out)
    return out[0]


def trajectory_maps(trajectory: Trajectory, box: int, apix: float, *, frames: np.ndarray | None = None,
                    b_factor: float = 0.0, blur: float | None = None, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """Potential maps (F, D, D, D) of the trajectory frames (all, or the indices ``frames``); see
    :func:`density_map`.  Frames share one frame of reference: centre the whole trajectory, not each frame."""
    device = torch.device(device)
    amplitude, exponent, half_width = _prepare(trajectory.frame(0), apix, b_factor, False, blur, device)
    coords = np.asarray(trajectory.coords if frames is None else trajectory.coords[np.asarray(frames)])
    out = torch.zeros((len(coords), box, box, box), dtype=dtype, device=device)
    coords_t = torch.as_tensor(coords.astype(np.float64), device=device)
    _splat(coords_t, amplitude, exponent, box, apix, half_width, out)
    return out
