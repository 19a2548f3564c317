"""Credentials: the ``Authenticator`` family (anonymous, Application Default Credentials, the metadata
server's token protocol), and the one 401 path every client shares, through the real clients over
``httpx.MockTransport``."""

from __future__ import annotations

import io

import httpx
import pytest

from function import (
    AnonymousAuth,
    CancelAnswer,
    CloudTasksScheduler,
    DefaultCredentialsAuth,
    FirestoreStore,
    Logger,
    MetadataServerAuth,
    OperationRef,
    OperationsClient,
    PubSubPublisher,
    Settings,
    SourceKind,
    build_auth,
)
from function._gcp.auth import SCOPE
from function._model import CheckRequest, Source
from function.errors import ApiRejected, ApiUnavailable, PublishFailed, ScheduleFailed, StoreUnavailable
from tests.support import FakeClock, Scripted

REF = OperationRef("organizations/123456789/operations/abc")


def _no_credentials(**_: object):
    import google.auth.exceptions

    raise google.auth.exceptions.DefaultCredentialsError("Your default credentials were not found.")


def test_missing_credentials_locally_end_as_permission_denied_with_a_hint():
    auth = DefaultCredentialsAuth(find=_no_credentials)
    with pytest.raises(ApiRejected) as refusal:
        auth.headers()
    assert refusal.value.outcome == "PERMISSION_DENIED"
    assert "OPCANCEL_AUTH=anonymous" in str(refusal.value)


def test_missing_credentials_on_cloud_are_transient():
    with pytest.raises(ApiUnavailable, match="metadata server"):
        DefaultCredentialsAuth(on_cloud=True, find=_no_credentials).headers()


