"""One idempotency key's record, and the named transitions of its lifecycle.

A record moves through explicit states::

    CLAIMED ──► CANCEL_SENT ──► CHECKING(n) ──► RESULT_READY ──► FINISHED
        └───────────┴───────────────┴──────────────►┘

Each transition returns the next record and refuses a record in a state it does not start from, so
the pipeline can only write what its lifecycle allows. The version and expiry are the store's to set
when it writes (``base.IdempotencyStore``); a transition only says what the work changed.
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
from dataclasses import dataclass
from typing import Any


class State(enum.Enum):
    CLAIMED = "claimed"
    CANCEL_SENT = "cancel_sent"
    CHECKING = "checking"
    RESULT_READY = "result_ready"
    FINISHED = "finished"


class TransitionRefused(RuntimeError):
    """A transition asked of a record in a state it does not start from: a bug in the caller, not a race
    (a race shows as ``StaleFence`` when the write finds another version)."""


#: The states each transition starts from.
_CAN_TAKE_OVER = frozenset({State.CLAIMED, State.CANCEL_SENT, State.CHECKING, State.RESULT_READY})
_CAN_SEND_CANCEL = frozenset({State.CLAIMED})
_CAN_SCHEDULE_CHECK = frozenset({State.CANCEL_SENT, State.CHECKING})
_CAN_UNDO_SCHEDULING = frozenset({State.CHECKING})
_CAN_SET_DEADLINE = frozenset({State.CHECKING})
_CAN_MAKE_RESULT = frozenset({State.CLAIMED, State.CANCEL_SENT, State.CHECKING})
_CAN_FINISH = frozenset({State.RESULT_READY})
_CAN_RELEASE = frozenset({State.CLAIMED, State.CANCEL_SENT, State.CHECKING, State.RESULT_READY})


@dataclass(frozen=True)
class Record:
    """One key's stored state; its named transitions below are the only way it changes."""

    key: str
    payload_hash: str
    state: State
    fence: int
    lease_until: float
    requested_at: float
    expire_at: float
    version: int = 1
    #: Number of the live check (0 until the first check is scheduled).
    attempt: int = 0
    #: ``get`` calls made so far, the immediate one included.
    checks: int = 0
    cancel_accepted_at: float | None = None
    deadline_at: float | None = None
    #: The API asked us to wait (429 RetryInfo): nothing calls it before this time.
    not_before: float = 0.0
    result: dict[str, Any] | None = None
    #: Random per claim: tells this claim's writes from another worker's, even in the same clock tick.
    claim_token: str = ""
    #: The body of the check the chain waits for (as published), and when it is due.
    check: dict[str, Any] | None = None
    due_at: float | None = None

    @classmethod
    def claimed(cls, key: str, payload_hash: str, *, now: float, lease_s: float, ttl_s: float) -> Record:
        """A new key's first record, held by this claim."""
        return cls(
            key=key,
            payload_hash=payload_hash,
            state=State.CLAIMED,
            fence=1,
            lease_until=now + lease_s,
            requested_at=now,
            expire_at=now + ttl_s,
            claim_token=_new_token(),
        )

    def taken_over(self, *, now: float, lease_s: float) -> Record:
        """Held by a new claim: a higher fence turns every write of the earlier holder away."""
        self._expect(_CAN_TAKE_OVER, "taken_over")
        return dataclasses.replace(self, fence=self.fence + 1, lease_until=now + lease_s, claim_token=_new_token())

    def cancel_sent(self, *, now: float, deadline_at: float) -> Record:
        """The API accepted the cancel (or said the operation was already done); checks run until ``deadline_at``."""
        self._expect(_CAN_SEND_CANCEL, "cancel_sent")
        return dataclasses.replace(self, state=State.CANCEL_SENT, cancel_accepted_at=now, deadline_at=deadline_at)

    def check_scheduled(self, *, attempt: int, check: dict[str, Any], due_at: float, checks: int) -> Record:
        """The chain now waits for ``check`` (its body as published) and nothing else; the lease goes back."""
        self._expect(_CAN_SCHEDULE_CHECK, "check_scheduled")
        return dataclasses.replace(
            self, state=State.CHECKING, attempt=attempt, check=check, due_at=due_at, checks=checks, lease_until=0.0
        )

    def scheduling_failed(self, *, back_to: Record, not_before: float) -> Record:
        """The scheduler refused the check just recorded: the chain waits for the check it waited for before."""
        self._expect(_CAN_UNDO_SCHEDULING, "scheduling_failed")
        back_to._expect(_CAN_SCHEDULE_CHECK, "scheduling_failed")
        return dataclasses.replace(
            self,
            state=back_to.state,
            attempt=back_to.attempt,
            check=back_to.check,
            due_at=back_to.due_at,
            lease_until=0.0,
            not_before=not_before,
        )

    def deadline_set(self, *, deadline_at: float) -> Record:
        """A record that never had a deadline takes the one its check carries."""
        self._expect(_CAN_SET_DEADLINE, "deadline_set")
        return dataclasses.replace(self, deadline_at=deadline_at)

    def result_ready(self, *, result: dict[str, Any], checks: int) -> Record:
        """The result is stored before it is published, so a republish after a crash is byte-identical."""
        self._expect(_CAN_MAKE_RESULT, "result_ready")
        return dataclasses.replace(self, state=State.RESULT_READY, result=result, checks=checks)

    def finished(self) -> Record:
        """The result is published; the key answers every later duplicate with it."""
        self._expect(_CAN_FINISH, "finished")
        return dataclasses.replace(self, state=State.FINISHED, lease_until=0.0)

    def released(self, *, not_before: float = 0.0) -> Record:
        """The lease goes back so a redelivery can go on at once (or at ``not_before``)."""
        self._expect(_CAN_RELEASE, "released")
        return dataclasses.replace(self, lease_until=0.0, not_before=not_before)

    def _expect(self, states: frozenset[State], transition: str) -> None:
        if self.state not in states:
            raise TransitionRefused(f"{transition} cannot start from {self.state.value}")

    def to_json(self) -> dict[str, Any]:
        # Shallow, for callers that serialise it at once: dataclasses.asdict deep-copies the result,
        # which is a large share of a request's CPU under load.
        data = dict(self.__dict__)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        return cls(**{**data, "state": State(data["state"])})


def _new_token() -> str:
    return secrets.token_hex(16)
