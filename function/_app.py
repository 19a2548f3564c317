"""Wiring: the real adapters chosen by the settings, each created once per process."""

from __future__ import annotations

import httpx

from ._api import AnonymousAuth, Authenticator, DefaultCredentialsAuth, OperationsClient
from ._clock import Clock, SystemClock
from ._firestore import FirestoreStore
from ._log import Logger
from ._pubsub import Publisher, PubSubPublisher
from ._service import Opcancel
from ._settings import Settings
from ._store import IdempotencyStore, MemoryStore, SqliteStore
from .errors import ConfigError


def build_store(settings: Settings, *, auth: Authenticator) -> IdempotencyStore:
    if settings.store == "memory":
        return MemoryStore(lease_s=settings.lease_s, ttl_s=settings.record_ttl_s)
    if settings.store == "sqlite":
        return SqliteStore(settings.sqlite_path, lease_s=settings.lease_s, ttl_s=settings.record_ttl_s)
    if settings.project is None:
        raise ConfigError("GOOGLE_CLOUD_PROJECT", "is required for the firestore store")
    return FirestoreStore(
        project=settings.project,
        lease_s=settings.lease_s,
        ttl_s=settings.record_ttl_s,
        auth=auth,
        database=settings.firestore_database,
        collection=settings.firestore_collection,
        emulator_host=settings.firestore_emulator_host,
    )


def build_publisher(settings: Settings) -> Publisher:
    if settings.project is None:
        raise ConfigError("GOOGLE_CLOUD_PROJECT", "is required to publish checks and results to Pub/Sub")
    return PubSubPublisher(settings.project)


def build_auth(settings: Settings) -> Authenticator:
    return DefaultCredentialsAuth(on_cloud=settings.on_cloud) if settings.auth == "adc" else AnonymousAuth()


def build_api(
    settings: Settings, *, auth: Authenticator, clock: Clock, log: Logger, transport: httpx.BaseTransport | None = None
) -> OperationsClient:
    return OperationsClient(auth=auth, clock=clock, log=log, endpoint=settings.api_endpoint, transport=transport)


def build_service(settings: Settings, *, log: Logger | None = None) -> Opcancel:
    log = log or Logger()
    clock = SystemClock()
    # One credential cache serves the Operations API and Firestore: both use the cloud-platform scope.
    auth = build_auth(settings)
    return Opcancel(
        settings=settings,
        api=build_api(settings, auth=auth, clock=clock, log=log),
        publisher=build_publisher(settings),
        store=build_store(settings, auth=auth),
        clock=clock,
        log=log,
    )
