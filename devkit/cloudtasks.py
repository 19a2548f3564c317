"""A local Cloud Tasks stand-in: the part of the v2 REST surface opcancel uses, and HTTP dispatch.

Google ships no Cloud Tasks emulator, and the third-party ones serve the gRPC API, not REST, so this
follows the v2 REST reference (cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues.tasks)
for what opcancel calls:

- ``POST /v2/projects/P/locations/L/queues/Q/tasks`` (``tasks.create``). Every request is first held to
  Google's discovery document (``devkit.discovery``): a method it does not define answers 404 NOT_FOUND,
  a body its ``CreateTaskRequest`` schema refuses (an unknown field, a value of the wrong type, enum or
  format: ``dispatchDeadline: "10"``) 400 INVALID_ARGUMENT naming the field, and is recorded in
  ``devkit.discovery.LEDGER``. Proto field names (``schedule_time``) are read as their JSON names;
  documented fields the stand-in does not act on (``retryConfig``, output-only ``createTime``...) are
  accepted. Then what the reference says beyond the schema: a malformed or foreign task name, a body on
  an HTTP method that takes none, both tokens, or a schedule more than 30 days ahead answer 400; a queue
  the stand-in was not given 404; a name already used, by a pending task or one already dispatched, 409
  ALREADY_EXISTS; all with Google's error body ``{"error": {code, message, status}}``. The answer is the
  Task in the BASIC view (no body).
- The other errors tasks.create documents, on demand: ``inject(409, status_name="ABORTED")``, 429
  RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 400 with ``field_violations`` (``POST /_cloudtasks/errors`` with
  ``{"status": 409, "status_name": "ABORTED", "count": 1}``) answer the next creates before anything is
  created.
- ``GET /v2/projects/P/locations/L/queues/Q/tasks/T`` (``tasks.get``).
- Dispatch: each task's HTTP request is sent at its ``scheduleTime`` (or at once if that is past); a
  2xx answer completes it, anything else (or no answer) is retried with the queue's exponential
  backoff (``min_backoff_s`` doubling to ``max_backoff_s``) up to ``max_attempts``. With an
  ``oauthToken`` the request carries a made-up bearer token naming the account: the Pub/Sub emulator
  takes any.

What it does not do: queue administration, rate limits, App Engine tasks, task deletion.

Fault injection, for the chaos run: ``create_failure_rate`` answers that share of creates 503
UNAVAILABLE before creating anything; ``dispatch_failure_rate`` fails that share of dispatch attempts
without sending (the task is retried); ``lose_rate`` accepts that share of creates and never
dispatches them (a lost task), chosen by the task's name and the seed, so one seed loses the same
tasks however the creates interleave. ``POST /_cloudtasks/faults`` sets them; ``GET /_cloudtasks/tasks``
lists every task with its schedule, dispatch attempts and first successful dispatch time.

In-process, tests mount it with ``httpx.WSGITransport`` and call ``dispatch_due()`` with their own
clock; ``serve()`` runs it on loopback with a dispatcher thread, ``python -m devkit.cloudtasks`` too.
"""

from __future__ import annotations

import argparse
import base64
import heapq
import json
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import make_server

from devkit.discovery import LEDGER, Contract, Violation
from devkit.simulator import _QuietHandler, _ThreadingServer

_QUEUE = r"projects/[A-Za-z0-9.:-]{1,100}/locations/[a-z0-9-]{1,63}/queues/[A-Za-z0-9-]{1,100}"
_CREATE_PATH = re.compile(rf"/v2/(?P<queue>{_QUEUE})/tasks")
_TASK_PATH = re.compile(rf"/v2/(?P<name>{_QUEUE}/tasks/[A-Za-z0-9_-]{{1,500}})")
_TASK_NAME = re.compile(rf"(?P<queue>{_QUEUE})/tasks/[A-Za-z0-9_-]{{1,500}}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})")
_METHODS = ("POST", "GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS")
_WITH_BODY = ("POST", "PUT", "PATCH")
#: tasks.create: "The maximum task size is 100KB"; scheduleTime at most 30 days ahead (tasks/docs/quotas).
MAX_TASK_BYTES = 100 * 1024
MAX_SCHEDULE_AHEAD_S = 30 * 24 * 3600


@dataclass
class Task:
    name: str
    schedule_time: float
    create_time: float
    http_request: dict[str, Any]
    #: Set on a lost task (``lose_rate``): accepted, never dispatched.
    lost: bool = False
    #: (when each dispatch attempt started, its HTTP status or None when it failed without one).
    attempts: list[tuple[float, int | None]] = field(default_factory=list)
    #: When a dispatch was first answered 2xx; the task is done then.
    succeeded_at: float | None = None
    next_attempt_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        request = {k: v for k, v in self.http_request.items() if k != "body"}
        request.setdefault("httpMethod", "POST")
        answered = [status for _, status in self.attempts if status is not None]
        task: dict[str, Any] = {
            "name": self.name,
            "scheduleTime": _format_time(self.schedule_time),
            "createTime": _format_time(self.create_time),
            "dispatchDeadline": "600s",
            "dispatchCount": len(self.attempts),
            "responseCount": len(answered),
            "view": "BASIC",
            "httpRequest": request,
        }
        return task


