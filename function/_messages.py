"""Each topic's codec, encoder beside decoder: the checks topic's check messages and the results topic's
result events (with their deterministic event ids). Pure: no I/O."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from ._clock import format_time, parse_time
from ._json import JsonUnreadable, read_json
from ._model import TRIGGER_FIELDS, CheckRequest, InboundMessage, Result, Source, SourceKind
from ._names import (
    MAX_ECHO_LENGTH,
    REGISTRY,
    SERVICE,
    OperationRef,
    ServiceRegistry,
    parse_name,
    validate_location,
    validate_version,
)
from ._parsing import MAX_BODY_BYTES, validate_stored_key
from .errors import InvalidRequest

RESULT_EVENT_TYPE = "dev.opcancel.operation.result.v1"
CHECK_KIND_ATTRIBUTE = "opcancel_kind"
CHECK_KIND = "check"
#: Cloud Logging's trace resource name; the id is 32 lowercase hex digits (W3C trace context).
TRACE_NAME = re.compile(r"projects/[a-z0-9.:-]{1,100}/traces/[0-9a-f]{32}")

_CHECK_FIELDS = frozenset(
    {
        "operation",
        "location",
        "api_version",
        "idempotency_key",
        "attempt",
        "due_at",
        "deadline_at",
        "requested_at",
        "source",
    }
)
#: Present in check messages of services other than Security Command Center, whose checks stay as they were.
_CHECK_SERVICE_FIELD = "service"


# The results topic


def event_id(idempotency_key: str, operation: str, outcome: str, *, dry_run: bool = False) -> str:
    """Deterministic per key, operation and outcome (and dry run): a republished result is dropped by
    consumers, and no other result (a REJECTED one for the same operation, or a dry run's NOT_FOUND beside
    the real request's) ever shares its id."""
    identity = json.dumps([idempotency_key, operation, outcome, *(["dry run"] if dry_run else [])], ensure_ascii=True)
    return hashlib.sha256(identity.encode("ascii")).hexdigest()[:32]


def result_message(result: Result, *, key: str, project: str | None) -> tuple[bytes, dict[str, str]]:
    """A result as a binary-mode CloudEvent over Pub/Sub; its data is the result's JSON form. Its id comes
    from ``key``, the key the result is stored under, as it always did: the result itself reports the
    key as the sender gave it, which two stored keys can share (a rejection and a request)."""
    assert result.outcome is not None and result.finished_at is not None, "only a finished result is published"
    attributes = {
        "ce-specversion": "1.0",
        "ce-id": event_id(key, result.operation, result.outcome.value, dry_run=result.dry_run),
        "ce-source": f"//opcancel/projects/{project or '-'}",
        "ce-type": RESULT_EVENT_TYPE,
        "ce-time": format_time(result.finished_at),
        "ce-subject": result.operation[:256],
        "content-type": "application/json",
        "outcome": result.outcome.value,
        "operation": result.operation[:256],
    }
    # ASCII JSON: echoed fields are escaped already, and an Operation's own text (``final_operation``)
    # may hold a lone surrogate that no UTF-8 encoder would take.
    data = json.dumps(result.to_json(), separators=(",", ":")).encode("ascii")
    return data, attributes


# The checks topic


def check_body(check: CheckRequest) -> dict[str, Any]:
    """A check as its message carries it, and as the record keeps it to recognise it."""
    body: dict[str, Any] = {
        "operation": check.ref.name,
        "location": check.ref.location,
        "api_version": check.ref.api_version,
        "idempotency_key": check.idempotency_key,
        "attempt": check.attempt,
        "due_at": format_time(check.due_at),
        "deadline_at": format_time(check.deadline_at),
        "requested_at": format_time(check.requested_at),
        "source": check.source.to_json(),
    }
    if check.trace is not None:
        body["trace"] = check.trace
    # Security Command Center checks keep their shape, so a check in flight across an upgrade still parses.
    if not check.ref.service.is_scc:
        body[_CHECK_SERVICE_FIELD] = check.ref.service_name
    return body


def check_message(check: CheckRequest) -> tuple[bytes, dict[str, str]]:
    # The attributes are for people and subscription filters; a check is recognised by its topic alone.
    body = check_body(check)
    attributes = {CHECK_KIND_ATTRIBUTE: CHECK_KIND, "operation": check.ref.name, "attempt": str(check.attempt)}
    return json.dumps(body, separators=(",", ":")).encode("utf-8"), attributes


def parse_check(message: InboundMessage, services: ServiceRegistry = REGISTRY) -> CheckRequest:
    """Parse a follow-up check, which opcancel itself wrote; anything off is ``InvalidRequest``."""
    return check_from_body(read_check_body(message), services)


def read_check_body(message: InboundMessage) -> Any:
    """A check message's JSON body as it arrived, read once, with the one size limit and JSON reader."""
    if len(message.data) > MAX_BODY_BYTES:
        raise InvalidRequest(f"body is {len(message.data)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        return read_json(message.data)
    except JsonUnreadable as problem:
        raise InvalidRequest(f"check message is {problem}") from None


def check_from_body(body: Any, services: ServiceRegistry = REGISTRY) -> CheckRequest:
    """A check from its JSON body: as a message carried it, or as the record kept it (``check_body``)."""
    if not isinstance(body, dict) or set(body) - {"trace", _CHECK_SERVICE_FIELD} != _CHECK_FIELDS:
        raise InvalidRequest("check message does not have exactly the check fields")
    trace = body.get("trace")
    if trace is not None and (not isinstance(trace, str) or not TRACE_NAME.fullmatch(trace)):
        raise InvalidRequest("check trace must be projects/PROJECT/traces/TRACE_ID")
    ref = _check_ref(body, services)
    attempt = body["attempt"]
    if not isinstance(attempt, int) or isinstance(attempt, bool) or not 1 <= attempt <= 100_000:
        raise InvalidRequest("check attempt must be a positive integer")
    try:
        due_at, deadline_at, requested_at = (parse_time(body[k]) for k in ("due_at", "deadline_at", "requested_at"))
    except (ValueError, TypeError):
        raise InvalidRequest("check times must be RFC 3339 UTC timestamps") from None
    return CheckRequest(
        ref=ref,
        idempotency_key=validate_stored_key(body["idempotency_key"]),
        attempt=attempt,
        due_at=due_at,
        deadline_at=deadline_at,
        requested_at=requested_at,
        source=_check_source(body["source"]),
        trace=trace,
    )


def _check_ref(body: dict[str, Any], services: ServiceRegistry) -> OperationRef:
    """A check's operation: a Security Command Center check names no service, as before services were added."""
    service_name, operation = body.get(_CHECK_SERVICE_FIELD, SERVICE), body["operation"]
    if not isinstance(operation, str):
        raise InvalidRequest("check operation must be a string")
    if not isinstance(service_name, str) or operation.startswith("/"):
        raise InvalidRequest("check messages carry relative names and a service name")
    if service_name == SERVICE:
        name = parse_name(operation, services)
        if name.location is not None:
            raise InvalidRequest("check messages carry relative names")
        return OperationRef(name.name, validate_location(body["location"]), validate_version(body["api_version"]))
    name = parse_name(f"//{service_name}/{operation}", services)
    if not isinstance(body["location"], str) or not isinstance(body["api_version"], str):
        raise InvalidRequest("check location and api_version must be strings")
    return OperationRef(name.name, body["location"], body["api_version"], name.service)


def _check_source(value: Any) -> Source:
    if not isinstance(value, dict) or "kind" not in value or not set(value) <= {"kind", *TRIGGER_FIELDS}:
        raise InvalidRequest("check source is malformed")
    try:
        kind = SourceKind(value["kind"])
    except ValueError:
        raise InvalidRequest("check source kind is unknown") from None
    extras = {}
    for name in TRIGGER_FIELDS:
        if name in value:
            # Escaped and bounded when the request arrived: anything else was not written by opcancel.
            if not isinstance(value[name], str) or len(value[name]) > MAX_ECHO_LENGTH or not value[name].isprintable():
                raise InvalidRequest(f"check source {name} is malformed")
            extras[name] = value[name]
    return Source(kind, **extras)
