"""MRC maps and image stacks through mrcfile: validated headers, atomic writes.

Arrays are [z, y, x] (maps) or [n, y, x] (stacks), float32; voxel sizes in Å.  A header voxel size of 0
means "unknown" (common in particle stacks): callers take the pixel size from the STAR/cs metadata.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import mrcfile
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE
from mrcfile.utils import byte_order_from_machine_stamp, dtype_from_mode

from vitreous.errors import InputError
from vitreous.io.atomic import atomic_path


@dataclass(frozen=True)
class StackHeader:
    """What the header of an MRC stack says: frame count, frame shape, data type, voxel size (Å, 0 = unset)."""

    path: Path
    n: int
    ny: int
    nx: int
    dtype: np.dtype  # as stored, with the file's byte order
    voxel_size: float
    data_offset: int = 1024  # bytes before the first pixel (header + extended header)

    @property
    def frame_bytes(self) -> int:
        return self.ny * self.nx * self.dtype.itemsize


def read_header(path: str | Path) -> StackHeader:
    """Read and check an MRC header without touching the data; a 2D file is a stack of one image."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", "check the path (or pass --datadir for relative stack paths)")
    size = path.stat().st_size
    if size < 1024:
        raise InputError(path, f"too short for an MRC file ({size} bytes, the header alone is 1024)",
                         "re-copy or re-export the file")
    with open(path, "rb") as fh:
        raw = fh.read(1024)
    # Old MRC files may lack the 'MAP ' identifier: only the error messages use it.
    unreadable = "not a readable MRC file" if raw[208:211] == b"MAP" else "not an MRC file (no 'MAP ' identifier)"
    ext_bytes = _extended_header_size(raw)
    if ext_bytes < 0 or 1024 + ext_bytes > size:  # checked before mrcfile allocates that many bytes
        raise InputError(path, f"{unreadable}: extended header of {ext_bytes} bytes in a file of {size}",
                         "re-export or re-copy the file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                header = mrc.header
                nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
                mode, ext_bytes = int(header.mode), int(header.nsymbt)
                byte_order = header.mode.dtype.byteorder
                voxel = float(mrc.voxel_size.x)
    except Exception as exc:  # mrcfile raises ValueError and friends for corrupt headers
        raise InputError(path, f"{unreadable}: {type(exc).__name__}: {exc}", "re-export or re-copy the file") from None
    if mode in (3, 4):
        raise InputError(path, f"complex data (MRC mode {mode}) is not an image stack or a map",
                         "give real-valued images (mode 0, 1, 2, 6 or 12)")
    try:
        dtype = np.dtype(dtype_from_mode(mode)).newbyteorder(byte_order)
    except ValueError:
        raise InputError(path, f"{unreadable}: unknown data mode {mode}",
                         "re-export the file as float32 (mode 2)") from None
    if min(nx, ny, nz) <= 0 or ext_bytes < 0:
        raise InputError(path, f"{unreadable}: header gives dimensions {nx} x {ny} x {nz}",
                         "re-export or re-copy the file")
    expected = 1024 + ext_bytes + nx * ny * nz * dtype.itemsize
    if size < expected:
        raise InputError(path, f"file is truncated ({size} of {expected} bytes)", "re-copy or re-extract the stack")
    if not np.isfinite(voxel) or voxel < 0:
        voxel = 0.0  # unusable header value: unknown, taken from the metadata instead
    return StackHeader(path, nz, ny, nx, dtype, voxel, 1024 + ext_bytes)


def read_frames(fh: BinaryIO, header: StackHeader, frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Frames (0-based, increasing) of an open stack as float32 (k, ny, nx) (into ``out`` when given), one read
    per run of consecutive frames; native float32 is read straight into the output, other types through a buffer.

    Plain ``readinto`` calls rather than memory maps (random access to a few images of a huge stack must not map
    and keep resident large parts of it) or ``numpy.fromfile`` (which re-opens the file through stdio on every
    call: 3-5x slower for random single-image reads).
    """
    frames = np.asarray(frames)
    if out is None:
        out = np.empty((len(frames), header.ny, header.nx), np.float32)
    if not len(frames):
        return out
    direct = header.dtype == np.dtype(np.float32)
    starts = np.concatenate([[0], np.nonzero(np.diff(frames) != 1)[0] + 1]).tolist()
    for a, b in zip(starts, [*starts[1:], len(frames)], strict=True):
        target = out[a:b] if direct else np.empty((b - a, header.ny, header.nx), header.dtype)
        fh.seek(header.data_offset + int(frames[a]) * header.frame_bytes)
        view, done = memoryview(target).cast("B"), 0
        while done < len(view):
            got = fh.readinto(view[done:])
            if not got:
                raise InputError(header.path, "file ended early (truncated while reading)", "re-copy the stack")
            done += got
        if not direct:
            out[a:b] = target
    return out


def _extended_header_size(raw: bytes) -> int:
    """``nsymbt`` in the byte order mrcfile will use: the machine stamp's, swapped if only that gives a valid mode."""
    header = np.frombuffer(raw, dtype=HEADER_DTYPE)[0]
    try:
        order = byte_order_from_machine_stamp(header["machst"])
    except ValueError:
        order = "<"
    header = header.astype(HEADER_DTYPE.newbyteorder(order))
    try:
        dtype_from_mode(header["mode"])
    except ValueError:
        swapped = header.astype(HEADER_DTYPE.newbyteorder(">" if order == "<" else "<"))
        try:
            dtype_from_mode(swapped["mode"])
            header = swapped
        except ValueError:
            pass
    return int(header["nsymbt"])


def read_map(path: str | Path) -> tuple[np.ndarray, float]:
    """Read a 3D map as float32 [z, y, x] and its voxel size in Å; checks shape and finiteness."""
    header = read_header(path)
    if header.n == 1:
        raise InputError(path, f"expected a 3D map, got a 2D image of shape {(header.ny, header.nx)}")
    with open(header.path, "rb") as fh:
        data = read_frames(fh, header, np.arange(header.n))
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
