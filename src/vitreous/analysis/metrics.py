"""Agreement between two labellings of the same items (e.g. classes against the true states).

Adjusted Rand index (Hubert & Arabie 1985), from the contingency table ``n_ij`` (items with label i in
the first labelling and j in the second), row sums ``a_i``, column sums ``b_j`` and ``n`` items::

    index    = sum_ij C(n_ij, 2)
    expected = sum_i C(a_i, 2) * sum_j C(b_j, 2) / C(n, 2)
    maximum  = (sum_i C(a_i, 2) + sum_j C(b_j, 2)) / 2
    ARI      = (index - expected) / (maximum - expected)

1 for identical partitions (whatever the label values), about 0 for independent ones, negative below
chance.  When both labellings put everything in one group, or each item in its own group, the
denominator is 0 and the ARI is 1 (as scikit-learn defines it).
"""

from __future__ import annotations

import numpy as np


def contingency_table(labels_a: np.ndarray, labels_b: np.ndarray) -> np.ndarray:
    """Counts ``n_ij`` (int64) of items with the i-th distinct value of ``labels_a`` and the j-th of ``labels_b``."""
    a, b = np.asarray(labels_a).ravel(), np.asarray(labels_b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"labellings of different lengths: {a.size} and {b.size}")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max(initial=-1) + 1, ib.max(initial=-1) + 1), np.int64)
    np.add.at(table, (ia, ib), 1)
    return table


def _pairs(x: np.ndarray) -> float:
    """Sum of C(x, 2) = x (x - 1) / 2, in float64 (exact for counts below 2**26)."""
    x = np.asarray(x, np.float64)
    return float((x * (x - 1) / 2).sum())


def adjusted_rand_index(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Adjusted Rand index of two labellings of the same items (any hashable label values)."""
    table = contingency_table(labels_a, labels_b)
    n = int(table.sum())
    if n < 2:
        return 1.0
    index = _pairs(table)
    rows, cols = _pairs(table.sum(1)), _pairs(table.sum(0))
    expected = rows * cols / _pairs(np.array([n]))
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


__all__ = ["adjusted_rand_index", "contingency_table"]
