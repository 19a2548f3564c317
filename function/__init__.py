"""opcancel: cancel Google Cloud long-running operations from events, once per request.

Public surface: ``Runtime`` (what ``main.py`` holds), ``Opcancel`` (the
pipeline), ``Settings``, the ports' adapters and the error tree in ``errors``.
Modules are private; import from here.
"""

from . import errors
from ._app import build_api, build_auth, build_publisher, build_scheduler, build_service, build_store
from ._backoff import PollingPolicy
from ._clock import SystemClock, format_time, parse_time
from ._entry import RedeliveryRequested, Runtime, message_from_cloud_event
from ._gcp.auth import AnonymousAuth, DefaultCredentialsAuth, MetadataServerAuth
from ._gcp.operations import CancelAnswer, OperationsClient
from ._gcp.pubsub import PubSubPublisher
from ._gcp.tasks import CloudTasksScheduler, task_id
from ._gcp.transport import SharedTransport
from ._log import Logger
from ._model import InboundMessage, Outcome, SourceKind
from ._names import OperationRef, parse_name
from ._scheduler import RedeliveryScheduler
from ._service import ItemStatus, Opcancel, Report
from ._settings import Settings
from ._store import IdempotencyStore, MemoryStore, Record, SqliteStore, State


def __getattr__(name: str):
    # Imported on first use, so a function on another store never loads it (cold start).
    if name == "FirestoreStore":
        from ._store.firestore import FirestoreStore

        return FirestoreStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AnonymousAuth",
    "CancelAnswer",
    "CloudTasksScheduler",
    "DefaultCredentialsAuth",
    "FirestoreStore",
    "IdempotencyStore",
    "InboundMessage",
    "ItemStatus",
    "Logger",
    "MemoryStore",
    "MetadataServerAuth",
    "Opcancel",
    "OperationRef",
    "OperationsClient",
    "Outcome",
    "PollingPolicy",
    "PubSubPublisher",
    "RedeliveryScheduler",
    "Record",
    "RedeliveryRequested",
    "Report",
    "Runtime",
    "Settings",
    "SharedTransport",
    "SourceKind",
    "SqliteStore",
    "State",
    "SystemClock",
    "build_api",
    "build_auth",
    "build_publisher",
    "build_scheduler",
    "build_service",
    "build_store",
    "errors",
    "format_time",
    "message_from_cloud_event",
    "parse_name",
    "parse_time",
    "task_id",
]
