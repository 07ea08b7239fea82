"""Latent-conditioned voxel decoder: a base map plus latent-modulated low-rank deltas, sliced in Fourier space.

``V(z) = V_0 + upsample(sum_k c_k(z) B_k)``: a learned real-space base map ``V_0`` (D, D, D) [z, y, x] and
``K`` learned delta volumes ``B_k`` on a coarser grid (``delta_box`` d <= D voxels of ``D/d`` times the
size, i.e. band-limited to ``d/2`` Fourier pixels), mixed by coefficients ``c(z)`` from a small MLP (nonlinear
in z, so the maps of a continuous motion need not lie on a line).  Both are masked by soft spheres (the
particle's support).  The parameters are kept near unit size for the optimiser (``scale``).

Slicing follows :class:`vitreous.physics.projection.Projector` exactly (same hand, orientation and shift sign
as ``vitreous backproject``): each grid is divided by its gridding correction, zero-padded ``oversampling``
times and Fourier transformed once per optimiser step; a particle's central section ``F(A^T (kx, ky, 0))``
is read by trilinear interpolation at its Fourier points only (the deltas at the points inside their band),
and the delta channels are combined with the particle's ``c(z)`` afterwards (slicing is linear).  Because a
Fourier index means the same frequency on both grids (``box * voxel size`` is the same), the delta's section
adds directly to the base's; the real-space delta on the D grid is ``fourier_pad(delta, D) * (d / D)^3``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vitreous.align.points import FourierPoints
from vitreous.physics.fourier import fourier_pad, soft_spherical_mask
from vitreous.physics.projection import gridding_correction, padded_size


def mlp(n_in: int, hidden: int, layers: int, n_out: int) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` (ReLU), then a linear output layer."""
    modules: list[nn.Module] = []
    width = n_in
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    modules.append(nn.Linear(width, n_out))
    return nn.Sequential(*modules)


class _Gather(torch.autograd.Function):
    """Rows ``table[index]``; the backward pass scatters with ``scatter_add_`` (faster than ``index_add_``)."""

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.rows = table.shape[0]
        return table.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.rows, grad.shape[1])
        return out.scatter_add_(0, index.long()[:, None].expand_as(grad), grad), None


def _checkerboard(shape: tuple[int, int, int]) -> Tensor:
    """``(-1)^(i + j + l)`` on a grid of ``shape``."""
    i, j, k = (torch.arange(n) for n in shape)
    return (1 - 2 * ((i[:, None, None] + j[None, :, None] + k[None, None, :]) % 2)).float()


