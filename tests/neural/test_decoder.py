"""The voxel decoder's sections are the Fourier-slice projections of the maps it decodes (Projector's hand,
orientation and scale), and its gradients flow to every parameter."""

from __future__ import annotations

import pytest
import torch

from vitreous.align.points import FourierPoints, fourier_points
from vitreous.neural.decoder import VoxelDecoder
from vitreous.physics.fourier import lowpass
from vitreous.physics.projection import Projector
from vitreous.physics.so3_grid import random_rotations

D = 24


def _decoder_and_inputs(zdim: int) -> tuple[VoxelDecoder, FourierPoints, torch.Tensor, torch.Tensor | None]:
    torch.manual_seed(0)
    decoder = VoxelDecoder(D, zdim, rank=3, init_volume=lowpass(torch.randn(D, D, D), 6.0, 1.0, ndim=3))
    if zdim:
        with torch.no_grad():  # deltas well inside their band, as training leaves them (data fit the band)
            decoder.deltas.values.copy_(lowpass(torch.randn(3, D // 2, D // 2, D // 2), 8.0, 2.0, ndim=3) * 10)
    rotations = random_rotations(4, generator=torch.Generator().manual_seed(1))
    return decoder, fourier_points(D, D / 2), rotations, torch.randn(4, zdim) if zdim else None


def _sections_and_reference(zdim: int) -> tuple[torch.Tensor, torch.Tensor]:
    decoder, points, rotations, z = _decoder_and_inputs(zdim)
    with torch.no_grad():
        sections = decoder.slices(z, rotations, points)
        volumes = decoder.volumes(z, 4)
    reference = torch.stack([points.gather(Projector(v).slices(r[None]))[0] for v, r in zip(volumes, rotations,
                                                                                             strict=True)])
    return sections, reference


def test_homogeneous_sections_equal_the_projector_slices_of_the_map() -> None:
    sections, reference = _sections_and_reference(0)
    assert torch.allclose(sections, reference, rtol=0, atol=1e-5 * float(reference.abs().max()))


def test_latent_sections_match_the_projector_slices_of_the_decoded_maps() -> None:
    sections, reference = _sections_and_reference(2)
    # the deltas are interpolated on their own (coarser) grid: equal up to interpolation error
    assert float((sections - reference).norm() / reference.norm()) < 5e-3


def test_gradients_reach_base_deltas_and_coefficients() -> None:
    decoder = VoxelDecoder(D, 2, rank=3)
    points = fourier_points(D, D / 2)
    rotations = random_rotations(3, generator=torch.Generator().manual_seed(2))
    decoder.slices(torch.randn(3, 2), rotations, points).abs().pow(2).sum().backward()
    for name, parameter in decoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_odd_padded_box_is_refused() -> None:
    with pytest.raises(ValueError, match="odd padded box"):
        VoxelDecoder(D, 0, oversampling=1.125)


def test_latent_sections_under_bfloat16_autocast_stay_float32() -> None:
    """CUDA training runs the decoder under bfloat16 autocast (only the coefficient MLP may run in bfloat16);
    CPU autocast exercises the same path: the mixing of the delta sections must not come back in bfloat16."""
    decoder, points, rotations, z = _decoder_and_inputs(2)
    with torch.no_grad():
        sections, volumes = decoder.slices(z, rotations, points), decoder.volumes(z, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed_sections, mixed_volumes = decoder.slices(z, rotations, points), decoder.volumes(z, 4)
    assert mixed_sections.dtype == torch.complex64 and mixed_volumes.dtype == torch.float32
    # the coefficient MLP's bfloat16 rounding only (rotated coordinates in bfloat16 gave 4.5e-2)
    assert float((mixed_sections - sections).norm() / sections.norm()) < 1e-3
    assert float((mixed_volumes - volumes).norm() / volumes.norm()) < 1e-3
