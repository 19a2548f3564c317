"""The one retry loop: attempts as context managers, stopped by attempts and by time, a hook on each retry."""

from __future__ import annotations

import math

import pytest

from function._backoff import Attempt, Backoff, TryAgain, retry_context
from tests.support import FakeClock


def backoff(attempts: int = 4, budget_s: float = math.inf) -> Backoff:
    return Backoff(first_s=1.0, max_s=4.0, attempts=attempts, budget_s=budget_s, jitter=lambda: 1.0)


def test_the_first_attempt_that_raises_nothing_ends_the_loop():
    clock, numbers = FakeClock(), []
    for attempt in retry_context(backoff(), clock):
        with attempt:
            numbers.append(attempt.number)
            if attempt.number < 3:
                raise TryAgain(f"failure {attempt.number}")
    assert numbers == [1, 2, 3]
    assert clock.slept == [1.0, 2.0]


def test_a_value_returned_from_an_attempt_is_the_calls():
    def call() -> str:
        for attempt in retry_context(backoff(), FakeClock()):
            with attempt:
                if attempt.number == 1:
                    raise TryAgain("once")
                return f"answer {attempt.number}"
        raise AssertionError("unreachable")

    assert call() == "answer 2"


def test_attempts_run_out_with_the_last_failure_its_answer_and_the_count():
    clock = FakeClock()
    with pytest.raises(TryAgain) as caught:
        for attempt in retry_context(backoff(attempts=3), clock):
            with attempt:
                raise TryAgain(f"failure {attempt.number}", answer=attempt.number * 10)
    assert (caught.value.failure, caught.value.answer, caught.value.attempts) == ("failure 3", 30, 3)
    assert clock.slept == [1.0, 2.0]


def test_time_runs_out_before_attempts_do_counting_slow_attempts():
    clock = FakeClock()
    with pytest.raises(TryAgain) as caught:
        for attempt in retry_context(backoff(attempts=10, budget_s=10.0), clock):
            with attempt:
                clock.advance(3.0)
                raise TryAgain("slow")
    # 3 s, sleep 1, 3 s, sleep 2, 3 s: 12 s gone, and the next 4 s wait would pass the 10 s budget.
    assert caught.value.attempts == 3
    assert clock.slept == [1.0, 2.0]


def test_other_errors_are_not_retried():
    clock, numbers = FakeClock(), []
    with pytest.raises(KeyError):
        for attempt in retry_context(backoff(), clock):
            with attempt:
                numbers.append(attempt.number)
                raise KeyError("not passing trouble")
    assert numbers == [1]
    assert clock.slept == []


def test_the_hook_sees_each_retry_before_its_wait_and_not_the_last_failure():
    clock, seen = FakeClock(), []

    def on_retry(attempt: Attempt, delay: float) -> None:
        seen.append((attempt.number, attempt.failure.failure if attempt.failure else None, delay, len(clock.slept)))

    with pytest.raises(TryAgain):
        for attempt in retry_context(backoff(attempts=3), clock, on_retry=on_retry):
            with attempt:
                raise TryAgain(f"HTTP 50{attempt.number}")
    assert seen == [(1, "HTTP 501", 1.0, 0), (2, "HTTP 502", 2.0, 1)]
