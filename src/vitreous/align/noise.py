"""Per-shell noise power ``sigma2[s] = E |N(k)|^2`` of the images' centred spectra, for noise whitening.

Shells are ``s = round(|k|)`` Fourier pixels, ``0 .. D // 2`` (see :mod:`vitreous.physics.fourier`).  The
spectra are unnormalised ``fft2c`` values, so white pixel noise of variance ``v`` has ``sigma2 = D**2 v``.
Two estimates: the mean power of the images themselves (signal included: an over-estimate where the signal
is strong, used before any pose is known) and the mean power of the residuals ``X - scale * CTF * S`` at the
best poses (RELION's ``sigma2_noise``).  Shells with no sample (DC, which search leaves out) copy their
nearest sampled neighbour.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vitreous.align.points import FourierPoints


class ShellPower:
    """Accumulates ``|values|^2`` per Fourier shell over batches; :meth:`spectrum` gives the mean per shell."""

    def __init__(self, box: int, device: torch.device | str | None = None) -> None:
        self.box = box
        self.n_shells = box // 2 + 1
        self.total = torch.zeros(self.n_shells, dtype=torch.float64, device=device)
        self.count = torch.zeros(self.n_shells, dtype=torch.float64, device=device)

    def add(self, values: Tensor, points: FourierPoints) -> None:
        """Add complex (or real) values (B, M) at ``points`` (their ``|.|^2`` per shell)."""
        power = (values.abs() ** 2).to(torch.float64).sum(0)
        shell = points.shell.to(self.total.device)
        self.total.index_add_(0, shell, power.to(self.total.device))
        self.count.index_add_(0, shell, torch.full_like(power, float(values.shape[0])).to(self.total.device))

    def spectrum(self) -> Tensor:
        """Mean power per shell (n_shells,) float32; unsampled shells copy their nearest sampled shell."""
        sampled = self.count > 0
        if not bool(sampled.any()):
            raise ValueError("no values were added")
        mean = torch.where(sampled, self.total / self.count.clamp(min=1), torch.zeros_like(self.total))
        index = torch.arange(self.n_shells, device=mean.device)
        have = index[sampled]
        nearest = have[(index[:, None] - have[None, :]).abs().argmin(1)]
        return mean[nearest].float()


def image_power(spectra: Tensor, points: FourierPoints, accumulator: ShellPower) -> None:
    """Add the power of image spectra (B, D, D) at ``points`` to ``accumulator`` (the signal-included
    estimate of the noise, before poses are known)."""
    accumulator.add(points.gather(spectra), points)



class ResidualShells:
    """Per-shell sums at one pose per image, from which both the reference scale and the residual noise follow:
    ``xx = sum |X phi|^2``, ``xs = sum Re(conj(CTF S) X phi)``, ``ss = sum CTF^2 |S|^2`` and the count.

    The residual power for a scale ``a`` is ``(xx - 2 a xs + a^2 ss) / count`` per shell; the whitened
    least-squares scale over shells ``1 .. max_shell`` is ``sum xs / sigma2 / sum ss / sigma2`` (the ratio of the
    ``data`` and ``norm`` terms of :mod:`vitreous.align.scoring` summed over images).
    """

    def __init__(self, box: int, device: torch.device | str | None = None) -> None:
        self.box = box
        self.n_shells = box // 2 + 1
        self.sums = torch.zeros(4, self.n_shells, dtype=torch.float64, device=device)  # xx, xs, ss, count

    def add(self, values: Tensor, ctf: Tensor, slices: Tensor, phases: Tensor, points: FourierPoints) -> None:
        """Add images (values ``X`` and ``CTF`` at ``points``, (B, M)) at their poses: reference slices ``S``
        (B, M) and centring ramps ``phi`` (B, M)."""
        x = values * phases
        model = ctf * slices
        terms = torch.stack([(x.real**2 + x.imag**2).sum(0), (model.conj() * x).real.sum(0),
                             (model.real**2 + model.imag**2).sum(0),
                             torch.full_like(x.real[0], float(x.shape[0]))]).to(torch.float64)
        self.sums.index_add_(1, points.shell.to(self.sums.device), terms.to(self.sums.device))

    def scale(self, sigma2: Tensor, max_shell: int) -> float:
        """Whitened least-squares scale of the reference over shells ``1 .. max_shell`` (1.0 if undetermined)."""
        inv = 1.0 / sigma2.to(self.sums)[1:max_shell + 1]
        xs, ss = (self.sums[1, 1:max_shell + 1] * inv).sum(), (self.sums[2, 1:max_shell + 1] * inv).sum()
        return float(xs / ss) if float(ss) > 0 else 1.0

    def noise(self, scale: float) -> Tensor:
        """Residual power per shell (n_shells,) float32 for reference scale ``scale``; unsampled shells copy
        their nearest sampled shell."""
        xx, xs, ss, count = self.sums
        power = ShellPower(self.box, self.sums.device)
        power.total = (xx - 2 * scale * xs + scale * scale * ss).clamp(min=0)
        power.count = count
        return power.spectrum()
