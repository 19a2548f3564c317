"""The idempotency store: the record and its transitions, the claim rules, and the backends.

The backends are not imported here: ``function._store.sqlite`` and ``function._store.firestore`` load only
when that store is chosen (``MemoryStore``, the tests' backend, needs nothing more than the rules).
"""

from .base import Claim, ClaimStatus, IdempotencyStore
from .memory import MemoryStore
from .record import Record, State, TransitionRefused

__all__ = [
    "Claim",
    "ClaimStatus",
    "IdempotencyStore",
    "MemoryStore",
    "Record",
    "State",
    "TransitionRefused",
]
