"""The idempotency store port, its claim rules, and the memory and SQLite backends.

A record moves through explicit states::

    CLAIMED ──► CANCEL_SENT ──► CHECKING(n) ──► RESULT_READY ──► FINISHED
        └───────────┴───────────────┴──────────────►┘

Every write is conditional on the record's ``version`` (compare-and-swap), so
the only way to hold a key is to win a conditional write: creating an absent
record, or replacing one whose lease has run out. Each takeover raises the
``fence``; a worker whose write finds another version has been fenced off and
gets ``StaleFence``. Each claim carries a random ``claim_token``, so a record
read back after a failed write is this claim's own only if it really is: two
workers claiming a key in the same clock tick never write equal records.
Backends implement four primitives (load, create if absent, replace or delete
if the version matches) and one query (the records of running check chains);
the rules live here, once.

A check counts only where the record agrees: the record keeps the body of the
one check its chain is waiting for (``check``), and a check message that is not
exactly that body is stale, whatever its attempt number says.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import functools
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ._names import escape_text
from .errors import KeyBusy, StaleFence, StoreUnavailable


class State(enum.Enum):
    CLAIMED = "claimed"
    CANCEL_SENT = "cancel_sent"
    CHECKING = "checking"
    RESULT_READY = "result_ready"
    FINISHED = "finished"


@dataclass(frozen=True)
class Record:
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

    def to_json(self) -> dict[str, Any]:
        # Shallow, for callers that serialise it at once: dataclasses.asdict deep-copies the result,
        # which took a fifth of a request's CPU under load (cProfile of the warm benchmark's path).
        data = dict(self.__dict__)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Record":
        return cls(**{**data, "state": State(data["state"])})


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
    status: ClaimStatus
    record: Record | None
    #: True when this claim took the key over from an earlier holder.
    resumed: bool = False


class IdempotencyStore(abc.ABC):
    """Claims and fenced updates over a backend's three conditional primitives."""

    #: Attempts at a claim lost to a concurrent write before giving up as busy.
    _CLAIM_ROUNDS = 5
    #: Attempts at one write whose store call failed or went unanswered.
    _WRITE_ATTEMPTS = 3

    def __init__(self, *, lease_s: float, ttl_s: float) -> None:
        self._lease_s = lease_s
        self._ttl_s = ttl_s

    @property
    def lease_s(self) -> float:
        return self._lease_s

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    def claim_request(self, key: str, payload_hash: str, *, now: float) -> Claim:
        """Claim ``key`` for a cancel request; raises ``KeyBusy`` while a live worker holds it."""
        fresh = Record(
            key=key,
            payload_hash=payload_hash,
            state=State.CLAIMED,
            fence=1,
            lease_until=now + self._lease_s,
            requested_at=now,
            expire_at=now + self._ttl_s,
            claim_token=_new_token(),
        )
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
            taken = self._take(current, now)
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
            taken = self._take(current, now)
            if taken is not None:
                return Claim(ClaimStatus.ACQUIRED, taken)
        raise KeyBusy(f"lost {self._CLAIM_ROUNDS} claim races for the key")

    def chains(self, now: float) -> Iterator[Record]:
        """Every unexpired record of a running check chain (state ``checking``), for the ``resume`` command."""
        for record in self._guard(lambda: list(self._checking())):
            if record.state is State.CHECKING and record.expire_at > now:
                yield record

    def update(self, held: Record, *, now: float, **changes: Any) -> Record:
        """Write ``changes`` if ``held`` is still the current version; else ``StaleFence``."""
        record = dataclasses.replace(held, **changes, version=held.version + 1, expire_at=now + self._ttl_s)
        if not self._written(functools.partial(self._replace, record, held.version), record):
            raise StaleFence(f"fence {held.fence} was taken over")
        return record

    def release(self, held: Record, *, now: float, not_before: float = 0.0) -> Record:
        """Give the lease back so a redelivery can go on at once (or at ``not_before``)."""
        return self.update(held, now=now, lease_until=0.0, not_before=not_before)

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

    def _take(self, current: Record, now: float, **changes: Any) -> Record | None:
        record = dataclasses.replace(
            current,
            **changes,
            fence=current.fence + 1,
            lease_until=now + self._lease_s,
            version=current.version + 1,
            expire_at=now + self._ttl_s,
            claim_token=_new_token(),
        )
        return record if self._written(functools.partial(self._replace, record, current.version), record) else None

    def _read(self, key: str, now: float) -> Record | None:
        record = self._guard(self._load, key)
        # TTL deletion lags, so an expired record is treated as absent here, not only by the backend.
        if record is not None and record.expire_at <= now:
            if self._guard(self._delete_if_version, key, record.version):
                return None
            return self._guard(self._load, key)
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
            return failure is not None and self._guard(self._load, intended.key) == intended
        raise _store_failure(failure) from failure

    @staticmethod
    def _guard(operation: Any, *args: Any) -> Any:
        try:
            return operation(*args)
        except (StaleFence, KeyBusy):
            raise
        except Exception as problem:
            raise _store_failure(problem) from problem

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


