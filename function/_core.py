"""Pure decisions and message shapes: what an Operation means, when to check next, what to publish."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ._backoff import PollingPolicy
from ._clock import format_time
from ._gcp.operations import operation_error, outcome_of  # noqa: F401 (imported from here by the pipeline and the CLI)
from ._model import CheckRequest, Result, Source, SourceKind
from ._requests import CHECK_KIND, CHECK_KIND_ATTRIBUTE

RESULT_EVENT_TYPE = "dev.opcancel.operation.result.v1"


def next_due(policy: PollingPolicy, attempt: int, *, now: float, deadline_at: float) -> float:
    """When check ``attempt`` is due: exponential backoff, never past the deadline."""
    return min(now + policy.delay_before(attempt), deadline_at)


def payload_hash(identity: str) -> str:
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()


def event_id(idempotency_key: str, operation: str, outcome: str) -> str:
    """Deterministic per key, operation and outcome: a republished result is dropped by consumers, and
    no other result (a REJECTED one for the same operation, say) ever shares its id."""
    identity = json.dumps([idempotency_key, operation, outcome], ensure_ascii=True)
    return hashlib.sha256(identity.encode("ascii")).hexdigest()[:32]


def result_to_json(result: Result) -> dict[str, Any]:
    return {
        "operation": result.operation,
        "location": result.location,
        "api_version": result.api_version,
        "service": result.service,
        "outcome": result.outcome.value,
        "idempotency_key": result.idempotency_key,
        "requested_at": format_time(result.requested_at),
        "finished_at": format_time(result.finished_at),
        "checks": result.checks,
        "final_operation": result.final_operation,
        "error": result.error,
        "source": result.source.to_json(),
    }


def result_message(stored: dict[str, Any], *, project: str | None) -> tuple[bytes, dict[str, str]]:
    """A result as a binary-mode CloudEvent over Pub/Sub, from its stored JSON form."""
    attributes = {
        "ce-specversion": "1.0",
        "ce-id": event_id(stored["idempotency_key"], stored["operation"], stored["outcome"]),
        "ce-source": f"//opcancel/projects/{project or '-'}",
        "ce-type": RESULT_EVENT_TYPE,
        "ce-time": stored["finished_at"],
        "ce-subject": stored["operation"][:256],
        "content-type": "application/json",
        "outcome": stored["outcome"],
        "operation": stored["operation"][:256],
    }
    # ASCII JSON: echoed fields are escaped already, and an Operation's own text (``final_operation``)
    # may hold a lone surrogate that no UTF-8 encoder would take.
    data = json.dumps(stored, separators=(",", ":")).encode("ascii")
    return data, attributes


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
        body["service"] = check.ref.service_name
    return body


def check_message(check: CheckRequest) -> tuple[bytes, dict[str, str]]:
    # The attributes are for people and subscription filters; a check is recognised by its topic alone.
    body = check_body(check)
    attributes = {CHECK_KIND_ATTRIBUTE: CHECK_KIND, "operation": check.ref.name, "attempt": str(check.attempt)}
    return json.dumps(body, separators=(",", ":")).encode("utf-8"), attributes


def source_from_json(data: dict[str, Any]) -> Source:
    return Source(SourceKind(data["kind"]), data.get("message_id"), data.get("incident_id"))
