"""Wiring: the real adapters chosen by the settings, each created once per process over one HTTP stack."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from ._clock import Clock, SystemClock
from ._gcp.auth import AnonymousAuth, Authenticator, DefaultCredentialsAuth, MetadataServerAuth
from ._gcp.operations import OperationsClient
from ._gcp.pubsub import Publisher, PubSubPublisher
from ._gcp.tasks import CloudTasksScheduler
from ._gcp.transport import SharedTransport
from ._log import Logger
from ._pipeline import Pipeline
from ._scheduler import RedeliveryScheduler, Scheduler
from ._settings import Settings
from ._store import IdempotencyStore, MemoryStore
from .errors import ConfigError


def build_store(
    settings: Settings, *, auth: Authenticator, transport: httpx.BaseTransport | None = None
) -> IdempotencyStore:
    if settings.store == "memory":
        return MemoryStore(lease_s=settings.lease_s, ttl_s=settings.record_ttl_s)
    if settings.store == "sqlite":
        # Each backend is imported only when chosen: a function on Firestore never loads sqlite3.
        import sqlite3

        from ._store.sqlite import SqliteStore

        try:
            return SqliteStore(settings.sqlite_path, lease_s=settings.lease_s, ttl_s=settings.record_ttl_s)
        except (sqlite3.Error, OSError) as problem:
            raise ConfigError("OPCANCEL_SQLITE_PATH", f"cannot hold the database: {problem}") from problem
    if settings.project is None:
        raise ConfigError("GOOGLE_CLOUD_PROJECT", "is required for the firestore store")
    from ._store.firestore import FirestoreStore

    return FirestoreStore(
        project=settings.project,
        lease_s=settings.lease_s,
        ttl_s=settings.record_ttl_s,
        auth=auth,
        database=settings.firestore_database,
        collection=settings.firestore_collection,
        emulator_host=settings.firestore_emulator_host,
        transport=transport,
    )


def build_publisher(
    settings: Settings, *, auth: Authenticator, clock: Clock, transport: httpx.BaseTransport | None = None
) -> Publisher:
    if settings.project is None:
        raise ConfigError("GOOGLE_CLOUD_PROJECT", "is required to publish checks and results to Pub/Sub")
    return PubSubPublisher(
        settings.project, auth=auth, clock=clock, emulator_host=settings.pubsub_emulator_host, transport=transport
    )


def build_scheduler(
    settings: Settings,
    *,
    publisher: Publisher,
    auth: Authenticator,
    clock: Clock,
    transport: httpx.BaseTransport | None = None,
) -> Scheduler:
    """Cloud Tasks when a queue is set (what deploy.sh deploys); otherwise checks wait for redelivery."""
    if settings.tasks_queue is None:
        return RedeliveryScheduler(publisher, settings.checks_topic)
    if settings.project is None:
        raise ConfigError("GOOGLE_CLOUD_PROJECT", "is required to schedule checks as Cloud Tasks")
    return CloudTasksScheduler(
        queue=settings.tasks_queue,
        project=settings.project,
        checks_topic=settings.checks_topic,
        auth=auth,
        clock=clock,
        service_account=settings.tasks_service_account,
        endpoint=settings.tasks_endpoint,
        pubsub_emulator_host=settings.pubsub_emulator_host,
        transport=transport,
    )


def build_auth(settings: Settings, *, clock: Clock, transport: httpx.BaseTransport | None = None) -> Authenticator:
    if settings.auth == "anonymous":
        return AnonymousAuth()
    if settings.on_cloud and not settings.credentials_file:
        # Where Application Default Credentials would find them, without google-auth's cold start.
        return MetadataServerAuth(clock=clock, host=settings.metadata_host, transport=transport)
    return DefaultCredentialsAuth(on_cloud=settings.on_cloud, transport=transport)


def build_api(
    settings: Settings, *, auth: Authenticator, clock: Clock, log: Logger, transport: httpx.BaseTransport | None = None
) -> OperationsClient:
    return OperationsClient(auth=auth, clock=clock, log=log, endpoint=settings.api_endpoint, transport=transport)


def _request_schemes(settings: Settings) -> frozenset[str]:
    """The URL schemes of the two calls every request makes: the Operations API's and Pub/Sub's."""
    api = urlsplit(settings.api_endpoint).scheme if settings.api_endpoint else "https"
    return frozenset({api, "http" if settings.pubsub_emulator_host else "https"})


def build_pipeline(settings: Settings, *, log: Logger | None = None) -> Pipeline:
    log = log or Logger()
    clock = SystemClock()
    # Built here, at start-up, so gunicorn's master prepares it before forking the workers.
    transport = SharedTransport(prepare=_request_schemes(settings))
    # One credential cache serves the Operations API, Pub/Sub and Firestore: all use the cloud-platform scope.
    auth = build_auth(settings, clock=clock, transport=transport)
    publisher = build_publisher(settings, auth=auth, clock=clock, transport=transport)
    return Pipeline(
        settings=settings,
        api=build_api(settings, auth=auth, clock=clock, log=log, transport=transport),
        publisher=publisher,
        store=build_store(settings, auth=auth, transport=transport),
        clock=clock,
        log=log,
        scheduler=build_scheduler(settings, publisher=publisher, auth=auth, clock=clock, transport=transport),
    )
