"""One HTTP stack per process, shared by the Operations API client, the Pub/Sub publisher, the
Firestore store and credential refreshes; and the backoff their retries share."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Backoff:
    """When to try an HTTP call again: jittered exponential delays, bounded by attempts and by time."""

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


class SharedTransport(httpx.BaseTransport):
    """httpx's own ``HTTPTransport``, one per process, built on the first request.

    Every client in the process (Operations API, Pub/Sub, Firestore, token refreshes) sends through
    it, so there is one connection pool and one TLS context; building it on first use keeps its
    set-up out of start-up, where a bad setting should fail fast and cheaply.
    """

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._transport: httpx.HTTPTransport | None = None
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._built().handle_request(request)

    def close(self) -> None:
        """Nothing: the process owns the transport, and an ``httpx.Client`` closing it would cut other
        clients' requests off mid-flight. Its connections end with the process."""

    def _built(self) -> httpx.HTTPTransport:
        with self._lock:
            if self._transport is None:
                self._transport = httpx.HTTPTransport(**self._options)
            return self._transport


def auth_request(transport: httpx.BaseTransport | None = None) -> Any:
    """A ``google.auth.transport.Request`` over httpx, for google-auth's token refreshes."""
    import google.auth.exceptions
    import google.auth.transport

    class _Response(google.auth.transport.Response):
        def __init__(self, response: httpx.Response) -> None:
            self._response = response

        @property
        def status(self) -> int:
            return self._response.status_code

        @property
        def headers(self) -> Mapping[str, str]:
            return self._response.headers

        @property
        def data(self) -> bytes:
            return self._response.content

    class _Request(google.auth.transport.Request):
        def __init__(self) -> None:
            self._http = httpx.Client(transport=transport, follow_redirects=False)

        def __call__(
            self,
            url: str,
            method: str = "GET",
            body: bytes | None = None,
            headers: Mapping[str, str] | None = None,
            timeout: float | None = None,
            **kwargs: Any,
        ) -> _Response:
            try:
                # 120 s when google-auth names no timeout, as its own requests transport does.
                response = self._http.request(method, url, content=body, headers=headers, timeout=timeout or 120.0)
            except httpx.HTTPError as problem:
                # google-auth retries and reports only its own TransportError.
                raise google.auth.exceptions.TransportError(f"{type(problem).__name__}: {problem}") from problem
            return _Response(response)

    return _Request()
