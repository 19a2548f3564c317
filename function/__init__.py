"""opcancel: cancel Google Cloud long-running operations from events, once per request.

The public face: ``Runtime`` (what ``main.py`` holds), ``Pipeline`` (claim, cancel, check, publish one result),
``Settings``, the ``build_*`` wiring, the ports' adapters, the values that cross them, and the error tree in
``errors``. These are what main.py, the tests, the bench and the devkit use; the modules behind them are private.
"""

from . import errors
from ._backoff import PollingPolicy
from ._clock import SystemClock, format_time, parse_time
from ._gcp.auth import AnonymousAuth, DefaultCredentialsAuth, MetadataServerAuth
from ._gcp.operations import CancelAnswer, OperationsClient
from ._gcp.pubsub import PubSubPublisher
from ._gcp.tasks import CloudTasksScheduler, task_id
from ._gcp.transport import SharedTransport
from ._log import Logger
from ._model import InboundMessage, Outcome, SourceKind
from ._names import OperationRef, parse_name
from ._pipeline import Pipeline
from ._reports import ItemStatus
from ._runtime import RedeliveryRequested, Runtime
from ._scheduler import RedeliveryScheduler
from ._settings import Settings
from ._store import IdempotencyStore, MemoryStore, State
from ._wiring import build_api, build_auth, build_pipeline, build_publisher, build_scheduler, build_store


def __getattr__(name: str):
    # Imported on first use, so a function on another store never loads it (cold start).
    if name == "FirestoreStore":
        from ._store.firestore import FirestoreStore

        return FirestoreStore
    if name == "SqliteStore":
        from ._store.sqlite import SqliteStore

        return SqliteStore
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
    "OperationRef",
    "OperationsClient",
    "Outcome",
    "Pipeline",
    "PollingPolicy",
    "PubSubPublisher",
    "RedeliveryRequested",
    "RedeliveryScheduler",
    "Runtime",
    "Settings",
    "SharedTransport",
    "SourceKind",
    "SqliteStore",
    "State",
    "SystemClock",
    "build_api",
    "build_auth",
    "build_pipeline",
    "build_publisher",
    "build_scheduler",
    "build_store",
    "errors",
    "format_time",
    "parse_name",
    "parse_time",
    "task_id",
]