def _new_token() -> str:
    return secrets.token_hex(16)


def _store_failure(problem: Exception | None) -> StoreUnavailable:
    """What failed, in words that are safe to log and answer with.

    A backend's own ``StoreUnavailable`` says what it wants said (a status, a summary); any other
    exception is named by its type alone, because its text can hold what the store call carried
    (an HTTP client's refusal quotes the header value it refused, the bearer token included).
    """
    if isinstance(problem, StoreUnavailable):
        return StoreUnavailable(f"idempotency store failed: {problem}")
    return StoreUnavailable(f"idempotency store failed: {type(problem).__name__}")


class MemoryStore(IdempotencyStore):
    """Process-local; for tests and single-process runs."""

    def __init__(self, *, lease_s: float, ttl_s: float) -> None:
        super().__init__(lease_s=lease_s, ttl_s=ttl_s)
        self._records: dict[str, Record] = {}
        self._lock = threading.Lock()

    def _load(self, key: str) -> Record | None:
        with self._lock:
            return self._records.get(key)

    def _create(self, record: Record) -> bool:
        with self._lock:
            if record.key in self._records:
                return False
            self._records[record.key] = record
            return True

    def _replace(self, record: Record, expected_version: int) -> bool:
        with self._lock:
            current = self._records.get(record.key)
            if current is None or current.version != expected_version:
                return False
            self._records[record.key] = record
            return True

    def _delete_if_version(self, key: str, expected_version: int) -> bool:
        with self._lock:
            current = self._records.get(key)
            if current is None or current.version != expected_version:
                return False
            del self._records[key]
            return True

    def _checking(self) -> Iterator[Record]:
        with self._lock:
            return iter([r for r in self._records.values() if r.state is State.CHECKING])


class SqliteStore(IdempotencyStore):
    """Embedded and durable: survives restarts, and is safe across processes on one machine.

    Each process opens its own connection on first use: gunicorn imports ``main.py``
    in its master and forks the workers, and SQLite forbids using a connection
    across ``fork()``.
    """

    def __init__(self, path: str, *, lease_s: float, ttl_s: float) -> None:
        super().__init__(lease_s=lease_s, ttl_s=ttl_s)
        self._path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # A path that cannot hold the database fails here, at start-up, rather than at the first
        # request; nothing stays open, so nothing is carried across a fork.
        self._connect().close()
        self._connection: sqlite3.Connection | None = None
        self._owner_pid = 0
        #: Connections a forked child inherited: never used, and never closed either, because closing
        #: them would drop this process's locks on the database (SQLite's "How To Corrupt", 2.2).
        self._inherited: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        # Autocommit: every statement below is one atomic conditional write by itself.
        connection = sqlite3.connect(self._path, timeout=10.0, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        # With WAL, NORMAL survives a crash of the process (every commit is in the log before it
        # returns) and skips an fsync per write, which serialised concurrent requests; only a
        # power loss can drop the last commits (README, "Idempotency and its guarantees").
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(
            "CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, version INTEGER NOT NULL, body TEXT NOT NULL)"
        )
        return connection

    def _execute(self, statement: str, parameters: tuple[Any, ...]) -> tuple[int, list[Any]]:
        """Rows changed, and rows read."""
        with self._lock:
            if self._owner_pid != os.getpid():
                if self._connection is not None:
                    self._inherited.append(self._connection)
                self._connection = self._connect()
                self._owner_pid = os.getpid()
            assert self._connection is not None
            try:
                cursor = self._connection.execute(statement, parameters)
                # Fetched under the lock: the connection is shared by the process's threads.
                return cursor.rowcount, cursor.fetchall()
            except sqlite3.Error as problem:
                # SQLite's own words ("database is locked") name the trouble and carry no request data.
                raise StoreUnavailable(f"SQLite: {escape_text(str(problem))}") from problem

    def _load(self, key: str) -> Record | None:
        _, rows = self._execute("SELECT body FROM records WHERE key = ?", (key,))
        return Record.from_json(json.loads(rows[0][0])) if rows else None

    def _create(self, record: Record) -> bool:
        changed, _ = self._execute(
            "INSERT OR IGNORE INTO records (key, version, body) VALUES (?, ?, ?)",
            (record.key, record.version, json.dumps(record.to_json())),
        )
        return changed == 1

    def _replace(self, record: Record, expected_version: int) -> bool:
        changed, _ = self._execute(
            "UPDATE records SET version = ?, body = ? WHERE key = ? AND version = ?",
            (record.version, json.dumps(record.to_json()), record.key, expected_version),
        )
        return changed == 1

    def _delete_if_version(self, key: str, expected_version: int) -> bool:
        changed, _ = self._execute("DELETE FROM records WHERE key = ? AND version = ?", (key, expected_version))
        return changed == 1

    def _checking(self) -> Iterator[Record]:
        _, rows = self._execute(
            "SELECT body FROM records WHERE json_extract(body, '$.state') = ?", (State.CHECKING.value,)
        )
        return (Record.from_json(json.loads(row[0])) for row in rows)
