"""The Operations API port and its httpx adapter (``google.longrunning`` over REST).

One ``OperationsClient`` lives for the life of the process and keeps its
connections. Tests pass ``httpx.MockTransport`` (or ``httpx.WSGITransport``
over the simulator) as ``transport``, as httpx's own tests do.
"""

from __future__ import annotations

import enum
import math
import random
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import httpx

from ._clock import Clock
from ._http import Backoff, auth_request
from ._json import JsonUnreadable, read_json
from ._log import Logger
from ._model import Outcome
from ._names import OperationParent, OperationRef, escape_text
from .errors import ApiRejected, ApiUnavailable, NoCredentials

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
_TRANSIENT_STATUS = frozenset({408, 409, 429}) | _RETRYABLE_STATUS
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)s")
#: In ``OPCANCEL_API_ENDPOINT``, replaced by the host a call would go to, so a stand-in can tell services apart.
HOST_PLACEHOLDER = "{host}"


class CancelAnswer(enum.Enum):
    ACCEPTED = "accepted"
    #: 400 FAILED_PRECONDITION: typically already done; ``get`` tells the final state.
    ALREADY_DONE = "already_done"


class OperationsApi(Protocol):
    def cancel(self, ref: OperationRef) -> CancelAnswer: ...

    def get(self, ref: OperationRef) -> dict[str, Any]: ...


class Authenticator(Protocol):
    def headers(self) -> dict[str, str]: ...

    def refresh(self) -> bool:
        """Force new credentials; False when there are none to refresh."""


class AnonymousAuth:
    def headers(self) -> dict[str, str]:
        return {}

    def refresh(self) -> bool:
        return False


