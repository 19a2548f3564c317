"""The idempotency store: the record and its transitions, the claim rules, and the backends.

``FirestoreStore`` is not imported here: ``function._store.firestore`` loads only when that store is chosen.
"""

from .base import Claim, ClaimStatus, IdempotencyStore
from .memory import MemoryStore
from .record import Record, State, TransitionRefused
from .sqlite import SqliteStore

__all__ = [
    "Claim",
    "ClaimStatus",
    "IdempotencyStore",
    "MemoryStore",
    "Record",
    "SqliteStore",
    "State",
    "TransitionRefused",
]
