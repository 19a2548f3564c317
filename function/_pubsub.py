"""The publisher port and its google-cloud-pubsub adapter.

Every publish is awaited before the function returns: a Cloud Function's CPU
is throttled once it answers, so an unawaited publish can be lost.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from .errors import PublishFailed


class Publisher(Protocol):
    def publish_all(self, topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> list[str]:
        """Publish every message and wait for each; returns message ids or raises ``PublishFailed``."""


class PubSubPublisher:
    """One ``PublisherClient`` per process, created on first use because importing it costs ~0.4 s."""

    #: Latency over batching: one request usually publishes one or two messages, and we wait on them.
    _MAX_LATENCY_S = 0.001

    def __init__(self, project: str, *, timeout_s: float = 20.0) -> None:
        self._project = project
        self._timeout_s = timeout_s
        self._client: Any = None
        self._lock = threading.Lock()

    def publish_all(self, topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> list[str]:
        client = self._get_client()
        path = client.topic_path(self._project, topic)
        try:
            futures = [client.publish(path, data, **attributes) for data, attributes in messages]
            return [future.result(timeout=self._timeout_s) for future in futures]
        except Exception as problem:
            raise PublishFailed(f"publish to {topic} failed: {type(problem).__name__}: {problem}") from problem

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                from google.cloud import pubsub_v1

                self._client = pubsub_v1.PublisherClient(
                    batch_settings=pubsub_v1.types.BatchSettings(max_latency=self._MAX_LATENCY_S, max_messages=100)
                )
            return self._client