class DefaultCredentialsAuth:
    """Application Default Credentials, loaded on first use and refreshed before they expire.

    With ``on_cloud``, failing to find credentials is transient: there they come
    from the metadata server, and a moment's outage must not end requests for good.
    Tokens are refreshed over ``transport``, the process's shared one, rather
    than over a second HTTP stack of google-auth's own.
    """

    def __init__(
        self,
        *,
        on_cloud: bool = False,
        find: Callable[..., tuple[Any, Any]] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._credentials: Any = None
        self._on_cloud = on_cloud
        #: ``google.auth.default`` unless a test passes its own.
        self._find = find
        self._transport = transport
        self._request: Any = None
        self._lock = threading.Lock()

    def headers(self) -> dict[str, str]:
        with self._lock:
            credentials = self._load()
            if not credentials.valid:
                self._refresh_locked(credentials)
            return {"authorization": f"Bearer {credentials.token}"}

    def refresh(self) -> bool:
        with self._lock:
            self._refresh_locked(self._load())
        return True

    def _load(self) -> Any:
        if self._credentials is None:
            import google.auth
            import google.auth.exceptions

            try:
                self._credentials, _ = (self._find or google.auth.default)(scopes=[SCOPE])
            except google.auth.exceptions.DefaultCredentialsError as problem:
                if self._on_cloud:
                    raise ApiUnavailable(f"no credentials from the metadata server yet: {problem}") from None
                raise NoCredentials(
                    f"no Google credentials ({problem}); use OPCANCEL_AUTH=anonymous only against a simulator"
                ) from None
        return self._credentials

    def _refresh_locked(self, credentials: Any) -> None:
        import google.auth.exceptions

        if self._request is None:
            self._request = auth_request(self._transport)
        try:
            credentials.refresh(self._request)
        except google.auth.exceptions.GoogleAuthError as problem:
            raise ApiUnavailable(f"could not refresh credentials: {type(problem).__name__}") from None


class MetadataServerAuth:
    """The function's own service-account token, straight from the metadata server, on Cloud.

    There Application Default Credentials come from the metadata server anyway,
    and asking it directly over the shared transport takes a millisecond, where
    google-auth's way there costs ~125 ms of every cold start (its
    ``compute_engine`` module imports ``requests``; bench/RESULTS.md). The token
    is reused until a minute before it expires; the metadata server itself
    renews it ahead of expiry. Failing to get one is transient, as on Cloud it
    can only mean the metadata server is not answering yet.
    """

    #: Renew this long before the token expires, so no request carries one that lapses in flight.
    _EARLY_S = 60.0
    #: 0.1 s, then 0.2 s: the metadata server is local, so it answers at once or is not up yet.
    _BACKOFF = Backoff(first_s=0.1, max_s=0.2, attempts=3, budget_s=math.inf, jitter=lambda: 1.0)

    def __init__(
        self,
        *,
        clock: Clock,
        host: str = "metadata.google.internal",
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self._url = f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
        self._clock = clock
        self._http = httpx.Client(transport=transport, timeout=timeout_s, follow_redirects=False)
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._token is None or self._clock.now() >= self._expires_at - self._EARLY_S:
                self._fetch()
            return {"authorization": f"Bearer {self._token}"}

    def refresh(self) -> bool:
        with self._lock:
            self._fetch()
        return True

    def _fetch(self) -> None:
        failure = ""
        for attempt in range(1, self._BACKOFF.attempts + 1):
            try:
                response = self._http.get(self._url, params={"scopes": SCOPE}, headers={"metadata-flavor": "Google"})
            except httpx.RequestError as problem:
                failure = type(problem).__name__
            else:
                if response.status_code == 200:
                    self._accept(json_object(response))
                    return
                failure = f"HTTP {response.status_code}"
                if response.status_code not in _TRANSIENT_STATUS:
                    break
            delay = self._BACKOFF.delay(attempt, elapsed_s=0.0)
            if delay is not None:
                self._clock.sleep(delay)
        raise ApiUnavailable(f"no token from the metadata server: {failure}")

    def _accept(self, body: dict[str, Any] | None) -> None:
        token = body.get("access_token") if body else None
        lifetime = body.get("expires_in") if body else None
        if (
            not isinstance(token, str)
            or not token
            or not isinstance(lifetime, (int, float))
            or isinstance(lifetime, bool)
        ):
            raise ApiUnavailable("the metadata server answered without a token")
        self._token = token
        self._expires_at = self._clock.now() + float(lifetime)


class OperationsClient:
    """``cancel`` and ``get`` with bounded, jittered in-process retries for 5xx and connection errors.

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
        self._auth = auth
        self._clock = clock
        self._log = log
        self._endpoint = endpoint.rstrip("/") if endpoint else None
        self._http = httpx.Client(transport=transport, timeout=timeout_s, follow_redirects=False)
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
        response = self._send("POST", self.url(ref) + ":cancel", ref.name, json_body={})
        if response.status_code == 400 and _rpc_status(response) == "FAILED_PRECONDITION":
            return CancelAnswer.ALREADY_DONE
        self._raise_for_error(response)
        return CancelAnswer.ACCEPTED

    def get(self, ref: OperationRef) -> dict[str, Any]:
        response = self._send("GET", self.url(ref), ref.name)
        self._raise_for_error(response)
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
        self._raise_for_error(response)
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
        """Every page of ``parent``'s operations in turn, so no caller keeps page tokens."""
        token: str | None = None
        seen: set[str] = set()
        while True:
            operations, token = self.list(parent, filter=filter, page_size=page_size, page_token=token)
            yield operations
            if token is None:
                return
            # A server that hands back a token it gave before would keep this loop going for ever.
            if token in seen:
                raise ApiUnavailable("the API repeated a page token; the listing is incomplete")
            seen.add(token)

    def close(self) -> None:
        self._http.close()

    def _send(
        self, method: str, url: str, target: str, *, json_body: Any = None, params: dict[str, str] | None = None
    ) -> httpx.Response:
        started = self._clock.now()
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(method, url, json=json_body, params=params, headers=self._auth.headers())
            # RequestError, not only TransportError: a body that fails to decode (bad gzip) is
            # the same kind of transient trouble and must surface as ApiUnavailable.
            except httpx.RequestError as problem:
                failure = f"{type(problem).__name__}"
                response = None
            else:
                if response.status_code == 401 and not refreshed and self._auth.refresh():
                    refreshed = True
                    attempt -= 1
                    continue
                if response.status_code not in _RETRYABLE_STATUS:
                    return response
                failure = f"HTTP {response.status_code}"
            delay = self._backoff.delay(attempt, elapsed_s=self._clock.now() - started)
            if delay is None:
                if response is not None:
                    return response
                raise ApiUnavailable(f"{method} {target}: {failure} after {attempt} attempts")
            self._log.info(
                "retrying an Operations API call",
                event="api_retry",
                operation=target,
                method=method,
                failure=failure,
                attempt=attempt,
                delay_s=round(delay, 3),
            )
            self._clock.sleep(delay)

    @staticmethod
    def _raise_for_error(response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        message = error_summary(response)
        if status in _TRANSIENT_STATUS:
            raise ApiUnavailable(message, retry_after=_retry_delay(response))
        if status in (401, 403):
            outcome = Outcome.PERMISSION_DENIED
        elif status == 404:
            outcome = Outcome.NOT_FOUND
        elif status == 501:
            outcome = Outcome.UNSUPPORTED
        elif 400 <= status < 500:
            outcome = Outcome.REJECTED
        else:
            raise ApiUnavailable(message)
        raise ApiRejected(outcome.value, message, status=status)


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = read_json(response.content)
    except JsonUnreadable:
        return None
    return body if isinstance(body, dict) else None


def _error(response: httpx.Response) -> dict[str, Any]:
    body = json_object(response) or {}
    error = body.get("error")
    return error if isinstance(error, dict) else {}


def _rpc_status(response: httpx.Response) -> str | None:
    status = _error(response).get("status")
    return status if isinstance(status, str) else None


def post_json(
    http: httpx.Client,
    url: str,
    body: Any,
    *,
    headers: Callable[[], Mapping[str, str]],
    refresh: Callable[[], bool] | None,
    clock: Any,
    backoff: Backoff,
    retryable: frozenset[int],
    failed: Callable[[str], Exception],
) -> httpx.Response:
    """POST ``body`` to a Google REST method: retried at once within ``backoff`` on a transport error or a
    ``retryable`` status, a 401 refreshing credentials once. Returns the first other answer; raises
    ``failed(why)`` when attempts or time run out. Callers decide what each final status means."""
    started = clock.now()
    refreshed = False
    attempt = 0
    while True:
        attempt += 1
        try:
            response = http.post(url, json=body, headers=dict(headers()))
        except httpx.RequestError as problem:
            failure = type(problem).__name__
        else:
            if response.status_code == 401 and not refreshed and refresh is not None and refresh():
                refreshed = True
                continue
            if response.status_code not in retryable:
                return response
            failure = error_summary(response)
        delay = backoff.delay(attempt, elapsed_s=clock.now() - started)
        if delay is None:
            raise failed(f"failed after {attempt} attempts: {failure}")
        clock.sleep(delay)


def error_summary(response: httpx.Response) -> str:
    """A Google error answer in a few words: HTTP status, RPC status and message, escaped and bounded.

    Never the raw body: a proxy's or load balancer's page can quote anything, the request included.
    """
    error = _error(response)
    parts = [error[k] for k in ("status", "message") if isinstance(error.get(k), str)]
    said = ": ".join(parts) if parts else (response.reason_phrase or "no error body")
    return escape_text(f"HTTP {response.status_code}: {said}")


def _retry_delay(response: httpx.Response) -> float | None:
    for detail in _error(response).get("details") or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DURATION.fullmatch(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    header = response.headers.get("retry-after", "")
    return float(header) if header.isdigit() else None
