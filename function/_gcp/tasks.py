"""The Cloud Tasks adapter of the scheduler port: each follow-up check is a task scheduled at the check's due
time, whose HTTP request is Pub/Sub's REST ``publish`` of the check message to the checks topic, so the check
arrives once, on time (cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues.tasks/create).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Callable

import httpx

from .._clock import Clock, format_time
from .._messages import check_message
from .._model import CheckRequest
from ..errors import ScheduleFailed
from .auth import SCOPE, Authenticator
from .errors import decode_error, error_summary
from .pubsub import RetriedPost, publish_body

#: How early a task-delivered check may arrive and still run: clocks of Cloud Tasks and of the instance differ.
TASK_SKEW_S = 2.0


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
        self._post = RetriedPost(
            auth=auth,
            clock=clock,
            transport=transport,
            timeout_s=timeout_s,
            budget_s=budget_s,
            jitter=jitter,
        )

    def task(self, check: CheckRequest) -> dict[str, object]:
        """The ``tasks.create`` request body for ``check``."""
        publish = publish_body([check_message(check)])
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

        response = self._post.post(self._create_url, self.task(check), failed)
        if 200 <= response.status_code < 300:
            return
        # Only ALREADY_EXISTS means the task is there; a 409 ABORTED (or one without a status) created nothing.
        if response.status_code == 409 and decode_error(response).rpc_status == "ALREADY_EXISTS":
            return
        raise failed(f"failed: {error_summary(response)}")

    def close(self) -> None:
        self._post.close()