class TokenEndpoint:
    """Google's token endpoint and the metadata server, as httpx.MockTransport handlers see them."""

    def __init__(self, *, fail_with: Exception | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.fail_with = fail_with

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        if request.url.path.endswith("/service-accounts/default/"):
            return httpx.Response(200, json={"email": "fn@p.iam.gserviceaccount.com", "scopes": [SCOPE]})
        tokens = sum(1 for seen in self.requests if not seen.url.path.endswith("/default/"))
        return httpx.Response(200, json={"access_token": f"token-{tokens}", "expires_in": 3600})


def test_user_credentials_refresh_over_the_shared_transport_not_requests():
    import google.oauth2.credentials

    endpoint = TokenEndpoint()
    credentials = google.oauth2.credentials.Credentials(
        token=None, refresh_token="refresh-me", client_id="id", client_secret="s", token_uri="https://oauth2.test/token"
    )
    auth = DefaultCredentialsAuth(find=lambda **_: (credentials, None), transport=httpx.MockTransport(endpoint))
    assert auth.headers() == {"authorization": "Bearer token-1"}
    assert auth.headers() == {"authorization": "Bearer token-1"}, "a valid token is reused"
    assert auth.refresh() and auth.headers() == {"authorization": "Bearer token-2"}
    (first, _) = endpoint.requests
    assert (first.method, str(first.url)) == ("POST", "https://oauth2.test/token")
    assert b"refresh_token=refresh-me" in first.content


def test_metadata_server_credentials_refresh_over_the_shared_transport():
    import google.auth.compute_engine

    endpoint = TokenEndpoint()
    auth = DefaultCredentialsAuth(
        on_cloud=True,
        find=lambda **_: (google.auth.compute_engine.Credentials(), None),
        transport=httpx.MockTransport(endpoint),
    )
    assert auth.headers() == {"authorization": "Bearer token-1"}
    token_request = endpoint.requests[-1]
    assert token_request.url.path == "/computeMetadata/v1/instance/service-accounts/default/token"
    assert all(request.headers["metadata-flavor"] == "Google" for request in endpoint.requests)


def test_a_token_endpoint_that_cannot_be_reached_is_transient():
    import google.oauth2.credentials

    endpoint = TokenEndpoint(fail_with=httpx.ConnectError("refused"))
    credentials = google.oauth2.credentials.Credentials(
        token=None, refresh_token="r", client_id="id", client_secret="s", token_uri="https://oauth2.test/token"
    )
    auth = DefaultCredentialsAuth(find=lambda **_: (credentials, None), transport=httpx.MockTransport(endpoint))
    with pytest.raises(ApiUnavailable, match="could not refresh credentials"):
        auth.headers()


def metadata_server(*script: httpx.Response | Exception) -> Scripted:
    """The metadata server's token endpoint."""
    return Scripted(*(script or [httpx.Response(200, json={"access_token": "md-token", "expires_in": 3599})]))


def token(value: str, expires_in: float = 3599) -> httpx.Response:
    return httpx.Response(200, json={"access_token": value, "expires_in": expires_in, "token_type": "Bearer"})


def metadata_auth(server: Scripted, clock: FakeClock | None = None, host: str = "metadata.google.internal"):
    return MetadataServerAuth(clock=clock or FakeClock(), host=host, transport=httpx.MockTransport(server))


def test_the_metadata_server_token_is_asked_for_with_its_header_and_scope_and_reused():
    server = metadata_server(token("t-1"))
    auth = metadata_auth(server, host="127.0.0.1:8977")
    assert auth.headers() == {"authorization": "Bearer t-1"}
    assert auth.headers() == {"authorization": "Bearer t-1"}
    (request,) = server.requests
    assert (request.url.host, request.url.port, request.url.path) == (
        "127.0.0.1",
        8977,
        "/computeMetadata/v1/instance/service-accounts/default/token",
    )
    assert request.url.params["scopes"] == SCOPE
    assert request.headers["metadata-flavor"] == "Google"


def test_a_token_is_renewed_a_minute_before_it_expires_and_on_refresh():
    clock = FakeClock()
    server = metadata_server(token("t-1", 600), token("t-2", 600), token("t-3", 600))
    auth = metadata_auth(server, clock)
    assert auth.headers()["authorization"] == "Bearer t-1"
    clock.advance(539)
    assert auth.headers()["authorization"] == "Bearer t-1"
    clock.advance(1)
    assert auth.headers()["authorization"] == "Bearer t-2"
    assert auth.refresh() and auth.headers()["authorization"] == "Bearer t-3"


@pytest.mark.parametrize("trouble", [httpx.Response(503), httpx.Response(429), httpx.ConnectError("not yet")])
def test_a_metadata_server_not_answering_yet_is_retried_then_transient(trouble):
    clock = FakeClock()
    server = metadata_server(trouble, token("t-1"))
    assert metadata_auth(server, clock).headers()["authorization"] == "Bearer t-1"
    assert clock.slept == [0.1]
    with pytest.raises(ApiUnavailable, match="no token from the metadata server"):
        metadata_auth(metadata_server(trouble), FakeClock()).headers()


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(404),
        httpx.Response(200, text="<html>not the metadata server</html>"),
        httpx.Response(200, json={"access_token": "", "expires_in": 3599}),
        httpx.Response(200, json={"access_token": "t", "expires_in": "soon"}),
        httpx.Response(200, json={"expires_in": 3599}),
    ],
)
def test_a_metadata_answer_without_a_token_is_transient_and_sends_no_header(answer):
    with pytest.raises(ApiUnavailable):
        metadata_auth(metadata_server(answer)).headers()


def test_on_cloud_credentials_come_from_the_metadata_server_unless_a_file_is_named():
    clock = FakeClock()
    cloud = Settings.from_env({"K_SERVICE": "opcancel-requests", "GCE_METADATA_HOST": "127.0.0.1:8977"})
    auth = build_auth(cloud, clock=clock)
    assert isinstance(auth, MetadataServerAuth)
    keyed = Settings.from_env({"K_SERVICE": "x", "GOOGLE_APPLICATION_CREDENTIALS": "/secrets/key.json"})
    assert isinstance(build_auth(keyed, clock=clock), DefaultCredentialsAuth)
    assert isinstance(build_auth(Settings.from_env({}), clock=clock), DefaultCredentialsAuth)
    assert isinstance(
        build_auth(Settings.from_env({"K_SERVICE": "x", "OPCANCEL_AUTH": "anonymous"}), clock=clock), AnonymousAuth
    )


def test_a_token_from_the_metadata_server_reaches_the_operations_api():
    server = metadata_server(token("md-secret"))
    seen = []

    def api(request: httpx.Request) -> httpx.Response:
        if request.url.host == "metadata.google.internal":
            return server(request)
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={})

    transport = httpx.MockTransport(api)
    clock = FakeClock()
    client = OperationsClient(
        auth=MetadataServerAuth(clock=clock, transport=transport),
        clock=clock,
        log=Logger(io.StringIO()),
        transport=transport,
    )
    assert client.cancel(REF) is CancelAnswer.ACCEPTED
    assert seen == ["Bearer md-secret"]


