"""Preprocessed particle cache: Fourier-cropped, normalised images in one contiguous MRC stack, written once.

A cache folder (``vitreous preprocess``) holds

* ``particles.mrcs``: image ``i`` is particle ``i`` of the input (STAR order), Fourier cropped to ``box``
  (:func:`vitreous.physics.fourier.fourier_crop`; the pixel size grows by ``original_box / box``) and divided
  by one global ``scale`` (the standard deviation of the pixels of up to 1000 randomly chosen input images,
  :func:`vitreous.neural.data.image_scale`: no mean is subtracted, so CTF-filtered signal keeps its sign).
  Float32 (MRC mode 2) or float16 (mode 12), so every MRC reader, memory maps included, can use it;
* ``particles.star``: the input metadata pointing at it, with ``rlnImagePixelSize`` and ``rlnImageSize`` of
  the cropped images (origins, defocus and the rest are in Å and stay as they were);
* ``cache.json`` (the manifest, written last): a content ``key`` of what the cache was built from (the bytes of
  the metadata file, each input stack's name, size, modification time and sampled bytes, and the parameters)
  and the identity of ``particles.mrcs`` (size, modification time, sampled bytes).

:class:`vitreous.io.stack.ImageStack` calls :func:`vitreous.io.cache_manifest.check_cache_file` on every
stack it opens: a cache data file
that was changed or truncated after it was built is refused with a message naming the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitreous.errors import InputError
from vitreous.io.cache_manifest import FORMAT, fingerprint

if TYPE_CHECKING:
    from vitreous.data.particles import ParticleSet

DATA_FILE = "particles.mrcs"
STAR_FILE = "particles.star"
DTYPES = {"float32": 2, "float16": 12}  # numpy name -> MRC mode
CHUNK_BYTES = 32 * 2**20  # float32 bytes of the cropped images processed at once
FLOAT16_MAX = 65504.0
NORMALISATION = "divided by one global scale: the std of the pixels of <= 1000 random input images"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a whole file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(2**20):
            digest.update(block)
    return digest.hexdigest()


def describe_sources(metadata: str | Path, stacks: Iterable[str | Path], params: dict[str, Any]) -> dict[str, Any]:
    """What a cache is built from: the metadata file's hash, the stacks' fingerprints, the parameters."""
    return {"metadata": str(Path(metadata).resolve()), "metadata_sha256": file_sha256(metadata),
            "stacks": [fingerprint(p) for p in stacks], "params": params}


def cache_key(sources: dict[str, Any]) -> str:
    """Content key of :func:`describe_sources` (the metadata file's own path left out: moving it is harmless)."""
    content = {"format": FORMAT, **{k: v for k, v in sources.items() if k != "metadata"}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def source_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Which parts of two :func:`describe_sources` records differ, in words."""
    changed = []
    if old.get("metadata_sha256") != new["metadata_sha256"]:
        changed.append("the particle metadata file")
    if old.get("stacks") != new["stacks"]:
        changed.append("the image stacks (name, size, time or content)")
    params = old.get("params", {})
    changed += [f"{k} ({params.get(k)} -> {v})" for k, v in new["params"].items() if params.get(k) != v]
    return changed


def cache_box(box: int, downsample: int | None) -> int:
    """The cropped box (px): ``downsample`` (even, 8 ..``box``) or ``box``; InputError otherwise."""
    if downsample is None:
        return box
    if not (8 <= downsample <= box and downsample % 2 == 0):
        raise InputError(None, f"--downsample {downsample} is not an even box size between 8 and {box} px",
                         "give an even size no larger than the images")
    return int(downsample)


def build(particles: ParticleSet, data_path: Path, *, box: int, dtype: str, scale: float, voxel_size: float,
          progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write ``data_path`` (atomically, in chunks of ``CHUNK_BYTES``; the next chunk is read while one is
    processed): every image cropped to ``box`` and divided by ``scale``, as ``dtype``, header voxel size
    ``voxel_size`` (Å, 0 = unset).  Returns the statistics (min, max, mean, rms) of the written values."""
    import mrcfile
    import torch
    from mrcfile.dtypes import HEADER_DTYPE

    from vitreous.data.prefetch import prefetch
    from vitreous.io.atomic import atomic_path
    from vitreous.physics.fourier import fourier_crop

    n, original = len(particles), particles.box
    chunk = max(1, CHUNK_BYTES // (4 * original * original))
    stats = np.array([np.inf, -np.inf, 0.0, 0.0])  # min, max, sum, sum of squares
    with atomic_path(data_path) as tmp:
        with mrcfile.new_mmap(tmp, shape=(n, box, box), mrc_mode=DTYPES[dtype], overwrite=True) as mrc:
            mrc.set_image_stack()  # header only: the data area is left sparse until written below
            mrc.voxel_size = voxel_size
        with open(tmp, "r+b") as fh:
            fh.seek(1024)
            chunks = (particles.images.read(slice(start, start + chunk)) for start in range(0, n, chunk))
            for raw in prefetch(chunks):
                images = torch.from_numpy(raw)
                if box != original:
                    images = fourier_crop(images, box)
                out = (images / scale).numpy()
                low, high = float(out.min()), float(out.max())
                if dtype == "float16" and max(-low, high) > FLOAT16_MAX:
                    raise InputError(particles.source or None, f"normalised pixel values reach {max(-low, high):.3g}, "
                                     "beyond float16", "use --dtype float32")
                stats = np.array([min(stats[0], low), max(stats[1], high), stats[2] + out.sum(dtype=np.float64),
                                  stats[3] + np.square(out, dtype=np.float64).sum()])
                fh.write(np.asarray(out, dtype=dtype).data)
                if progress is not None:
                    progress(len(raw))
            fh.seek(0)
            header = np.frombuffer(fh.read(1024), dtype=HEADER_DTYPE).copy()
            mean = stats[2] / (n * box * box)
            header["dmin"], header["dmax"], header["dmean"] = stats[0], stats[1], mean
            header["rms"] = np.sqrt(max(stats[3] / (n * box * box) - mean**2, 0.0))
            fh.seek(0)
            fh.write(header.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
    return {"min": stats[0], "max": stats[1], "mean": mean, "rms": float(header["rms"][0])}
