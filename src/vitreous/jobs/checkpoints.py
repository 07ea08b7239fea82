"""Checkpoints: objects saved with ``torch.save`` under a job's ``checkpoints/`` folder, atomically.

A checkpoint is either absent or complete (written to a temporary file, then renamed), so a job killed
at any moment resumes from its last finished step.  torch is imported only when a checkpoint is used.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vitreous.errors import InputError
from vitreous.io.atomic import atomic_path

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SUFFIX = ".pt"


class Checkpoints:
    """Named checkpoints in one folder (``NAME.pt``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, name: str) -> Path:
        """The file of checkpoint ``name`` (letters, digits, ``_ . -``; no folders)."""
        if not NAME.match(name):
            raise ValueError(f"invalid checkpoint name {name!r}: use letters, digits, '_', '.', '-'")
        return self.folder / f"{name}{SUFFIX}"

    def has(self, name: str) -> bool:
        """Whether checkpoint ``name`` exists."""
        return self.path(name).is_file()

    def save(self, name: str, obj: Any) -> Path:
        """Save ``obj`` (tensors, arrays, dicts, numbers...) as checkpoint ``name``, atomically."""
        import torch

        path = self.path(name)
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
        return path

    def load(self, name: str) -> Any | None:
        """The object saved as checkpoint ``name`` (tensors on the CPU), or None when there is none."""
        import torch

        path = self.path(name)
        if not path.is_file():
            return None
        try:
            # Our own files, written by save(): full unpickling so arrays and plain objects come back.
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise InputError(path, f"unreadable checkpoint ({type(exc).__name__}: {exc})",
                             "rerun with --overwrite to start the job again") from None
