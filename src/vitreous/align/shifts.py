"""In-plane shift grids and their phase ramps at Fourier points.

Shifts are RELION origins ``(rlnOriginX, rlnOriginY)`` in pixels: the particle centre sits at pixel
``D // 2 - origin``, and multiplying an image's centred spectrum by ``exp(-2 pi i (kx sx + ky sy) / D)``
(``k`` in Fourier pixels) moves it by ``+origin``, i.e. centres it (as
:func:`vitreous.physics.fourier.translate_ft` with ``+shifts_px``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vitreous.align.points import FourierPoints


def shift_grid(radius_px: float, step_px: float, device: torch.device | str | None = None) -> Tensor:
    """Square-lattice shifts (T, 2) = (x, y) px of spacing ``step_px`` within the disc ``|s| <= radius_px``,
    (0, 0) first, then by distance."""
    if step_px <= 0 or radius_px < 0:
        raise ValueError("need step_px > 0 and radius_px >= 0")
    n = int(math.floor(radius_px / step_px + 1e-9))
    r = torch.arange(-n, n + 1, dtype=torch.float64) * step_px
    sy, sx = torch.meshgrid(r, r, indexing="ij")
    s = torch.stack([sx.reshape(-1), sy.reshape(-1)], -1)
    norm = s.norm(dim=-1)
    s = s[norm <= radius_px * (1 + 1e-9) + 1e-12]
    s = s[torch.argsort(s.norm(dim=-1), stable=True)]
    return s.to(device=device, dtype=torch.float32)


def square_offsets(step_px: float, half_width: int = 1, device: torch.device | str | None = None) -> Tensor:
    """The ``(2 h + 1)^2`` offsets ``step_px * (i, j)``, ``|i|, |j| <= h`` (x, y) px, (0, 0) first: the
    refinement of a shift found on a grid of spacing ``2 * step_px``."""
    r = torch.arange(-half_width, half_width + 1, dtype=torch.float32) * step_px
    sy, sx = torch.meshgrid(r, r, indexing="ij")
    s = torch.stack([sx.reshape(-1), sy.reshape(-1)], -1)
    return s[torch.argsort(s.norm(dim=-1), stable=True)].to(device)


def shift_step_for_radius(box: int, radius_px: float) -> float:
    """Shift step (px) whose worst error (half a diagonal) moves the phase by 0.74 rad at ``radius_px``:
    ``box / (6 radius)``."""
    return box / (6.0 * radius_px)


def shift_phases(points: FourierPoints, shifts_px: Tensor) -> Tensor:
    """Phase ramps ``exp(-2 pi i (kx sx + ky sy) / D)`` (..., M) at the points for shifts (..., 2) px."""
    coords = points.coords.to(device=shifts_px.device, dtype=torch.float32)
    angle = shifts_px.to(torch.float32) @ coords * (-2.0 * math.pi / points.box)
    return torch.polar(torch.ones_like(angle), angle)
