"""A learned particle picker: a small fully convolutional network trained positive-unlabelled, as Topaz does.

Micrographs are binned to the working pixel size (a tenth of the particle diameter by default), standardised
and high-passed (:func:`vitreous.preprocess.picking.working_image`).  The network (four convolutions, receptive
field 19 working pixels, about twice the particle) maps a micrograph to a logit per pixel: "a particle is
centred here".  Training labels are a few micrographs' coordinates (hand-picked, simulated or template-picked):
pixels within ``POSITIVE_RADIUS`` diameters of a coordinate are positive, all pixels are unlabelled, and the loss is
the non-negative PU risk of Kiryo et al. (2017, nnPU) with the logistic loss ``l(z, y) = softplus(-y z)``:

    R = pi E_P[l(z, +1)] + max(0, E_U[l(z, -1)] - pi E_P[l(z, -1)]),

where ``pi`` is the fraction of positive pixels among all pixels, from the expected number of particles per
micrograph (default: the mean number labelled, i.e. labels nearly complete; give more where only a part of
the particles is labelled).  Training draws random crops (with random flips and 90-degree turns) from the
labelled micrographs (every other one around a labelled particle), deterministically from ``seed``.
Inference scores whole micrographs (the mean probability over the positive disc around each pixel); the peaks
of that map (:func:`vitreous.preprocess.picking.find_peaks`) are the picks.  The network's probabilities stay
low even at particle centres (it cannot tell the centre from the pixels next to it), so the default threshold
comes from the same prior instead: keep as many of the best candidates, pooled over micrographs, as the
expected density of particles gives (:func:`vitreous.preprocess.picking.count_threshold`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitreous.preprocess.picking import Picks, find_peaks, picks_from_peaks, working_image

POSITIVE_RADIUS = 0.15  # particle diameters around a labelled centre counted as positive


@dataclass(frozen=True)
class LearnedOptions:
    """Learned picker settings: ``diameter_A`` (Å), ``working_pixel_A`` (default diameter / 10), network
    ``channels``, training ``steps``, ``crop`` (working px), ``batch`` crops per step, Adam ``learning_rate``,
    ``expected_particles`` per micrograph (for the class prior; default: mean labelled count), ``seed``."""

    diameter_A: float
    working_pixel_A: float | None = None
    channels: int = 32
    steps: int = 400
    crop: int = 64
    batch: int = 8
    learning_rate: float = 5e-3
    expected_particles: float | None = None
    seed: int = 0

    def working_pixel(self, pixel_size: float) -> float:
        return max(self.working_pixel_A or self.diameter_A / 10, pixel_size)


class PickerNet(nn.Module):
    """Fully convolutional classifier: logits [N, 1, h, w] for images [N, 1, h, w] (receptive field 19 px)."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.layers = nn.Sequential(
            nn.Conv2d(1, c, 7, padding=3), nn.ReLU(),
            nn.Conv2d(c, c, 5, padding=2), nn.ReLU(),
            nn.Conv2d(c, c, 5, padding=4, dilation=2), nn.ReLU(),
            nn.Conv2d(c, 1, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


@dataclass
class LearnedPicker:
    """A trained network with the settings it was trained for (save/load with :meth:`state` / :meth:`from_state`)."""

    net: PickerNet
    options: LearnedOptions
    pixel_size: float  # working pixel size (Å) it was trained at
    density: float  # expected particles per Å^2 of micrograph (the class prior of training)
    history: list[float]

    def state(self) -> dict:
        return {"weights": self.net.state_dict(), "options": asdict(self.options), "pixel_size": self.pixel_size,
                "density": self.density, "history": self.history}

    @classmethod
    def from_state(cls, state: dict) -> LearnedPicker:
        options = LearnedOptions(**state["options"])
        net = PickerNet(options.channels)
        net.load_state_dict(state["weights"])
        return cls(net.eval(), options, float(state["pixel_size"]), float(state["density"]),
                   list(state.get("history", [])))

    def score(self, image: np.ndarray | Tensor, pixel_size: float) -> Tensor:
        """Score map [h, w] of a micrograph [H, W] at ``pixel_size`` Å (on the network's device): the mean
        probability over the positive disc around each pixel, ~1 at a particle's centre, ~0 off particles."""
        device = next(self.net.parameters()).device
        g = working_image(torch.as_tensor(image, dtype=torch.float32, device=device), pixel_size,
                          self.pixel_size, self.options.diameter_A)
        radius = POSITIVE_RADIUS * self.options.diameter_A / self.pixel_size
        disc = _positive_map((2 * int(radius) + 1,) * 2, np.array([[int(radius), int(radius)]]), radius).float()
        with torch.no_grad():
            probability = torch.sigmoid(self.net(g[None, None]))
            return F.conv2d(probability, (disc / disc.sum())[None, None].to(device), padding=int(radius))[0, 0]

    def pick(self, image: np.ndarray | Tensor, pixel_size: float, threshold: float | None = None,
             max_peaks: int | None = None, min_distance: float = 0.8) -> Picks:
        """Picks of one micrograph [H, W]; ``min_distance`` as a fraction of the diameter."""
        image = torch.as_tensor(image, dtype=torch.float32)
        score = self.score(image, pixel_size)
        radius = 0.5 * self.options.diameter_A / (pixel_size * image.shape[-1] / score.shape[-1])
        yx, values = find_peaks(score, min_distance * 2 * radius, threshold, max_peaks, border=int(math.ceil(radius)))
        return picks_from_peaks(yx, values, tuple(score.shape), tuple(image.shape))


def _positive_map(shape: tuple[int, int], centres: np.ndarray, radius: float) -> Tensor:
    """Boolean [h, w]: pixels within ``radius`` of any centre (x, y), in working pixels."""
    y = torch.arange(shape[0], dtype=torch.float32)[:, None]
    x = torch.arange(shape[1], dtype=torch.float32)[None, :]
    out = torch.zeros(shape, dtype=torch.bool)
    for cx, cy in centres:
        out |= (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
    return out


def _crops(images: list[Tensor], labels: list[Tensor], centres: list[np.ndarray], size: int, batch: int,
           generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random crops [batch, 1, size, size] of images and labels, each randomly flipped and turned by 90 deg; every
    other crop contains a labelled particle (so that each batch has positives)."""
    xs, ys = [], []
    for k in range(batch):
        i = int(torch.randint(len(images), (1,), generator=generator))
        h, w = images[i].shape
        top, left = max(h - size, 0), max(w - size, 0)
        if k % 2 == 0 and len(centres[i]):
            cx, cy = centres[i][int(torch.randint(len(centres[i]), (1,), generator=generator))]
            r, c = (int(v - float(torch.rand(1, generator=generator)) * size) for v in (cy, cx))
            r, c = min(max(r, 0), top), min(max(c, 0), left)
        else:
            r = int(torch.randint(top + 1, (1,), generator=generator))
            c = int(torch.randint(left + 1, (1,), generator=generator))
        x, y = images[i][r:r + size, c:c + size], labels[i][r:r + size, c:c + size]
        turns = int(torch.randint(4, (1,), generator=generator))
        x, y = torch.rot90(x, turns), torch.rot90(y, turns)
        if bool(torch.randint(2, (1,), generator=generator)):
            x, y = x.flip(-1), y.flip(-1)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs)[:, None], torch.stack(ys)[:, None]


def nnpu_loss(logits: Tensor, positive: Tensor, prior: float) -> Tensor:
    """Non-negative PU risk with the logistic loss (see the module docstring); ``positive`` boolean like logits."""
    unlabelled_negative = F.softplus(logits).mean()
    if not bool(positive.any()):
        return unlabelled_negative
    z = logits[positive]
    risk_positive = prior * F.softplus(-z).mean()
    risk_negative = unlabelled_negative - prior * F.softplus(z).mean()
    return risk_positive + torch.clamp(risk_negative, min=0.0)


def train_picker(images: Sequence[np.ndarray], pixel_size: float, coordinates: Sequence[np.ndarray],
                 options: LearnedOptions, progress: Callable[[int, float], None] | None = None) -> LearnedPicker:
    """Train on micrographs [H, W] (at ``pixel_size`` Å) with particle centres (K, 2) (x, y) in their pixels.

    ``progress(step, loss)`` is called every step.  Deterministic for a given ``options.seed`` (on CPU).
    """
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    working = options.working_pixel(pixel_size)
    work_images, labels, centres = [], [], []
    for image, xy in zip(images, coordinates, strict=True):
        image = torch.as_tensor(image, dtype=torch.float32)
        g = working_image(image, pixel_size, working, options.diameter_A)
        scale = np.array([g.shape[1] / image.shape[1], g.shape[0] / image.shape[0]])
        work_images.append(g)
        centres.append(np.asarray(xy, np.float64).reshape(-1, 2) * scale)
        radius = POSITIVE_RADIUS * options.diameter_A * g.shape[1] / (image.shape[1] * pixel_size)
        labels.append(_positive_map(tuple(g.shape), centres[-1], radius))
    exact_pixel = pixel_size * images[0].shape[-1] / work_images[0].shape[-1]
    counts = [len(c) for c in centres]
    expected = options.expected_particles if options.expected_particles is not None else float(np.mean(counts))
    area = sum(g.numel() for g in work_images) / len(work_images)
    prior = min(expected * float(sum(lab.sum() for lab in labels)) / max(sum(counts), 1) / area, 0.5)
    net = PickerNet(options.channels)
    optimiser = torch.optim.Adam(net.parameters(), lr=options.learning_rate)
    history = []
    for step in range(options.steps):
        x, y = _crops(work_images, labels, centres, options.crop, options.batch, generator)
        loss = nnpu_loss(net(x), y, prior)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(float(loss.detach()))
        if progress is not None:
            progress(step, history[-1])
    density = expected / float(np.mean([image.shape[-1] * image.shape[-2] for image in images])) / pixel_size**2
    return LearnedPicker(net.eval(), options, exact_pixel, density, history)
