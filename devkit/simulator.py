"""A local Operations API simulator: the ``google.longrunning`` REST surface of every registered service.

It is a WSGI app, so tests mount it in-process with ``httpx.WSGITransport`` and
the demo serves it on loopback with ``python -m devkit.simulator``. Operations
exist on first touch and behave by the prefix of their id, so any name works
from the command line:

    (none)           cancel succeeds; the next get shows CANCELLED
    slow-N-...       still running for N gets after the cancel, then CANCELLED
    lasts-N-...      still running until N seconds after its first accepted cancel, then
                     CANCELLED (by the simulator's clock; the result lag benchmark's operations)
    stuck-...        never finishes (for TIMED_OUT)
    completes-...    finishes with a response despite the cancel (COMPLETED)
    fails-...        finishes with rpc error 13 after the cancel (FAILED)
    done-...         already finished: cancel answers 400 FAILED_PRECONDITION
    missing-...      404 NOT_FOUND, and never listed
    denied-...       403 PERMISSION_DENIED
    unsupported-...  cancel answers 501 UNIMPLEMENTED
    invalid-...      cancel answers 400 INVALID_ARGUMENT

It serves exactly the ``google.longrunning`` methods Google's discovery documents define
(``devkit.discovery``, the documents in tests/data/discovery/): ``cancel``, ``get`` and ``list`` of
each service and version, for the name shapes each documents, with the body and query parameters
each takes. Anything else is refused as Google refuses it, with Google's error JSON: no such method
404 NOT_FOUND; a body where the method takes none, an unknown field or query parameter, a value of
the wrong type 400 INVALID_ARGUMENT naming the field. Each refusal is also recorded in
``devkit.discovery.LEDGER``, which fails the test that caused it. ``OPCANCEL_API_ENDPOINT``
replaces every ``https://{host}``, so the host a call was meant for is lost
unless the endpoint carries it: set it to ``http://127.0.0.1:8090/{host}`` and
each path starts with that host (``/us-central1-aiplatform.googleapis.com/v1/projects/...``),
which the simulator accepts and records in ``calls``. Operations are keyed by
their relative name alone, whichever service's host a call came through.

``GET /{version}/{parent}/operations`` (``organizations/{org}``, ``projects/{p}``,
``projects/{p}/locations/{l}``, ``projects/{p}/regions/{r}``) lists the operations touched
so far, ``default_page_size`` (100) at a time unless ``pageSize`` asks for
fewer (at most 1000), following ``pageToken``/``nextPageToken``; ``filter``
understands ``done=true`` and ``done=false`` and lists everything for any other
filter (the documented parameter is accepted; its grammar is each service's own).

Control endpoints under ``/_simulator/``: ``POST faults`` with
``{"status": 503, "count": 2, "retry_delay": "30s"}`` makes the next calls
fail (``"status_name": "ALREADY_EXISTS"`` gives the error another RPC status than
the HTTP status's usual one, as a 409 is ``ABORTED`` or ``ALREADY_EXISTS``); ``POST fault-rate`` with ``{"rate": 0.2, "statuses": [503, 429],
"retry_delay": "1s", "seed": 7}`` makes that share of all later calls fail at
random (before they take effect), until a rate of 0; ``GET calls`` lists every
API call seen; ``GET operations`` lists every operation with the number of
cancels it accepted while running; ``POST reset`` forgets all.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs, parse_qsl
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from devkit.discovery import LEDGER, Contract, Violation, split_host

_SLOW = re.compile(r"slow-([0-9]+)-")
_LASTS = re.compile(r"lasts-([0-9]+)-")
_DONE_FILTER = re.compile(r"\s*done\s*=\s*(true|false)\s*")
_PAGE_TOKEN = re.compile(r"page-([0-9]{1,9})")
_PAGE_SIZE = re.compile(r"[0-9]{1,9}")
MAX_PAGE_SIZE = 1000
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass
class SimulatedOperation:
    name: str
    done: bool = False
    cancel_requested: bool = False
    #: Cancels answered 200 while the operation ran: more than one means it was cancelled twice.
    accepted_cancels: int = 0
    gets_after_cancel: int = 0
    #: When the first cancel was accepted (the simulator's clock), and when a ``lasts-N-`` operation ends.
    cancelled_at: float | None = None
    ends_at: float | None = None
    error: dict[str, Any] | None = None
    response: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "metadata": {"@type": "type.googleapis.com/google.protobuf.Empty"},
            "done": self.done,
        }
        if self.error is not None:
            body["error"] = self.error
        if self.response is not None:
            body["response"] = self.response
        return body


@dataclass
class Call:
    method: str
    path: str
    authorized: bool
    query: str = ""
    #: Answered with an injected fault, without reaching any operation.
    injected: bool = False
    body: str = ""


@dataclass
class Simulator:
    operations: dict[str, SimulatedOperation] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    default_page_size: int = 100
    clock: Callable[[], float] = time.time
    _faults: list[tuple[int, str | None, str | None]] = field(default_factory=list)
    _fault_rate: float = 0.0
    _fault_statuses: tuple[int, ...] = (503,)
    _fault_retry_delay: str | None = None
    _random: random.Random = field(default_factory=random.Random)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        with self._lock:
            if path.startswith("/_simulator/"):
                status, body = self._control(method, path[len("/_simulator/") :], environ)
            else:
                raw = _read_body(environ)
                call = Call(
                    method,
                    path,
                    bool(environ.get("HTTP_AUTHORIZATION")),
                    environ.get("QUERY_STRING", ""),
                    body=raw.decode("utf-8", "replace"),
                )
                self.calls.append(call)
                status, body = self._api(call, raw, environ)
        payload = json.dumps(body).encode("utf-8")
        start_response(
            f"{status} {_REASONS.get(status, 'Status')}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
        )
        return [payload]

    def cancel_calls(self, name: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.path.endswith(":cancel") and (name is None or name in c.path)]

    def inject(
        self, status: int, *, count: int = 1, retry_delay: str | None = None, status_name: str | None = None
    ) -> None:
        with self._lock:
            self._faults.extend([(status, retry_delay, status_name)] * count)

    def set_fault_rate(
        self, rate: float, *, statuses: Iterable[int] = (503,), retry_delay: str | None = None, seed: int | None = None
    ) -> None:
        with self._lock:
            self._set_fault_rate(rate, tuple(statuses), retry_delay, seed)

    def _set_fault_rate(
        self, rate: float, statuses: tuple[int, ...], retry_delay: str | None, seed: int | None
    ) -> None:
        if not 0.0 <= rate <= 1.0 or not statuses:
            raise ValueError("rate must be within 0..1, with at least one status")
        self._fault_rate, self._fault_statuses, self._fault_retry_delay = rate, statuses, retry_delay
        self._random.seed(seed)

    def _control(self, method: str, command: str, environ: dict[str, Any]) -> tuple[int, Any]:
        if method == "GET" and command == "calls":
            return 200, {"calls": [c.__dict__ for c in self.calls]}
        if method == "GET" and command == "operations":
            return 200, {
                "operations": [
                    {**op.body(), "accepted_cancels": op.accepted_cancels} for op in self.operations.values()
                ]
            }
        if method == "POST" and command == "reset":
            self.operations.clear()
            self.calls.clear()
            self._faults.clear()
            self._fault_rate = 0.0
            return 200, {}
        if method == "POST" and command == "fault-rate":
            request = _read_json(environ)
            try:
                self._set_fault_rate(
                    float(request.get("rate", 0.0)),
                    tuple(int(status) for status in request.get("statuses", [503])),
                    request.get("retry_delay"),
                    request.get("seed"),
                )
            except (TypeError, ValueError) as problem:
                return 400, _error(400, f"bad fault-rate request: {problem}")
            return 200, {}
        if method == "POST" and command == "faults":
            request = _read_json(environ)
            fault = (int(request.get("status", 503)), request.get("retry_delay"), request.get("status_name"))
            self._faults.extend([fault] * int(request.get("count", 1)))
            return 200, {}
        return 404, _error(404, f"no simulator control {command!r}")

    def _fault(self, call: Call) -> tuple[int, Any] | None:
        status_name = None
        if self._faults:
            status, retry_delay, status_name = self._faults.pop(0)
        elif self._fault_rate and self._random.random() < self._fault_rate:
            status = self._random.choice(self._fault_statuses)
            retry_delay = self._fault_retry_delay if status == 429 else None
        else:
            return None
        call.injected = True
        return status, _error(status, "injected fault", status_name=status_name, retry_delay=retry_delay)

    def _api(self, call: Call, raw: bytes, environ: dict[str, Any]) -> tuple[int, Any]:
        """Hold the call to Google's documents first (what they do not define is refused as Google would),
        then to the injected faults, then serve it."""
        method, path = call.method, call.path
        host, api_path = split_host("", path)
        query = environ.get("QUERY_STRING", "")
        try:
            documented = Contract.load().check(
                method,
                api_path,
                host=host,
                query=parse_qsl(query, keep_blank_values=True),
                body=raw,
                content_type=environ.get("CONTENT_TYPE", ""),
            )
            if not documented.id.endswith((".operations.cancel", ".operations.get", ".operations.list")):
                raise Violation(404, f"{documented.id} is not an Operations method", request=f"{method} {path}")
        except Violation as violation:
            LEDGER.record(violation)
            return violation.status, violation.error_body()
        fault = self._fault(call)
        if fault is not None:
            return fault
        # /VERSION/NAME[:cancel]: the document matched, so the rest is a name of a shape it defines.
        name = api_path.split("/", 2)[2].removesuffix(":cancel")
        if documented.id.endswith(".list"):
            return self._list(name.removesuffix("/operations"), query)
        operation = self._operation(name)
        return self._cancel(method, operation) if documented.id.endswith(".cancel") else self._get(operation)

    def _list(self, parent: str, query_string: str) -> tuple[int, Any]:
        query = {key: values[-1] for key, values in parse_qs(query_string, keep_blank_values=True).items()}
        size_text = query.get("pageSize") or "0"
        if not _PAGE_SIZE.fullmatch(size_text):
            return 400, _error(400, "pageSize must be a non-negative integer")
        size = min(int(size_text), MAX_PAGE_SIZE) or self.default_page_size
        token = query.get("pageToken") or "page-0"
        offset = _PAGE_TOKEN.fullmatch(token)
        if offset is None:
            return 400, _error(400, "invalid pageToken")
        wanted = None
        done = _DONE_FILTER.fullmatch(query.get("filter") or "")
        if done is not None:
            wanted = done.group(1) == "true"
        prefix = parent + "/operations/"
        found = [
            op.body()
            for name, op in sorted(self.operations.items())
            # A missing- operation does not exist: get answers 404, so no listing shows it either.
            if name.startswith(prefix) and (wanted is None or op.done is wanted) and _kind(name) != "missing"
        ]
        start = int(offset.group(1))
        body: dict[str, Any] = {}
        # As the real API does in proto3 JSON, an empty list and the last page's token are left out.
        if found[start : start + size]:
            body["operations"] = found[start : start + size]
        if start + size < len(found):
            body["nextPageToken"] = f"page-{start + size}"
        return 200, body

    def _operation(self, name: str) -> SimulatedOperation:
        if name not in self.operations:
            operation = SimulatedOperation(name)
            if _kind(name) == "done":
                operation.done = True
                operation.response = {"state": "COMPLETED"}
            self.operations[name] = operation
        return self.operations[name]

    def _cancel(self, method: str, operation: SimulatedOperation) -> tuple[int, Any]:
        kind = _kind(operation.name)
        refusals = {"missing": 404, "denied": 403, "unsupported": 501, "invalid": 400}
        if kind in refusals:
            status = refusals[kind]
            return status, _error(status, f"simulated {_STATUS_NAMES[status]} for {operation.name}")
        if operation.done:
            return 400, _error(400, "Operation has already finished.", status_name="FAILED_PRECONDITION")
        operation.cancel_requested = True
        operation.accepted_cancels += 1
        if operation.cancelled_at is None:
            operation.cancelled_at = self.clock()
            lasts = _LASTS.match(operation.name.rsplit("/", 1)[1])
            if lasts:
                operation.ends_at = operation.cancelled_at + int(lasts.group(1))
        return 200, {}

    def _get(self, operation: SimulatedOperation) -> tuple[int, Any]:
        kind = _kind(operation.name)
        if kind in ("missing", "denied"):
            status = 404 if kind == "missing" else 403
            return status, _error(status, f"simulated {_STATUS_NAMES[status]} for {operation.name}")
        if operation.cancel_requested and not operation.done and kind != "stuck":
            slow = _SLOW.match(operation.name.rsplit("/", 1)[1])
            slow_running = slow is not None and operation.gets_after_cancel < int(slow.group(1))
            lasting = operation.ends_at is not None and self.clock() < operation.ends_at
            if slow_running or lasting:
                operation.gets_after_cancel += 1
            else:
                operation.done = True
                if kind == "completes":
                    operation.response = {"state": "COMPLETED"}
                elif kind == "fails":
                    operation.error = {"code": 13, "message": "Internal error during discovery."}
                else:
                    operation.error = {"code": 1, "message": "Operation was cancelled."}
        return 200, operation.body()


def _kind(name: str) -> str:
    operation_id = name.rsplit("/", 1)[1]
    return operation_id.split("-", 1)[0] if "-" in operation_id else ""


def _error(
    status: int, message: str, *, status_name: str | None = None, retry_delay: str | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": status_name or _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if retry_delay:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}]
    return {"error": error}


def _read_json(environ: dict[str, Any]) -> dict[str, Any]:
    body = json.loads(_read_body(environ) or b"{}")
    return body if isinstance(body, dict) else {}


def _read_body(environ: dict[str, Any]) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return environ["wsgi.input"].read(length) if length else b""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(simulator: Simulator, port: int = 0) -> WSGIServer:
    """Serve on 127.0.0.1 (``port`` 0 picks a free one) in a daemon thread; returns the server."""
    server = make_server("127.0.0.1", port, simulator, server_class=_ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="simulator", daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8090)
    port = parser.parse_args().port
    server = make_server("127.0.0.1", port, Simulator(), server_class=_ThreadingServer, handler_class=_QuietHandler)
    print(
        f"Operations API simulator on http://127.0.0.1:{port} (set OPCANCEL_API_ENDPOINT to this, "
        f"or to http://127.0.0.1:{port}/{{host}} to see each call's host)",
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
