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
#: The longest wait an API's retry hint is honoured for: a longer one is cut to it (SPEC), so no answer keeps
#: a key busy for days.
MAX_RETRY_DELAY_S = 600.0
#: ``google.protobuf.Duration`` in JSON: ASCII seconds (at most 315,576,000,000, so 12 digits) and up to nine
#: fractional digits, then ``s``. Anything else (non-ASCII digits, a sign, hundreds of digits) is malformed.
_DURATION = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,9})?)s")
#: ``Retry-After`` as delta-seconds (RFC 9110, 10.2.3); an HTTP-date is not read, and so is ignored.
_DELTA_SECONDS = re.compile(r"[0-9]+")


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
    """Seconds the answer asks to wait, from RetryInfo or else ``Retry-After``, at most ``MAX_RETRY_DELAY_S``;
    None when neither is there or well formed. ``[0-9]``, not ``\\d`` or ``str.isdigit``: those take "²"."""
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            match = _DURATION.fullmatch(delay) if isinstance(delay, str) else None
            if match:
                return min(float(match.group(1)), MAX_RETRY_DELAY_S)
    header = header.strip()
    if not _DELTA_SECONDS.fullmatch(header):
        return None
    # RFC 9110 takes an overlong value as "very long"; its length is checked first, so no number is too big.
    return MAX_RETRY_DELAY_S if len(header) > 6 else min(float(header), MAX_RETRY_DELAY_S)
