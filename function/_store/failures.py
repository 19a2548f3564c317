"""What a failed store call says: one place turns whatever a backend raised into ``StoreUnavailable``.

A backend's own ``StoreUnavailable`` says what it wants said (a status, a summary); any other exception is
named by its type alone, because its text can hold what the store call carried (an HTTP client's refusal
quotes the header value it refused, the bearer token included).
"""

from __future__ import annotations

from typing import Any

from ..errors import KeyBusy, StaleFence, StoreUnavailable

#: What failed, as the message begins: the idempotency records, or the guard's documents.
RECORDS = "idempotency store failed"
GUARD_STATE = "guard state"


def store_failure(problem: Exception | None, subject: str = RECORDS) -> StoreUnavailable:
    if isinstance(problem, StoreUnavailable):
        return StoreUnavailable(f"{subject}: {problem}")
    return StoreUnavailable(f"{subject}: {type(problem).__name__}")


def store_call(operation: Any, *args: Any, subject: str = RECORDS) -> Any:
    """``operation(*args)``, its failures told as ``store_failure``; the claim rules' own refusals pass."""
    try:
        return operation(*args)
    except (StaleFence, KeyBusy):
        raise
    except Exception as problem:
        raise store_failure(problem, subject) from problem
