"""Credentials for Google's APIs as one ``httpx.Auth`` family: anonymous, Application Default Credentials
through google-auth, and the metadata server's own token protocol.

Every client sends through an ``Authenticator``: its ``auth_flow`` adds the token and, on a 401, refreshes
the credentials once and sends the request once more. That is the only place a 401 is handled.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Generator
from typing import Any

import httpx

from .._backoff import Backoff, TryAgain
from .._clock import Clock
from ..errors import ApiUnavailable, NoCredentials
from .errors import TRANSIENT_STATUS
from .transport import auth_request, json_object, send

SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class Authenticator(httpx.Auth):
    """A bearer token for each request, and one refresh and retry when a request is answered 401.

    Subclasses say how a token is had (``headers``) and renewed (``refresh``). Errors getting one are
    opcancel's own (``NoCredentials``, ``ApiUnavailable``) and reach the caller of the request unsent.
    """

    def headers(self) -> dict[str, str]:
        """The header that authorizes the next request; loads or renews the token when needed."""
        raise NotImplementedError

    def refresh(self) -> bool:
        """Force new credentials; False when there are none to refresh."""
        raise NotImplementedError

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(self.headers())
        response = yield request
        if response.status_code == 401 and self.refresh():
            # A new request rather than the first one changed: what was sent stays as it was sent.
            again = httpx.Request(
                request.method,
                request.url,
                headers=request.headers,
                stream=request.stream,
                extensions=request.extensions,
            )
            again.headers.update(self.headers())
            yield again


class AnonymousAuth(Authenticator):
    """No credentials: for simulators and emulators, which take none."""

    def headers(self) -> dict[str, str]:
        return {}

    def refresh(self) -> bool:
        return False


class FixedTokenAuth(Authenticator):
    """One token that never changes, such as the one the Firestore emulator takes as its admin's."""

    def __init__(self, token: str) -> None:
        self._token = token

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._token}"}

    def refresh(self) -> bool:
        return False


class DefaultCredentialsAuth(Authenticator):
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
            # Imported on first use: google-auth is not on the cold-start path of a function that never needs it.
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


class MetadataServerAuth(Authenticator):
    """The function's own service-account token, straight from the metadata server, on Cloud.

    There Application Default Credentials come from the metadata server anyway, and asking it directly
    over the shared transport spares every cold start google-auth's way there, whose ``compute_engine``
    module imports ``requests`` (bench/RESULTS.md). The token is reused until shortly before it expires;
    the metadata server itself renews it ahead of expiry. Failing to get one is transient, as on Cloud it
    can only mean the metadata server is not answering yet.
    """

    #: Renew this long before the token expires, so no request carries one that lapses in flight.
    _EARLY_S = 60.0
    #: Short waits: the metadata server is local, so it answers at once or is not up yet.
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
        try:
            response = send(
                self._http,
                "GET",
                self._url,
                params={"scopes": SCOPE},
                headers={"metadata-flavor": "Google"},
                retry_status=TRANSIENT_STATUS,
                backoff=self._BACKOFF,
                clock=self._clock,
            )
        except TryAgain as exhausted:
            raise ApiUnavailable(f"no token from the metadata server: {exhausted.failure}") from None
        if response.status_code != 200:
            raise ApiUnavailable(f"no token from the metadata server: HTTP {response.status_code}")
        self._accept(json_object(response))

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
