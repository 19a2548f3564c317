"""Google error answers, decoded in one place and mapped onto opcancel's error tree, as google-api-core's
``exceptions.from_http_response`` does it: HTTP status, RPC status, message and RetryInfo."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx

from .._model import Outcome
from .._names import escape_text
from ..errors import ApiRejected, ApiUnavailable
from .transport import json_object

#: The server could not answer just now: worth trying again at once.
SERVER_UNAVAILABLE = frozenset({500, 502, 503, 504})
#: Answers that may change if asked again later (timeouts, conflicts, rate limits): a ``TransientError``.
#: An Operations API 409 is so only when it is ``ABORTED`` (``from_http_response``).
TRANSIENT_STATUS = frozenset({408, 409, 429}) | SERVER_UNAVAILABLE
#: What a writer whose caller cannot wait for redelivery tries again at once: all but 409, which a create
#: answers when its work was done before (Cloud Tasks' ALREADY_EXISTS).
RETRIED_AT_ONCE = TRANSIENT_STATUS - {409}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)s")


@dataclass(frozen=True)
class GoogleError:
    """What a Google error answer says: its ``google.rpc.Status`` fields, those that are well formed."""

    status: int
    reason_phrase: str
    rpc_status: str | None = None
    message: str | None = None
    #: Seconds the server asks to wait, from a ``google.rpc.RetryInfo`` detail or a ``Retry-After`` header.
    retry_delay_s: float | None = None

    @property
    def summary(self) -> str:
        """A few words: HTTP status, RPC status and message, escaped and bounded.

        Never the raw body: a proxy's or load balancer's page can quote anything, the request included.
        """
        parts = [part for part in (self.rpc_status, self.message) if part is not None]
        said = ": ".join(parts) if parts else (self.reason_phrase or "no error body")
        return escape_text(f"HTTP {self.status}: {said}")


def decode_error(response: httpx.Response) -> GoogleError:
    """The error body of ``response`` read once; whatever is missing or malformed is left None."""
    error = (json_object(response) or {}).get("error")
    if not isinstance(error, dict):
        error = {}
    rpc_status, message = error.get("status"), error.get("message")
    return GoogleError(
        status=response.status_code,
        reason_phrase=response.reason_phrase,
        rpc_status=rpc_status if isinstance(rpc_status, str) else None,
        message=message if isinstance(message, str) else None,
        retry_delay_s=_retry_delay(error.get("details"), response.headers.get("retry-after", "")),
    )


def error_summary(response: httpx.Response) -> str:
    """A Google error answer in a few words (``GoogleError.summary``)."""
    return decode_error(response).summary


def from_http_response(response: httpx.Response) -> ApiRejected | ApiUnavailable:
    """The error a failed Operations API answer means: transient trouble, or a refusal and its outcome."""
    error = decode_error(response)
    status = response.status_code
    if status in TRANSIENT_STATUS and not _final_conflict(error):
        return ApiUnavailable(error.summary, retry_after=error.retry_delay_s)
    if status in (401, 403):
        outcome = Outcome.PERMISSION_DENIED
    elif status == 404:
        outcome = Outcome.NOT_FOUND
    elif status == 501:
        outcome = Outcome.UNSUPPORTED
    elif 400 <= status < 500:
        outcome = Outcome.REJECTED
    else:
        return ApiUnavailable(error.summary)
    return ApiRejected(outcome.value, error.summary, status=status)


def _final_conflict(error: GoogleError) -> bool:
    """A 409 that is not ``ABORTED`` (``ALREADY_EXISTS``, say): asking again gets the same answer, so it ends
    as ``REJECTED``. One that names no RPC status is taken as ``ABORTED``: a retry is bounded by
    redelivery and the dead-letter policy, while ``REJECTED`` would be final."""
    return error.status == 409 and error.rpc_status not in (None, "ABORTED")


def _retry_delay(details: Any, header: str) -> float | None:
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DURATION.fullmatch(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return float(header) if header.isdigit() else None
