"""When to look at a running operation next."""

from __future__ import annotations

from ._backoff import PollingPolicy


def next_due(policy: PollingPolicy, attempt: int, *, now: float, deadline_at: float) -> float:
    """When check ``attempt`` is due: exponential backoff, never past the deadline."""
    return min(now + policy.delay_before(attempt), deadline_at)
