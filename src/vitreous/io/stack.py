"""Lazy particle images from MRC stacks: read batch by batch, several files at once, never all in RAM.

Image ``i`` is frame ``index[i]`` (0-based) of file ``paths[file_id[i]]``.  Stacks are opened on first use
and kept in a small cache of open files; each batch is read with plain reads, one per run of consecutive frames
(a sorted batch of a contiguous stack or particle cache is one read).  A stack that is the data file of a
particle cache (:mod:`vitreous.io.cache_manifest`) is checked against the cache's manifest when opened.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from vitreous.errors import InputError
from vitreous.io.cache_manifest import check_cache_file
from vitreous.io.mrc import StackHeader, read_frames, read_header

MAX_OPEN_FILES = 256


class ImageStack:
    """Images drawn lazily from one or more MRC stacks (float16 or float32 on disk, float32 out)."""

    def __init__(self, paths: Sequence[str | Path], file_id: np.ndarray, index: np.ndarray) -> None:
        self._open: OrderedDict[int, BinaryIO] = OrderedDict()
        self.paths = [Path(p) for p in paths]
        self.file_id = np.asarray(file_id, dtype=np.int64)
        self.index = np.asarray(index, dtype=np.int64)
        if self.file_id.shape != self.index.shape:
            raise ValueError("file_id and index must have the same length")
        for path in self.paths:
            check_cache_file(path)  # one stat for a stack outside a cache folder
        self.headers = [read_header(p) for p in self.paths]
        self._check()

    def _check(self) -> None:
        shapes = {(h.ny, h.nx) for h in self.headers}
        if len(shapes) > 1:
            raise InputError(self.paths[0], f"stacks have different image sizes {sorted(shapes)}",
                             "re-extract all particles at one box size")
        for h in self.headers:
            if h.ny != h.nx:
                raise InputError(h.path, f"images are not square ({h.ny} x {h.nx})", "re-extract square boxes")
        if len(self.index) and (self.index.min() < 0):
            i = int(np.argmax(self.index < 0))
            raise InputError(self.paths[self.file_id[i]], f"particle {i + 1} asks for image {self.index[i] + 1}, but "
                             "image numbers in N@file references start at 1", "number the images from 1")
        counts = np.array([h.n for h in self.headers])
        too_far = self.index >= counts[self.file_id] if len(self.index) else np.zeros(0, bool)
        if too_far.any():
            i = int(np.argmax(too_far))
            h = self.headers[self.file_id[i]]
            raise InputError(h.path, f"particle {i + 1} asks for image {self.index[i] + 1} but the stack holds "
                             f"{h.n}", "check that the STAR/cs file belongs to this stack")

    @classmethod
    def from_file(cls, path: str | Path) -> ImageStack:
        """All frames of one stack, in order."""
        check_cache_file(Path(path))  # before the header: a truncated cache names its fix
        header = read_header(path)
        return cls([path], np.zeros(header.n, np.int64), np.arange(header.n))

    @classmethod
    def from_references(cls, files: Sequence[str], index: np.ndarray, search_dirs: Sequence[Path],
                        metadata_path: str | Path) -> ImageStack:
        """Stacks from per-particle file names (resolved against ``search_dirs``) and 0-based frame indices."""
        codes, unique = pd.factorize(pd.Series(files, dtype=object), sort=False)
        paths = [resolve_stack_path(name, search_dirs, metadata_path) for name in unique]
        return cls(paths, codes, index)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def box(self) -> int:
        """Image side length in pixels."""
        return self.headers[0].ny if self.headers else 0

    @property
    def header_voxel_sizes(self) -> list[float]:
        """Voxel size (Å) in each stack's header; 0 where unset."""
        return [h.voxel_size for h in self.headers]

    def header_of(self, i: int) -> StackHeader:
        """The header of the stack that holds image ``i``."""
        return self.headers[self.file_id[i]]

    def _file(self, f: int) -> BinaryIO:
        """Open file handle of stack ``f`` (a small LRU cache of handles)."""
        if f in self._open:
            self._open.move_to_end(f)
        else:
            self._open[f] = open(self.paths[f], "rb", buffering=0)  # noqa: SIM115 - closed on eviction / close()
            if len(self._open) > MAX_OPEN_FILES:
                self._open.popitem(last=False)[1].close()
        return self._open[f]

    def close(self) -> None:
        """Close the open stack files (reads reopen them)."""
        while self._open:
            self._open.popitem()[1].close()

    def __del__(self) -> None:
        self.close()

    def read(self, indices: int | Sequence[int] | np.ndarray | slice, check_finite: bool = True) -> np.ndarray:
        """Images ``indices`` as a float32 array (k, D, D) (one index: (D, D)), read from disk now.

        Within each file the frames are read in increasing order, one read per run of consecutive frames.
        """
        idx = self._positions(indices)
        if idx.ndim == 0:
            return self.read(idx[None], check_finite)[0]
        fids = self.file_id[idx]
        files, frames = np.unique(fids), self.index[idx]
        out = np.empty((len(idx), self.box, self.box), np.float32)
        if len(files) == 1 and np.all(np.diff(frames) > 0):  # a sorted batch of one file: straight into the output
            read_frames(self._file(int(files[0])), self.headers[files[0]], frames, out)
        else:
            for f in files:
                sel = np.nonzero(fids == f)[0]
                order = np.argsort(frames[sel], kind="stable")  # sequential reads within a file
                out[sel[order]] = read_frames(self._file(int(f)), self.headers[f], frames[sel][order])
        if check_finite and not np.isfinite(out).all():
            bad = int(idx[np.nonzero(~np.isfinite(out).reshape(len(idx), -1).all(axis=1))[0][0]])
            raise InputError(self.paths[self.file_id[bad]], f"image {self.index[bad] + 1} (particle {bad + 1}) "
                             "contains NaN or infinite pixels", "remove that particle or re-extract it")
        return out

    def _positions(self, indices: int | Sequence[int] | np.ndarray | slice) -> np.ndarray:
        """0-based image positions of ``indices`` (negative ones count from the end), without an (N,) array."""
        n = len(self)
        if isinstance(indices, slice):
            return np.arange(*indices.indices(n))
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean index of shape {idx.shape} for {n} images")
            return np.nonzero(idx)[0]
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"image indices must be integers, not {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"image index out of range for {n} images")
        return np.where(idx < 0, idx + n, idx)

    def __getitem__(self, indices: int | Sequence[int] | np.ndarray | slice) -> np.ndarray:
        return self.read(indices)

    def subset(self, indices: np.ndarray) -> ImageStack:
        """A view on some of the images (no data read)."""
        new = object.__new__(ImageStack)
        new.paths, new.headers = self.paths, self.headers
        new.file_id, new.index = self.file_id[indices], self.index[indices]
        new._open = OrderedDict()
        return new

    def references(self, relative_to: Path | None = None) -> list[str]:
        """RELION ``N@file`` names (1-based N), paths relative to ``relative_to`` where possible."""
        names = [relative_name(p, relative_to) for p in self.paths]
        return [f"{i + 1:06d}@{names[f]}" for f, i in zip(self.file_id.tolist(), self.index.tolist(), strict=True)]


def relative_name(path: Path, start: Path | None) -> str:
    if start is None:
        return str(path)
    try:
        return os.path.relpath(path.resolve(), start.resolve())
    except ValueError:  # different drives
        return str(path.resolve())


def resolve_stack_path(name: str, search_dirs: Sequence[Path], metadata_path: str | Path) -> Path:
    """Find a stack named in metadata: as given, then below each search dir (full relative path, then base name)."""
    name = name.lstrip(">")  # cryoSPARC marks imported blobs with '>'
    candidate = Path(name)
    if candidate.is_absolute() and candidate.is_file():
        return candidate
    for base in search_dirs:
        for option in (base / candidate, base / candidate.name):
            if option.is_file():
                return option
    looked = ", ".join(dict.fromkeys(str(d) for d in search_dirs))
    raise InputError(metadata_path, f"particle stack '{name}' not found (looked in {looked})",
                     "pass --datadir DIR with the folder that holds the stacks")
