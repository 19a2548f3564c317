"""The process-local backend: a dict under a lock."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from .base import IdempotencyStore
from .guard import Document
from .record import Record, State


class MemoryStore(IdempotencyStore):
    """Process-local; for tests and single-process runs."""

    def __init__(self, *, lease_s: float, ttl_s: float) -> None:
        super().__init__(lease_s=lease_s, ttl_s=ttl_s)
        self._records: dict[str, Record] = {}
        self._documents: dict[str, Document] = {}
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
            if not self._is_at(record.key, expected_version):
                return False
            self._records[record.key] = record
            return True

    def _delete_if_version(self, key: str, expected_version: int) -> bool:
        with self._lock:
            if not self._is_at(key, expected_version):
                return False
            del self._records[key]
            return True

    def _delete_expired(self, now: float) -> int:
        with self._lock:
            expired = [key for key, record in self._records.items() if record.expire_at <= now]
            for key in expired:
                del self._records[key]
            for key in [key for key, document in self._documents.items() if document.expire_at <= now]:
                del self._documents[key]
            return len(expired)

    def _load_document(self, key: str) -> Document | None:
        with self._lock:
            return self._documents.get(key)

    def _create_document(self, document: Document) -> bool:
        with self._lock:
            if document.key in self._documents:
                return False
            self._documents[document.key] = document
            return True

    def _replace_document(self, document: Document, expected_version: int) -> bool:
        with self._lock:
            current = self._documents.get(document.key)
            if current is None or current.version != expected_version:
                return False
            self._documents[document.key] = document
            return True

    def _delete_document(self, key: str, expected_version: int) -> bool:
        with self._lock:
            current = self._documents.get(key)
            if current is None or current.version != expected_version:
                return False
            del self._documents[key]
            return True

    def _documents_of_kind(self, kind: str) -> Iterator[Document]:
        with self._lock:
            return iter([d for d in self._documents.values() if d.kind == kind])

    def _is_at(self, key: str, version: int) -> bool:
        """Whether ``key`` is stored at ``version``; the caller holds the lock."""
        current = self._records.get(key)
        return current is not None and current.version == version

    def _checking(self) -> Iterator[Record]:
        with self._lock:
            return iter([r for r in self._records.values() if r.state is State.CHECKING])
