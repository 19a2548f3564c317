"""The Firestore (Native mode) idempotency store, over Firestore's REST API with the project's httpx.

Conditional writes go through ``:commit`` with an ``updateTime`` precondition
(the emulator ignores that precondition when given as a PATCH query parameter).

Running chains are found with ``:runQuery`` on the ``state`` field (an equality filter ordered by
document name, which Firestore's automatic single-field indexes serve), a page at a time.

Why REST and not ``google-cloud-firestore``: the store's primitives (get,
create-if-absent, update-if-unchanged, delete-if-unchanged) are each one request
with a precondition, while the official client adds a gRPC stack and its imports
to a cold start, beside the process's one httpx transport (measured: docs/design.md, "Why Firestore's REST API").

Documents live in one collection, one per key, named by the key's SHA-256 (keys
may contain ``/``). Each holds the record as JSON plus ``version`` and
``expire_at`` (a timestamp, for a TTL policy). Firestore preconditions compare
``updateTime``, so the store remembers the update time it saw for each version
it read or wrote; a version it has not seen is read first.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import httpx

from .._clock import format_time
from .._gcp.auth import Authenticator, FixedTokenAuth
from .._gcp.errors import decode_error, error_summary
from ..errors import StoreUnavailable
from .base import IdempotencyStore
from .guard import Document
from .record import Record, State

DEFAULT_COLLECTION = "opcancel-idempotency"
_REMEMBERED_VERSIONS = 4096
_QUERY_PAGE = 300


class FirestoreError(StoreUnavailable):
    """Firestore answered with something other than success or a failed precondition."""


class FirestoreStore(IdempotencyStore):
    def __init__(
        self,
        *,
        project: str,
        lease_s: float,
        ttl_s: float,
        auth: Authenticator,
        database: str = "(default)",
        collection: str = DEFAULT_COLLECTION,
        emulator_host: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        super().__init__(lease_s=lease_s, ttl_s=ttl_s)
        base = f"http://{emulator_host}" if emulator_host else "https://firestore.googleapis.com"
        self._documents = f"projects/{project}/databases/{database}/documents"
        self._base = base
        self._collection_url = f"{base}/v1/{self._documents}/{collection}"
        self._collection = collection
        # The emulator accepts this fixed token as an admin; it never reaches Google.
        self._http = httpx.Client(
            transport=transport, timeout=timeout_s, auth=FixedTokenAuth("owner") if emulator_host else auth
        )
        self._update_times: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._lock = threading.Lock()

    def _load(self, key: str) -> Record | None:
        document = self._document(key)
        return None if document is None else self._record(document)

    def _create(self, record: Record) -> bool:
        return self._create_fields(record.key, record.version, self._fields(record))

    def _replace(self, record: Record, expected_version: int) -> bool:
        return self._replace_fields(record.key, record.version, self._fields(record), expected_version)

    def _create_fields(self, key: str, version: int, fields: dict[str, Any]) -> bool:
        response = self._request("POST", self._collection_url, params={"documentId": _document_id(key)}, json=fields)
        if response.status_code == 409:
            return False
        self._expect_success(response)
        self._remember(key, version, response.json()["updateTime"])
        return True

    def _replace_fields(self, key: str, version: int, fields: dict[str, Any], expected_version: int) -> bool:
        update_time = self._update_time(key, expected_version)
        if update_time is None:
            return False
        written = self._commit({"update": {"name": self._document_name(key), **fields}}, update_time)
        if written is None:
            return False
        self._remember(key, version, written)
        return True

    # Guard documents share the collection, in the same fields.

    def _load_document(self, key: str) -> Document | None:
        document = self._document(key)
        return None if document is None else self._guard_document(document)

    def _create_document(self, document: Document) -> bool:
        return self._create_fields(document.key, document.version, self._document_fields(document))

    def _replace_document(self, document: Document, expected_version: int) -> bool:
        return self._replace_fields(document.key, document.version, self._document_fields(document), expected_version)

    def _delete_document(self, key: str, expected_version: int) -> bool:
        return self._delete_if_version(key, expected_version)

    def _documents_of_kind(self, kind: str) -> Iterator[Document]:
        return (self._guard_document(document) for document in self._of_state(kind))

    def _guard_document(self, document: dict[str, Any]) -> Document:
        stored = Document.from_json(json.loads(document["fields"]["record"]["stringValue"]))
        self._remember(stored.key, stored.version, document["updateTime"])
        return stored

    def _delete_if_version(self, key: str, expected_version: int) -> bool:
        update_time = self._update_time(key, expected_version)
        if update_time is None:
            return False
        return self._commit({"delete": self._document_name(key)}, update_time) is not None

    def _checking(self) -> Iterator[Record]:
        return (self._record(document) for document in self._of_state(State.CHECKING.value))

    def _of_state(self, state: str) -> Iterator[dict[str, Any]]:
        after: str | None = None
        while True:
            query: dict[str, Any] = {
                "from": [{"collectionId": self._collection}],
                "where": {
                    "fieldFilter": {
                        "field": {"fieldPath": "state"},
                        "op": "EQUAL",
                        "value": {"stringValue": state},
                    }
                },
                "orderBy": [{"field": {"fieldPath": "__name__"}, "direction": "ASCENDING"}],
                "limit": _QUERY_PAGE,
            }
            if after is not None:
                query["startAt"] = {"values": [{"referenceValue": after}], "before": False}
            response = self._request(
                "POST", f"{self._base}/v1/{self._documents}:runQuery", json={"structuredQuery": query}
            )
            self._expect_success(response)
            documents = [item["document"] for item in response.json() if isinstance(item, dict) and "document" in item]
            yield from documents
            if len(documents) < _QUERY_PAGE:
                return
            after = documents[-1]["name"]

    def _commit(self, write: dict[str, Any], update_time: str) -> str | None:
        """One write, applied only if the document's update time is still ``update_time``; its new update time."""
        body = {"writes": [{**write, "currentDocument": {"updateTime": update_time}}]}
        response = self._request("POST", f"{self._base}/v1/{self._documents}:commit", json=body)
        if _precondition_failed(response):
            return None
        self._expect_success(response)
        answer = response.json()
        return answer["writeResults"][0].get("updateTime") or answer["commitTime"]

    def _update_time(self, key: str, version: int) -> str | None:
        with self._lock:
            known = self._update_times.get((key, version))
        if known is not None:
            return known
        document = self._document(key)
        if document is None:
            return None
        return document["updateTime"] if int(document["fields"]["version"]["integerValue"]) == version else None

    def _document(self, key: str) -> dict[str, Any] | None:
        response = self._request("GET", self._document_url(key))
        if response.status_code == 404:
            return None
        self._expect_success(response)
        return response.json()

    def _record(self, document: dict[str, Any]) -> Record:
        record = Record.from_json(json.loads(document["fields"]["record"]["stringValue"]))
        self._remember(record.key, record.version, document["updateTime"])
        return record

    def _remember(self, key: str, version: int, update_time: str) -> None:
        with self._lock:
            self._update_times[(key, version)] = update_time
            self._update_times.move_to_end((key, version))
            while len(self._update_times) > _REMEMBERED_VERSIONS:
                self._update_times.popitem(last=False)

    @staticmethod
    def _fields(record: Record) -> dict[str, Any]:
        return _fields(record.key, record.state.value, record.version, record.expire_at, record.to_json())

    @staticmethod
    def _document_fields(document: Document) -> dict[str, Any]:
        return _fields(document.key, document.kind, document.version, document.expire_at, document.to_json())

    def _document_url(self, key: str) -> str:
        return f"{self._collection_url}/{_document_id(key)}"

    def _document_name(self, key: str) -> str:
        return f"{self._documents}/{self._collection}/{_document_id(key)}"

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._http.request(method, url, **kwargs)

    @staticmethod
    def _expect_success(response: httpx.Response) -> None:
        if not 200 <= response.status_code < 300:
            raise FirestoreError(f"Firestore answered {error_summary(response)}")


def _fields(key: str, state: str, version: int, expire_at: float, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "fields": {
            "key": {"stringValue": key},
            "state": {"stringValue": state},
            "version": {"integerValue": str(version)},
            "expire_at": {"timestampValue": format_time(expire_at)},
            "record": {"stringValue": json.dumps(body, separators=(",", ":"))},
        }
    }


def _document_id(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _precondition_failed(response: httpx.Response) -> bool:
    if response.status_code in (404, 409):
        return True
    return response.status_code == 400 and decode_error(response).rpc_status == "FAILED_PRECONDITION"
