"""Adjusted Rand index against hand-computed values (and its invariances)."""

from __future__ import annotations

import numpy as np
import pytest

from vitreous.analysis.metrics import adjusted_rand_index, contingency_table


def test_contingency_table_counts_label_pairs() -> None:
    table = contingency_table(np.array([0, 0, 0, 1, 1, 1]), np.array(["a", "a", "b", "b", "c", "c"]))
    np.testing.assert_array_equal(table, [[2, 1, 0], [0, 1, 2]])


@pytest.mark.parametrize(("a", "b", "expected"), [
    # n_ij = [[2, 0, 0], [0, 1, 1]]: index 1, rows 1 + 1, columns 1, C(4, 2) = 6:
    # expected = 2 * 1 / 6 = 1/3, maximum = 3/2, ARI = (1 - 1/3) / (3/2 - 1/3) = 4/7
    ([0, 0, 1, 1], [0, 0, 1, 2], 4 / 7),
    # n_ij = [[2, 1, 0], [0, 1, 2]]: index 2, rows 3 + 3, columns 1 + 1 + 1, C(6, 2) = 15:
    # expected = 6 * 3 / 15 = 6/5, maximum = 9/2, ARI = (2 - 6/5) / (9/2 - 6/5) = 8/33
    ([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2], 8 / 33),
    # n_ij = [[1, 1], [1, 1]]: index 0, rows 2, columns 2: expected 2/3, maximum 2, ARI = -1/2
    ([0, 0, 1, 1], [0, 1, 0, 1], -0.5),
])
def test_hand_computed_examples(a: list[int], b: list[int], expected: float) -> None:
    assert adjusted_rand_index(np.array(a), np.array(b)) == pytest.approx(expected, abs=1e-12)
    assert adjusted_rand_index(np.array(b), np.array(a)) == pytest.approx(expected, abs=1e-12)


def test_label_values_do_not_matter() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 200)
    noisy = np.where(rng.random(200) < 0.8, truth, rng.integers(0, 3, 200))
    renamed = np.array([10, 30, 20])[noisy]  # a permutation of the labels, other values
    assert adjusted_rand_index(truth, renamed) == pytest.approx(adjusted_rand_index(truth, noisy), abs=1e-12)
    assert adjusted_rand_index(truth, 5 - truth) == 1.0
    assert 0.3 < adjusted_rand_index(truth, noisy) < 0.9


def test_independent_labellings_score_near_zero() -> None:
    rng = np.random.default_rng(1)
    scores = [adjusted_rand_index(rng.integers(0, 2, 2000), rng.integers(0, 2, 2000)) for _ in range(20)]
    assert abs(np.mean(scores)) < 0.002
    assert max(abs(s) for s in scores) < 0.01


def test_degenerate_partitions() -> None:
    assert adjusted_rand_index(np.zeros(5), np.zeros(5)) == 1.0  # one group each
    assert adjusted_rand_index(np.arange(5), np.arange(5)) == 1.0  # singletons each
    assert adjusted_rand_index(np.array([3]), np.array([1])) == 1.0
    with pytest.raises(ValueError, match="different lengths"):
        adjusted_rand_index(np.zeros(3), np.zeros(4))
