"""The publisher port and its adapter: Pub/Sub's REST ``topics.publish`` over the process's httpx stack.

Every publish is awaited before the function returns: a Cloud Function's CPU
is throttled once it answers, so an unawaited publish can be lost.

Why REST and not ``google-cloud-pubsub``'s ``PublisherClient``: opcancel
publishes one or two messages per request and waits for them, so the client's
batching thread buys nothing, while importing it and opening its gRPC channel
would multiply opcancel's cold start (bench/RESULTS.md). One ``:publish`` call
carries all the messages for a topic, as the client's batch would.
"""

from __future__ import annotations

import base64
import math
import random
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from .._backoff import Backoff, TryAgain
from .._clock import Clock
from ..errors import OpcancelError, PublishFailed, TransientError
from .auth import AnonymousAuth, Authenticator
from .errors import RETRIED_AT_ONCE, error_summary
from .transport import json_object, send


class Publisher(Protocol):
    def publish_all(self, topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> list[str]:
        """Publish every message and wait for each; returns message ids or raises ``PublishFailed``."""


def publish_body(messages: list[tuple[bytes, dict[str, str]]]) -> dict[str, Any]:
    """The ``topics.publish`` request body carrying ``messages``."""
    return {
        "messages": [
            {"data": base64.b64encode(data).decode("ascii"), "attributes": attributes} for data, attributes in messages
        ]
    }


class RetriedPost:
    """POSTs JSON to one Google REST API, retried at once on passing trouble, failures raised as ``failed``.

    What the publisher and the Cloud Tasks scheduler (whose tasks are publishes) share: a refused or unanswered call is tried a few
    times at once (as Google's clients do for UNAVAILABLE and the like) within ``budget_s``; credentials that
    cannot be had, and attempts that run out, become the caller's own ``TransientError``.
    """

    def __init__(
        self,
        *,
        auth: Authenticator,
        clock: Clock,
        transport: httpx.BaseTransport | None,
        timeout_s: float,
        budget_s: float,
        jitter: Callable[[], float],
    ) -> None:
        self._clock = clock
        self._http = httpx.Client(transport=transport, timeout=timeout_s, follow_redirects=False, auth=auth)
        # A few attempts, then the message's redelivery takes over.
        self._backoff = Backoff(first_s=0.1, max_s=math.inf, attempts=3, budget_s=budget_s, jitter=jitter)

    def post(self, url: str, body: Any, failed: Callable[[str], TransientError]) -> httpx.Response:
        """The first answer that is not passing trouble; ``failed(why)`` when none came or no credentials."""
        try:
            return send(
                self._http,
                "POST",
                url,
                json=body,
                retry_status=RETRIED_AT_ONCE,
                backoff=self._backoff,
                clock=self._clock,
            )
        except TryAgain as exhausted:
            why = error_summary(exhausted.answer) if exhausted.answer is not None else exhausted.failure
            raise failed(f"failed after {exhausted.attempts} attempts: {why}") from None
        except OpcancelError as problem:
            # No credentials just now: the message comes again later.
            raise failed(f"failed: {problem}") from problem

    def close(self) -> None:
        self._http.close()


class PubSubPublisher:
    """Publishes to ``projects/{project}/topics/{topic}``; with ``emulator_host``, to the emulator, unauthenticated.

    A refused or unanswered publish is retried a few times at once within ``budget_s``; a 401 refreshes
    credentials once. After that it is ``PublishFailed``, and the message is redelivered.
    """

    def __init__(
        self,
        project: str,
        *,
        auth: Authenticator,
        clock: Clock,
        emulator_host: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 10.0,
        budget_s: float = 15.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        base = f"http://{emulator_host}" if emulator_host else "https://pubsub.googleapis.com"
        self._topics = f"{base}/v1/projects/{project}/topics"
        self._post = RetriedPost(
            # The emulator takes no credentials.
            auth=AnonymousAuth() if emulator_host else auth,
            clock=clock,
            transport=transport,
            timeout_s=timeout_s,
            budget_s=budget_s,
            jitter=jitter,
        )

    def publish_all(self, topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> list[str]:
        def failed(why: str) -> PublishFailed:
            return PublishFailed(f"publish to {topic} {why}")

        response = self._post.post(f"{self._topics}/{topic}:publish", publish_body(messages), failed)
        if not 200 <= response.status_code < 300:
            raise failed(f"failed: {error_summary(response)}")
        answer = json_object(response)
        if answer is None:
            raise failed(f"answered {response.status_code} without JSON")
        ids = answer.get("messageIds")
        if not isinstance(ids, list) or len(ids) != len(messages) or not all(isinstance(i, str) for i in ids):
            raise PublishFailed(f"publish to {topic} answered without one message id per message")
        return ids

    def close(self) -> None:
        self._post.close()
