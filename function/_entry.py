"""The entry points' logic: unwrap what arrived, hand it to the service, decide ack or retry.

This is the only place that decides. For events, returning acknowledges and
raising ``RedeliveryRequested`` (an HTTP 503 to the push endpoint) makes Pub/Sub
redeliver; it is raised only when an item hit transient trouble. For HTTP,
transient trouble answers 503 with ``Retry-After``; everything else answers 202
with each item's fate (or why nothing in it could be acted on), or 400/405/413/415
when the body cannot be read at all.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from werkzeug.exceptions import RequestEntityTooLarge, ServiceUnavailable
from werkzeug.wrappers import Response

from ._app import build_service
from ._json import JsonUnreadable, read_json
from ._log import Logger, traced
from ._model import InboundMessage, SourceKind
from ._names import escape_text
from ._requests import MAX_BODY_BYTES
from ._service import ItemStatus, Opcancel, Report
from ._settings import Settings
from .errors import TransientError

PUBSUB_MESSAGE_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
# Google's own header, then W3C trace context: Cloud Run passes one or both on every request it serves.
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-(?P<trace>[0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_CLOUD_TRACE_CONTEXT = re.compile(r"(?P<trace>[0-9a-fA-F]{32})(?:/[0-9]{0,20})?(?:;o=[0-9])?")
_JSON_TYPES = ("application/json", "application/cloudevents+json")


class RedeliveryRequested(ServiceUnavailable):
    """Raised from ``on_event`` so the push subscription redelivers; answered as 503 without a traceback."""


class UnusableEvent(Exception):
    """An event that carries no message opcancel can read."""


class Runtime:
    """What ``main.py`` holds: one service, built once per process and reused by every invocation."""

    def __init__(self, service: Opcancel, *, log: Logger | None = None, project: str | None = None) -> None:
        self._service = service
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
        return cls(build_service(settings, log=log), log=log, project=settings.project)

    def on_event(self, cloud_event: Any, headers: Mapping[str, str] | None = None) -> None:
        """Requests, and checks when the event's source is the checks topic. ``headers`` are the push
        request's, for its trace; the event's own ``traceparent`` is the fallback."""
        self._traced_event(cloud_event, headers, self._service.handle)

    def on_request(self, cloud_event: Any, headers: Mapping[str, str] | None = None) -> None:
        """Requests only, for a function deployed on the requests topic: nothing here is ever a check."""
        self._traced_event(cloud_event, headers, self._service.handle_request)

    def on_check(self, cloud_event: Any, headers: Mapping[str, str] | None = None) -> None:
        """Checks only, for a function deployed on the checks topic; an event from anywhere else is set aside."""
        self._traced_event(cloud_event, headers, self._service.handle_check)

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
                overdue = self._service.overdue_chains()
            except TransientError as trouble:
                self._log.warning(f"resume failed: {trouble}", event="retry_later", reason=trouble.reason)
                return _answer(503, {"error": str(trouble)}, {"Retry-After": "60"})
            reports = [] if dry_run else self._service.resume(overdue)
            found = [
                {
                    "operation": (record.check or {}).get("operation"),
                    "idempotency_key": record.key,
                    "attempt": record.attempt,
                }
                for record in overdue
            ]
            for row, report in zip(found, reports, strict=False):
                row["status"] = report.status.value
            failed = any(report.status is ItemStatus.RETRY for report in reports)
            return _answer(503 if failed else 200, {"dry_run": dry_run, "overdue": found})

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
            message = self._http_message(request, data)
        except UnusableEvent as problem:
            return _answer(400, {"error": str(problem)})
        except _UnsupportedMediaType as problem:
            return _answer(415, {"error": str(problem)})
        # Never a check, whatever the body or a CloudEvent in it says: checks come only from the checks topic.
        report = self._service.handle_request(message)
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

    def _http_message(self, request: Any, data: bytes) -> InboundMessage:
        if not data.strip():
            raise UnusableEvent("body is empty")
        media_type = (request.mimetype or "").lower()
        if "ce-specversion" in request.headers or media_type == "application/cloudevents+json":
            return message_from_cloud_event(_cloud_event(request.headers, media_type, data))
        if media_type in _JSON_TYPES:
            try:
                body = read_json(data)
            except JsonUnreadable as problem:
                raise UnusableEvent(f"body is {problem}") from None
            if isinstance(body, dict) and isinstance(body.get("message"), dict) and "subscription" in body:
                return _pubsub_message(body["message"])
            if isinstance(body, dict) and isinstance(body.get("context"), dict):
                return _legacy_message(body)
            return InboundMessage(data=data, kind=SourceKind.HTTP)
        if media_type in ("text/plain", ""):
            return InboundMessage(data=data, kind=SourceKind.HTTP)
        raise _UnsupportedMediaType(
            f"content type '{escape_text(media_type, 64)}' is not application/json, text/plain or a CloudEvent"
        )


class _UnsupportedMediaType(Exception):
    pass


def _cloud_event(headers: Any, media_type: str, data: bytes) -> Any:
    """A CloudEvent from an HTTP request, its JSON read by opcancel's own reader in either mode.

    Structured mode is read here and handed over as a dict; in binary mode the data stays bytes,
    so the cloudevents library parses no JSON of its own (its parser recurses without a bound).
    """
    from cloudevents.exceptions import GenericException
    from cloudevents.http import from_dict, from_http

    try:
        if media_type == "application/cloudevents+json":
            try:
                envelope = read_json(data)
            except JsonUnreadable as problem:
                raise UnusableEvent(f"structured CloudEvent is {problem}") from None
            if not isinstance(envelope, dict):
                raise UnusableEvent("structured CloudEvent is not a JSON object")
            return from_dict(envelope)
        return from_http(dict(headers), data, data_unmarshaller=lambda body: body)
    except GenericException as problem:
        raise UnusableEvent(f"malformed CloudEvent: {escape_text(str(problem))}") from None


def message_from_cloud_event(event: Any) -> InboundMessage:
    """A Pub/Sub messagePublished event unwraps to its message, noting the topic it came from (the event's
    source); any other event's data is the request."""
    data = event.data
    if event["type"] == PUBSUB_MESSAGE_PUBLISHED:
        if isinstance(data, (bytes, bytearray)):
            try:
                data = read_json(bytes(data))
            except JsonUnreadable as problem:
                raise UnusableEvent(f"messagePublished data is {problem}") from None
        if not isinstance(data, Mapping) or not isinstance(data.get("message"), Mapping):
            raise UnusableEvent("messagePublished event without a message")
        source = event.get("source")
        return dataclasses.replace(
            _pubsub_message(data["message"]), event_source=source if isinstance(source, str) else None
        )
    if isinstance(data, (bytes, bytearray)):
        payload = bytes(data)
    elif isinstance(data, str):
        # Kept as sent, surrogates and all: the parser refuses what is not UTF-8.
        payload = data.encode("utf-8", "surrogatepass")
    elif data is None:
        raise UnusableEvent(f"{escape_text(str(event['type']))} event has no data")
    else:
        payload = json.dumps(data).encode("utf-8")
    return InboundMessage(data=payload, message_id=_echoed_id(event["id"]), kind=SourceKind.HTTP)


def _pubsub_message(message: Mapping[str, Any]) -> InboundMessage:
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise UnusableEvent("Pub/Sub attributes must map strings to strings")
    encoded = message.get("data") or ""
    if not isinstance(encoded, str):
        raise UnusableEvent("Pub/Sub data must be a base64 string")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise UnusableEvent("Pub/Sub data is not valid base64") from None
    message_id = message.get("messageId") or message.get("message_id")
    return InboundMessage(
        data=data,
        attributes=dict(attributes),
        message_id=_echoed_id(message_id) if message_id is not None else None,
        kind=SourceKind.PUBSUB,
    )


def _echoed_id(value: Any) -> str:
    """A sender's message or event id, escaped and bounded once, here, before anything echoes it."""
    return escape_text(str(value))


def _legacy_message(body: Mapping[str, Any]) -> InboundMessage:
    """A legacy background event; both ``data`` and ``event`` have been seen holding the Pub/Sub message."""
    message = body.get("data", body.get("event"))
    if not isinstance(message, Mapping):
        raise UnusableEvent("background event without a Pub/Sub message")
    event_id = body["context"].get("eventId")
    return _pubsub_message({**message, "messageId": event_id} if isinstance(event_id, str) else message)


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
