"""Store construction from a picklable spec, so worker processes can open the same store."""

from __future__ import annotations

from typing import Any

from function import AnonymousAuth, FirestoreStore, MemoryStore, SqliteStore

LEASE_S = 60.0
TTL_S = 8 * 24 * 3600.0


def open_store(spec: dict[str, Any]):
    if spec["kind"] == "memory":
        return MemoryStore(lease_s=LEASE_S, ttl_s=TTL_S)
    if spec["kind"] == "sqlite":
        return SqliteStore(spec["path"], lease_s=LEASE_S, ttl_s=TTL_S)
    return FirestoreStore(
        project=spec["project"],
        lease_s=LEASE_S,
        ttl_s=TTL_S,
        auth=AnonymousAuth(),
        collection=spec["collection"],
        emulator_host=spec["emulator_host"],
    )