# --- the one 401 path, through every real client -----------------------------------------------


class Google:
    """The metadata server (a new token each time it is asked) and one API answering from ``script``, on one
    ``httpx.MockTransport`` as the process's shared transport carries both."""

    def __init__(self, *script: httpx.Response) -> None:
        self.api = Scripted(*script)
        self.tokens = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "metadata.google.internal":
            self.tokens += 1
            return httpx.Response(200, json={"access_token": f"token-{self.tokens}", "expires_in": 3599})
        return self.api(request)

    def sent_tokens(self) -> list[str | None]:
        return [request.headers.get("authorization") for request in self.api.requests]


def _operations(auth, transport, clock):
    client = OperationsClient(auth=auth, clock=clock, log=Logger(io.StringIO()), transport=transport)
    return lambda: client.cancel(REF), httpx.Response(200, json={})


def _publisher(auth, transport, clock):
    publisher = PubSubPublisher("my-project", auth=auth, clock=clock, transport=transport)
    return lambda: publisher.publish_all("t-1", [(b"data", {})]), httpx.Response(200, json={"messageIds": ["1"]})


def _tasks(auth, transport, clock):
    scheduler = CloudTasksScheduler(
        queue="projects/my-project/locations/europe-west1/queues/q",
        project="my-project",
        checks_topic="opcancel-checks",
        auth=auth,
        clock=clock,
        service_account="fn@my-project.iam.gserviceaccount.com",
        transport=transport,
    )
    check = CheckRequest(
        ref=REF,
        idempotency_key="k",
        attempt=1,
        due_at=clock.now() + 5,
        deadline_at=clock.now() + 60,
        requested_at=clock.now(),
        source=Source(SourceKind.PUBSUB, message_id="m-1"),
    )
    return lambda: scheduler.schedule(check), httpx.Response(200, json={})


def _firestore(auth, transport, clock):
    store = FirestoreStore(project="my-project", lease_s=60, ttl_s=600, auth=auth, transport=transport)
    return lambda: list(store.chains(clock.now())), httpx.Response(200, json=[])


CLIENTS = [_operations, _publisher, _tasks, _firestore]
#: What each client makes of a 401 that a refresh did not cure.
REFUSED = {
    _operations: (ApiRejected, "HTTP 401"),
    _publisher: (PublishFailed, "HTTP 401"),
    _tasks: (ScheduleFailed, "HTTP 401"),
    _firestore: (StoreUnavailable, "HTTP 401"),
}


@pytest.mark.parametrize("client", CLIENTS, ids=lambda client: client.__name__.strip("_"))
def test_a_401_then_success_refreshes_once_and_sends_once_more_with_the_new_token(client):
    google, clock = Google(httpx.Response(401), None), FakeClock()
    transport = httpx.MockTransport(google)
    call, success = client(MetadataServerAuth(clock=clock, transport=transport), transport, clock)
    google.api.script[1] = success
    call()
    assert google.sent_tokens() == ["Bearer token-1", "Bearer token-2"]
    assert google.tokens == 2, "one refresh"
    assert clock.slept == [], "a refresh is not a backoff"


@pytest.mark.parametrize("client", CLIENTS, ids=lambda client: client.__name__.strip("_"))
def test_two_401s_end_the_call_after_one_refresh(client):
    google, clock = Google(httpx.Response(401, json={"error": {"code": 401, "status": "UNAUTHENTICATED"}})), FakeClock()
    transport = httpx.MockTransport(google)
    call, _ = client(MetadataServerAuth(clock=clock, transport=transport), transport, clock)
    error, text = REFUSED[client]
    with pytest.raises(error, match=text) as caught:
        call()
    assert google.sent_tokens() == ["Bearer token-1", "Bearer token-2"]
    assert google.tokens == 2
    if client is _operations:
        assert (caught.value.outcome, caught.value.status) == ("PERMISSION_DENIED", 401)


@pytest.mark.parametrize("client", CLIENTS, ids=lambda client: client.__name__.strip("_"))
def test_anonymous_credentials_never_refresh(client):
    google, clock = Google(httpx.Response(401)), FakeClock()
    call, _ = client(AnonymousAuth(), httpx.MockTransport(google), clock)
    error, _ = REFUSED[client]
    with pytest.raises(error):
        call()
    assert google.sent_tokens() == [None]
    assert google.tokens == 0
