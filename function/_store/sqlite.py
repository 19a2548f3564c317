"""The SQLite backend: one table of JSON records, each conditional write one statement."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

from .._backoff import Backoff, TryAgain, retry_context
from .._clock import SystemClock
from .._names import escape_text
from ..errors import StoreUnavailable
from .base import IdempotencyStore
from .guard import Document
from .record import Record, State

_SWITCHING_TO_WAL = Backoff(first_s=0.02, max_s=0.5, attempts=30, budget_s=10.0)
#: Expired records deleted per statement: a first sweep of a large old file holds the write lock in
#: short turns, so other requests' writes go on between them.
_SWEEP_BATCH = 500
#: Expired records, found through when they were created: a record expires a TTL after its last write,
#: so never sooner than a TTL after its creation. ``created_at`` is a column of its own, written once by
#: the insert, so its index is not rewritten by every write, as an index on the body's expiry would be.
_DELETE_EXPIRED = (
    "DELETE FROM records WHERE key IN (SELECT key FROM records WHERE created_at <= ?"
    f" AND json_extract(body, '$.expire_at') <= ? LIMIT {_SWEEP_BATCH})"
)


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
        # WAL is a property of the file, so only its first opener switches to it. Processes opening a
        # new file together can find it locked mid-switch, which SQLite reports at once instead of
        # waiting out the busy timeout: that is tried again, briefly.
        try:
            for attempt in retry_context(_SWITCHING_TO_WAL, SystemClock()):
                with attempt:
                    try:
                        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                            connection.execute("PRAGMA journal_mode=WAL")
                    except sqlite3.OperationalError as problem:
                        raise TryAgain(str(problem)) from problem
        except TryAgain as given_up:
            connection.close()
            # SQLite's own error, as every caller of this method expects.
            raise given_up.__cause__ from None
        # With WAL, NORMAL survives a crash of the process (every commit is in the log before it
        # returns) and skips an fsync per write, which serialised concurrent requests; only a
        # power loss can drop the last commits (README, "Idempotency and its guarantees").
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(
            "CREATE TABLE IF NOT EXISTS records"
            " (key TEXT PRIMARY KEY, version INTEGER NOT NULL, body TEXT NOT NULL, created_at REAL)"
        )
        _add_creation_times(connection)
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
        return self._insert(record.key, record.version, record.to_json(), record.requested_at)

    def _replace(self, record: Record, expected_version: int) -> bool:
        return self._update(record.key, record.version, record.to_json(), expected_version)

    def _insert(self, key: str, version: int, body: dict[str, Any], created_at: float) -> bool:
        changed, _ = self._execute(
            "INSERT OR IGNORE INTO records (key, version, body, created_at) VALUES (?, ?, ?, ?)",
            (key, version, _encoded(body), created_at),
        )
        return changed == 1

    def _update(self, key: str, version: int, body: dict[str, Any], expected_version: int) -> bool:
        changed, _ = self._execute(
            "UPDATE records SET version = ?, body = ? WHERE key = ? AND version = ?",
            (version, _encoded(body), key, expected_version),
        )
        return changed == 1

    def _delete_if_version(self, key: str, expected_version: int) -> bool:
        changed, _ = self._execute("DELETE FROM records WHERE key = ? AND version = ?", (key, expected_version))
        return changed == 1

    def _delete_expired(self, now: float) -> int:
        deleted = 0
        while True:
            changed, _ = self._execute(_DELETE_EXPIRED, (now - self.ttl_s, now))
            deleted += changed
            if changed < _SWEEP_BATCH:
                return deleted

    def _checking(self) -> Iterator[Record]:
        return (Record.from_json(body) for body in self._of_state(State.CHECKING.value))

    # Guard documents share the table: a key, a version, and a body with the same state and expire_at.

    def _load_document(self, key: str) -> Document | None:
        _, rows = self._execute("SELECT body FROM records WHERE key = ?", (key,))
        return Document.from_json(json.loads(rows[0][0])) if rows else None

    def _create_document(self, document: Document) -> bool:
        return self._insert(document.key, document.version, document.to_json(), document.created_at)

    def _replace_document(self, document: Document, expected_version: int) -> bool:
        return self._update(document.key, document.version, document.to_json(), expected_version)

    def _delete_document(self, key: str, expected_version: int) -> bool:
        return self._delete_if_version(key, expected_version)

    def _documents_of_kind(self, kind: str) -> Iterator[Document]:
        return (Document.from_json(body) for body in self._of_state(kind))

    def _of_state(self, state: str) -> Iterator[dict[str, Any]]:
        _, rows = self._execute("SELECT body FROM records WHERE json_extract(body, '$.state') = ?", (state,))
        return (json.loads(row[0]) for row in rows)


def _encoded(body: dict[str, Any]) -> str:
    """Strict JSON: a non-finite number would make SQLite's JSON functions fail on every later read of the
    table (sweep, overdue chains), so writing one is refused instead (none should get this far)."""
    return json.dumps(body, allow_nan=False)


def _add_creation_times(connection: sqlite3.Connection) -> None:
    """Give a file made before the sweep its ``created_at`` column and index, each record's time taken
    from its ``requested_at`` (its claim). Processes opening such a file together may race to add the
    column; all but one find it there. Filling is checked on every open, so an open that died between
    adding and filling leaves nothing unswept."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(records)")}
    if "created_at" not in columns:
        try:
            connection.execute("ALTER TABLE records ADD COLUMN created_at REAL")
        except sqlite3.OperationalError as problem:
            if "duplicate column" not in str(problem):
                raise
    connection.execute("CREATE INDEX IF NOT EXISTS records_by_creation ON records (created_at)")
    if connection.execute("SELECT 1 FROM records WHERE created_at IS NULL LIMIT 1").fetchone():
        connection.execute(
            "UPDATE records SET created_at = json_extract(body, '$.requested_at') WHERE created_at IS NULL"
        )
