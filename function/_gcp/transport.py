"""One HTTP stack per process, shared by every Google API client and by credential refreshes; and how one
REST call is sent, retried and read."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from .._backoff import Backoff, RetryHook, TryAgain, retry_context
from .._clock import Clock
from .._json import JsonUnreadable, read_json


class SharedTransport(httpx.BaseTransport):
    """httpx's own ``HTTPTransport``, one per URL scheme and process, built at once for the schemes named in
    ``prepare`` and on first use for any other.

    Every client in the process (Operations API, Pub/Sub, Cloud Tasks, Firestore, token refreshes) sends
    through it, so there is one connection pool per scheme and one TLS context. ``https`` gets the
    verifying transport (certifi's bundle, or the ``verify`` given); plain ``http`` (the metadata server,
    emulators, the local stack) gets one whose TLS context trusts no certificate, so loading a CA bundle
    waits for the first HTTPS call and a plain connection can never become an unverified TLS one.
    Preparing a scheme in gunicorn's master, before it forks, hands every worker that transport ready
    (httpcore imported, CA certificates loaded) instead of building it on the worker's first request.
    """

    def __init__(self, *, prepare: Iterable[str] = (), **options: Any) -> None:
        self._options = options
        self._transports: dict[str, httpx.HTTPTransport] = {}
        self._lock = threading.Lock()
        for scheme in prepare:
            self._built(scheme)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._built(request.url.scheme).handle_request(request)

    def close(self) -> None:
        """Nothing: the process owns the transports, and an ``httpx.Client`` closing one would cut other
        clients' requests off mid-flight. Their connections end with the process."""

    def _built(self, scheme: str) -> httpx.HTTPTransport:
        # Anything but plain http goes to the verifying transport, which refuses schemes it cannot serve.
        scheme = "http" if scheme == "http" else "https"
        with self._lock:
            transport = self._transports.get(scheme)
            if transport is None:
                options = self._options
                if scheme == "http":
                    # Verification on, nothing trusted: a context that can never complete a handshake.
                    options = {**options, "verify": ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)}
                transport = self._transports[scheme] = httpx.HTTPTransport(**options)
            return transport


def send(
    http: httpx.Client,
    method: str,
    url: str,
    *,
    retry_status: frozenset[int],
    backoff: Backoff,
    clock: Clock,
    on_retry: RetryHook | None = None,
    **request: Any,
) -> httpx.Response:
    """One REST call, tried again within ``backoff`` on a transport error or a ``retry_status`` answer.

    Returns the first other answer. When attempts or time run out, raises the last ``TryAgain``: its
    ``answer`` is the last response, or None when the last try got none. Callers decide what each final
    status means. ``httpx.RequestError`` rather than ``TransportError``: a body that fails to decode (bad
    gzip) is the same kind of passing trouble.
    """
    for attempt in retry_context(backoff, clock, on_retry=on_retry):
        with attempt:
            try:
                response = http.request(method, url, **request)
            except httpx.RequestError as problem:
                raise TryAgain(type(problem).__name__) from None
            if response.status_code in retry_status:
                raise TryAgain(f"HTTP {response.status_code}", answer=response)
            return response
    raise AssertionError("retry_context ends by returning or raising")  # pragma: no cover


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The answer's body as a JSON object, or None when it is anything else (a proxy's page, say)."""
    try:
        body = read_json(response.content)
    except JsonUnreadable:
        return None
    return body if isinstance(body, dict) else None


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
