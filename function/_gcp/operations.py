"""The Operations API (``google.longrunning`` over REST): the port, its httpx client and pager, and what an
Operation's state means (done, and how, or still running; TIMED_OUT once its deadline has passed).

One ``OperationsClient`` lives for the life of the process and keeps its connections. Tests pass
``httpx.MockTransport`` (or ``httpx.WSGITransport`` over the simulator) as ``transport``, as httpx's own
tests do.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import httpx

from .._backoff import Attempt, Backoff, TryAgain
from .._clock import Clock, format_time
from .._log import Logger
from .._model import Outcome
from .._names import OperationParent, OperationRef, escape_text
from ..errors import ApiUnavailable, ListingIncomplete
from .auth import Authenticator
from .errors import SERVER_UNAVAILABLE, decode_error, from_http_response
from .transport import json_object, send

#: In ``OPCANCEL_API_ENDPOINT``, replaced by the host a call would go to, so a stand-in can tell services apart.
HOST_PLACEHOLDER = "{host}"
#: Pages one listing reads at most: an API that keeps handing out new page tokens would be read for ever.
MAX_PAGES = 1000
_RPC_CANCELLED = 1


class CancelAnswer(enum.Enum):
    ACCEPTED = "accepted"
    #: 400 FAILED_PRECONDITION: typically already done; ``get`` tells the final state.
    ALREADY_DONE = "already_done"


class OperationsApi(Protocol):
    def cancel(self, ref: OperationRef) -> CancelAnswer: ...

    def get(self, ref: OperationRef) -> dict[str, Any]: ...


def outcome_of(operation: dict[str, Any]) -> Outcome | None:
    """The outcome a ``get`` body shows, or None while the operation runs."""
    if operation.get("done") is not True:
        return None
    error = operation.get("error")
    if isinstance(error, dict):
        return Outcome.CANCELLED if error.get("code") == _RPC_CANCELLED else Outcome.FAILED
    return Outcome.COMPLETED


def operation_error(operation: dict[str, Any]) -> str | None:
    error = operation.get("error")
    if not isinstance(error, dict):
        return None
    return escape_text(f"rpc code {error.get('code')}: {error.get('message', '')}")


def settle(operation: dict[str, Any], *, now: float, deadline_at: float) -> tuple[Outcome, str | None] | None:
    """How a ``get`` body ends the wait: its outcome and error text, TIMED_OUT when it still runs at or past
    ``deadline_at``, or None to keep waiting. The one place that decides between the two."""
    outcome = outcome_of(operation)
    if outcome is not None:
        return outcome, operation_error(operation) if outcome is Outcome.FAILED else None
    if now >= deadline_at:
        return Outcome.TIMED_OUT, f"operation still running at the deadline {format_time(deadline_at)}"
    return None


class OperationsClient:
    """``cancel``, ``get`` and ``list`` with bounded, jittered in-process retries for 5xx and connection errors.

    429 is not retried here: its RetryInfo delay is handed to the caller, which
    defers to Pub/Sub redelivery instead of holding the function open.
    """

    def __init__(
        self,
        *,
        auth: Authenticator,
        clock: Clock,
        log: Logger,
        endpoint: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 10.0,
        max_attempts: int = 4,
        base_delay_s: float = 0.25,
        max_delay_s: float = 2.0,
        retry_budget_s: float = 20.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._clock = clock
        self._log = log
        self._endpoint = endpoint.rstrip("/") if endpoint else None
        self._http = httpx.Client(transport=transport, timeout=timeout_s, follow_redirects=False, auth=auth)
        self._backoff = Backoff(
            first_s=base_delay_s, max_s=max_delay_s, attempts=max_attempts, budget_s=retry_budget_s, jitter=jitter
        )

    def url(self, ref: OperationRef) -> str:
        return f"{self._base(ref.host)}/{ref.api_version}/{ref.name}"

    def _base(self, host: str) -> str:
        if self._endpoint is None:
            return f"https://{host}"
        return self._endpoint.replace(HOST_PLACEHOLDER, host)

    def cancel(self, ref: OperationRef) -> CancelAnswer:
        # The body Google's discovery document gives the method: {} for a CancelOperationRequest, else none.
        body = {"json": {}} if ref.service.cancel_takes_body(ref.api_version) else {}
        response = self._send("POST", self.url(ref) + ":cancel", ref.name, **body)
        if response.status_code == 400 and decode_error(response).rpc_status == "FAILED_PRECONDITION":
            return CancelAnswer.ALREADY_DONE
        _raise_for_error(response)
        return CancelAnswer.ACCEPTED

    def get(self, ref: OperationRef) -> dict[str, Any]:
        response = self._send("GET", self.url(ref), ref.name)
        _raise_for_error(response)
        body = json_object(response)
        # Every Operation names itself; a nameless object (a proxy's or wrong endpoint's JSON) would
        # otherwise read as "still running" and end, wrongly, as TIMED_OUT.
        if body is None or not isinstance(body.get("name"), str) or not isinstance(body.get("done", False), bool):
            raise ApiUnavailable(f"get answered {response.status_code} with a body that is not an Operation")
        return body

    def list(
        self,
        parent: OperationParent,
        *,
        filter: str | None = None,
        page_size: int | None = None,
        page_token: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of ``parent``'s operations, and the token of the next page (None on the last).

        ``parent`` validated itself when it was made: nothing reaches a URL unvalidated."""
        url = f"{self._base(parent.host)}/{parent.api_version}/{parent.path}/operations"
        query = {"filter": filter, "pageSize": page_size, "pageToken": page_token}
        params = {key: str(value) for key, value in query.items() if value is not None}
        response = self._send("GET", url, parent.path, params=params)
        _raise_for_error(response)
        body = json_object(response)
        operations = body.get("operations", []) if body is not None else None
        token = body.get("nextPageToken") if body is not None else None
        if (
            not isinstance(operations, list)
            or not all(isinstance(operation, dict) for operation in operations)
            or not isinstance(token, (str, type(None)))
        ):
            raise ApiUnavailable(f"list answered {response.status_code} with a body that is not a list of Operations")
        # proto3 JSON leaves an empty token out or sends "": either way the last page.
        return operations, token or None

    def pages(
        self, parent: OperationParent, *, filter: str | None = None, page_size: int | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """Every page of ``parent``'s operations in turn, so no caller keeps page tokens. A listing that does
        not end, a token handed back again or more than ``MAX_PAGES`` pages, is ``ListingIncomplete``."""
        token: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            operations, token = self.list(parent, filter=filter, page_size=page_size, page_token=token)
            yield operations
            if token is None:
                return
            if token in seen:
                raise ListingIncomplete("the API repeated a page token; the listing is incomplete")
            seen.add(token)
        raise ListingIncomplete(
            f"gave up after {MAX_PAGES} pages, each with a next page token; the listing is incomplete"
        )

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, url: str, target: str, **request: Any) -> httpx.Response:
        def log_retry(attempt: Attempt, delay: float) -> None:
            self._log.info(
                "retrying an Operations API call",
                event="api_retry",
                operation=target,
                method=method,
                failure=attempt.failure.failure if attempt.failure else "",
                attempt=attempt.number,
                delay_s=round(delay, 3),
            )

        try:
            return send(
                self._http,
                method,
                url,
                retry_status=SERVER_UNAVAILABLE,
                backoff=self._backoff,
                clock=self._clock,
                on_retry=log_retry,
                **request,
            )
        except TryAgain as exhausted:
            if exhausted.answer is not None:
                return exhausted.answer
            raise ApiUnavailable(
                f"{method} {target}: {exhausted.failure} after {exhausted.attempts} attempts"
            ) from None


def _raise_for_error(response: httpx.Response) -> None:
    if not 200 <= response.status_code < 300:
        raise from_http_response(response)
