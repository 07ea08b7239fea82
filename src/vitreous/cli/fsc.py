"""``vitreous fsc A.mrc B.mrc``: Fourier shell correlation of two maps and the resolution at 0.5 and 0.143."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vitreous.cli import console
from vitreous.errors import InputError


def compare_maps(a: Path, b: Path, mask_radius: float | None = None) -> dict:
    """FSC of two maps of equal shape and voxel size: resolution (Å) at 0.5 and 0.143, and the curve."""
    from vitreous.analysis.fsc import fsc_curve, resolution_at, soft_spherical_mask
    from vitreous.io.mrc import read_map

    map_a, voxel_a = read_map(a)
    map_b, voxel_b = read_map(b)
    for path, data in ((a, map_a), (b, map_b)):
        if len(set(data.shape)) != 1:
            raise InputError(path, f"map of shape {data.shape} is not cubic", "pad or crop it to a cubic box")
    if map_a.shape != map_b.shape:
        raise InputError(b, f"shape {map_b.shape} does not match {map_a.shape} of {a}",
                         "resample one map to the other's box")
    if voxel_a and voxel_b and abs(voxel_a - voxel_b) > 0.01 * max(voxel_a, voxel_b):
        raise InputError(b, f"voxel size {voxel_b:g} Å differs from {voxel_a:g} Å of {a}", "resample one map")
    voxel = voxel_a or voxel_b or 1.0
    mask = None if mask_radius is None else soft_spherical_mask(map_a.shape[0], mask_radius / voxel)
    frequency, curve = fsc_curve(map_a, map_b, voxel, mask=mask)
    return {"voxel_size_A": voxel, "fsc_0.5_A": resolution_at(frequency, curve, 0.5),
            "fsc_0.143_A": resolution_at(frequency, curve, 0.143), "frequency": frequency, "fsc": curve}


def register(app: typer.Typer) -> None:
    """Add ``fsc`` to the app."""

    @app.command(help="Fourier shell correlation of two maps (same box and voxel size): prints the "
                      "resolution in Å where the FSC falls below 0.5 and 0.143.")
    def fsc(
        map_a: Annotated[Path, typer.Argument(metavar="A.mrc")],
        map_b: Annotated[Path, typer.Argument(metavar="B.mrc")],
        mask_radius: Annotated[float | None, typer.Option(
            "--mask-radius", help="Soft spherical mask radius in Å applied to both maps.")] = None,
    ) -> None:
        result = compare_maps(map_a, map_b, mask_radius)
        console.out.print(f"FSC=0.5: {result['fsc_0.5_A']:.2f} Å   FSC=0.143: {result['fsc_0.143_A']:.2f} Å   "
                          f"(voxel {result['voxel_size_A']:g} Å)", soft_wrap=True)
