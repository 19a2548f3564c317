"""The values that flow through opcancel: requests, checks, outcomes, results."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from ._clock import format_time, parse_time
from ._names import OperationRef

#: The most of an Operation a result carries, as compact JSON: a result is stored (a Firestore document holds
#: at most 1 MiB) and published (a Pub/Sub message at most 10 MB), however large the API's answer was.
MAX_FINAL_OPERATION_BYTES = 64 * 1024
#: Each text kept from an Operation over the bound, when even the fields kept are over it.
_KEPT_TEXT_LENGTH = 1024


def bounded_operation(operation: dict[str, Any] | None) -> dict[str, Any] | None:
    """``operation`` whole when its JSON fits in ``MAX_FINAL_OPERATION_BYTES``; else what tells how it ended,
    ``name``, ``done``, ``error`` and ``metadata["@type"]``, marked ``"truncated": true`` (SPEC)."""
    if operation is None or _json_size(operation) <= MAX_FINAL_OPERATION_BYTES:
        return operation
    kept = {key: operation[key] for key in ("name", "done", "error") if key in operation}
    metadata = operation.get("metadata")
    if isinstance(metadata, dict) and "@type" in metadata:
        kept["metadata"] = {"@type": metadata["@type"]}
    if _json_size(kept) > MAX_FINAL_OPERATION_BYTES:
        # The kept fields are themselves huge (an error's details, a long message): texts cut, details left out.
        kept = {key: _cut(value) for key, value in kept.items()}
    return {**kept, "truncated": True}


def _json_size(value: Any) -> int:
    # As a result event encodes it: compact, ASCII.
    return len(json.dumps(value, separators=(",", ":")))


def _cut(value: Any) -> Any:
    if isinstance(value, str):
        return value[:_KEPT_TEXT_LENGTH]
    if isinstance(value, dict):
        return {key: _cut(item) for key, item in value.items() if key in ("code", "message", "@type")}
    return value if isinstance(value, (bool, int, float)) else None


class Outcome(enum.Enum):
    CANCELLED = "CANCELLED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    UNSUPPORTED = "UNSUPPORTED"
    NOT_FOUND = "NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"
    DRY_RUN = "DRY_RUN"
    HELD = "HELD"


class SourceKind(enum.Enum):
    PUBSUB = "pubsub"
    ALERT = "alert"
    HTTP = "http"
    CLI = "cli"


@dataclass(frozen=True)
class Source:
    """Where a request came from (Pub/Sub, an alert, HTTP, the CLI), carried into its checks and its result."""

    kind: SourceKind
    message_id: str | None = None
    incident_id: str | None = None
    #: The alerting policy's name, for alerts.
    policy_name: str | None = None
    #: For HTTP, the email claim of the caller's token (Cloud Run verified it); escaped and bounded.
    caller: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind.value}
        for name in TRIGGER_FIELDS:
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Source:
        """The stored form back, as ``to_json`` wrote it (a check's source is validated in ``_messages``)."""
        return cls(SourceKind(data["kind"]), **{name: data.get(name) for name in TRIGGER_FIELDS})


#: The fields of a ``Source`` besides its kind: what triggered a request, echoed in its result and its audit entry.
TRIGGER_FIELDS = ("message_id", "incident_id", "policy_name", "caller")


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
    #: For HTTP, the caller's email as its token claims it (escaped and bounded).
    caller: str | None = None


@dataclass(frozen=True)
class CancelRequest:
    """One validated request to cancel one operation, with the key that makes it idempotent."""

    ref: OperationRef
    idempotency_key: str
    source: Source
    reason: str | None = None
    deadline_s: float | None = None
    #: Looked at (``get``) and never cancelled: by the request's ``dry_run``, or by shadow mode.
    dry_run: bool = False


@dataclass(frozen=True)
class Rejection:
    """A request that named something but broke a rule; it earns a REJECTED result."""

    offending: str
    error: str
    #: Its own key, in the store's ``rejected/`` namespace.
    idempotency_key: str
    source: Source
    #: None where the text named no Security Command Center name and no known service, and the request
    #: stated none: Security Command Center's defaults say nothing about such a name.
    location: str | None
    api_version: str | None
    #: The named service (``aiplatform.googleapis.com``), when the name got far enough to say.
    service: str | None = None
    dry_run: bool = False
    #: The key its result reports: the one the sender gave, or the default the operation's identity gives.
    reported_key: str | None = None


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
    #: None only on a REJECTED result whose rejection had none (see ``Rejection``).
    location: str | None
    api_version: str | None
    #: None, with ``finished_at``, only in the CLI's report of a cancel whose operation still runs.
    outcome: Outcome | None
    #: As the sender gave it, or the default derived from the operation; never the store's own form (SPEC).
    #: None for a rejected request that carried no key and named no operation.
    idempotency_key: str | None
    requested_at: float
    finished_at: float | None
    checks: int
    final_operation: dict[str, Any] | None
    error: str | None
    source: Source
    #: ``securitycenter.googleapis.com``, ``aiplatform.googleapis.com``; None for a name that named no known service.
    service: str | None = None
    dry_run: bool = False

    def __post_init__(self) -> None:
        # Bounded as it is made, so no way of storing, publishing or printing a result meets a huge Operation.
        object.__setattr__(self, "final_operation", bounded_operation(self.final_operation))

    def to_json(self) -> dict[str, Any]:
        """The one schema of a result: what the store keeps, the results topic carries and the CLI prints."""
        return {
            "operation": self.operation,
            "location": self.location,
            "api_version": self.api_version,
            "service": self.service,
            "outcome": self.outcome.value if self.outcome is not None else None,
            "idempotency_key": self.idempotency_key,
            "dry_run": self.dry_run,
            "requested_at": format_time(self.requested_at),
            "finished_at": format_time(self.finished_at) if self.finished_at is not None else None,
            "checks": self.checks,
            "final_operation": self.final_operation,
            "error": self.error,
            "source": self.source.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        """A stored result back; ``to_json`` of it gives the same JSON, so a republish is identical."""
        return cls(
            operation=data["operation"],
            location=data["location"],
            api_version=data["api_version"],
            outcome=Outcome(data["outcome"]),
            idempotency_key=data["idempotency_key"],
            requested_at=parse_time(data["requested_at"]),
            finished_at=parse_time(data["finished_at"]),
            checks=data["checks"],
            final_operation=data["final_operation"],
            error=data["error"],
            source=Source.from_json(data["source"]),
            service=data.get("service"),
            dry_run=data.get("dry_run", False),
        )

    @classmethod
    def of_rejection(cls, rejection: Rejection, *, requested_at: float, finished_at: float) -> Result:
        """A rejected request's result: it names what was sent, since no operation was acted on."""
        return cls(
            operation=rejection.offending,
            location=rejection.location,
            api_version=rejection.api_version,
            outcome=Outcome.REJECTED,
            idempotency_key=rejection.reported_key,
            requested_at=requested_at,
            finished_at=finished_at,
            checks=0,
            final_operation=None,
            error=rejection.error,
            source=rejection.source,
            service=rejection.service,
            dry_run=rejection.dry_run,
        )

    @property
    def succeeded(self) -> bool:
        """The operation stopped, by the cancel or by finishing first: worth a notice, not a warning."""
        return self.outcome in (Outcome.CANCELLED, Outcome.COMPLETED)
