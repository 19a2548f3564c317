"""The scheduler port and its redelivery adapter: how a follow-up check reaches the checks topic at its due time.

- ``CloudTasksScheduler`` (``_gcp/tasks.py``; ``OPCANCEL_TASKS_QUEUE`` set, what deploy.sh deploys): each
  check is a Cloud Tasks task scheduled at the check's due time, so the check arrives once, on time.
- ``RedeliveryScheduler`` (no queue): the check is published at once and refused until due, so the
  checks subscription's retry policy is the clock; for local runs and small volumes only (README, "How it
  works", step 4: the push backoff is per subscription, so refusals slow every chain).
"""

from __future__ import annotations

from typing import Protocol

from ._gcp.pubsub import Publisher
from ._messages import check_message
from ._model import CheckRequest


class Scheduler(Protocol):
    #: Seconds a check may arrive before its due time and still run.
    early_tolerance_s: float

    def schedule(self, check: CheckRequest) -> None:
        """Make ``check`` reach the checks topic at its due time; scheduling it twice is harmless.
        Raises a ``TransientError`` when that cannot be confirmed."""


class RedeliveryScheduler:
    """Publishes the check at once; the function refuses it (Pub/Sub redelivers) until it is due."""

    early_tolerance_s = 0.0

    def __init__(self, publisher: Publisher, checks_topic: str) -> None:
        self._publisher = publisher
        self._topic = checks_topic

    def schedule(self, check: CheckRequest) -> None:
        self._publisher.publish_all(self._topic, [check_message(check)])
