"""One HTTP stack per process, shared by the Operations API client, the Pub/Sub publisher, the
Firestore store and credential refreshes.

Measured on a cold start (bench/RESULTS.md): building a TLS context from certifi's bundle costs
30-50 ms, once per ``httpx.Client`` that builds its own. So the process keeps one transport, which
sets TLS up on its first ``https`` request, and google-auth refreshes tokens over that same
transport and its connection pool.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import select
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
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
    """HTTP/1.1 for every client in the process: the standard library's ``http.client`` under a keep-alive pool.

    Why not httpx's own ``HTTPTransport``: it brings httpcore and h11, whose import and first
    connection added 25 ms to a cold start of about 160 ms (bench/RESULTS.md), while ``http.client``
    is already loaded by functions-framework. httpx's clients, errors and ``MockTransport`` work
    above it unchanged, and a proxy named in the environment still goes through httpx's transport,
    which ``httpx.Client`` mounts for it.

    Transport failures are raised as httpx's, so every caller's retry sees what it saw before:
    ``ConnectError``/``ConnectTimeout`` before the request left, ``WriteError``/``WriteTimeout``
    while sending, ``ReadError``/``ReadTimeout``/``RemoteProtocolError`` while awaiting or reading
    the answer. A connection goes back to the pool only when its answer was read to the end and the
    server keeps it open; one idle longer than ``keepalive_s``, or closed by the server meanwhile,
    is dropped rather than reused. TLS is set up on the first ``https`` request: a local run
    against the simulator and emulators never needs it.
    """

    def __init__(
        self,
        *,
        tls_context: Callable[[], ssl.SSLContext] = httpx.create_ssl_context,
        keepalive_s: float = 5.0,
        max_idle_per_origin: int = 20,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._make_tls_context = tls_context
        self._tls: ssl.SSLContext | None = None
        self._keepalive_s = keepalive_s
        self._max_idle = max_idle_per_origin
        self._monotonic = monotonic
        #: Per origin, idle connections with the time each went idle; the most recent last.
        self._idle: dict[_Origin, list[tuple[http.client.HTTPConnection, float]]] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}", request=request)
        origin = (url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme])
        timeouts = request.extensions.get("timeout", {})
        connection = self._idle_connection(origin) or self._connect(origin, timeouts.get("connect"), request)
        try:
            answer = _exchange(connection, request, timeouts)
        except BaseException:
            connection.close()
            raise
        return httpx.Response(
            status_code=answer.status,
            # As bytes, so a header's Latin-1 text reaches httpx exactly as it was sent.
            headers=[(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.getheaders()],
            stream=_Body(self, origin, connection, answer, request),
            extensions={
                "http_version": b"HTTP/1.1" if answer.version == 11 else b"HTTP/1.0",
                "reason_phrase": answer.reason.encode("latin-1", "replace"),
            },
        )

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection, _ in connections:
                connection.close()

    def _idle_connection(self, origin: _Origin) -> http.client.HTTPConnection | None:
        now = self._monotonic()
        while True:
            with self._lock:
                pool = self._idle.get(origin)
                if not pool:
                    return None
                connection, idle_since = pool.pop()
            if now - idle_since <= self._keepalive_s and not _closed_by_peer(connection):
                return connection
            connection.close()

    def _release(self, origin: _Origin, connection: http.client.HTTPConnection, *, reusable: bool) -> None:
        if reusable:
            with self._lock:
                pool = self._idle.setdefault(origin, [])
                if len(pool) < self._max_idle:
                    pool.append((connection, self._monotonic()))
                    return
        connection.close()

    def _connect(self, origin: _Origin, timeout: float | None, request: httpx.Request) -> http.client.HTTPConnection:
        scheme, host, port = origin
        connection: http.client.HTTPConnection
        if scheme == "https":
            connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls_context())
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        with _raised_as(httpx.ConnectTimeout, httpx.ConnectError, request):
            connection.connect()
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._tls is None:
                context = self._make_tls_context()
                context.set_alpn_protocols(["http/1.1"])
                self._tls = context
            return self._tls


_Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK_BYTES = 64 * 1024


def _exchange(
    connection: http.client.HTTPConnection, request: httpx.Request, timeouts: Mapping[str, float | None]
) -> http.client.HTTPResponse:
    assert connection.sock is not None
    body = request.read()
    chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
    with _raised_as(httpx.WriteTimeout, httpx.WriteError, request, protocol=httpx.LocalProtocolError):
        connection.sock.settimeout(timeouts.get("write"))
        # httpx has set Host, Accept-Encoding and the body's length or chunking among the headers.
        connection.putrequest(
            request.method, request.url.raw_path.decode("ascii"), skip_host=True, skip_accept_encoding=True
        )
        for name, value in request.headers.raw:
            connection.putheader(name, value)
        connection.endheaders(body, encode_chunked=chunked)
    with _raised_as(httpx.ReadTimeout, httpx.ReadError, request):
        connection.sock.settimeout(timeouts.get("read"))
        return connection.getresponse()


class _Body(httpx.SyncByteStream):
    """An answer's body as it arrives; closing it hands the connection back, or closes it."""

    def __init__(
        self,
        transport: SharedTransport,
        origin: _Origin,
        connection: http.client.HTTPConnection,
        answer: http.client.HTTPResponse,
        request: httpx.Request,
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._connection = connection
        self._answer = answer
        self._request = request
        self._released = False

    def __iter__(self) -> Iterator[bytes]:
        while True:
            with _raised_as(httpx.ReadTimeout, httpx.ReadError, self._request):
                chunk = self._answer.read(_CHUNK_BYTES)
            if chunk:
                yield chunk
            elif self._answer.length:
                # http.client ends a body cut short of its Content-Length quietly when read in parts.
                raise httpx.RemoteProtocolError(
                    f"IncompleteRead: the connection closed {self._answer.length} bytes short of the body",
                    request=self._request,
                )
            else:
                return

    def close(self) -> None:
        if self._released:
            return
        self._released = True
        # http.client marks an answer closed once its body was read to the end.
        reusable = self._answer.isclosed() and not self._answer.will_close
        self._transport._release(self._origin, self._connection, reusable=reusable)


@contextlib.contextmanager
def _raised_as(
    timeout: type[httpx.TransportError],
    failure: type[httpx.TransportError],
    request: httpx.Request,
    *,
    protocol: type[httpx.TransportError] = httpx.RemoteProtocolError,
) -> Iterator[None]:
    """``http.client``'s and the socket's failures as the httpx errors every caller handles."""
    try:
        yield
    except TimeoutError as problem:
        raise timeout(str(problem) or "timed out", request=request) from problem
    except ssl.SSLError as problem:
        # Before ValueError: a certificate that fails verification is both.
        raise failure(f"{type(problem).__name__}: {problem}", request=request) from problem
    except http.client.HTTPException as problem:
        # Before OSError: RemoteDisconnected is both. Also IncompleteRead and a malformed answer.
        raise protocol(f"{type(problem).__name__}: {problem}", request=request) from problem
    except OSError as problem:
        raise failure(f"{type(problem).__name__}: {problem}", request=request) from problem
    except ValueError as problem:
        # What http.client refuses to send, such as a header value that would split the request.
        raise protocol(f"{type(problem).__name__}: {problem}", request=request) from problem


def _closed_by_peer(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle connection has something to read: the server closed it (or sent what no request asked)."""
    if connection.sock is None:
        return True
    poller = select.poll()
    poller.register(connection.sock, select.POLLIN)
    return bool(poller.poll(0))


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