class CloudTasks:
    def __init__(
        self,
        *,
        queues: Iterable[str] | None = None,
        clock: Callable[[], float] = time.time,
        deliver: Callable[[str, str, dict[str, str], bytes], int] | None = None,
        min_backoff_s: float = 0.1,
        max_backoff_s: float = 2.0,
        max_attempts: int = 100,
        create_failure_rate: float = 0.0,
        dispatch_failure_rate: float = 0.0,
        lose_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self._queues = set(queues) if queues is not None else None
        self._clock = clock
        self._deliver = deliver or _deliver_over_http
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_attempts = max_attempts
        self.create_failure_rate = create_failure_rate
        self.dispatch_failure_rate = dispatch_failure_rate
        self.lose_rate = lose_rate
        self._random = random.Random(seed)
        self._seed = seed
        self.tasks: dict[str, Task] = {}
        #: Every create answered, as (status, task name or None), in order.
        self.creates: list[tuple[int, str | None]] = []
        self._due: list[tuple[float, str]] = []
        #: Errors the next creates answer (status, RPC status, field violations), before creating anything.
        self._errors: list[tuple[int, str | None, list[dict[str, str]] | None]] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)

    # WSGI

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        try:
            if path.startswith("/_cloudtasks/"):
                status, body = self._control(method, path.removeprefix("/_cloudtasks/"), environ)
            else:
                status, body = self._api(method, path, environ)
        except _Refusal as refusal:
            status, body = refusal.status, refusal.body or _error(refusal.status, refusal.message)
        data = json.dumps(body).encode()
        start_response(
            f"{status} {_REASONS.get(status, 'Error')}",
            [("Content-Type", "application/json; charset=UTF-8"), ("Content-Length", str(len(data)))],
        )
        return [data]

    def inject(
        self,
        status: int,
        *,
        status_name: str | None = None,
        count: int = 1,
        field_violations: list[dict[str, str]] | None = None,
    ) -> None:
        """Answer the next ``count`` creates with an error ``tasks.create`` documents, creating nothing."""
        with self._lock:
            self._errors.extend([(status, status_name, field_violations)] * count)

    def _api(self, method: str, path: str, environ: dict[str, Any]) -> tuple[int, Any]:
        raw = _read_body(environ)
        try:
            Contract.load().check(method, path, body=raw, content_type=environ.get("CONTENT_TYPE", ""))
        except Violation as violation:
            LEDGER.record(violation)
            raise _Refusal(violation.status, violation.rule, violation.error_body()) from None
        create = _CREATE_PATH.fullmatch(path)
        if create and method == "POST":
            return self._create(create["queue"], raw)
        task = _TASK_PATH.fullmatch(path)
        if task and method == "GET":
            with self._lock:
                found = self.tasks.get(task["name"])
            if found is None:
                raise _Refusal(404, "Requested entity was not found.")
            return 200, found.to_json()
        if create or task:
            raise _Refusal(405, f"method {method} is not served here")
        raise _Refusal(404, f"no such method: {path}")

    def _create(self, queue: str, raw: bytes) -> tuple[int, Any]:
        if self._queues is not None and queue not in self._queues:
            raise _Refusal(404, f"Queue does not exist. If you just created the queue, wait: {queue}")
        with self._lock:
            error = self._errors.pop(0) if self._errors else None
            if error is not None:
                self.creates.append((error[0], None))
        if error is not None:
            status, status_name, violations = error
            raise _Refusal(
                status, "injected", _error(status, f"{status_name or ''} (injected)", status_name, violations)
            )
        if self._roll() < self.create_failure_rate:
            with self._lock:
                self.creates.append((503, None))
            raise _Refusal(503, "The service is currently unavailable (injected).")
        task = self._parse_create(queue, raw)
        lost = random.Random(f"{self._seed}/{task.name}").random() < self.lose_rate
        with self._lock:
            if task.name in self.tasks:
                self.creates.append((409, task.name))
                raise _Refusal(409, "Requested entity already exists")
            task.lost = lost
            self.tasks[task.name] = task
            self.creates.append((200, task.name))
            if not task.lost:
                task.next_attempt_at = task.schedule_time
                heapq.heappush(self._due, (task.schedule_time, task.name))
                self._wake.notify_all()
        return 200, task.to_json()

    def _parse_create(self, queue: str, raw: bytes) -> Task:
        """What the reference asks beyond the schema the contract already checked."""
        if len(raw) > MAX_TASK_BYTES * 2:
            raise _Refusal(400, f"Task size exceeds the maximum of {MAX_TASK_BYTES} bytes")
        body = _json_names(json.loads(raw or b"{}"))
        task = body.get("task")
        if not isinstance(task, dict):
            raise _Refusal(400, "task is required")
        now = self._clock()
        name = task.get("name")
        if name is None:
            name = f"{queue}/tasks/{secrets.randbelow(10**19)}"
        elif not (match := _TASK_NAME.fullmatch(name)):
            raise _Refusal(
                400, "Task name must be projects/PROJECT_ID/locations/LOCATION_ID/queues/QUEUE_ID/tasks/TASK_ID"
            )
        elif match["queue"] != queue:
            raise _Refusal(400, "Task name does not belong to the queue in the request URL")
        schedule_time = now
        if task.get("scheduleTime") is not None:
            schedule_time = _parse_time(task["scheduleTime"], "task.schedule_time")
            if schedule_time > now + MAX_SCHEDULE_AHEAD_S:
                raise _Refusal(400, "The scheduled time of a task must be at most 30 days in the future")
            schedule_time = max(schedule_time, now)
        request = task.get("httpRequest")
        if not isinstance(request, dict):
            raise _Refusal(400, "task.http_request is required (this stand-in serves HTTP tasks only)")
        request = {key: value for key, value in request.items() if value is not None}
        url = request.get("url", "")
        if not url.startswith(("http://", "https://")) or len(url) > 2083:
            raise _Refusal(400, "HttpRequest.url must begin with http:// or https://")
        # HTTP_METHOD_UNSPECIFIED is POST, as the reference says of an unset method.
        if request.get("httpMethod", "HTTP_METHOD_UNSPECIFIED") == "HTTP_METHOD_UNSPECIFIED":
            request["httpMethod"] = "POST"
        if "body" in request:
            if request["httpMethod"] not in _WITH_BODY:
                raise _Refusal(400, f"A request body is not allowed with HTTP method {request['httpMethod']}")
            text = request["body"].rstrip("=").replace("-", "+").replace("_", "/")
            request["body"] = text + "=" * (-len(text) % 4)
        if "oauthToken" in request and "oidcToken" in request:
            raise _Refusal(400, "Only one of oauth_token and oidc_token may be set")
        for token_field in ("oauthToken", "oidcToken"):
            if token_field in request and not isinstance(request[token_field].get("serviceAccountEmail"), str):
                raise _Refusal(400, f"task.http_request.{token_field}.service_account_email is required")
        return Task(name=name, schedule_time=schedule_time, create_time=now, http_request=request)

    def _control(self, method: str, command: str, environ: dict[str, Any]) -> tuple[int, Any]:
        if method == "GET" and command == "tasks":
            with self._lock:
                return 200, {"tasks": [self._account(task) for task in self.tasks.values()], "creates": self.creates}
        if method == "POST" and command == "errors":
            body = json.loads(_read_body(environ) or b"{}")
            self.inject(
                int(body.get("status", 503)),
                status_name=body.get("status_name"),
                count=int(body.get("count", 1)),
                field_violations=body.get("field_violations"),
            )
            return 200, {}
        if method == "POST" and command == "faults":
            body = json.loads(_read_body(environ) or b"{}")
            for name in ("create_failure_rate", "dispatch_failure_rate", "lose_rate"):
                if name in body:
                    setattr(self, name, float(body[name]))
            if "seed" in body:
                self._random.seed(body["seed"])
                self._seed = body["seed"]
            return 200, {}
        raise _Refusal(404, f"no such control: {command}")

    @staticmethod
    def _account(task: Task) -> dict[str, Any]:
        return {
            "name": task.name,
            "schedule_time": task.schedule_time,
            "create_time": task.create_time,
            "lost": task.lost,
            "attempts": task.attempts,
            "succeeded_at": task.succeeded_at,
        }

    # Dispatch

    def dispatch_due(self, now: float | None = None) -> int:
        """Send every task due by ``now`` (the clock's time by default), each once; returns how many were sent."""
        now = self._clock() if now is None else now
        sent = 0
        while (task := self._next_due(now)) is not None:
            self._dispatch(task)
            sent += 1
        return sent

    def next_due_at(self) -> float | None:
        with self._lock:
            return self._due[0][0] if self._due else None

    def _next_due(self, now: float) -> Task | None:
        with self._lock:
            while self._due and self._due[0][0] <= now:
                at, name = heapq.heappop(self._due)
                task = self.tasks[name]
                if task.succeeded_at is None and at == task.next_attempt_at:
                    return task
        return None

    def _dispatch(self, task: Task) -> None:
        request = task.http_request
        headers = dict(request.get("headers", {}))
        headers["X-CloudTasks-TaskName"] = task.name.rsplit("/", 1)[1]
        headers["X-CloudTasks-QueueName"] = task.name.split("/")[5]
        headers["X-CloudTasks-TaskRetryCount"] = str(len(task.attempts))
        for token_field in ("oauthToken", "oidcToken"):
            if token_field in request:
                headers["Authorization"] = f"Bearer stand-in-token-for-{request[token_field]['serviceAccountEmail']}"
        body = base64.b64decode(request["body"]) if "body" in request else b""
        started = self._clock()
        status: int | None
        if self._roll() < self.dispatch_failure_rate:
            status = None
        else:
            try:
                status = self._deliver(request["url"], request.get("httpMethod", "POST"), headers, body)
            except Exception:
                status = None
        now = self._clock()
        with self._lock:
            task.attempts.append((started, status))
            if status is not None and 200 <= status < 300:
                task.succeeded_at = now
                return
            if len(task.attempts) >= self.max_attempts:
                return
            delay = min(self.min_backoff_s * 2 ** (len(task.attempts) - 1), self.max_backoff_s)
            task.next_attempt_at = now + delay
            heapq.heappush(self._due, (task.next_attempt_at, task.name))
            self._wake.notify_all()

    def run_dispatcher(self, stop: threading.Event, *, workers: int = 64) -> None:
        """Dispatch tasks as they fall due, ``workers`` at a time, until ``stop`` is set."""
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cloudtasks-dispatch") as pool:
            while not stop.is_set():
                now = self._clock()
                task = self._next_due(now)
                if task is not None:
                    pool.submit(self._dispatch, task)
                    continue
                with self._lock:
                    wait = (self._due[0][0] - now) if self._due else 0.2
                    self._wake.wait(timeout=min(max(wait, 0.0), 0.2))

    def _roll(self) -> float:
        with self._lock:
            return self._random.random()


