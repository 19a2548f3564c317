"""The idempotency store's claim rules, written once over a backend's conditional primitives.

Every write is conditional on the record's ``version`` (compare-and-swap), so
the only way to hold a key is to win a conditional write: creating an absent
record, or replacing one whose lease has run out. Each takeover raises the
``fence``; a worker whose write finds another version has been fenced off and
gets ``StaleFence``. Each claim carries a random ``claim_token``, so a record
read back after a failed write is this claim's own only if it really is: two
workers claiming a key in the same clock tick never write equal records.
Backends implement the primitives (load, create if absent, replace or delete
if the version matches) and one query (the records of running check chains);
the rules live here.

A check counts only where the record agrees: the record keeps the body of the
one check its chain is waiting for (``check``), and a check message that is not
exactly that body is stale, whatever its attempt number says.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import KeyBusy, StaleFence
from .failures import store_call, store_failure
from .guard import GuardRecords
from .record import Record, State


class ClaimStatus(enum.Enum):
    #: This worker now holds the key (new, resumed after a dead holder, or the live check).
    ACQUIRED = "acquired"
    #: The key's work is done; ``record.result`` holds the result.
    FINISHED = "finished"
    #: The key is bound to a different operation.
    MISMATCH = "mismatch"
    #: A check chain is running; a duplicate request has nothing to add.
    CHAIN_RUNNING = "chain_running"
    #: A check that is not the one the record's chain waits for: superseded, or never scheduled by it.
    STALE_CHECK = "stale_check"
    #: A check for a key with no record: forged, or from before the record expired.
    UNKNOWN_KEY = "unknown_key"


@dataclass(frozen=True)
class Claim:
    """The answer to a claim: the key's status and, when there is one, its record."""

    status: ClaimStatus
    record: Record | None
    #: True when this claim took the key over from an earlier holder.
    resumed: bool = False


