"""One HTTP stack per process, shared by the Operations API client, the Pub/Sub publisher, the
Firestore store and credential refreshes.

Measured on a cold start (bench/RESULTS.md): building a TLS context from certifi's bundle costs
30-50 ms, once per ``httpx.Client`` that builds its own. So the process keeps one transport, which
sets TLS up on its first ``https`` request (a local run against the simulator and emulators never
needs it), and google-auth refreshes tokens over that same transport and its connection pool.
"""

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
    """Connection pools for every client in the process; TLS is set up on the first ``https`` request."""

    def __init__(self) -> None:
        # For http:// URLs only, which carry no TLS to verify.
        self._plain = httpx.HTTPTransport(verify=False)
        self._tls: httpx.HTTPTransport | None = None
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "https":
            return self._tls_transport().handle_request(request)
        return self._plain.handle_request(request)

    def _tls_transport(self) -> httpx.HTTPTransport:
        with self._lock:
            if self._tls is None:
                self._tls = httpx.HTTPTransport()
            return self._tls

    def close(self) -> None:
        self._plain.close()
        with self._lock:
            if self._tls is not None:
                self._tls.close()


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