class _Refusal(Exception):
    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    429: "Too Many Requests",
    503: "Service Unavailable",
}
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}


def _error(
    status: int,
    message: str,
    status_name: str | None = None,
    field_violations: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": status_name or _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if field_violations:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": field_violations}]
    return {"error": error}


def _json_names(value: Any) -> Any:
    """Proto field names (``schedule_time``) as their JSON names, as Google's JSON parser reads both; map
    keys (``headers``) are kept as they are."""
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        head, *rest = key.split("_")
        name = head + "".join(part[:1].upper() + part[1:] for part in rest)
        out[name] = item if name == "headers" else _json_names(item)
    return out


def _parse_time(value: Any, name: str) -> float:
    if not isinstance(value, str) or not (match := _TIME.fullmatch(value)):
        raise _Refusal(400, f"Invalid value at '{name}' (type.googleapis.com/google.protobuf.Timestamp)")
    fraction = match.group(1) or ""
    text = value[: len(value) - len(fraction) - len(match.group(2))] + match.group(2).replace("Z", "+00:00")
    try:
        seconds = datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise _Refusal(400, f"Invalid value at '{name}' (type.googleapis.com/google.protobuf.Timestamp)") from None
    return seconds + (float(fraction) if fraction else 0.0)


def _format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _read_body(environ: dict[str, Any]) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return environ["wsgi.input"].read(length) if length else b""


