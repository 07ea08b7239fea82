"""Training batches for the neural models: images, CTF and poses of a ParticleSet, read lazily per batch.

Each batch is prepared on the fly from the particles' stack (never the whole stack in memory): the images are
Fourier cropped to the training box ``D'`` (``--downsample``; pixel size grows by ``D / D'``), centred by
their origins (moved by ``+rlnOrigin``, see :mod:`vitreous.physics.projection`), divided by one global scale
(the standard deviation of the pixels of a sample of images) and returned as

* ``spectra`` (B, M) complex: centred, unnormalised ``fft2c`` values at the half-plane Fourier points
  (:mod:`vitreous.align.points`) within the band limit,
* ``ctf`` (B, M): the RELION CTF at those points (at the training pixel size),
* ``rotations`` (B, 3, 3): RELION matrices ``A``,
* ``encoder_input`` (B, D'^2): the centred image, phase-flipped (CTF-aware), masked by a soft circle.

Under ``torchrun`` (:mod:`vitreous.distributed.ranks`) :meth:`ParticleBatches.steps` gives each rank its share
of every batch: the epoch's order comes from the seed alone (not from the number of ranks), each batch of
``batch_size`` particles is the same on every rank and rank r takes every ``world_size``-th of its particles from
the r-th, so the ranks' shares of a step make up exactly the batch a single process trains on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vitreous.align.points import FourierPoints, fourier_points
from vitreous.data.particles import ParticleSet
from vitreous.distributed.ranks import SINGLE, Ranks
from vitreous.errors import InputError
from vitreous.physics.ctf import CTFParams, compute_ctf
from vitreous.physics.fourier import fft2c, fourier_crop, ifft2c, soft_circular_mask, translate_ft

SCALE_SAMPLE = 1000  # images read to estimate the normalisation scale


@dataclass
class Batch:
    """One training batch (see the module docstring); ``index`` are the particles' 0-based STAR rows."""

    index: np.ndarray
    spectra: Tensor
    ctf: Tensor
    rotations: Tensor
    encoder_input: Tensor
    points: FourierPoints


@dataclass
class Step:
    """One optimiser step: the whole batch ``index`` (sorted 0-based rows, the same on every rank), the positions
    ``rows`` in it of this rank's particles, and their images ``batch`` (None when the rank has none: a last
    batch smaller than the number of ranks)."""

    index: np.ndarray
    rows: np.ndarray
    batch: Batch | None


def check_particles(particles: ParticleSet) -> None:
    """InputError unless the particles can train a model: images, poses, CTF, one pixel size."""
    if particles.images is None:
        raise InputError(particles.source or None, "no particle images", "pass --datadir with the stacks")
    if not particles.has_poses:
        raise InputError(particles.source or None, "particles have no poses (rlnAngleRot/Tilt/Psi)",
                         "run vitreous refine (or vitreous abinit) first to get a consensus pose per particle")
    if not particles.has_ctf:
        raise InputError(particles.source or None, "particles have no CTF parameters (rlnDefocusU/V, rlnVoltage, "
                         "rlnSphericalAberration)", "add the CTF columns (e.g. from CTF estimation)")
    particles.single_pixel_size()


def image_scale(particles: ParticleSet, seed: int = 0) -> float:
    """Standard deviation of the pixels of (at most) ``SCALE_SAMPLE`` randomly chosen images."""
    n = len(particles)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(n, SCALE_SAMPLE), replace=False))
    scale = float(np.std(particles.images.read(idx)))
    if not scale > 0:
        raise InputError(particles.source or None, "the sampled images are all constant", "check the stack")
    return scale


class ParticleBatches:
    """Lazy training batches at box ``box`` (``<=`` the images' box) for ``particles``; see the module docstring.

    ``scale`` divides every image (default: :func:`image_scale`); ``radius`` is the band limit in Fourier pixels
    of the training box (default Nyquist).
    """

    def __init__(self, particles: ParticleSet, box: int | None = None, scale: float | None = None,
                 radius: float | None = None, device: str | torch.device = "cpu") -> None:
        check_particles(particles)
        self.particles = particles
        self.original_box = particles.box
        self.box = self.original_box if box is None else int(box)
        if not 8 <= self.box <= self.original_box:
            raise InputError(particles.source or None, f"cannot train at box {self.box} from {self.original_box}-px "
                             "images", f"give --downsample between 8 and {self.original_box}")
        self.pixel_size = particles.single_pixel_size() * self.original_box / self.box
        self.scale = image_scale(particles) if scale is None else float(scale)
        self.device = torch.device(device)
        self.points: FourierPoints = fourier_points(self.box, self.box / 2 if radius is None else radius, self.device)
        self._rotations = torch.as_tensor(particles.rotations, dtype=torch.float32)
        self._shifts = torch.as_tensor(particles.shifts_px * (self.box / self.original_box), dtype=torch.float32)
        self._ctf = CTFParams.from_table(particles.ctf_table())
        self._mask = soft_circular_mask(self.box, self.box / 2 - 2, 2.0, self.device).reshape(-1)

    def __len__(self) -> int:
        return len(self.particles)

    def batch(self, index: np.ndarray) -> Batch:
        """The prepared batch of particles ``index`` (0-based rows)."""
        index = np.asarray(index)
        images = torch.as_tensor(self.particles.images.read(index), device=self.device) / self.scale
        if self.box != self.original_box:
            images = fourier_crop(images, self.box)
        spectra = translate_ft(fft2c(images), self._shifts[index].to(self.device))
        ctf = compute_ctf(self._ctf[index].to(self.device), self.box, self.pixel_size)
        flipped = ifft2c(spectra * torch.sign(ctf)).real.reshape(len(index), -1) * self._mask
        return Batch(index, self.points.gather(spectra), self.points.gather(ctf),
                     self._rotations[index].to(self.device), flipped, self.points)

    def steps(self, batch_size: int, generator: np.random.Generator | None = None,
              ranks: Ranks = SINGLE) -> Iterator[Step]:
        """The steps of one epoch (see the module docstring): every rank gets ``ceil(N / batch_size)`` steps and
        its share (``ranks.shard``) of each batch of ``batch_size`` particles (shuffled by ``generator``)."""
        n = len(self)
        order = np.arange(n) if generator is None else generator.permutation(n)
        for start in range(0, n, batch_size):
            index = np.sort(order[start:start + batch_size])
            rows = ranks.shard(len(index))
            yield Step(index, rows, self.batch(index[rows]) if len(rows) else None)

    def shard(self, batch_size: int, ranks: Ranks = SINGLE) -> Iterator[Batch]:
        """This rank's particles (``ranks.shard``, in STAR order) in batches, e.g. to encode every particle."""
        mine = ranks.shard(len(self))
        for start in range(0, len(mine), batch_size):
            yield self.batch(mine[start:start + batch_size])
