"""Waiting between tries: the backoff and the one retry loop every Google call uses, and the polling policy
that spaces follow-up checks. Retries and polling are separate things, kept side by side."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ._clock import Clock


@dataclass(frozen=True)
class Backoff:
    """When to try a call again: jittered exponential delays, bounded by attempts and by time."""

    first_s: float
    max_s: float
    attempts: int
    budget_s: float
    #: Draws in [0, 1): each delay is between half and all of its exponential ceiling.
    jitter: Callable[[], float] = random.random

    def delay(self, attempt: int, *, elapsed_s: float) -> float | None:
        """Seconds to wait after failed ``attempt`` (1-based), or None when no attempt or time is left."""
        delay = min(self.first_s * 2 ** (attempt - 1), self.max_s) * (0.5 + self.jitter() / 2)
        if attempt >= self.attempts or elapsed_s + delay > self.budget_s:
            return None
        return delay


class TryAgain(Exception):
    """Raised inside an attempt: this try failed in a way another may not.

    ``failure`` says how in a few words (never a secret); ``answer`` keeps what the try got, if anything,
    so the caller can read the last answer once the attempts run out.
    """

    def __init__(self, failure: str, *, answer: Any = None) -> None:
        super().__init__(failure)
        self.failure = failure
        self.answer = answer
        #: How many attempts were made, set when the loop gives up.
        self.attempts = 0


class Attempt:
    """One try, used as a context manager: a ``TryAgain`` raised inside it asks the loop for another."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.failure: TryAgain | None = None

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> bool:
        if isinstance(error, TryAgain):
            self.failure = error
            return True
        return False


#: Called before each wait with the attempt that failed and the seconds about to be slept.
RetryHook = Callable[[Attempt, float], None]


def retry_context(backoff: Backoff, clock: Clock, *, on_retry: RetryHook | None = None) -> Iterator[Attempt]:
    """Attempts as context managers, as stamina's ``retry_context`` yields them; the loop ends at the first
    attempt that raises no ``TryAgain``. When attempts or time run out, the last ``TryAgain`` is raised,
    with ``attempts`` set.

    ::

        for attempt in retry_context(backoff, clock):
            with attempt:
                return call()  # raising TryAgain to be tried again
    """
    started = clock.now()
    number = 0
    while True:
        number += 1
        attempt = Attempt(number)
        yield attempt
        failure = attempt.failure
        if failure is None:
            return
        delay = backoff.delay(number, elapsed_s=clock.now() - started)
        if delay is None:
            failure.attempts = number
            raise failure
        if on_retry is not None:
            on_retry(attempt, delay)
        clock.sleep(delay)


@dataclass(frozen=True)
class PollingPolicy:
    """How follow-up checks of a running operation are spaced, and when they stop (TIMED_OUT).

    The defaults are google-api-core's for polling long-running operations: on Cloud Tasks a check is one
    task, one invocation and one ``get``, so polling as often costs little (docs/performance.md)."""

    initial_delay_s: float = 1.0
    multiplier: float = 1.5
    max_delay_s: float = 20.0
    deadline_s: float = 3600.0

    def delay_before(self, attempt: int) -> float:
        """Seconds between check ``attempt - 1`` (0 is the immediate get) and check ``attempt``."""
        exponent = max(attempt - 1, 0)
        # Capping the exponent keeps huge attempt numbers from overflowing a float.
        growth = self.multiplier ** min(exponent, 64)
        return min(self.initial_delay_s * growth, self.max_delay_s)

    def due(self, attempt: int, *, previous_due_at: float, now: float, deadline_at: float) -> float:
        """When check ``attempt`` is due: its delay after the check before it was due (the cancel's acceptance,
        for the first), so the time each check takes to arrive and run does not push back every later one.
        Never before ``now``: a check that ran late is followed by one due at once, and the plan goes on from
        there rather than catching up with a burst. Never past the deadline."""
        return min(max(previous_due_at + self.delay_before(attempt), now), deadline_at)
