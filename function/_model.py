"""The values that flow through opcancel: requests, checks, outcomes, results."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ._names import OperationRef


class Outcome(enum.Enum):
    CANCELLED = "CANCELLED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    UNSUPPORTED = "UNSUPPORTED"
    NOT_FOUND = "NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"


class SourceKind(enum.Enum):
    PUBSUB = "pubsub"
    ALERT = "alert"
    HTTP = "http"
    CLI = "cli"


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    message_id: str | None = None
    incident_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind.value}
        if self.message_id is not None:
            data["message_id"] = self.message_id
        if self.incident_id is not None:
            data["incident_id"] = self.incident_id
        return data


@dataclass(frozen=True)
class InboundMessage:
    """A message as it arrived, before any parsing: Pub/Sub data and attributes, or an HTTP body."""

    data: bytes
    attributes: dict[str, str] = field(default_factory=dict)
    message_id: str | None = None
    kind: SourceKind = SourceKind.PUBSUB
    #: The CloudEvent ``source`` it came in (a Pub/Sub topic); None for HTTP bodies. Only the checks topic's
    #: source makes a message a check.
    event_source: str | None = None


@dataclass(frozen=True)
class CancelRequest:
    ref: OperationRef
    idempotency_key: str
    source: Source
    reason: str | None = None
    deadline_s: float | None = None


@dataclass(frozen=True)
class Rejection:
    """A request that named something but broke a rule; it earns a REJECTED result."""

    offending: str
    error: str
    idempotency_key: str
    source: Source
    location: str
    api_version: str
    #: The named service (``aiplatform.googleapis.com``), when the name got far enough to say.
    service: str | None = None


@dataclass(frozen=True)
class CheckRequest:
    """A self-contained follow-up check, as carried on the checks topic."""

    ref: OperationRef
    idempotency_key: str
    attempt: int
    due_at: float
    deadline_at: float
    requested_at: float
    source: Source
    #: The Cloud Logging trace of the request that scheduled it (``projects/P/traces/T``), when there was one.
    trace: str | None = None


@dataclass(frozen=True)
class Result:
    """The one result of a request, stored before it is published so a republish is identical."""

    operation: str
    location: str
    api_version: str
    outcome: Outcome
    idempotency_key: str
    requested_at: float
    finished_at: float
    checks: int
    final_operation: dict[str, Any] | None
    error: str | None
    source: Source
    #: ``securitycenter.googleapis.com``, ``aiplatform.googleapis.com``; None for a name that named no known service.
    service: str | None = None
