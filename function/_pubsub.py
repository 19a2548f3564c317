"""The publisher port and its adapter: Pub/Sub's REST ``topics.publish`` over the process's httpx stack.

Every publish is awaited before the function returns: a Cloud Function's CPU
is throttled once it answers, so an unawaited publish can be lost.

Why REST and not ``google-cloud-pubsub``'s ``PublisherClient``: opcancel
publishes one or two messages per request and waits for them, so the client's
batching thread buys nothing, while importing it (209 ms) and opening its gRPC
channel made opcancel's cold start 3.3x a bare function's (bench/RESULTS.md). One ``:publish`` call
carries all the messages for a topic, as the client's batch would.
"""

from __future__ import annotations

import base64
import math
import random
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from ._api import Authenticator, error_summary, json_object, post_json
from ._clock import Clock
from ._http import Backoff
from .errors import OpcancelError, PublishFailed

_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class Publisher(Protocol):
    def publish_all(self, topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> list[str]:
        """Publish every message and wait for each; returns message ids or raises ``PublishFailed``."""


class PubSubPublisher:
    """Publishes to ``projects/{project}/topics/{topic}``; with ``emulator_host``, to the emulator, unauthenticated.

    A refused or unanswered publish is retried a few times at once (as Google's client
    does for UNAVAILABLE and the like) within ``budget_s``; a 401 refreshes credentials
    once. After that it is ``PublishFailed``, and the message is redelivered.
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
        attempts: int = 3,
        budget_s: float = 15.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        base = f"http://{emulator_host}" if emulator_host else "https://pubsub.googleapis.com"
        self._topics = f"{base}/v1/projects/{project}/topics"
        self._auth = auth
        self._emulated = emulator_host is not None
        self._clock = clock
        self._http = httpx.Client(transport=transport, timeout=timeout_s, follow_redirects=False)
        self._backoff = Backoff(first_s=0.1, max_s=math.inf, attempts=attempts, budget_s=budget_s, jitter=jitter)

    def publish_all(self, topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> list[str]:
        body = {
            "messages": [
                {"data": base64.b64encode(data).decode("ascii"), "attributes": attributes}
                for data, attributes in messages
            ]
        }
        answer = self._send(f"{self._topics}/{topic}:publish", body, topic)
        ids = answer.get("messageIds")
        if not isinstance(ids, list) or len(ids) != len(messages) or not all(isinstance(i, str) for i in ids):
            raise PublishFailed(f"publish to {topic} answered without one message id per message")
        return ids

    def close(self) -> None:
        self._http.close()

    def _send(self, url: str, body: dict[str, Any], topic: str) -> dict[str, Any]:
        def failed(why: str) -> PublishFailed:
            return PublishFailed(f"publish to {topic} {why}")

        response = post_json(
            self._http,
            url,
            body,
            headers=lambda: self._headers(topic),
            refresh=None if self._emulated else lambda: self._refresh(topic),
            clock=self._clock,
            backoff=self._backoff,
            retryable=_RETRYABLE_STATUS,
            failed=failed,
        )
        if not 200 <= response.status_code < 300:
            raise failed(f"failed: {error_summary(response)}")
        answer = json_object(response)
        if answer is None:
            raise failed(f"answered {response.status_code} without JSON")
        return answer

    def _headers(self, topic: str) -> dict[str, str]:
        if self._emulated:
            return {}
        try:
            return self._auth.headers()
        except OpcancelError as problem:
            # No credentials just now: the message comes again later.
            raise PublishFailed(f"publish to {topic} failed: {problem}") from problem

    def _refresh(self, topic: str) -> bool:
        try:
            return self._auth.refresh()
        except OpcancelError as problem:
            raise PublishFailed(f"publish to {topic} failed: {problem}") from problem
