"""What became of a message and of each of its items, and the one place transient trouble becomes "retry".

The pipeline and its collaborators never decide acknowledge-or-retry: each item says what happened, trouble
included (``or_retry_later``), and the runtime decides from the whole ``Report``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from ._log import Logger
from ._parsing import reported_key
from .errors import CheckNotDue, StaleFence, TransientError


class ItemStatus(enum.Enum):
    #: Cancel sent, or a check run; ``outcome`` is set once the result is out.
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    #: Already finished, or already being followed by a check chain.
    DUPLICATE = "duplicate"
    #: Nothing to do: a stale or unknown check.
    SKIPPED = "skipped"
    #: Transient trouble: the message must come again.
    RETRY = "retry"


@dataclass(frozen=True)
class ItemReport:
    """What became of one operation of a message, for the log, the CLI and on_http's answer."""

    operation: str
    status: ItemStatus
    #: As results report it (``reported_key``): the sender's own, or the default derived from the operation.
    idempotency_key: str | None = None
    outcome: str | None = None
    detail: str | None = None
    retry_after: float | None = None

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"operation": self.operation, "status": self.status.value}
        for name in ("idempotency_key", "outcome", "detail"):
            value = getattr(self, name)
            if value is not None:
                data["error" if name == "detail" and self.status is ItemStatus.REJECTED else name] = value
        return data


@dataclass(frozen=True)
class Report:
    """What became of a whole message; the runtime acknowledges or retries it by ``must_retry``."""

    items: tuple[ItemReport, ...] = ()
    #: Set when the message as a whole was set aside; see ``Parsed``.
    ignored: str | None = None
    unreadable: bool = False

    @property
    def must_retry(self) -> bool:
        return any(item.status is ItemStatus.RETRY for item in self.items)


def shown(key: str | None) -> str | None:
    """A stored key as an item report shows it: the way its result reports it."""
    return reported_key(key) if key is not None else None


def or_retry_later(log: Logger, operation: str | None, key: str | None, work: Callable[[], ItemReport]) -> ItemReport:
    """One item's ``work``, where transient trouble or a newer worker's takeover is a RETRY item, logged."""
    try:
        return work()
    except TransientError as trouble:
        # A deferred check is the delay working as designed, not trouble worth a warning.
        logged = log.info if isinstance(trouble, CheckNotDue) else log.warning
        logged(
            f"will retry: {trouble}",
            event="retry_later",
            reason=trouble.reason,
            operation=operation,
            idempotency_key=key,
            retry_after_s=trouble.retry_after,
        )
        # The caller sees only the kind of trouble; what failed, in detail, is in the log line above.
        return ItemReport(
            operation or "", ItemStatus.RETRY, shown(key), detail=trouble.reason, retry_after=trouble.retry_after
        )
    except StaleFence as fenced:
        log.warning(
            "a newer worker took this key over; leaving the work to it",
            event="fenced_off",
            reason=fenced.reason,
            operation=operation,
            idempotency_key=key,
        )
        return ItemReport(operation or "", ItemStatus.RETRY, shown(key), detail=fenced.reason)