_client_lock = threading.Lock()
_clients: dict[str, Any] = {}


def _deliver_over_http(url: str, method: str, headers: dict[str, str], body: bytes) -> int:
    import httpx

    # One client, so dispatches reuse connections as a queue's would.
    with _client_lock:
        client = _clients.setdefault("client", httpx.Client(timeout=30.0))
    return client.request(method, url, headers=headers, content=body).status_code


class Served:
    """The stand-in on loopback with its dispatcher; ``stop()`` ends both."""

    def __init__(self, tasks: CloudTasks, port: int = 0) -> None:
        self.tasks = tasks
        self._server = make_server("127.0.0.1", port, tasks, server_class=_ThreadingServer, handler_class=_QuietHandler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="cloudtasks", daemon=True),
            threading.Thread(
                target=tasks.run_dispatcher, args=(self._stop,), name="cloudtasks-dispatcher", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)


def serve(tasks: CloudTasks, port: int = 0) -> Served:
    """Serve on 127.0.0.1 (``port`` 0 picks a free one) and dispatch in daemon threads."""
    return Served(tasks, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8123)
    port = parser.parse_args().port
    served = serve(CloudTasks(), port)
    print(f"Cloud Tasks stand-in on {served.endpoint} (set OPCANCEL_TASKS_ENDPOINT to this)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        served.stop()


if __name__ == "__main__":
    main()
