"""Scores of poses (rotation, shift) of images against reference slices, as matrix products.

Model: an image's centred spectrum is ``X(k) = scale * CTF(k) * S_A(k) * exp(+2 pi i k.s / D) + N(k)`` with
``S_A`` the reference section at rotation ``A``, ``s`` the RELION origin (px) and ``N`` Gaussian noise of
variance ``sigma2[shell(k)]`` per Fourier pixel (see :mod:`vitreous.align.noise`).  Over the comparison
points (``1 <= |k| <= radius``, Hermitian half-plane, counted twice) the terms are

``data = 2 sum_k Re(conj(CTF S_A) X phi_s) / sigma2``,   ``norm = 2 sum_k CTF^2 |S_A|^2 / sigma2``,

with ``phi_s = exp(-2 pi i k.s / D)`` (which centres the image).  Modes:

* ``"likelihood"``: ``score = scale * data - scale^2 * norm / 2``, the Gaussian log-likelihood up to a
  per-image constant (``-sum |X|^2 / (2 sigma2)``), so ``softmax(score)`` over poses is their posterior.
* ``"ncc"``: ``score = sign(data) * data^2 / (2 norm)``, the same likelihood maximised over a per-image scale:
  ranks poses by the noise-whitened normalised cross-correlation ``data / sqrt(norm)`` and is insensitive to
  the reference's scale.

The data term of B images x T shifts x R rotations is one real (B T, 2M) x (2M, R) matrix product (real and
imaginary parts stacked); the norm term a (B, M) x (M, R) product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from vitreous.align.points import FourierPoints
from vitreous.physics.fourier import fft2c

Mode = Literal["likelihood", "ncc"]
MODES = ("likelihood", "ncc")


@dataclass
class PreparedImages:
    """A batch of images at the comparison points, whitened: ``w CTF X / sigma2`` and ``w CTF^2 / sigma2``
    (B, M), ``w = 2`` (Hermitian pairs); with the raw spectra values ``X`` and ``CTF`` kept for residuals."""

    points: FourierPoints
    weighted: Tensor  # (B, M) complex
    ctf2: Tensor  # (B, M) real
    values: Tensor  # (B, M) complex, X at the points
    ctf: Tensor  # (B, M) real

    @property
    def batch(self) -> int:
        return int(self.weighted.shape[0])


def prepare(spectra: Tensor, ctf: Tensor | None, sigma2: Tensor, points: FourierPoints) -> PreparedImages:
    """Whitened values of centred image spectra (B, D, D) with CTF images (B, D, D) (None: CTF = 1) and the
    per-shell noise power ``sigma2`` (D // 2 + 1,) at ``points``."""
    values = points.gather(spectra)
    c = torch.ones_like(values.real) if ctf is None else points.gather(ctf.to(values.real.dtype))
    inv = points.weight / sigma2.to(device=values.device, dtype=values.real.dtype)[points.shell.to(values.device)]
    return PreparedImages(points, values * (c * inv), c * c * inv, values, c)


def image_spectra(images: Tensor) -> Tensor:
    """Centred spectra (B, D, D) complex of real images (B, D, D)."""
    return fft2c(images)


def _stack(z: Tensor) -> Tensor:
    """Complex (..., M) -> real (..., 2M): real parts, then imaginary parts."""
    return torch.cat([z.real, z.imag], dim=-1)


def combine(data: Tensor, norm: Tensor, mode: Mode, scale: Tensor | float = 1.0) -> Tensor:
    """Score from the data and norm terms (broadcast); ``scale`` (float or broadcastable tensor) for
    ``"likelihood"`` only."""
    if mode == "likelihood":
        return scale * data - (0.5 * scale * scale) * norm
    if mode == "ncc":
        return torch.sign(data) * data * data / (2.0 * norm.clamp(min=torch.finfo(norm.dtype).tiny))
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _shared_terms(images: PreparedImages, slices: Tensor, phases: Tensor) -> tuple[Tensor, Tensor]:
    """data (B, T, R) and norm (B, 1, R) of B images at T shifts against R shared slices."""
    B, T, R = images.batch, phases.shape[0], slices.shape[0]
    y = _stack(images.weighted[:, None, :] * phases[None, :, :]).reshape(B * T, -1)
    data = (y @ _stack(slices).T).view(B, T, R)
    norm = (images.ctf2 @ (slices.real**2 + slices.imag**2).T)[:, None, :]
    return data, norm


def _candidate_terms(images: PreparedImages, slices: Tensor, centres: Tensor,
                     offsets: Tensor) -> tuple[Tensor, Tensor]:
    """data (B, K, C, T) and norm (B, K, C, 1) of per-image candidates (see :func:`score_candidates`)."""
    B, K, C, M = slices.shape
    T = offsets.shape[0]
    y = _stack((images.weighted[:, None, :] * centres)[:, :, None, :] * offsets[None, None, :, :])
    data = torch.bmm(y.reshape(B * K, T, 2 * M), _stack(slices).reshape(B * K, C, 2 * M).transpose(1, 2))
    data = data.view(B, K, T, C).transpose(2, 3)
    power = (slices.real**2 + slices.imag**2).reshape(B, K * C, M)
    norm = torch.bmm(power, images.ctf2[:, :, None]).view(B, K, C, 1)
    return data, norm


def score_shared(images: PreparedImages, slices: Tensor, phases: Tensor, mode: Mode,
                 scale: Tensor | float = 1.0) -> Tensor:
    """Scores (B, T, R) of B images at T shifts against R slices shared by the batch.

    ``slices`` (R, M) complex, ``phases`` (T, M) the shift ramps (:func:`~vitreous.align.shifts.shift_phases`);
    ``scale`` a float or (B,) tensor.  Memory: the (B T, R) result plus (B T, 2M) and (R, 2M) operands.
    """
    data, norm = _shared_terms(images, slices, phases)
    return combine(data, norm, mode, _per_image(scale, 3))


def best_shift_shared(images: PreparedImages, slices: Tensor, phases: Tensor, mode: Mode,
                      scale: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
    """(score, shift index) (B, R) of the best of the T shifts for each image and shared slice: the maximum of
    :func:`score_shared` over shifts, taken on the data term (the norm does not depend on the shift and the
    score increases with the data term for a positive scale), which spares combining every shift."""
    data, norm = _shared_terms(images, slices, phases)
    best, index = data.max(dim=1)
    return combine(best, norm[:, 0], mode, _per_image(scale, 2)), index


def score_candidates(images: PreparedImages, slices: Tensor, centres: Tensor, offsets: Tensor, mode: Mode,
                     scale: Tensor | float = 1.0) -> Tensor:
    """Scores (B, K, C, T) of per-image candidates: for image b and group k, C slices ``slices[b, k]``
    (B, K, C, M) at shifts ``centres[b, k] + offsets[t]``: ``centres`` (B, K, M) and ``offsets`` (T, M) are
    phase ramps (the ramp of a sum of shifts is the product of the ramps).  One batched (T, 2M) x (2M, C)
    product per (b, k)."""
    data, norm = _candidate_terms(images, slices, centres, offsets)
    return combine(data, norm, mode, _per_image(scale, 4))


def best_shift_candidates(images: PreparedImages, slices: Tensor, centres: Tensor, offsets: Tensor, mode: Mode,
                          scale: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
    """(score, offset index) (B, K, C) of the best offset per candidate: :func:`score_candidates` maximised
    over the offsets, on the data term (as :func:`best_shift_shared`)."""
    data, norm = _candidate_terms(images, slices, centres, offsets)
    best, index = data.max(dim=-1)
    return combine(best, norm[..., 0], mode, _per_image(scale, 3)), index


def _per_image(scale: Tensor | float, ndim: int) -> Tensor | float:
    """A (B,) scale reshaped to broadcast over (B, ...) with ``ndim`` dims; floats unchanged."""
    if isinstance(scale, Tensor) and scale.ndim == 1:
        return scale.reshape(-1, *([1] * (ndim - 1)))
    return scale


def pose_terms(images: PreparedImages, slices: Tensor, phases: Tensor) -> tuple[Tensor, Tensor]:
    """The (data, norm) terms (B,) of one pose per image: slices (B, M), shift ramps (B, M).  ``data / norm``
    is the least-squares scale of the reference in the images (:func:`combine` with ``"likelihood"``)."""
    data = (images.weighted * phases * slices.conj()).real.sum(-1)
    norm = (images.ctf2 * (slices.real**2 + slices.imag**2)).sum(-1)
    return data, norm
