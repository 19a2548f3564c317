"""The scheduler port and its two adapters: how a follow-up check reaches the checks topic at its due time.

- ``CloudTasksScheduler`` (``OPCANCEL_TASKS_QUEUE`` set, what deploy.sh deploys): each check is a Cloud
  Tasks task scheduled at the check's due time, whose HTTP request is Pub/Sub's REST ``publish`` of the
  check message to the checks topic, so the check arrives once, on time
  (cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues.tasks/create).
- ``RedeliveryScheduler`` (no queue): the check is published at once and refused until due, so the
  checks subscription's retry policy is the clock; for local runs and small volumes (README, "Checks").
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
from collections.abc import Callable
from typing import Protocol

import httpx

from ._api import SCOPE, Authenticator, error_summary, json_object, post_json
from ._clock import Clock, format_time
from ._core import check_message
from ._http import Backoff
from ._model import CheckRequest
from ._pubsub import Publisher
from .errors import OpcancelError, ScheduleFailed

_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: How early a task-delivered check may arrive and still run: clocks of Cloud Tasks and of the instance differ.
TASK_SKEW_S = 2.0


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


def task_id(idempotency_key: str, attempt: int) -> str:
    """Derived from key and attempt, so a second create of the same check is refused as a duplicate; hashed,
    because sequential names slow dispatch (cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues.tasks)."""
    return hashlib.sha256(f"{idempotency_key}\n{attempt}".encode("utf-8", "surrogatepass")).hexdigest()


class CloudTasksScheduler:
    """``POST {base}/v2/{queue}/tasks``; 409 ALREADY_EXISTS is success (the same check was created before)."""

    early_tolerance_s = TASK_SKEW_S

    def __init__(
        self,
        *,
        queue: str,
        project: str,
        checks_topic: str,
        auth: Authenticator,
        clock: Clock,
        service_account: str | None,
        endpoint: str | None = None,
        pubsub_emulator_host: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 10.0,
        attempts: int = 3,
        budget_s: float = 15.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._queue = queue
        self._create_url = f"{(endpoint or 'https://cloudtasks.googleapis.com').rstrip('/')}/v2/{queue}/tasks"
        pubsub = f"http://{pubsub_emulator_host}" if pubsub_emulator_host else "https://pubsub.googleapis.com"
        self._publish_url = f"{pubsub}/v1/projects/{project}/topics/{checks_topic}:publish"
        # Against the emulator the task's publish carries no token, as the emulator takes none.
        self._token = (
            {"serviceAccountEmail": service_account, "scope": SCOPE}
            if service_account and not pubsub_emulator_host
            else None
        )
        self._auth = auth
        self._clock = clock
        self._http = httpx.Client(transport=transport, timeout=timeout_s, follow_redirects=False)
        self._backoff = Backoff(first_s=0.1, max_s=math.inf, attempts=attempts, budget_s=budget_s, jitter=jitter)

    def task(self, check: CheckRequest) -> dict[str, object]:
        """The ``tasks.create`` request body for ``check``."""
        data, attributes = check_message(check)
        publish = {"messages": [{"data": base64.b64encode(data).decode("ascii"), "attributes": attributes}]}
        request: dict[str, object] = {
            "url": self._publish_url,
            "httpMethod": "POST",
            "headers": {"Content-Type": "application/json"},
            "body": base64.b64encode(json.dumps(publish, separators=(",", ":")).encode()).decode("ascii"),
        }
        if self._token is not None:
            request["oauthToken"] = self._token
        return {
            "task": {
                "name": f"{self._queue}/tasks/{task_id(check.idempotency_key, check.attempt)}",
                "scheduleTime": format_time(check.due_at),
                "httpRequest": request,
            }
        }

    def schedule(self, check: CheckRequest) -> None:
        def failed(why: str) -> ScheduleFailed:
            return ScheduleFailed(f"creating the task for check {check.attempt} {why}")

        response = post_json(
            self._http,
            self._create_url,
            self.task(check),
            headers=lambda: self._headers(failed),
            refresh=lambda: self._refresh(failed),
            clock=self._clock,
            backoff=self._backoff,
            retryable=_RETRYABLE_STATUS,
            failed=failed,
        )
        if 200 <= response.status_code < 300:
            return
        error = (json_object(response) or {}).get("error")
        status = error.get("status") if isinstance(error, dict) else None
        if response.status_code == 409 and status in ("ALREADY_EXISTS", None):
            return
        raise failed(f"failed: {error_summary(response)}")

    def close(self) -> None:
        self._http.close()

    def _headers(self, failed: Callable[[str], ScheduleFailed]) -> dict[str, str]:
        try:
            return self._auth.headers()
        except OpcancelError as problem:
            raise failed(f"failed: {problem}") from problem

    def _refresh(self, failed: Callable[[str], ScheduleFailed]) -> bool:
        try:
            return self._auth.refresh()
        except OpcancelError as problem:
            raise failed(f"failed: {problem}") from problem
