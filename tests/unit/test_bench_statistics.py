"""The statistics the benchmark report states its figures with."""

from __future__ import annotations

import math
import random

import pytest

from bench._harness import median_interval
from bench.lag import beyond_reach, policy_lag, schedule
from bench.report import _kept, _origin, _sections
from function import PollingPolicy


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


# --- the result lag benchmark's arithmetic, and the report a partial run writes -------------------------


def test_the_policys_own_lag_is_the_first_check_at_or_after_the_end_less_the_end():
    policy = PollingPolicy(initial_delay_s=1.0, multiplier=1.5, max_delay_s=20.0, deadline_s=3600.0)
    # Checks at 1, 2.5, 4.75, 8.125, 13.1875 s ... 49.26, 69.26 s, then every 20 s.
    assert policy_lag(policy, 1) == 0.0
    assert policy_lag(policy, 10) == pytest.approx(3.1875)
    assert policy_lag(policy, 60) == pytest.approx(69.2578125 - 60)
    assert policy_lag(policy, 300) == pytest.approx(69.2578125 + 12 * 20 - 300)
    old = PollingPolicy(initial_delay_s=5.0, multiplier=2.0, max_delay_s=300.0, deadline_s=3600.0)
    assert [policy_lag(old, d) for d in (1, 10, 60, 300)] == [4.0, 5.0, 15.0, 15.0]


def test_the_end_times_within_10_s_that_the_policy_alone_sees_more_than_3_s_late():
    policy = PollingPolicy(initial_delay_s=1.0, multiplier=1.5, max_delay_s=20.0, deadline_s=3600.0)
    # Ends in (4.75, 5.125) wait for the check at 8.125 s; ends in (8.125, 10] for the one at 13.1875 s.
    assert beyond_reach(policy, within_s=10, goal_s=3.0) == [(4.75, 8.125), (8.125, 13.1875)]
    assert beyond_reach(policy, within_s=4, goal_s=3.0) == []


def test_every_operation_is_published_so_that_it_ends_within_the_spread_plus_the_longest_duration():
    names = [f"organizations/1/operations/lasts-{d}-lag-0-{n}" for n in range(10) for d in (1, 10, 300)]
    planned = schedule(names, 90.0)
    assert sorted(name for _, name in planned) == sorted(names)
    assert [offset for offset, _ in planned] == sorted(offset for offset, _ in planned)
    ends = [offset + int(name.rsplit("/", 1)[1].split("-")[1]) for offset, name in planned]
    assert max(ends) <= 390.0
    longest = [offset for offset, name in planned if "-300-" in name]
    assert (min(longest), max(longest)) == (0.0, 81.0)


def test_a_partial_run_keeps_the_other_sections_marked_with_the_run_they_came_from():
    earlier = (
        "# opcancel benchmarks\n\n## Setting\n\n- Command: `bench/run` (17.7 minutes), on 2026-12-02.\n\n"
        "## Cold start\n\nfigures\n\n## Result lag\n\nold lag\n"
    )
    sections = _sections(earlier)
    assert set(sections) == {"Setting", "Cold start", "Result lag"}
    kept = _kept(sections["Cold start"], _origin(sections["Setting"]))
    assert (
        kept == "## Cold start\n\n_Kept from an earlier run: `bench/run` (17.7 minutes), on 2026-12-02._\n\nfigures\n"
    )
    # Kept again by a later partial run, it still names the run that measured it.
    assert _kept(kept, "`bench/run --only lag` (7.0 minutes), on 2026-12-05") == kept
