"""Image encoder: q(z | image) as a diagonal Gaussian, from the centred, phase-flipped, normalised image.

The input is :attr:`vitreous.neural.data.Batch.encoder_input` (B, D'^2): the image moved by its origin and
multiplied by ``sign(CTF)`` in Fourier space (CTF-aware without dividing by the CTF), then masked by a soft
circle.  An MLP (as cryoDRGN's ``--encode-mode mlp``, narrower) returns the mean and log-variance.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vitreous.neural.decoder import mlp


class Encoder(nn.Module):
    """MLP from flattened (B, box^2) images to ``(mean, logvar)``, each (B, zdim)."""

    def __init__(self, box: int, zdim: int, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.zdim = zdim
        self.net = mlp(box * box, hidden, layers, 2 * zdim)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(images).float()
        mean, logvar = out[:, :self.zdim], out[:, self.zdim:]
        return mean, logvar.clamp(-20.0, 10.0)


def sample(mean: Tensor, logvar: Tensor, eps: Tensor | None = None) -> Tensor:
    """The reparameterised draw ``mean + exp(logvar / 2) * eps``, ``eps ~ N(0, I)`` (drawn here unless given)."""
    return mean + torch.exp(0.5 * logvar) * (torch.randn_like(mean) if eps is None else eps)
