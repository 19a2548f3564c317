"""The runtime behind the entry points: unwrap what arrived (``_envelopes``), hand it to the pipeline, and
decide acknowledge-or-retry.

This is the only place that decides. For events, returning acknowledges and
raising ``RedeliveryRequested`` (an HTTP 503 to the push endpoint) makes Pub/Sub
redeliver; it is raised only when an item hit transient trouble. For HTTP,
transient trouble answers 503 with ``Retry-After``; everything else answers 202
with each item's fate (or why nothing in it could be acted on), 400 when the body cannot be read at
all (an unsupported content type included), 405 for another method and 413 for a body over 1 MiB.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from werkzeug.exceptions import RequestEntityTooLarge, ServiceUnavailable
from werkzeug.wrappers import Response

from ._envelopes import UnusableEvent, message_from_cloud_event, message_from_http
from ._log import Logger, traced
from ._model import InboundMessage
from ._names import escape_text
from ._parsing import MAX_BODY_BYTES
from ._pipeline import Pipeline
from ._reports import ItemStatus, Report
from ._settings import Settings
from ._wiring import build_pipeline
from .errors import TransientError

# Google's own header, then W3C trace context: Cloud Run passes one or both on every request it serves.
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-(?P<trace>[0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_CLOUD_TRACE_CONTEXT = re.compile(r"(?P<trace>[0-9a-fA-F]{32})(?:/[0-9]{0,20})?(?:;o=[0-9])?")


class RedeliveryRequested(ServiceUnavailable):
    """Raised from ``on_event`` so the push subscription redelivers; answered as 503 without a traceback."""


class Runtime:
    """What ``main.py`` holds: one pipeline, built once per process and reused by every invocation."""

    def __init__(self, pipeline: Pipeline, *, log: Logger | None = None, project: str | None = None) -> None:
        self._pipeline = pipeline
        self._log = log or Logger()
        self._project = project

    @classmethod
    def from_environment(cls) -> "Runtime":
        """Read the environment, once; a bad value fails start-up here with the variable's name."""
        settings = Settings.from_env(os.environ)
        log = Logger()
        if settings.allowed_parents is None:
            log.warning(
                "OPCANCEL_ALLOWED_PARENTS is unset: the operations of any organization or project may be cancelled",
                event="allow_all_parents",
            )
        if settings.cancel_budget is None and settings.mode == "enforce":
            log.warning(
                "OPCANCEL_CANCEL_BUDGET is unset: nothing limits how many operations are cancelled",
                event="no_cancel_budget",
            )
        if settings.paused:
            log.warning(
                "paused by OPCANCEL_PAUSED=true: every new request is held, whatever `guard unpause` writes",
                event="guard_paused",
                paused_by="OPCANCEL_PAUSED",
            )
        return cls(build_pipeline(settings, log=log), log=log, project=settings.project)

    def on_event(self, cloud_event: Any, headers: Mapping[str, str] | None = None) -> None:
        """Requests, and checks when the event's source is the checks topic. ``headers`` are the push
        request's, for its trace; the event's own ``traceparent`` is the fallback."""
        self._traced_event(cloud_event, headers, self._pipeline.handle)

    def on_request(self, cloud_event: Any, headers: Mapping[str, str] | None = None) -> None:
        """Requests only, for a function deployed on the requests topic: nothing here is ever a check."""
        self._traced_event(cloud_event, headers, self._pipeline.handle_request)

    def on_check(self, cloud_event: Any, headers: Mapping[str, str] | None = None) -> None:
        """Checks only, for a function deployed on the checks topic; an event from anywhere else is set aside."""
        self._traced_event(cloud_event, headers, self._pipeline.handle_check)

    def _traced_event(
        self, cloud_event: Any, headers: Mapping[str, str] | None, handle: Callable[[InboundMessage], Report]
    ) -> None:
        with traced(self._trace(headers or {}, cloud_event.get("traceparent"))):
            self._event(cloud_event, handle)

    def _event(self, cloud_event: Any, handle: Callable[[InboundMessage], Report]) -> None:
        try:
            message = message_from_cloud_event(cloud_event)
        except UnusableEvent as problem:
            self._log.warning(f"event set aside: {problem}", event="event_unusable", reason=str(problem))
            return
        try:
            report = handle(message)
        except Exception as bug:
            # Not a known failure mode: let Pub/Sub redeliver (and, past the attempt limit,
            # dead-letter) rather than acknowledge work that may not be done.
            self._log.error(
                f"unexpected failure: {type(bug).__name__}: {escape_text(str(bug))}",
                event="unexpected_error",
                message_id=message.message_id,
            )
            raise
        if report.must_retry:
            raise RedeliveryRequested(description=_retry_summary(report))

    def on_http(self, request: Any) -> tuple[str, int, dict[str, str]] | Response:
        with traced(self._trace(request.headers)):
            return self._on_http(request)

    def on_resume(self, request: Any) -> tuple[str, int, dict[str, str]]:
        """``python -m function resume`` as an HTTP function, for Cloud Scheduler: ``POST`` resumes every
        overdue chain (``?dry_run=true`` only lists them); 200 with what was found, 503 when some chain
        could not be resumed (the next run tries again)."""
        with traced(self._trace(request.headers)):
            if request.method != "POST":
                return _answer(405, {"error": "only POST is accepted"}, {"Allow": "POST"})
            dry_run = request.args.get("dry_run", "").lower() in ("1", "true", "yes")
            try:
                overdue = self._pipeline.overdue_chains()
            except TransientError as trouble:
                self._log.warning(f"resume failed: {trouble}", event="retry_later", reason=trouble.reason)
                return _answer(503, {"error": str(trouble)}, {"Retry-After": "60"})
            report = Report() if dry_run else self._pipeline.resume(overdue)
            found = [
                {
                    "operation": (record.check or {}).get("operation"),
                    "idempotency_key": record.key,
                    "attempt": record.attempt,
                }
                for record in overdue
            ]
            for row, item in zip(found, report.items, strict=False):
                row["status"] = item.status.value
            return _answer(503 if report.must_retry else 200, {"dry_run": dry_run, "overdue": found})

    def _trace(self, headers: Mapping[str, str], traceparent: object = None) -> str | None:
        """Cloud Logging's trace name for this request, or None where there is no project or no usable header."""
        if self._project is None:
            return None
        for value, pattern in (
            (headers.get("X-Cloud-Trace-Context"), _CLOUD_TRACE_CONTEXT),
            (headers.get("traceparent"), _TRACEPARENT),
            (traceparent, _TRACEPARENT),
        ):
            match = pattern.fullmatch(value.strip()) if isinstance(value, str) else None
            if match and match["trace"].strip("0"):
                return f"projects/{self._project}/traces/{match['trace'].lower()}"
        return None

    def _on_http(self, request: Any) -> tuple[str, int, dict[str, str]] | Response:
        if request.method != "POST":
            return _answer(405, {"error": "only POST is accepted"}, {"Allow": "POST"})
        # One limit however the body is framed: werkzeug refuses a Content-Length over the maximum, and
        # stops reading a chunked body (which gunicorn de-chunks) at it; one byte more tells "over" apart.
        request.max_content_length = MAX_BODY_BYTES + 1
        try:
            data = request.get_data(cache=True)
        except RequestEntityTooLarge:
            data = None
        if data is None or len(data) > MAX_BODY_BYTES:
            return _too_large()
        try:
            message = message_from_http(request.headers, request.mimetype or "", data)
        except UnusableEvent as problem:
            return _answer(400, {"error": str(problem)})
        # Never a check, whatever the body or a CloudEvent in it says: checks come only from the checks topic.
        report = self._pipeline.handle_request(message)
        if report.ignored is not None:
            if report.unreadable:
                return _answer(400, {"error": report.ignored})
            # Readable but naming nothing to act on: per the SPEC, only an unreadable body is a 400.
            return _answer(202, {"accepted": [], "rejected": [], "ignored": report.ignored})
        body: dict[str, list[dict[str, object]]] = {"accepted": [], "rejected": []}
        for item in report.items:
            group = {ItemStatus.REJECTED: "rejected", ItemStatus.RETRY: "retry"}.get(item.status, "accepted")
            body.setdefault(group, []).append(item.to_json())
        if report.must_retry:
            delays = [item.retry_after for item in report.items if item.retry_after]
            retry_after = str(max(1, math.ceil(max(delays)))) if delays else "10"
            return _answer(503, body, {"Retry-After": retry_after})
        return _answer(202, body)


def _retry_summary(report: Report) -> str:
    retried = [item for item in report.items if item.status is ItemStatus.RETRY]
    return f"{len(retried)} of {len(report.items)} items hit transient trouble ({retried[0].detail})"


def _too_large() -> Response:
    """413, as a streamed response: functions-framework reads the whole body after any other answer
    ("to avoid connection errors"), which would buffer what the limit refused, or raise over it.
    The server discards the unread rest as it arrives."""
    body = json.dumps({"error": f"body is larger than {MAX_BODY_BYTES} bytes"})
    return Response(iter([body]), status=413, content_type="application/json")


def _answer(
    status: int, body: Mapping[str, object], headers: Mapping[str, str] | None = None
) -> tuple[str, int, dict[str, str]]:
    # ASCII: whatever an item carries, the answer encodes.
    return json.dumps(body), status, {"Content-Type": "application/json", **(headers or {})}
