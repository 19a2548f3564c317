"""``OperationsClient`` over ``httpx.MockTransport``: URLs, bodies, error mapping, retries, credentials."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import pytest

from function import (
    AnonymousAuth,
    CancelAnswer,
    Logger,
    OperationRef,
    OperationsClient,
    Outcome,
)
from function._gcp.auth import Authenticator
from function._gcp.errors import decode_error
from function._gcp.operations import settle
from function._names import GLOBAL, LOCATIONS, REGISTRY, VERSIONS, OperationParent
from function.errors import ApiRejected, ApiUnavailable
from tests.support import DATA_DIR, FakeClock

REF = OperationRef("organizations/123456789/operations/abc")
RELATIVE = "organizations/123456789/operations/abc"
HOSTS = {
    "global": "securitycenter.googleapis.com",
    "us": "securitycenter.us.rep.googleapis.com",
    "eu": "securitycenter.eu.rep.googleapis.com",
    "sa": "securitycenter.me-central2.rep.googleapis.com",
}
# Every pair a ref may hold: any version at global, v2 alone at a regional location.
PAIRS = [(GLOBAL, version) for version in VERSIONS] + [(location, "v2") for location in LOCATIONS if location != GLOBAL]
SECRET = "ya29.SECRET-token-do-not-log"


def data(name: str) -> bytes:
    return (DATA_DIR / name).read_bytes()


def reply(status: int, body: bytes | dict | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    if isinstance(body, dict):
        return httpx.Response(status, json=body, headers=headers)
    return httpx.Response(status, content=body or b"", headers=headers)


def api_error(status: int, rpc_status: str, message: str = "nope") -> httpx.Response:
    return reply(status, {"error": {"code": status, "message": message, "status": rpc_status}})


OPERATION = json.loads(data("operation-running.json"))


class CountingAuth(Authenticator):
    """An Authenticator whose token changes on each refresh, counting the refreshes."""

    def __init__(self, token: str = SECRET, *, can_refresh: bool = True) -> None:
        self.token = token
        self.can_refresh = can_refresh
        self.refreshes = 0

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def refresh(self) -> bool:
        if not self.can_refresh:
            return False
        self.refreshes += 1
        self.token = f"{SECRET}-refreshed-{self.refreshes}"
        return True


Step = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Harness:
    """A client whose transport plays ``script`` in order (the last step repeats) and records each request."""

    def __init__(
        self,
        script: Iterable[Step],
        *,
        auth: Any = None,
        endpoint: str | None = None,
        jitter: Callable[[], float] | None = None,
        **options: Any,
    ) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []
        self.clock = FakeClock()
        self.stream = io.StringIO()
        self.auth = auth or AnonymousAuth()
        if jitter is not None:
            options["jitter"] = jitter
        self.client = OperationsClient(
            auth=self.auth,
            clock=self.clock,
            log=Logger(self.stream),
            endpoint=endpoint,
            transport=httpx.MockTransport(self._handle),
            **options,
        )

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        if callable(step):
            return step(request)
        return step

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


def ok_cancel() -> httpx.Response:
    return reply(200, {})


def ok_get(body: dict | None = None) -> httpx.Response:
    return reply(200, body or OPERATION)


# --- URLs and request shapes -------------------------------------------------------------------


@pytest.mark.parametrize(("location", "version"), PAIRS)
def test_cancel_posts_the_body_its_discovery_document_defines_to_the_location_host_and_version(location, version):
    harness = Harness([ok_cancel()])
    ref = OperationRef("organizations/123456789/operations/abc", location, version)
    assert harness.client.cancel(ref) is CancelAnswer.ACCEPTED
    (request,) = harness.requests
    assert request.method == "POST"
    assert str(request.url) == f"https://{HOSTS[location]}/{version}/{RELATIVE}:cancel"
    # Only v1beta1's cancel takes a CancelOperationRequest; v1p1beta1, v1 and v2 take no body at all.
    if version == "v1beta1":
        assert (request.content, request.headers["content-type"]) == (b"{}", "application/json")
    else:
        assert (request.content, request.headers["content-length"]) == (b"", "0")
        assert "content-type" not in request.headers


@pytest.mark.parametrize(("location", "version"), PAIRS)
def test_get_sends_a_bodiless_get_to_the_location_host_and_version(location, version):
    harness = Harness([ok_get()])
    ref = OperationRef("organizations/123456789/operations/abc", location, version)
    assert harness.client.get(ref) == OPERATION
    (request,) = harness.requests
    assert request.method == "GET"
    assert str(request.url) == f"https://{HOSTS[location]}/{version}/{RELATIVE}"
    assert request.content == b""


@pytest.mark.parametrize("location", LOCATIONS)
def test_url_names_the_location_host(location):
    harness = Harness([ok_get()])
    assert harness.client.url(OperationRef("organizations/1/operations/x~y.z_-", location, "v2")) == (
        f"https://{HOSTS[location]}/v2/organizations/1/operations/x~y.z_-"
    )


@pytest.mark.parametrize("location", LOCATIONS)
def test_an_endpoint_replaces_every_host(location):
    harness = Harness([ok_cancel()], endpoint="http://127.0.0.1:9000")
    harness.client.cancel(OperationRef("organizations/1/operations/abc", location, "v2"))
    assert str(harness.requests[0].url) == "http://127.0.0.1:9000/v2/organizations/1/operations/abc:cancel"


def test_an_endpoint_may_carry_a_path_prefix():
    harness = Harness([ok_get()], endpoint="https://private.example.com/scc")
    harness.client.get(OperationRef("organizations/1/operations/abc", "eu", "v2"))
    assert str(harness.requests[0].url) == "https://private.example.com/scc/v2/organizations/1/operations/abc"


def test_cancel_accepts_a_2xx_without_a_body():
    assert Harness([reply(200)]).client.cancel(REF) is CancelAnswer.ACCEPTED
    assert Harness([reply(204)]).client.cancel(REF) is CancelAnswer.ACCEPTED


@pytest.mark.parametrize(
    "name", ["operation-running.json", "operation-cancelled.json", "operation-completed.json", "operation-failed.json"]
)
def test_get_returns_the_operation_as_sent(name):
    assert Harness([reply(200, data(name))]).client.get(REF) == json.loads(data(name))


def test_get_accepts_an_operation_that_leaves_done_out():
    body = {"name": RELATIVE, "metadata": {}}
    assert Harness([ok_get(body)]).client.get(REF) == body


def test_redirects_are_never_followed():
    harness = Harness([reply(302, headers={"location": "https://evil.com/steal"})], auth=CountingAuth())
    with pytest.raises(ApiUnavailable, match="HTTP 302"):
        harness.client.cancel(REF)
    assert [str(r.url.host) for r in harness.requests] == ["securitycenter.googleapis.com"]


# --- the API's refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["cancel", "get"])
@pytest.mark.parametrize(
    ("sample", "status", "outcome", "message"),
    [
        ("error-not-found.json", 404, Outcome.NOT_FOUND, f"HTTP 404: NOT_FOUND: Operation {RELATIVE} not found."),
        (
            "error-permission-denied.json",
            403,
            Outcome.PERMISSION_DENIED,
            "HTTP 403: PERMISSION_DENIED: The caller does not have permission",
        ),
        (
            "error-unimplemented.json",
            501,
            Outcome.UNSUPPORTED,
            "HTTP 501: UNIMPLEMENTED: Operation cancellation is not supported.",
        ),
    ],
)
def test_rest_error_bodies_map_to_their_outcomes(method, sample, status, outcome, message):
    harness = Harness([reply(status, data(sample))])
    with pytest.raises(ApiRejected) as caught:
        getattr(harness.client, method)(REF)
    assert caught.value.outcome == outcome.value
    assert caught.value.status == status
    assert str(caught.value) == message
    assert len(harness.requests) == 1, "a permanent refusal is never retried"
    assert harness.clock.slept == []


def test_failed_precondition_on_cancel_means_already_done():
    harness = Harness([api_error(400, "FAILED_PRECONDITION", "Operation is already done.")])
    assert harness.client.cancel(REF) is CancelAnswer.ALREADY_DONE
    assert len(harness.requests) == 1


def test_failed_precondition_on_get_is_a_rejection():
    with pytest.raises(ApiRejected) as caught:
        Harness([api_error(400, "FAILED_PRECONDITION")]).client.get(REF)
    assert caught.value.outcome == "REJECTED"


@pytest.mark.parametrize("method", ["cancel", "get"])
def test_invalid_argument_is_a_rejection_with_the_apis_message(method):
    harness = Harness([api_error(400, "INVALID_ARGUMENT", "Invalid operation name.")])
    with pytest.raises(ApiRejected) as caught:
        getattr(harness.client, method)(REF)
    assert caught.value.outcome == "REJECTED"
    assert caught.value.status == 400
    assert str(caught.value) == "HTTP 400: INVALID_ARGUMENT: Invalid operation name."
    assert len(harness.requests) == 1


@pytest.mark.parametrize("status", [400, 405, 410, 412, 413, 422])
def test_other_4xx_without_a_body_are_rejections_with_the_reason_phrase(status):
    with pytest.raises(ApiRejected) as caught:
        Harness([reply(status)]).client.cancel(REF)
    assert caught.value.outcome == "REJECTED"
    assert str(caught.value) == f"HTTP {status}: {httpx.codes.get_reason_phrase(status)}"


def test_a_400_with_a_non_json_body_is_a_rejection_not_already_done():
    with pytest.raises(ApiRejected) as caught:
        Harness([reply(400, b"<html>FAILED_PRECONDITION</html>")]).client.cancel(REF)
    assert caught.value.outcome == "REJECTED"


def test_long_api_messages_are_bounded():
    with pytest.raises(ApiRejected) as caught:
        Harness([api_error(400, "INVALID_ARGUMENT", "m" * 10_000)]).client.cancel(REF)
    assert len(str(caught.value)) < 400


# --- transient trouble -------------------------------------------------------------------------


def test_rate_limiting_is_not_retried_in_process_and_hands_back_the_retry_delay():
    harness = Harness([reply(429, data("error-rate-limited.json")), ok_cancel()])
    with pytest.raises(ApiUnavailable) as caught:
        harness.client.cancel(REF)
    assert caught.value.retry_after == 30.0
    assert str(caught.value).startswith("HTTP 429: RESOURCE_EXHAUSTED: Quota exceeded")
    assert len(harness.requests) == 1
    assert harness.clock.slept == []


@pytest.mark.parametrize(
    ("retry_delay", "header", "expected"),
    [("1.5s", None, 1.5), ("0s", None, 0.0), (None, "12", 12.0), (None, None, None), ("soon", "7", 7.0)],
)
def test_the_retry_delay_comes_from_retry_info_or_the_header(retry_delay, header, expected):
    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}] if retry_delay else []
    body = {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED", "details": details}}
    response = reply(429, body, headers={"retry-after": header} if header else None)
    with pytest.raises(ApiUnavailable) as caught:
        Harness([response]).client.get(REF)
    assert caught.value.retry_after == expected


@pytest.mark.parametrize("status", [408, 409])
def test_timeouts_and_aborts_are_transient_and_left_to_redelivery(status):
    harness = Harness([api_error(status, "ABORTED"), ok_cancel()])
    with pytest.raises(ApiUnavailable, match=f"HTTP {status}"):
        harness.client.cancel(REF)
    assert len(harness.requests) == 1


@pytest.mark.parametrize("method", ["cancel", "get"])
def test_a_conflict_other_than_aborted_is_a_rejection_with_the_apis_message(method):
    harness = Harness([api_error(409, "ALREADY_EXISTS", "Entity already exists.")])
    with pytest.raises(ApiRejected) as caught:
        getattr(harness.client, method)(REF)
    assert (caught.value.outcome, caught.value.status) == ("REJECTED", 409)
    assert str(caught.value) == "HTTP 409: ALREADY_EXISTS: Entity already exists."
    assert len(harness.requests) == 1


def test_a_conflict_that_names_no_status_is_taken_as_aborted():
    with pytest.raises(ApiUnavailable, match="HTTP 409"):
        Harness([reply(409)]).client.cancel(REF)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_retried_in_process(status):
    harness = Harness([reply(status), reply(status), ok_cancel()], jitter=lambda: 1.0)
    assert harness.client.cancel(REF) is CancelAnswer.ACCEPTED
    assert len(harness.requests) == 3
    assert harness.clock.slept == [0.25, 0.5]


def test_retries_of_a_get_repeat_the_same_request():
    harness = Harness([reply(503), ok_get()], jitter=lambda: 0.0)
    assert harness.client.get(REF) == OPERATION
    assert [(r.method, str(r.url)) for r in harness.requests] == [
        ("GET", f"https://securitycenter.googleapis.com/v2/{RELATIVE}")
    ] * 2


def test_persistent_503_gives_up_after_max_attempts_with_api_unavailable():
    harness = Harness([api_error(503, "UNAVAILABLE", "down")], jitter=lambda: 1.0)
    with pytest.raises(ApiUnavailable) as caught:
        harness.client.cancel(REF)
    assert str(caught.value) == "HTTP 503: UNAVAILABLE: down"
    assert len(harness.requests) == 4
    assert harness.clock.slept == [0.25, 0.5, 1.0]


def test_backoff_is_jittered_between_half_and_all_of_an_exponential_ceiling():
    draws = iter([0.0, 0.5, 1.0, 0.0])
    harness = Harness([reply(503)], jitter=lambda: next(draws))
    with pytest.raises(ApiUnavailable):
        harness.client.cancel(REF)
    assert harness.clock.slept == [0.125, 0.375, 1.0]


def test_default_jitter_stays_within_bounds_and_varies():
    seen: set[float] = set()
    for _ in range(20):
        harness = Harness([reply(503)])
        with pytest.raises(ApiUnavailable):
            harness.client.cancel(REF)
        assert len(harness.clock.slept) == 3
        for delay, ceiling in zip(harness.clock.slept, [0.25, 0.5, 1.0], strict=True):
            assert ceiling / 2 <= delay <= ceiling
        seen.update(harness.clock.slept)
    assert len(seen) > 3, "delays should be jittered, not fixed"


def test_backoff_is_capped_at_max_delay():
    harness = Harness([reply(503)], jitter=lambda: 1.0, max_attempts=7, max_delay_s=2.0)
    with pytest.raises(ApiUnavailable):
        harness.client.cancel(REF)
    assert harness.clock.slept == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_the_retry_budget_bounds_the_time_spent_including_slow_requests():
    def slow_503(request: httpx.Request) -> httpx.Response:
        harness.clock.advance(5.0)
        return reply(503)

    harness = Harness([slow_503], jitter=lambda: 1.0, max_attempts=10, retry_budget_s=12.0)
    started = harness.clock.now()
    with pytest.raises(ApiUnavailable):
        harness.client.cancel(REF)
    # After the third slow attempt 15.75 s have passed: one more sleep would overrun the 12 s budget.
    assert len(harness.requests) == 3
    assert harness.clock.slept == [0.25, 0.5]
    assert harness.clock.now() - started == pytest.approx(15.75)


def test_the_retry_budget_stops_sleeping_past_it():
    harness = Harness([reply(503)], jitter=lambda: 1.0, max_attempts=10, retry_budget_s=1.0)
    with pytest.raises(ApiUnavailable):
        harness.client.cancel(REF)
    assert harness.clock.slept == [0.25, 0.5]
    assert sum(harness.clock.slept) <= 1.0


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.WriteError("broken pipe"),
        httpx.RemoteProtocolError("server disconnected"),
        httpx.PoolTimeout("pool"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_connection_errors_are_retried_then_succeed(error):
    harness = Harness([error, error, ok_cancel()], jitter=lambda: 0.0)
    assert harness.client.cancel(REF) is CancelAnswer.ACCEPTED
    assert len(harness.requests) == 3
    assert harness.clock.slept == [0.125, 0.25]


def test_persistent_connection_errors_end_in_api_unavailable():
    harness = Harness([httpx.ConnectError("connection refused")], jitter=lambda: 1.0)
    with pytest.raises(ApiUnavailable) as caught:
        harness.client.get(REF)
    assert str(caught.value) == f"GET {RELATIVE}: ConnectError after 4 attempts"
    assert caught.value.retry_after is None
    assert len(harness.requests) == 4
    assert harness.clock.slept == [0.25, 0.5, 1.0]


def test_a_body_that_cannot_be_decoded_is_transient_not_a_crash():
    def broken(request: httpx.Request) -> httpx.Response:
        # A stream, so the body is decoded by the client as it reads it, as off the network.
        return httpx.Response(200, stream=httpx.ByteStream(b"this is not gzip"), headers={"content-encoding": "gzip"})

    harness = Harness([broken], jitter=lambda: 0.0)
    with pytest.raises(ApiUnavailable, match="DecodingError after 4 attempts"):
        harness.client.get(REF)


def test_a_gzipped_operation_is_decoded():
    body = gzip.compress(json.dumps(OPERATION).encode())
    assert Harness([reply(200, body, headers={"content-encoding": "gzip"})]).client.get(REF) == OPERATION


def test_each_retry_is_logged_with_its_failure_and_delay():
    harness = Harness([reply(503), httpx.ReadTimeout("slow"), ok_cancel()], jitter=lambda: 1.0)
    harness.client.cancel(REF)
    retries = [entry for entry in harness.logs() if entry.get("event") == "api_retry"]
    assert [(e["failure"], e["attempt"], e["delay_s"], e["method"], e["operation"]) for e in retries] == [
        ("HTTP 503", 1, 0.25, "POST", RELATIVE),
        ("ReadTimeout", 2, 0.5, "POST", RELATIVE),
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>Service Unavailable</body></html>",
        b"",
        b"[]",
        b'"operation"',
        b"null",
        b"42",
        b'{"done": "yes", "name": "x"}',
        b'{"done": 1, "name": "x"}',
        b"{}",
        b'{"status": "ok"}',
        b'{"done": true}',
        b'{"name": 5, "done": true}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000,
        b"\xff\xfe",
    ],
    ids=lambda body: body[:24].decode("utf-8", "replace"),
)
def test_a_body_that_is_not_an_operation_is_transient(body):
    harness = Harness([reply(200, body)])
    with pytest.raises(ApiUnavailable, match="get answered 200 with a body that is not an Operation"):
        harness.client.get(REF)
    assert len(harness.requests) == 1


def test_a_deeply_nested_error_body_still_maps_by_status():
    with pytest.raises(ApiRejected) as caught:
        Harness([reply(404, b'{"error":' * 100_000)]).client.cancel(REF)
    assert caught.value.outcome == "NOT_FOUND"


# --- credentials -------------------------------------------------------------------------------


def test_the_bearer_token_is_sent():
    harness = Harness([ok_cancel()], auth=CountingAuth())
    harness.client.cancel(REF)
    assert harness.requests[0].headers["authorization"] == f"Bearer {SECRET}"


@pytest.mark.parametrize("method", ["cancel", "get"])
def test_anonymous_auth_sends_no_authorization_header(method):
    harness = Harness([ok_cancel() if method == "cancel" else ok_get()])
    getattr(harness.client, method)(REF)
    assert "authorization" not in harness.requests[0].headers


@pytest.mark.parametrize("method", ["cancel", "get"])
def test_a_401_refreshes_credentials_once_and_retries_with_the_new_token(method):
    auth = CountingAuth()
    harness = Harness([reply(401), ok_cancel() if method == "cancel" else ok_get()], auth=auth)
    getattr(harness.client, method)(REF)
    assert auth.refreshes == 1
    tokens = [r.headers["authorization"] for r in harness.requests]
    assert tokens == [f"Bearer {SECRET}", f"Bearer {SECRET}-refreshed-1"]
    assert harness.clock.slept == [], "a refresh is not a backoff"


@pytest.mark.parametrize("method", ["cancel", "get"])
def test_a_second_401_after_the_refresh_is_permission_denied(method):
    auth = CountingAuth()
    harness = Harness([api_error(401, "UNAUTHENTICATED", "bad token")], auth=auth)
    with pytest.raises(ApiRejected) as caught:
        getattr(harness.client, method)(REF)
    assert caught.value.outcome == "PERMISSION_DENIED"
    assert caught.value.status == 401
    assert str(caught.value) == "HTTP 401: UNAUTHENTICATED: bad token"
    assert auth.refreshes == 1
    assert len(harness.requests) == 2


def test_a_401_without_credentials_to_refresh_is_permission_denied_at_once():
    harness = Harness([reply(401), ok_cancel()])
    with pytest.raises(ApiRejected) as caught:
        harness.client.cancel(REF)
    assert caught.value.outcome == "PERMISSION_DENIED"
    assert len(harness.requests) == 1


def test_an_authenticator_that_cannot_refresh_is_not_retried():
    auth = CountingAuth(can_refresh=False)
    harness = Harness([reply(401), ok_cancel()], auth=auth)
    with pytest.raises(ApiRejected):
        harness.client.cancel(REF)
    assert len(harness.requests) == 1


def test_a_403_does_not_refresh_credentials():
    auth = CountingAuth()
    harness = Harness([reply(403, data("error-permission-denied.json")), ok_cancel()], auth=auth)
    with pytest.raises(ApiRejected):
        harness.client.cancel(REF)
    assert auth.refreshes == 0
    assert len(harness.requests) == 1


def test_a_refresh_does_not_use_up_a_retry_attempt():
    auth = CountingAuth()
    harness = Harness([reply(503), reply(401), reply(503), reply(503), ok_cancel()], auth=auth, jitter=lambda: 1.0)
    assert harness.client.cancel(REF) is CancelAnswer.ACCEPTED
    assert auth.refreshes == 1
    assert len(harness.requests) == 5
    assert harness.clock.slept == [0.25, 0.5, 1.0]


def test_each_call_may_refresh_once():
    auth = CountingAuth()
    harness = Harness([reply(401), ok_cancel(), reply(401), ok_get()], auth=auth)
    harness.client.cancel(REF)
    harness.client.get(REF)
    assert auth.refreshes == 2


def test_the_token_never_reaches_the_logs_or_the_errors():
    auth = CountingAuth()
    harness = Harness(
        [
            reply(503),
            httpx.ConnectError(f"proxy said: Authorization: Bearer {SECRET}"),
            reply(401),
            reply(503),
            reply(401),
        ],
        auth=auth,
        jitter=lambda: 1.0,
    )
    with pytest.raises(ApiRejected) as caught:
        harness.client.cancel(REF)
    errors = [str(caught.value)]
    harness.script = [reply(503)]
    with pytest.raises(ApiUnavailable) as unavailable:
        harness.client.get(REF)
    errors.append(str(unavailable.value))
    output = harness.stream.getvalue()
    assert len(harness.logs()) >= 3, "the test needs log lines to look at"
    assert "SECRET" not in output and "Bearer" not in output
    assert not any("SECRET" in error or "Bearer" in error for error in errors)


def test_close_closes_the_connection_pool():
    harness = Harness([ok_cancel()])
    harness.client.close()
    with pytest.raises(RuntimeError):
        harness.client.cancel(REF)


# --- other Google APIs -------------------------------------------------------------------------


def vertex_ref(location: str = "us-central1") -> OperationRef:
    return OperationRef(
        f"projects/my-proj/locations/{location}/operations/42", location, "v1", REGISTRY.require("aiplatform")
    )


def test_another_services_calls_go_to_the_host_the_registry_derives():
    harness = Harness([ok_cancel(), ok_get()])
    harness.client.cancel(vertex_ref())
    harness.client.get(vertex_ref("global"))
    assert [str(request.url) for request in harness.requests] == [
        "https://us-central1-aiplatform.googleapis.com/v1/projects/my-proj/locations/us-central1/operations/42:cancel",
        "https://aiplatform.googleapis.com/v1/projects/my-proj/locations/global/operations/42",
    ]


def test_an_endpoint_with_a_host_placeholder_keeps_each_calls_host_in_its_path():
    harness = Harness([ok_cancel()], endpoint="http://127.0.0.1:9000/{host}")
    harness.client.cancel(vertex_ref())
    harness.client.cancel(REF)
    assert [str(request.url) for request in harness.requests] == [
        "http://127.0.0.1:9000/us-central1-aiplatform.googleapis.com/v1/projects/my-proj/locations/us-central1/operations/42:cancel",
        f"http://127.0.0.1:9000/securitycenter.googleapis.com/v2/{RELATIVE}:cancel",
    ]


def test_the_pager_follows_every_page_and_stops_on_a_repeated_token():
    parent = OperationParent("projects/my-proj/regions/us-east1", "us-east1", "v1", REGISTRY.require("dataproc"))
    pages = [
        reply(200, {"operations": [{"name": "a"}], "nextPageToken": "t1"}),
        reply(200, {"operations": [{"name": "b"}], "nextPageToken": "t2"}),
        reply(200, {"operations": [{"name": "c"}]}),
    ]
    harness = Harness(pages)
    assert list(harness.client.pages(parent, filter="done=false", page_size=1)) == [
        [{"name": "a"}],
        [{"name": "b"}],
        [{"name": "c"}],
    ]
    urls = [request.url for request in harness.requests]
    assert {(url.host, url.path) for url in urls} == {
        ("us-east1-dataproc.googleapis.com", "/v1/projects/my-proj/regions/us-east1/operations")
    }
    assert [url.params.get("pageToken") for url in urls] == [None, "t1", "t2"]
    assert all(url.params["filter"] == "done=false" and url.params["pageSize"] == "1" for url in urls)
    looping = Harness([reply(200, {"nextPageToken": "t1"})])
    with pytest.raises(ApiUnavailable, match="repeated a page token"):
        list(looping.client.pages(parent))
    assert len(looping.requests) == 2


# --- the error decoder -------------------------------------------------------------------------


def test_an_error_body_is_decoded_once_into_its_status_fields():
    error = decode_error(reply(429, data("error-rate-limited.json")))
    assert (error.status, error.rpc_status, error.retry_delay_s) == (429, "RESOURCE_EXHAUSTED", 30.0)
    assert error.message is not None and error.message.startswith("Quota exceeded")


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"status": 7, "message": ["x"], "details": {"retryDelay": "5s"}}},
        {"error": "PERMISSION_DENIED"},
        [{"error": {"status": "NOT_FOUND"}}],
    ],
    ids=["wrong-types", "error-not-an-object", "body-not-an-object"],
)
def test_malformed_error_fields_are_left_out_not_trusted(body):
    error = decode_error(httpx.Response(403, json=body))
    assert (error.rpc_status, error.message, error.retry_delay_s) == (None, None, None)
    assert error.summary == "HTTP 403: Forbidden"


@pytest.mark.parametrize(
    ("retry_delay", "header", "expected"),
    [
        ("99999999999s", None, 600.0),
        ("600.000000001s", None, 600.0),
        (None, "99999999999", 600.0),
        (None, "9" * 5000, 600.0),
        ("9" * 400 + "s", None, None),
        ("1e999s", None, None),
        ("Infinitys", None, None),
        ("-5s", None, None),
        ("1.0000000001s", None, None),
        ("\u0661\u0662s", None, None),
        (None, "\u00b2", None),
        (None, "\u0661\u0662", None),
        (None, "-1", None),
        (None, "1.5", None),
        (None, "Wed, 21 Oct 2026 07:28:00 GMT", None),
        ({"seconds": 5}, None, None),
        ("\u00b2s", "4", 4.0),
    ],
)
def test_a_retry_hint_is_honoured_up_to_ten_minutes_and_a_malformed_one_ignored(retry_delay, header, expected):
    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}] if retry_delay else []
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": details}}
    # As bytes on the wire: httpx takes only ASCII str header values.
    error = decode_error(reply(429, body, headers={"retry-after": header.encode()} if header else None))
    assert error.retry_delay_s == expected
    assert error.summary == "HTTP 429: RESOURCE_EXHAUSTED"


# --- what an Operation's state means -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "outcome", "error"),
    [
        ("operation-completed.json", Outcome.COMPLETED, None),
        ("operation-cancelled.json", Outcome.CANCELLED, None),
        ("operation-failed.json", Outcome.FAILED, "rpc code"),
    ],
)
def test_a_done_operation_settles_as_its_outcome_even_past_the_deadline(name, outcome, error):
    for now in (0.0, 100.0):
        settled = settle(json.loads(data(name)), now=now, deadline_at=50.0)
        assert settled is not None and settled[0] is outcome
        assert (settled[1] or "").startswith(error or "")
        assert (settled[1] is None) == (error is None)


def test_a_running_operation_waits_until_its_deadline_then_times_out():
    assert settle(OPERATION, now=49.999, deadline_at=50.0) is None
    assert settle(OPERATION, now=50.0, deadline_at=50.0) == (
        Outcome.TIMED_OUT,
        "operation still running at the deadline 1970-01-01T00:00:50.000Z",
    )