class IdempotencyStore(GuardRecords):
    """Claims, and the record's transitions as fenced writes, over a backend's conditional primitives; and
    the guard's state (``GuardRecords``) beside them."""

    #: Attempts at a claim lost to a concurrent write before giving up as busy.
    _CLAIM_ROUNDS = 5
    #: Attempts at one write whose store call failed or went unanswered.
    _WRITE_ATTEMPTS = 3
    #: How often, at most, a process deletes the records that expired.
    _SWEEP_INTERVAL_S = 3600.0

    def __init__(self, *, lease_s: float, ttl_s: float) -> None:
        self._lease_s = lease_s
        self._ttl_s = ttl_s
        self._next_sweep_at = -math.inf

    @property
    def lease_s(self) -> float:
        return self._lease_s

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    # Claims

    def claim_request(self, key: str, payload_hash: str, *, now: float) -> Claim:
        """Claim ``key`` for a cancel request; raises ``KeyBusy`` while a live worker holds it."""
        self._sweep(now)
        fresh = Record.claimed(key, payload_hash, now=now, lease_s=self._lease_s, ttl_s=self._ttl_s)
        # Create first: most requests name a new key, and a failed create costs what the read would.
        for _ in range(self._CLAIM_ROUNDS):
            if self._written(functools.partial(self._create, fresh), fresh):
                return Claim(ClaimStatus.ACQUIRED, fresh)
            current = self._read(key, now)
            if current is None:
                continue
            settled = self._settled(current, payload_hash, now)
            if settled is not None:
                return settled
            if current.state is State.CHECKING:
                return Claim(ClaimStatus.CHAIN_RUNNING, current)
            taken = self._write(current, current.taken_over(now=now, lease_s=self._lease_s), now=now)
            if taken is not None:
                return Claim(ClaimStatus.ACQUIRED, taken, resumed=True)
        raise KeyBusy(f"lost {self._CLAIM_ROUNDS} claim races for the key")

    def claim_check(self, key: str, payload_hash: str, check: dict[str, Any], *, now: float) -> Claim:
        """Claim ``key`` to run ``check`` (a check message's body); only the check the record waits for
        is acquired, so a chain never forks and no other message can end, stall or rewrite it."""
        for _ in range(self._CLAIM_ROUNDS):
            current = self._read(key, now)
            if current is None:
                return Claim(ClaimStatus.UNKNOWN_KEY, None)
            settled = self._settled(current, payload_hash, now)
            if settled is not None:
                return settled
            if current.check != check or current.state not in (State.CHECKING, State.RESULT_READY):
                return Claim(ClaimStatus.STALE_CHECK, current)
            taken = self._write(current, current.taken_over(now=now, lease_s=self._lease_s), now=now)
            if taken is not None:
                return Claim(ClaimStatus.ACQUIRED, taken)
        raise KeyBusy(f"lost {self._CLAIM_ROUNDS} claim races for the key")

    def chains(self, now: float) -> Iterator[Record]:
        """Every unexpired record of a running check chain (state ``checking``), for the ``resume`` command."""
        for record in store_call(lambda: list(self._checking())):
            if record.state is State.CHECKING and record.expire_at > now:
                yield record

    # Transitions of a held record (see ``Record``): each is written only if ``held`` is still current.

    def cancel_sent(self, held: Record, *, now: float, deadline_at: float) -> Record:
        return self._advance(held, held.cancel_sent(now=now, deadline_at=deadline_at), now=now)

    def check_scheduled(
        self, held: Record, *, now: float, attempt: int, check: dict[str, Any], due_at: float, checks: int
    ) -> Record:
        return self._advance(
            held, held.check_scheduled(attempt=attempt, check=check, due_at=due_at, checks=checks), now=now
        )

    def scheduling_failed(self, held: Record, *, now: float, back_to: Record, not_before: float) -> Record:
        return self._advance(held, held.scheduling_failed(back_to=back_to, not_before=not_before), now=now)

    def deadline_set(self, held: Record, *, now: float, deadline_at: float) -> Record:
        return self._advance(held, held.deadline_set(deadline_at=deadline_at), now=now)

    def result_ready(self, held: Record, *, now: float, result: dict[str, Any], checks: int) -> Record:
        return self._advance(held, held.result_ready(result=result, checks=checks), now=now)

    def finished(self, held: Record, *, now: float) -> Record:
        return self._advance(held, held.finished(), now=now)

    def released(self, held: Record, *, now: float, not_before: float = 0.0) -> Record:
        return self._advance(held, held.released(not_before=not_before), now=now)

    def forgotten(self, held: Record) -> None:
        """Delete ``held`` if it is still the current version, so its key is free as if never claimed;
        ``StaleFence`` if another worker wrote since."""
        if not store_call(self._delete_if_version, held.key, held.version):
            raise StaleFence(f"fence {held.fence} was taken over")

    # The rules

    def _advance(self, held: Record, changed: Record, *, now: float) -> Record:
        """Write ``changed`` if ``held`` is still the current version; else ``StaleFence``."""
        written = self._write(held, changed, now=now)
        if written is None:
            raise StaleFence(f"fence {held.fence} was taken over")
        return written

    def _write(self, held: Record, changed: Record, *, now: float) -> Record | None:
        """``changed`` as the next version of ``held``, if no other write came between; None if one did."""
        record = dataclasses.replace(changed, version=held.version + 1, expire_at=now + self._ttl_s)
        return record if self._written(functools.partial(self._replace, record, held.version), record) else None

    def _settled(self, current: Record, payload_hash: str, now: float) -> Claim | None:
        if current.payload_hash != payload_hash:
            return Claim(ClaimStatus.MISMATCH, current)
        if current.state is State.FINISHED:
            return Claim(ClaimStatus.FINISHED, current)
        if current.lease_until > now:
            raise KeyBusy("another worker holds the key", retry_after=current.lease_until - now)
        if current.not_before > now:
            raise KeyBusy("the API asked to wait before the next call", retry_after=current.not_before - now)
        return None

    def _sweep(self, now: float) -> None:
        """Delete the expired records, at most once an interval per process (the first claim included, so
        a short CLI run sweeps too): a claim deletes its own key's expired record, but keys never sent
        again would otherwise stay for ever in a database with no TTL of its own."""
        if now < self._next_sweep_at:
            return
        self._next_sweep_at = now + self._SWEEP_INTERVAL_S
        store_call(self._delete_expired, now)

    def _read(self, key: str, now: float) -> Record | None:
        record = store_call(self._load, key)
        # TTL deletion lags, so an expired record is treated as absent here, not only by the backend.
        if record is not None and record.expire_at <= now:
            if store_call(self._delete_if_version, key, record.version):
                return None
            return store_call(self._load, key)
        return record

    def _written(self, write: Callable[[], bool], intended: Record) -> bool:
        """Run a conditional write, retrying a failed or unanswered attempt a few times at once.

        A retry after an attempt whose answer was lost finds its precondition gone, because
        the attempt landed: a refusal after a failure is checked against what was meant to be
        written, so a lost answer costs neither the write nor a second cancel after it.
        """
        failure: Exception | None = None
        for _ in range(self._WRITE_ATTEMPTS):
            try:
                if write():
                    return True
            except Exception as problem:
                failure = problem
                continue
            return failure is not None and store_call(self._load, intended.key) == intended
        raise store_failure(failure) from failure

    # The backend's primitives

    @abc.abstractmethod
    def _load(self, key: str) -> Record | None: ...

    @abc.abstractmethod
    def _create(self, record: Record) -> bool:
        """Write ``record`` only if its key is absent; True if written."""

    @abc.abstractmethod
    def _replace(self, record: Record, expected_version: int) -> bool:
        """Overwrite only if the stored version is ``expected_version``; True if written."""

    @abc.abstractmethod
    def _delete_if_version(self, key: str, expected_version: int) -> bool:
        """Delete only if the stored version is ``expected_version``; True if deleted."""

    @abc.abstractmethod
    def _checking(self) -> Iterator[Record]:
        """Every stored record in state ``checking`` (expired ones included)."""

    def _delete_expired(self, now: float) -> int:
        """Delete every record whose ``expire_at`` is at or before ``now``; how many were. Nothing here,
        for a backend whose database deletes them itself (Firestore, by its TTL policy on ``expire_at``)."""
        return 0
