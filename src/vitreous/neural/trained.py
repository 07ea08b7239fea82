"""A finished ``train-vae`` / ``train-field`` job folder read back: latents, particles and decoded volumes.

::

    trained = load_trained(out_dir, device="cpu")
    trained.zdim, trained.box, trained.pixel_size      # latent size, box (px) and voxel size (Å) of the volumes
    trained.z                                          # (N, Z) means of q(z|x) in STAR order, None for zdim 0
    trained.particles_path                             # OUT/particles.star (input + vtsLatent1..Z)
    for volume in trained.volumes(z):                  # z (M, Z): one (D, D, D) float32 [z, y, x] map per row
        ...

The volumes are real-space maps with the hand, orientation and intensity scale of ``vitreous backproject`` of
the same particles (Fourier cropped to the training box when ``--downsample`` was used).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitreous.errors import InputError
from vitreous.jobs.record import read_record
from vitreous.neural.model import VAE, ModelConfig

COMMANDS = ("train-vae", "train-field")
MIXTURE_COMMAND = "abinit-neural"  # one model per class: class_00K_weights.pt, class_00K_z.npy, ..._particles.star
WEIGHTS = "weights.pt"
LATENTS = "z.npy"
PARTICLES = "particles.star"


def intensity_factor(scale: float, box: int, original_box: int) -> float:
    """Factor from decoded maps (units of images divided by ``scale``, Fourier cropped from ``original_box`` to
    ``box``) to the intensity scale of ``vitreous backproject`` (projections are sums over voxels)."""
    return scale * box / original_box


def save_weights(path: Path, model: VAE, *, scale: float, pixel_size: float, original_box: int) -> None:
    """Write the weights file of a finished job (see :func:`load_trained`)."""
    from vitreous.io.atomic import atomic_path

    payload = {"config": model.config.to_dict(), "model": model.state_dict(), "scale": scale,
               "pixel_size": pixel_size, "original_box": original_box}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


@dataclass
class TrainedModel:
    """The decoder of a finished job and its outputs (see the module docstring)."""

    model: VAE
    pixel_size: float
    intensity: float  # decoded maps (normalised-image units) times this = backproject's scale
    z: np.ndarray | None
    particles_path: Path
    device: torch.device

    @property
    def zdim(self) -> int:
        return self.model.config.zdim

    @property
    def box(self) -> int:
        return self.model.config.box

    @torch.no_grad()
    def volumes(self, z: np.ndarray, batch_size: int = 8) -> Iterator[np.ndarray]:
        """One real-space map (D, D, D) float32 [z, y, x] per row of ``z`` (M, Z); for zdim 0 pass (M, 0)."""
        z = np.asarray(z, np.float32)
        if z.ndim != 2 or z.shape[1] != self.zdim:
            raise InputError(None, f"latents of shape {z.shape} do not fit this model (zdim {self.zdim})",
                             f"give an (M, {self.zdim}) array")
        decoder = self.model.decoder
        for start in range(0, len(z), batch_size):
            rows = z[start:start + batch_size]
            latent = torch.as_tensor(rows, device=self.device) if self.zdim else None
            maps = decoder.volumes(latent, len(rows)) * self.intensity
            yield from maps.float().cpu().numpy()


def _fail(out_dir: Path, problem: str) -> InputError:
    return InputError(out_dir, problem, "give the output folder of a finished vitreous train-vae or train-field job "
                                        "(or of abinit-neural, with --class)")


def _files(out_dir: Path, command: str, class_number: int | None) -> tuple[Path, Path, Path]:
    """(weights, latents, particles) of a train-vae/train-field folder or of one class of an abinit-neural one
    (``class_00K_weights.pt``, ``class_00K_z.npy``, ``class_00K_particles.star``: its particles only)."""
    if command != MIXTURE_COMMAND:
        if class_number is not None:
            raise InputError(out_dir, f"--class {class_number} for a {command} folder (it has one model)",
                             "leave out --class")
        return out_dir / WEIGHTS, out_dir / LATENTS, out_dir / PARTICLES
    if class_number is None:
        raise InputError(out_dir, "an abinit-neural folder holds one model per class", "choose one with --class K")
    stem = out_dir / f"class_{class_number:03d}"
    if class_number < 1 or not Path(f"{stem}_weights.pt").is_file():
        raise InputError(out_dir, f"has no class {class_number}", "give a class number from 1 to K")
    return Path(f"{stem}_weights.pt"), Path(f"{stem}_z.npy"), Path(f"{stem}_particles.star")


def load_trained(out_dir: str | Path, device: str = "cpu", class_number: int | None = None) -> TrainedModel:
    """Read a finished train-vae/train-field job folder (or class ``class_number`` (1-based) of an
    abinit-neural one); InputError when it is not one."""
    out_dir = Path(out_dir)
    record: dict[str, Any] | None = read_record(out_dir) if out_dir.is_dir() else None
    if record is None or record.get("command") not in (*COMMANDS, MIXTURE_COMMAND):
        raise _fail(out_dir, "is not a train-vae, train-field or abinit-neural job folder")
    weights, latents, particles = _files(out_dir, record["command"], class_number)
    if record.get("status") != "finished" or not weights.is_file():
        raise _fail(out_dir, f"holds a {record.get('status')} {record['command']} job without {weights.name}")
    saved = torch.load(weights, map_location="cpu", weights_only=False)
    model = VAE(ModelConfig(**saved["config"]))
    model.load_state_dict(saved["model"])
    target = torch.device(device)
    model.to(target).eval()
    z = np.load(latents) if model.config.zdim and latents.is_file() else None
    intensity = intensity_factor(saved["scale"], model.config.box, saved["original_box"])
    return TrainedModel(model, float(saved["pixel_size"]), float(intensity), z, particles, target)
