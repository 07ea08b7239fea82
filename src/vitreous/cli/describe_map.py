"""What ``info`` says about an MRC map, stack or image: shape, data type, voxel size, value statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitreous.cli.stats import sample_indices, statistics
from vitreous.io.mrc import StackHeader, read_frames, read_header

SUFFIXES = (".mrc", ".mrcs", ".map")


def kind_of(header: StackHeader) -> str:
    """'image', 'stack' or 'volume': ``.mrcs`` files and non-cubic n x D x D files are stacks."""
    if header.n == 1:
        return "image"
    if header.path.suffix.lower() == ".mrcs" or (header.ny == header.nx and header.n != header.nx):
        return "stack"
    return "volume"


def map_summary(path: Path, sample: int) -> dict[str, Any]:
    """Everything ``info`` reports about an MRC file; stacks are sampled (``sample`` images), maps read in slabs."""
    header = read_header(path)
    kind = kind_of(header)
    voxel = header.voxel_size or None
    summary: dict[str, Any] = {"path": str(path), "format": f"MRC {kind}", "type": kind,
                               "dtype": str(header.dtype), "voxel_size_A": voxel}
    if kind == "stack":
        summary.update(images=header.n, box_px=header.ny if header.ny == header.nx else [header.ny, header.nx])
        indices = sample_indices(header.n, sample)
    else:
        summary["shape_zyx"] = [header.n, header.ny, header.nx]
        if voxel:
            summary["size_A"] = [round(s * voxel, 3) for s in (header.n, header.ny, header.nx)]
        indices = sample_indices(header.n, header.n)
    summary["notes"] = [] if voxel else ["voxel size unset in the header (0): give it with --apix where needed"]
    if len(indices):
        item = "image" if kind == "stack" else "z_slice"
        with open(path, "rb") as fh:
            summary["statistics"] = statistics(lambda idx: read_frames(fh, header, idx), indices,
                                               header.ny * header.nx, item=item)
    return summary
