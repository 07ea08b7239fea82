"""Image statistics for ``info``: streamed over batches of a random sample, never all images at once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

BATCH_BYTES = 8 * 2**20  # float32 pixels per batch read (float64 temporaries double it)
# Each batch is read through a fresh memory map that is dropped afterwards: on recent Linux kernels a page
# fault maps a whole page-cache folio (up to 2 MB), so scattered reads through one long-lived map would
# put most of a large stack into the resident set (1.2 GB for 1000 images of a 100k x 64 px stack).
BATCH_ITEMS = 32
SEED = 0


def sample_indices(n: int, k: int, seed: int = SEED) -> np.ndarray:
    """``min(k, n)`` distinct indices in ``range(n)``, sorted (sequential reads), reproducible."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def batches(indices: np.ndarray, item_pixels: int, budget: int = BATCH_BYTES,
            max_items: int = BATCH_ITEMS) -> Iterator[np.ndarray]:
    """``indices`` in consecutive chunks of at most ``max_items`` items and ``budget`` bytes of float32."""
    size = max(1, min(max_items, budget // max(4 * item_pixels, 1)))
    for start in range(0, len(indices), size):
        yield indices[start:start + size]


class RunningStats:
    """Mean, standard deviation, min and max of finite values, and which items hold NaN or infinity."""

    def __init__(self) -> None:
        self.items = 0
        self.count = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.minimum = np.inf
        self.maximum = -np.inf
        self.nonfinite_values = 0
        self.nonfinite_items: list[int] = []

    def add(self, batch: np.ndarray, labels: np.ndarray) -> None:
        """Add a batch of items (k, ...) labelled ``labels`` (k,) (e.g. 1-based particle numbers)."""
        self.items += len(batch)
        finite = np.isfinite(batch)
        values = batch
        if not finite.all():
            per_item = finite.reshape(len(batch), -1).all(axis=1)
            self.nonfinite_items.extend(int(v) for v in labels[~per_item])
            self.nonfinite_values += int((~finite).sum())
            values = batch[finite]
        if values.size == 0:
            return
        self.count += values.size
        self.total += float(values.sum(dtype=np.float64))
        self.total_sq += float(np.square(values, dtype=np.float64).sum())
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))

    def summary(self, item: str = "item") -> dict[str, Any]:
        """The statistics as a dict (None where no finite value was seen); ``item`` names what was read."""
        if self.count == 0:
            mean = std = minimum = maximum = None
        else:
            mean = self.total / self.count
            std = float(np.sqrt(max(self.total_sq / self.count - mean**2, 0.0)))
            minimum, maximum = self.minimum, self.maximum
        result = {f"{item}s_read": self.items, "mean": mean, "std": std, "min": minimum, "max": maximum,
                  "nonfinite_values": self.nonfinite_values, f"{item}s_with_nonfinite": len(self.nonfinite_items)}
        if self.nonfinite_items:
            result[f"first_{item}s_with_nonfinite"] = self.nonfinite_items[:5]
        return result


def statistics(read: Callable[[np.ndarray], np.ndarray], indices: np.ndarray, item_pixels: int,
               item: str = "item") -> dict[str, Any]:
    """Statistics of the items ``read(indices)`` returns, read batch by batch (``read`` should map the file
    afresh on each call, see BATCH_ITEMS); items numbered 1-based in the result."""
    stats = RunningStats()
    for chunk in batches(indices, item_pixels):
        stats.add(np.asarray(read(chunk), dtype=np.float32), chunk + 1)
    return stats.summary(item)
