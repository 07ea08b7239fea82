"""MRC maps and image stacks through mrcfile: validated headers, atomic writes.

Arrays are [z, y, x] (maps) or [n, y, x] (stacks), float32; voxel sizes in Å.  A header voxel size of 0
means "unknown" (common in particle stacks): callers take the pixel size from the STAR/cs metadata.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from vitreous.errors import InputError
from vitreous.io.atomic import atomic_path


@dataclass(frozen=True)
class StackHeader:
    """What the header of an MRC stack says: frame count, frame shape, data type, voxel size (Å, 0 = unset)."""

    path: Path
    n: int
    ny: int
    nx: int
    dtype: np.dtype
    voxel_size: float


def read_header(path: str | Path) -> StackHeader:
    """Read and check an MRC header without touching the data; a 2D file is a stack of one image."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", "check the path (or pass --datadir for relative stack paths)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
                data = mrc.data
                voxel = float(mrc.voxel_size.x)
                if data is None:
                    raise ValueError("data block unreadable")
                shape = data.shape if data.ndim == 3 else (1, *data.shape)
                dtype = data.dtype
                ext_bytes = int(mrc.header.nsymbt)
    except InputError:
        raise
    except Exception as exc:  # mrcfile raises ValueError and friends for corrupt files
        raise InputError(path, f"not a readable MRC file ({exc})", "re-export or re-copy the file") from None
    if len(shape) != 3:
        raise InputError(path, f"expected a 2D image or a stack, got an array of shape {shape}")
    expected = 1024 + ext_bytes + int(np.prod(shape)) * np.dtype(dtype).itemsize
    if path.stat().st_size < expected:
        raise InputError(path, f"file is truncated ({path.stat().st_size} of {expected} bytes)",
                         "re-copy or re-extract the stack")
    return StackHeader(path, shape[0], shape[1], shape[2], np.dtype(dtype), voxel)


def open_stack(path: str | Path) -> np.ndarray:
    """Memory-map an MRC stack read-only; returns an (n, ny, nx) array view (no data read)."""
    header = read_header(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mrc = mrcfile.mmap(header.path, mode="r", permissive=True)
    data = mrc.data
    return data if data.ndim == 3 else data[None]


def read_map(path: str | Path) -> tuple[np.ndarray, float]:
    """Read a 3D map as float32 [z, y, x] and its voxel size in Å; checks shape and finiteness."""
    header = read_header(path)
    data = np.asarray(open_stack(path), dtype=np.float32)
    if header.n == 1 or data.ndim != 3:
        raise InputError(path, f"expected a 3D map, got a 2D image of shape {data.shape[1:]}")
    if not np.isfinite(data).all():
        raise InputError(path, "map contains NaN or infinite values", "fix or regenerate the map")
    return np.ascontiguousarray(data), header.voxel_size


def write_map(path: str | Path, data: np.ndarray, voxel_size: float) -> None:
    """Write a 3D map (or a 2D/3D image stack) as float32 MRC with the given voxel size (Å), atomically."""
    data = np.ascontiguousarray(np.asarray(data, dtype=np.float32))
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = float(voxel_size)
        if data.ndim == 3 and Path(path).suffix == ".mrcs":
            mrc.set_image_stack()


class StackWriter:
    """Write a large float32 stack frame-batch by frame-batch through a memory map, renamed on close."""

    def __init__(self, path: str | Path, n: int, box: int, voxel_size: float) -> None:
        self.path = Path(path)
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._mrc = mrcfile.new_mmap(tmp, shape=(n, box, box), mrc_mode=2, overwrite=True)
        self._mrc.set_image_stack()
        self._mrc.voxel_size = float(voxel_size)
        self._stats = np.array([np.inf, -np.inf, 0.0, 0.0])  # min, max, sum, sum of squares
        self._count = 0

    def write(self, start: int, images: np.ndarray) -> None:
        """Write ``images`` (k, box, box) at frames ``start .. start + k - 1``."""
        images = np.asarray(images, dtype=np.float32)
        self._mrc.data[start : start + len(images)] = images
        values = images.astype(np.float64)
        self._stats = np.array([min(self._stats[0], values.min()), max(self._stats[1], values.max()),
                                self._stats[2] + values.sum(), self._stats[3] + (values**2).sum()])
        self._count += values.size

    def close(self) -> None:
        """Flush, write the header statistics (accumulated, not recomputed) and move the file into place."""
        mean = self._stats[2] / max(self._count, 1)
        header = self._mrc.header
        header.dmin, header.dmax, header.dmean = self._stats[0], self._stats[1], mean
        header.rms = np.sqrt(max(self._stats[3] / max(self._count, 1) - mean**2, 0.0))
        self._mrc.close()
        self._ctx.__exit__(None, None, None)

    def __enter__(self) -> StackWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._mrc.close()
            self._ctx.__exit__(exc_type, exc, tb)