class SlicedGrid(nn.Module):
    """``channels`` real-space volumes (C, d, d, d) with a soft spherical support, readable as central sections.

    Fourier transform: the volumes, divided by the gridding correction and zero-padded to ``P`` (even), are
    multiplied by the checkerboard ``s = (-1)^(i+j+l)`` so that ``rfftn`` returns the centred spectrum of
    :func:`vitreous.physics.fourier.fft3c` (times ``(-1)^(3P/2) s``) without fftshift copies: z and y indices
    ``0 .. P-1`` are frequencies ``-P/2 .. P/2-1``, x indices ``0 .. P/2`` frequencies ``-P/2 .. 0`` (the real
    volume's other half is ``F(-k) = conj F(k)``), plus one zero plane that the trilinear upper corner may touch
    with weight 0.  Channels are last, so the gather table (rows = voxels) needs no transposition.
    """

    def __init__(self, channels: int, box: int, oversampling: float, init: Tensor | None = None,
                 init_std: float = 1e-2) -> None:
        super().__init__()
        self.box, self.P = box, padded_size(box, oversampling)
        if self.P % 2:
            raise ValueError(f"oversampling {oversampling} gives an odd padded box {self.P}; choose another")
        self.offset = self.P // 2 - box // 2  # where window() puts the volume in the padded grid
        P, inside = self.P, slice(self.offset, self.offset + box)
        mask = soft_spherical_mask(box, box / 2 - 3, 2.0)
        self.register_buffer("mask", mask)
        self.register_buffer("pre", mask * _checkerboard((P, P, P))[inside, inside, inside]
                             / gridding_correction(box, oversampling))
        self.register_buffer("post", (-1) ** (3 * (P // 2)) * _checkerboard((P, P, P // 2 + 1))[..., None])
        start = init_std * torch.randn(channels, box, box, box) if init is None else init.reshape(channels, box,
                                                                                                    box, box)
        self.values = nn.Parameter(start.float().clone())

    def volumes(self) -> Tensor:
        """The masked volumes (C, d, d, d)."""
        return self.values * self.mask

    def table(self) -> Tensor:
        """Half of the padded centred FTs as a gather table (P * P * (P/2 + 2), 2C): real and imaginary parts."""
        P, o, d = self.P, self.offset, self.box
        padded = self.values.new_zeros(P, P, P, self.values.shape[0])
        padded[o:o + d, o:o + d, o:o + d] = (self.values * self.pre).permute(1, 2, 3, 0)
        ft = torch.view_as_real(torch.fft.rfftn(padded, dim=(0, 1, 2)) * self.post)
        ft = torch.cat([ft, ft.new_zeros(P, P, 1, *ft.shape[3:])], dim=2)
        return ft.reshape(P * P * (P // 2 + 2), -1)

    def sections(self, table: Tensor, rotations: Tensor, coords: Tensor) -> Tensor:
        """Trilinear values (N, M, C, 2) of the spectra at ``A^T (kx, ky, 0)``, ``coords`` (2, M) Fourier pixels of
        the d grid (the same for the D grid), RELION matrices (N, 3, 3) (the same values as
        :meth:`vitreous.physics.projection.Projector.slices` for the masked volumes)."""
        P, width = self.P, self.P // 2 + 2
        pos = torch.matmul(rotations[:, :2, :].transpose(1, 2), coords * (P / self.box))  # (N, 3, M): x, y, z
        mirrored = pos[:, :1] > 0  # read F(-k) = conj F(k) from the stored half x <= 0
        pos = torch.where(mirrored, -pos, pos) + P // 2
        low = torch.floor(pos)
        frac = pos - low
        low = low.long()
        low[:, 1:].masked_fill_(low[:, 1:] == P, 0)  # |k| <= P/2: only +P/2 itself wraps (to -P/2)
        high = low + 1
        high[:, 1:].masked_fill_(high[:, 1:] == P, 0)
        stride = torch.tensor([1, width, width * P], device=pos.device)[None, :, None]
        low, high = low * stride, high * stride
        index, weight = [], []
        for iz, wz in ((low[:, 2], 1 - frac[:, 2]), (high[:, 2], frac[:, 2])):
            for iy, wy in ((low[:, 1], 1 - frac[:, 1]), (high[:, 1], frac[:, 1])):
                for ix, wx in ((low[:, 0], 1 - frac[:, 0]), (high[:, 0], frac[:, 0])):
                    index.append(iz + iy + ix)
                    weight.append(wz * wy * wx)
        index_t, weight_t = torch.stack(index), torch.stack(weight)  # (8, N, M)
        values = _Gather.apply(table, index_t.reshape(-1)).view(*index_t.shape, -1)
        values = (values * weight_t[..., None]).sum(0).view(*index_t.shape[1:], -1, 2)
        conj = torch.where(mirrored[:, 0], -1.0, 1.0)[:, :, None]  # (N, M, 1)
        return torch.stack([values[..., 0], values[..., 1] * conj], dim=-1)


class VoxelDecoder(nn.Module):
    """Maps latents (B, Z) to volumes and their sections (see the module docstring); zdim 0: the base map only."""

    def __init__(self, box: int, zdim: int, rank: int = 16, hidden: int = 128, layers: int = 2,
                 oversampling: float = 2.0, delta_box: int | None = None, init_volume: Tensor | None = None) -> None:
        super().__init__()
        self.box, self.zdim = box, zdim
        self.rank = rank if zdim > 0 else 0
        self.delta_box = min(box, delta_box or box // 2)
        std = float(init_volume.std()) if init_volume is not None else 0.0
        self.register_buffer("scale", torch.tensor(std if std > 0 else 1.0 / box))
        self.base = SlicedGrid(1, box, oversampling, None if init_volume is None else init_volume / self.scale,
                               init_std=0.0)
        if self.rank:
            self.deltas = SlicedGrid(self.rank, self.delta_box, oversampling)
            self.coefficients = mlp(zdim, hidden, layers, self.rank)

    def volumes(self, z: Tensor | None, n: int = 1) -> Tensor:
        """Real-space maps (n, D, D, D) [z, y, x] at latents ``z`` (n, Z) (None for zdim 0)."""
        coefficients = self.coefficients(z).float() if self.rank else None
        with torch.autocast(self.scale.device.type, enabled=False):  # only the MLP may run in bfloat16
            base = self.scale * self.base.volumes()
            if coefficients is None:
                return base.expand(n, -1, -1, -1)
            delta = torch.einsum("nk,kijl->nijl", coefficients, self.deltas.volumes())
            return base + self.scale * fourier_pad(delta, self.box, ndim=3) * (self.delta_box / self.box) ** 3

    def slices(self, z: Tensor | None, rotations: Tensor, points: FourierPoints) -> Tensor:
        """Central sections (B, M) complex of the maps at ``z`` (B, Z) for RELION matrices (B, 3, 3) at ``points``
        (Fourier pixels of the D box; the same values as ``Projector(volume).slices`` there).  Under autocast only
        the coefficient MLP runs in lower precision: rotated coordinates in bfloat16 would be off by up to a
        quarter of a padded voxel."""
        coefficients = self.coefficients(z).float() if self.rank else None
        with torch.autocast(rotations.device.type, enabled=False):
            rotations = rotations.float()
            coords = points.coords.to(rotations)
            out = self.base.sections(self.base.table(), rotations, coords)[:, :, 0]
            if coefficients is not None:
                inner = torch.nonzero(points.shell < self.delta_box / 2).squeeze(1)
                sections = self.deltas.sections(self.deltas.table(), rotations, coords[:, inner])
                out = out.index_add(1, inner, torch.einsum("nk,nmkr->nmr", coefficients, sections))
            return self.scale * torch.view_as_complex(out.contiguous())
