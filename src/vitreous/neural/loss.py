"""Negative ELBO: Gaussian likelihood of the images' Fourier coefficients and the KL term of q(z | x).

The noise is white within a Fourier shell: ``F_obs(k) = CTF(k) S_z(k) + n(k)`` with complex Gaussian ``n`` of
variance ``sigma2[shell(k)]``.  ``sigma2`` is the maximum-likelihood estimate (the mean squared residual per
shell) kept as a running average over batches, not learned by gradient.  Per image, over the half-plane
points (each standing for itself and its Hermitian mirror, :attr:`FourierPoints.weight`)::

    loss = weight * sum_k |F_obs - CTF S_z|^2 / sigma2[shell(k)]  +  beta * KL(q(z|x) || N(0, I))

Under ``torchrun`` the batch's squared residuals are summed over the ranks (``ranks``), so every rank keeps the
``sigma2`` of the whole batch, as one process would.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from vitreous.align.points import FourierPoints
from vitreous.distributed.ranks import SINGLE, Ranks

NOISE_MOMENTUM = 0.9  # weight of the old estimate in the running average of sigma2


class LossTerms(NamedTuple):
    total: Tensor  # mean over the batch of the negative ELBO (the optimised scalar)
    error: Tensor  # mean |residual|^2 / sigma2 per Fourier point (about 1 at the noise level)
    kl: Tensor  # mean KL per image (0 for zdim 0)


class ShellNoise:
    """Running per-shell noise variance ``sigma2`` (shells ``0 .. radius``) of the Fourier coefficients.

    Under ``torchrun`` every rank calls :meth:`per_point` (while ``sigma2`` is None) and :meth:`update` once per
    step, a rank without images with an empty (0, M) ``residual2``: both sum over the ranks.
    """

    def __init__(self, points: FourierPoints, sigma2: Tensor | None = None, ranks: Ranks = SINGLE) -> None:
        self.shell = points.shell
        n = int(points.shell.max()) + 1
        self.count = torch.bincount(points.shell, minlength=n).clamp_min(1).float()
        self.sigma2 = sigma2.to(points.shell.device) if sigma2 is not None else None
        self.ranks = ranks

    def per_point(self, residual2: Tensor) -> Tensor:
        """``sigma2`` at each point (M,); the first call initialises it from ``residual2`` (B, M)."""
        if self.sigma2 is None:
            self.sigma2 = self._shell_mean(residual2)
        return self.sigma2[self.shell]

    def update(self, residual2: Tensor) -> None:
        """Fold one batch's squared residuals (B, M) into the running average."""
        self.sigma2 = NOISE_MOMENTUM * self.sigma2 + (1 - NOISE_MOMENTUM) * self._shell_mean(residual2)

    def _shell_mean(self, residual2: Tensor) -> Tensor:
        """Mean over the batch (all ranks) and the shell's points of ``residual2``, per shell."""
        sums = torch.zeros(len(self.count) + 1, device=self.count.device)
        sums[:-1].index_add_(0, self.shell, residual2.detach().float().sum(0))
        sums[-1] = len(residual2)
        self.ranks.all_reduce(sums)
        return (sums[:-1] / (self.count * sums[-1].clamp_min(1))).clamp_min(1e-12)


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per row (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def negative_elbo(predicted: Tensor, observed: Tensor, posterior: tuple[Tensor, Tensor] | None,
                  noise: ShellNoise, points: FourierPoints, beta: float = 1.0) -> LossTerms:
    """The loss of one batch (see the module docstring); ``predicted``/``observed`` (B, M) complex."""
    residual2 = (observed - predicted).abs().pow(2)
    scaled = residual2 / noise.per_point(residual2)
    recon = points.weight * scaled.sum(1)
    kl = kl_divergence(*posterior) if posterior is not None else torch.zeros_like(recon)
    noise.update(residual2)
    return LossTerms((recon + beta * kl).mean(), scaled.mean().detach(), kl.mean().detach())
