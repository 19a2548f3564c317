"""Every error opcancel raises, in one tree.

    OpcancelError
    ├── ConfigError            bad environment; start-up fails, naming the variable
    ├── PermanentError         acknowledged: retrying cannot help
    │   ├── InvalidRequest     input that breaks a rule of the request format
    │   └── ApiRejected        the Operations API refused for good (404, 403, 501, other 4xx)
    │       └── NoCredentials  no Google credentials where a person must provide them (off Cloud)
    └── TransientError         raised to the platform so Pub/Sub redelivers
        ├── ApiUnavailable     429, 5xx, 409, timeouts and connection errors after in-process retries
        │   └── ListingIncomplete  a listing that does not end: a repeated page token, or too many pages
        ├── StoreUnavailable   the idempotency store could not be read or written
        ├── PublishFailed      a Pub/Sub publish was not confirmed
        ├── ScheduleFailed     a follow-up check could not be scheduled (Cloud Tasks create)
        ├── CheckNotDue        a follow-up check arrived before its due time
        ├── KeyBusy            another live worker holds the idempotency key
        └── GuardContended     lost every race for a guard document (the budget's, under a storm)

    StaleFence                 this worker's claim was taken over; its writes are refused

Only the entry points decide between acknowledging and raising: they acknowledge
everything but a ``TransientError``. ``StaleFence`` is handled like a transient
error, because the newer holder finishes the work and a redelivery then finds
the key finished.
"""

from __future__ import annotations


class OpcancelError(Exception):
    """Base of every error opcancel raises on purpose."""

    #: Short machine-readable reason, logged as ``reason``.
    reason = "error"


class ConfigError(OpcancelError):
    reason = "bad_configuration"

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class PermanentError(OpcancelError):
    reason = "permanent"


class InvalidRequest(PermanentError):
    reason = "invalid_request"


class ApiRejected(PermanentError):
    """The API answered with a final refusal; ``outcome`` is the SPEC outcome it maps to."""

    reason = "api_rejected"

    def __init__(self, outcome: str, message: str, *, status: int) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.status = status


class NoCredentials(ApiRejected):
    """No Application Default Credentials off Cloud: a request ends PERMISSION_DENIED, a command says how to log in."""

    reason = "no_credentials"

    def __init__(self, message: str) -> None:
        super().__init__("PERMISSION_DENIED", message, status=401)


class TransientError(OpcancelError):
    reason = "transient"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Seconds the server or the schedule asks to wait, when known.
        self.retry_after = retry_after


class ApiUnavailable(TransientError):
    reason = "api_unavailable"


class ListingIncomplete(ApiUnavailable):
    reason = "listing_incomplete"


class StoreUnavailable(TransientError):
    reason = "store_unavailable"


class PublishFailed(TransientError):
    reason = "publish_failed"


class ScheduleFailed(TransientError):
    reason = "schedule_failed"


class CheckNotDue(TransientError):
    reason = "check_not_due"


class KeyBusy(TransientError):
    reason = "key_busy"


class GuardContended(TransientError):
    reason = "guard_contended"


class StaleFence(OpcancelError):
    reason = "stale_fence"
