"""The VAE: :class:`~vitreous.neural.encoder.Encoder` (absent for zdim 0) and
:class:`~vitreous.neural.decoder.VoxelDecoder`; predicts each image's Fourier coefficients as CTF x section."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from vitreous.neural.data import Batch
from vitreous.neural.decoder import VoxelDecoder
from vitreous.neural.encoder import Encoder, sample


@dataclass(frozen=True)
class ModelConfig:
    """Architecture: training ``box`` (px), ``zdim`` (0 = homogeneous), decoder ``rank`` K and MLP sizes,
    Fourier ``oversampling`` of the slicing, box of the delta grid (default ``box // 2``)."""

    box: int
    zdim: int
    rank: int = 16
    enc_dim: int = 256
    enc_layers: int = 2
    dec_dim: int = 128
    dec_layers: int = 2
    oversampling: float = 2.0
    delta_box: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VAE(nn.Module):
    """Encoder + decoder; ``forward`` returns the predicted coefficients (B, M) and ``(mean, logvar)``."""

    def __init__(self, config: ModelConfig, init_volume: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.box, config.zdim, config.enc_dim, config.enc_layers) if config.zdim else None
        self.decoder = VoxelDecoder(config.box, config.zdim, config.rank, config.dec_dim, config.dec_layers,
                                    config.oversampling, config.delta_box, init_volume)

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor] | None:
        """``(mean, logvar)`` of q(z | image), each (B, Z); None for zdim 0."""
        return None if self.encoder is None else self.encoder(batch.encoder_input)

    def forward(self, batch: Batch, stochastic: bool = True,
                eps: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """``eps`` (B, Z): the standard normal draws of the reparameterised sample (default: drawn here)."""
        posterior = self.encode(batch)
        z = None if posterior is None else (sample(*posterior, eps) if stochastic else posterior[0])
        section = self.decoder.slices(z, batch.rotations, batch.points)
        return batch.ctf * section, posterior
