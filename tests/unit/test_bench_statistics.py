"""The statistics the benchmark report states its figures with."""

from __future__ import annotations

import math
import random

import pytest

from bench._harness import median_interval


def _miss_chance(n: int, k: int) -> float:
    """How likely the interval from the k-th smallest to the k-th largest of n values misses the median."""
    return 2 * sum(math.comb(n, i) for i in range(k)) / 2**n


@pytest.mark.parametrize(("n", "k"), [(31, 10), (21, 6), (100, 40)])
def test_the_median_interval_is_the_narrowest_order_statistics_with_95_percent_coverage(n, k):
    values = [float(index) for index in range(1, n + 1)]
    random.Random(n).shuffle(values)
    assert median_interval(values) == (k, n + 1 - k)
    assert _miss_chance(n, k) <= 0.05 < _miss_chance(n, k + 1)


def test_too_few_values_give_the_whole_range():
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)
    assert median_interval([1.5]) == (1.5, 1.5)
