"""The manifest of a particle cache folder (``cache.json``, written by ``vitreous preprocess``, see
:mod:`vitreous.data.cache`) and the check every stack reader runs: a cache's data file that changed after the
cache was built (size, modification time, sampled bytes) is refused with a message naming the fix."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from vitreous.errors import InputError

FORMAT = 1
MANIFEST = "cache.json"
SAMPLE_BLOCKS = 16  # blocks read to fingerprint a file
SAMPLE_BYTES = 4096


def fingerprint(path: str | Path) -> dict[str, Any]:
    """A file's identity: base name, size (bytes), modification time (ns) and SHA-256 of sampled blocks
    (``SAMPLE_BLOCKS`` blocks of ``SAMPLE_BYTES`` evenly spread from the first byte to the last)."""
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        last = max(stat.st_size - SAMPLE_BYTES, 0)
        for offset in np.unique(np.linspace(0, last, SAMPLE_BLOCKS).astype(np.int64)).tolist():
            fh.seek(offset)
            digest.update(fh.read(SAMPLE_BYTES))
    return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sample_sha256": digest.hexdigest()}


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of a cache folder, or None when it has none (or an unreadable one)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("vitreous_cache") == FORMAT else None


def data_file_problem(folder: str | Path, manifest: dict[str, Any]) -> str | None:
    """Why the cache's data file no longer is what was built (missing, other size, time or bytes), or None."""
    path = Path(folder) / manifest["data_file"]
    if not path.is_file():
        return f"its data file {path.name} is missing"
    now, built = fingerprint(path), manifest["data"]
    if now["size"] != built["size"]:
        return f"its data file {path.name} changed size after it was built ({now['size']} bytes, built {built['size']})"
    if now["sample_sha256"] != built["sample_sha256"]:
        return f"the contents of its data file {path.name} changed after it was built"
    if now["mtime_ns"] != built["mtime_ns"]:
        return f"its data file {path.name} was modified after it was built"
    return None


def check_cache_file(path: Path) -> None:
    """InputError if ``path`` is the data file of a cache folder and changed after the cache was built."""
    manifest_path = path.parent / MANIFEST
    if not manifest_path.is_file():
        return
    manifest = read_manifest(path.parent)
    if manifest is None or manifest.get("data_file") != path.name:
        return
    problem = data_file_problem(path.parent, manifest)
    if problem is not None:
        raise InputError(path.parent, f"particle cache is invalid: {problem}",
                         "rebuild it with vitreous preprocess ... --overwrite (copy caches with their timestamps: "
                         "cp -p, rsync -t)")


__all__ = ["FORMAT", "MANIFEST", "check_cache_file", "data_file_problem", "fingerprint", "read_manifest"]
