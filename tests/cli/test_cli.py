"""``python -m function`` through click's CliRunner, with the simulator mounted in-process.

Clients are injected as click's context object (``obj=``), never patched in.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import re
import subprocess
import sys
from typing import Any

import google.auth.exceptions
import httpx
import pytest
from click.testing import CliRunner, Result

from devkit.simulator import Simulator, serve
from function import (
    AnonymousAuth,
    DefaultCredentialsAuth,
    InboundMessage,
    Logger,
    OperationRef,
    OperationsClient,
    PollingPolicy,
    PubSubPublisher,
    Settings,
)
from function._names import OperationParent
from function.cli import CliClients, Exit, cli
from function.errors import InvalidRequest
from tests.support import FakeClock, MemoryPublisher
from tests.support import Rig as ServiceRig

ROOT = pathlib.Path(__file__).resolve().parents[2]
ORG = "organizations/1"
POLICY = PollingPolicy(initial_delay_s=5.0, multiplier=2.0, max_delay_s=60.0, deadline_s=120.0)
NAME = f"{ORG}/operations/abc"
HOSTILE = [
    "organizations/1/operations/../../v1/organizations/2/operations/x:cancel",
    "organizations/1/operations/a?b=c",
    "organizations/1/operations/a#frag",
    "organizations/1/operations/%2e%2e",
    "organizations/1/operations/a/b",
    "organizations/1/operations/.",
    "organizations/01/operations/a",
    "organizations/1/operations/a\norganizations/2/operations/b",
    "organizations/1/operations/\x1b[31mred",
    "https://evil.example.com/v1/organizations/1/operations/a",
    "http://securitycenter.googleapis.com/v1/organizations/1/operations/a",
    "https://securitycenter.googleapis.com/v9/organizations/1/operations/a",
    "//evil.example.com/organizations/1/operations/a",
    "organizations/1/operations/" + "a" * 129,
    "projects/1/operations/a",
    "",
]


class Rig:
    """The CLI's clients over the in-process simulator, a fake clock and a memory publisher."""

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        simulator: Simulator | None = None,
        auth: Any = None,
        publisher: Any = None,
        transport: httpx.BaseTransport | None = None,
        terminal: bool = False,
    ) -> None:
        self.clock = FakeClock()
        self.simulator = simulator or Simulator()
        self.publisher = publisher if publisher is not None else MemoryPublisher()
        self.log = io.StringIO()
        self.settings = settings or Settings(project="test-project", polling=POLICY)
        auth = auth or AnonymousAuth()
        api = OperationsClient(
            auth=auth,
            clock=self.clock,
            log=Logger(self.log),
            endpoint="http://simulator.test",
            transport=transport or httpx.WSGITransport(app=self.simulator),
            jitter=lambda: 0.5,
        )
        self.clients = CliClients(
            settings=self.settings,
            auth=auth,
            api=api,
            clock=self.clock,
            publisher=self.publisher,
            is_terminal=lambda: terminal,
        )

    def run(self, *args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), obj=self.clients, catch_exceptions=False, input=input)

    def touch(self, *operation_ids: str, cancel: bool = False) -> None:
        """Make operations exist in the simulator (and cancel them), then forget those calls."""
        for operation_id in operation_ids:
            ref = OperationRef(f"organizations/1/operations/{operation_id}")
            if cancel:
                self.clients.api.cancel(ref)
            self.clients.api.get(ref)
        self.simulator.calls.clear()

    def queries(self) -> list[str]:
        return [call.query for call in self.simulator.calls]


@pytest.fixture
def rig() -> Rig:
    return Rig()


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


# cancel


def test_cancel_cancels_and_reports_what_the_immediate_get_shows(rig):
    result = rig.run("cancel", NAME)
    assert result.exit_code == Exit.OK == 0
    assert result.stdout == f"CANCELLED {NAME}\n"
    assert [(c.method, c.path) for c in rig.simulator.calls] == [
        ("POST", f"/v2/{NAME}:cancel"),
        ("GET", f"/v2/{NAME}"),
    ]


def test_cancel_json_is_shaped_like_a_result_event_from_the_cli(rig):
    report = as_json(rig.run("cancel", NAME, "--json"))
    service = ServiceRig()
    service.send(NAME)
    (result_event,) = service.publisher.results()
    assert list(report) == list(result_event)
    assert report["source"] == {"kind": "cli"}
    assert report["outcome"] == "CANCELLED"
    assert report["operation"] == NAME
    assert (report["location"], report["api_version"]) == ("global", "v2")
    assert report["idempotency_key"] == f"securitycenter.googleapis.com/{NAME}"
    assert report["checks"] == 1
    assert report["error"] is None
    assert report["final_operation"]["error"]["code"] == 1
    assert report["finished_at"] >= report["requested_at"]


def test_cancel_without_wait_of_a_running_operation_exits_0_with_no_outcome_yet(rig):
    result = rig.run("cancel", f"{ORG}/operations/slow-3-x")
    assert result.exit_code == 0
    assert "cancel accepted" in result.stdout and "still running" in result.stdout
    report = as_json(rig.run("cancel", f"{ORG}/operations/slow-3-y", "--json"))
    assert report["outcome"] is None and report["finished_at"] is None
    assert report["final_operation"]["done"] is False
    assert rig.clock.slept == []


WAIT_OUTCOMES = [
    ("plain", "CANCELLED", Exit.OK, 1),
    ("slow-2-x", "CANCELLED", Exit.OK, 3),
    ("stuck-x", "TIMED_OUT", Exit.TIMED_OUT, 6),
    ("missing-x", "NOT_FOUND", Exit.NOT_FOUND, 0),
    ("denied-x", "PERMISSION_DENIED", Exit.PERMISSION_DENIED, 0),
    ("unsupported-x", "UNSUPPORTED", Exit.UNSUPPORTED, 0),
    ("invalid-x", "REJECTED", Exit.REJECTED, 0),
    ("completes-x", "COMPLETED", Exit.COMPLETED, 1),
    ("fails-x", "FAILED", Exit.FAILED, 1),
    ("done-x", "COMPLETED", Exit.COMPLETED, 1),
]


@pytest.mark.parametrize(("operation_id", "outcome", "status", "checks"), WAIT_OUTCOMES)
def test_cancel_wait_ends_with_each_outcome_and_its_exit_status(rig, operation_id, outcome, status, checks):
    result = rig.run("cancel", f"{ORG}/operations/{operation_id}", "--wait", "--json")
    assert result.exit_code == status
    report = json.loads(result.stdout)
    assert report["outcome"] == outcome
    assert report["checks"] == checks
    assert (report["error"] is None) == (outcome in ("CANCELLED", "COMPLETED"))


def test_only_cancelled_exits_0_and_every_other_outcome_has_its_own_status():
    statuses = [status for _, outcome, status, _ in WAIT_OUTCOMES if outcome != "CANCELLED"]
    assert Exit.OK not in statuses
    by_outcome = {outcome: status for _, outcome, status, _ in WAIT_OUTCOMES}
    assert len(set(by_outcome.values())) == len(by_outcome)


def test_wait_follows_the_settings_polling_policy_and_shows_progress(rig):
    result = rig.run("cancel", f"{ORG}/operations/slow-2-x", "--wait")
    assert result.exit_code == 0
    assert result.stdout == f"CANCELLED {ORG}/operations/slow-2-x\n"
    assert rig.clock.slept == [5.0, 10.0]
    progress = result.stderr.splitlines()
    assert "cancel accepted; waiting up to 120s" in progress[0]
    assert "get 1: still running; next get in 5s" in progress[1]
    assert "get 2: still running; next get in 10s" in progress[2]
    assert all(f"{ORG}/operations/slow-2-x" in line for line in progress)


def test_wait_times_out_at_the_deadline_with_the_last_get_on_it(rig):
    result = rig.run("cancel", f"{ORG}/operations/stuck-x", "--wait")
    assert result.exit_code == Exit.TIMED_OUT
    assert result.stdout.startswith(f"TIMED_OUT {ORG}/operations/stuck-x: operation still running at the deadline")
    # 5, 10, 20, 40 (= 75 s), then the remaining 45 s up to the 120 s deadline.
    assert rig.clock.slept == [5.0, 10.0, 20.0, 40.0, 45.0]


class Slow(httpx.BaseTransport):
    """The simulator, each call taking ``seconds`` on the clock it is given once the rig has one."""

    def __init__(self, simulator: Simulator, seconds: float) -> None:
        self.inner, self.seconds = httpx.WSGITransport(app=simulator), seconds
        self.clock: FakeClock | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        assert self.clock is not None
        self.clock.advance(self.seconds)
        return response


def test_wait_keeps_the_policys_schedule_however_long_each_get_takes():
    simulator = Simulator()
    slow = Slow(simulator, 0.5)
    rig = Rig(simulator=simulator, transport=slow)
    slow.clock = rig.clock
    assert rig.run("cancel", f"{ORG}/operations/stuck-x", "--wait").exit_code == Exit.TIMED_OUT
    # Gets due 5, 15, 35, 75 s after the cancel was accepted, then the 120 s deadline: each sleep is what is left
    # of the wait once its get (0.5 s) came back.
    assert rig.clock.slept == [4.5, 9.5, 19.5, 39.5, 44.5]


def test_interval_and_timeout_replace_the_policy(rig):
    result = rig.run("cancel", f"{ORG}/operations/stuck-x", "--wait", "--interval", "2", "--timeout", "7", "--json")
    assert result.exit_code == Exit.TIMED_OUT
    assert rig.clock.slept == [2.0, 2.0, 2.0, 1.0]
    assert json.loads(result.stdout)["checks"] == 5


@pytest.mark.parametrize("option", [["--interval", "1"], ["--timeout", "10"]])
def test_interval_and_timeout_need_wait(rig, option):
    result = rig.run("cancel", NAME, *option)
    assert result.exit_code == 2
    assert "only with --wait" in result.stderr
    assert rig.simulator.calls == []


@pytest.mark.parametrize("option", ["--interval", "--timeout"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "604801", "soon"])
def test_interval_and_timeout_must_be_finite_positive_seconds(rig, option, value):
    result = rig.run("cancel", NAME, "--wait", option, value)
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.stderr
    assert rig.simulator.calls == []


def test_a_url_names_the_location_and_version(rig):
    url = "https://securitycenter.eu.rep.googleapis.com/v2/organizations/1/operations/abc"
    report = as_json(rig.run("cancel", url, "--json"))
    assert (report["operation"], report["location"], report["api_version"]) == (NAME, "eu", "v2")
    assert report["idempotency_key"] == f"securitycenter.eu.rep.googleapis.com/{NAME}"
    assert rig.simulator.calls[0].path == f"/v2/{NAME}:cancel"


def test_location_and_api_version_options(rig):
    report = as_json(rig.run("cancel", NAME, "--location", "us", "--api-version", "v2", "--json"))
    assert (report["location"], report["api_version"]) == ("us", "v2")
    assert rig.simulator.calls[0].path == f"/v2/{NAME}:cancel"
    report = as_json(rig.run("cancel", NAME, "--api-version", "v1", "--json"))
    assert (report["location"], report["api_version"]) == ("global", "v1")
    assert rig.simulator.calls[-2].path == f"/v1/{NAME}:cancel"


def test_the_saudi_location_is_sa_and_me_central2_its_alias(rig):
    for given in ("sa", "me-central2"):
        report = as_json(rig.run("cancel", NAME, "--location", given, "--json"))
        assert (report["location"], report["api_version"]) == ("sa", "v2")
        assert report["idempotency_key"] == f"securitycenter.me-central2.rep.googleapis.com/{NAME}"


def test_a_regional_location_with_an_older_version_is_rejected_before_any_call(rig):
    result = rig.run("cancel", NAME, "--location", "eu", "--api-version", "v1", "--json")
    assert result.exit_code == Exit.REJECTED
    report = as_json(result)
    assert report["outcome"] == "REJECTED"
    assert "location eu takes api_version v2 only" in report["error"]
    listing = rig.run("list", ORG, "--location", "eu", "--api-version", "v1")
    assert listing.exit_code == Exit.REJECTED
    assert "location eu takes api_version v2 only" in listing.output
    assert rig.simulator.calls == []


def test_a_regional_listing_takes_v2_whatever_the_default():
    rig = Rig(settings=Settings(project="p", polling=POLICY, api_version="v1"))
    assert rig.run("list", ORG, "--location", "eu").exit_code == 0
    assert rig.simulator.calls[0].path == f"/v2/{ORG}/operations"


def test_the_default_version_comes_from_the_settings():
    rig = Rig(settings=Settings(project="p", polling=POLICY, api_version="v2"))
    assert rig.run("cancel", NAME).exit_code == 0
    assert rig.simulator.calls[0].path == f"/v2/{NAME}:cancel"


def test_an_option_that_contradicts_the_url_is_rejected_before_any_call(rig):
    url = "https://securitycenter.eu.rep.googleapis.com/v2/organizations/1/operations/abc"
    result = rig.run("cancel", url, "--location", "us", "--json")
    assert result.exit_code == Exit.REJECTED
    report = json.loads(result.stdout)
    assert report["outcome"] == "REJECTED" and "contradicts the URL" in report["error"]
    assert rig.simulator.calls == []


@pytest.mark.parametrize("option", [["--location", "mars"], ["--api-version", "v9"]])
def test_unknown_locations_and_versions_are_usage_errors(rig, option):
    assert rig.run("cancel", NAME, *option).exit_code == 2
    assert rig.simulator.calls == []


@pytest.mark.parametrize("status", [503, 429])
def test_an_unavailable_api_on_cancel_exits_10_saying_it_is_safe_to_repeat(status):
    rig = Rig()
    rig.simulator.inject(status, count=10, retry_delay="30s")
    result = rig.run("cancel", NAME, "--wait")
    assert result.exit_code == Exit.API_UNAVAILABLE
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: Operations API unavailable: ") and "safe to repeat" in line


def _failing_gets(app):
    def wrapper(environ, start_response):
        if environ["REQUEST_METHOD"] != "GET":
            return app(environ, start_response)
        start_response("503 Service Unavailable", [("Content-Type", "application/json")])
        return [b'{"error": {"code": 503, "status": "UNAVAILABLE", "message": "try later"}}']

    return wrapper


def test_an_unavailable_api_after_the_cancel_says_the_cancel_was_sent():
    simulator = Simulator()
    rig = Rig(simulator=simulator, transport=httpx.WSGITransport(app=_failing_gets(simulator)))
    result = rig.run("cancel", NAME, "--wait")
    assert result.exit_code == Exit.API_UNAVAILABLE
    assert "the cancel was sent" in result.stderr and f"get {NAME}" in result.stderr
    assert len(simulator.cancel_calls()) == 1


def test_transient_errors_are_retried_in_process_before_giving_up(rig):
    rig.simulator.inject(503, count=2)
    assert rig.run("cancel", NAME).exit_code == 0
    assert len(rig.simulator.cancel_calls()) == 3
    assert '"event":"api_retry"' in rig.log.getvalue()


def test_api_text_is_escaped_before_it_reaches_the_terminal():
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={})
        return httpx.Response(200, json={"name": NAME, "done": True, "error": {"code": 13, "message": "\x1b[2Jboom"}})

    rig = Rig(transport=httpx.MockTransport(answer))
    result = rig.run("cancel", NAME)
    assert result.exit_code == Exit.FAILED
    assert "\x1b" not in result.stdout and "\\x1b[2Jboom" in result.stdout


# get


def test_get_shows_a_running_operation(rig):
    result = rig.run("get", NAME)
    assert result.exit_code == 0
    assert result.stdout == f"RUNNING   {NAME}\n"
    assert [(c.method, c.path) for c in rig.simulator.calls] == [("GET", f"/v2/{NAME}")]


def test_get_shows_how_an_operation_ended(rig):
    rig.touch("abc", "fails-x", cancel=True)
    assert rig.run("get", NAME).stdout == f"CANCELLED {NAME}\n"
    failed = rig.run("get", f"{ORG}/operations/fails-x").stdout
    assert failed == f"FAILED    {ORG}/operations/fails-x  (rpc code 13: Internal error during discovery.)\n"


def test_get_json_prints_the_operation_as_the_api_sent_it(rig):
    rig.touch("abc", cancel=True)
    operation = as_json(rig.run("get", NAME, "--json"))
    assert operation == {
        "name": NAME,
        "metadata": {"@type": "type.googleapis.com/google.protobuf.Empty"},
        "done": True,
        "error": {"code": 1, "message": "Operation was cancelled."},
    }


def test_get_takes_location_and_version(rig):
    assert rig.run("get", NAME, "--location", "eu", "--api-version", "v2").exit_code == 0
    assert rig.simulator.calls[0].path == f"/v2/{NAME}"


@pytest.mark.parametrize(
    ("operation_id", "status"), [("missing-x", Exit.NOT_FOUND), ("denied-x", Exit.PERMISSION_DENIED)]
)
def test_get_refusals_say_the_outcome_on_stdout_as_cancel_does(rig, operation_id, status):
    name = f"{ORG}/operations/{operation_id}"
    result = rig.run("get", name)
    assert result.exit_code == status
    assert result.stdout.startswith(f"{status.name:<9} {name}  (HTTP ")
    assert rig.run("cancel", name).stdout.startswith(f"{status.name} {name}: HTTP ")
    shown = rig.run("get", name, "--json")
    assert shown.exit_code == status
    report = as_json(shown)
    assert (report["name"], report["outcome"]) == (name, status.name) and report["error"].startswith("HTTP ")


def test_get_of_an_unavailable_api_exits_10(rig):
    rig.simulator.inject(503, count=10)
    result = rig.run("get", NAME)
    assert result.exit_code == Exit.API_UNAVAILABLE
    assert result.stderr.startswith("Error: Operations API unavailable: ")


# list


def test_list_follows_every_page(rig):
    rig.simulator.default_page_size = 2
    rig.touch("a", "b", "c", "d", "e")
    result = rig.run("list", ORG)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [f"RUNNING   {ORG}/operations/{x}" for x in "abcde"]
    assert rig.queries() == ["", "pageToken=page-2", "pageToken=page-4"]


def test_list_page_size_asks_the_api_for_smaller_pages(rig):
    rig.touch("a", "b", "c")
    result = rig.run("list", ORG, "--page-size", "2", "--json")
    assert [operation["name"] for operation in as_json(result)["operations"]] == [
        f"{ORG}/operations/{x}" for x in "abc"
    ]
    assert rig.queries() == ["pageSize=2", "pageSize=2&pageToken=page-2"]


def test_list_json_gathers_every_page_into_one_document(rig):
    rig.simulator.default_page_size = 1
    rig.touch("a", "b", "c", cancel=True)
    listing = as_json(rig.run("list", ORG, "--json"))
    assert [(operation["name"], operation["done"]) for operation in listing["operations"]] == [
        (f"{ORG}/operations/{x}", True) for x in "abc"
    ]
    assert len(rig.simulator.calls) == 3


@pytest.mark.parametrize(("expression", "expected"), [("done=true", ["a", "c"]), ("done = false", ["b", "d"])])
def test_list_passes_the_filter_on_every_page(rig, expression, expected):
    rig.simulator.default_page_size = 1
    rig.touch("a", "c", cancel=True)
    rig.touch("b", "d")
    result = rig.run("list", ORG, "--filter", expression)
    assert result.stdout.splitlines()[0].endswith(f"{ORG}/operations/{expected[0]}")
    assert [line.split()[-1] for line in result.stdout.splitlines()] == [f"{ORG}/operations/{x}" for x in expected]
    assert all(re.search(r"(^|&)filter=done", query) for query in rig.queries())


def test_list_only_shows_the_parents_operations(rig):
    rig.touch("a")
    rig.clients.api.get(OperationRef("organizations/2/operations/other"))
    assert rig.run("list", ORG).stdout == f"RUNNING   {ORG}/operations/a\n"


def test_an_operation_get_says_does_not_exist_is_not_listed_or_proposed_for_cancelling(rig):
    assert rig.run("get", f"{ORG}/operations/missing-x").exit_code == Exit.NOT_FOUND
    rig.touch("abc")
    assert rig.run("list", ORG).stdout == f"RUNNING   {NAME}\n"
    assert rig.run("cancel", "--all", ORG, "--dry-run").stdout == f"cancel {NAME}\n"


def test_an_empty_list_says_so(rig):
    result = rig.run("list", ORG)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", f"no operations under {ORG}\n")
    assert as_json(rig.run("list", ORG, "--json")) == {"operations": []}


def test_a_filter_the_api_refuses_exits_9_with_its_message(rig):
    # Each service's filter grammar is its own: the simulator takes any, so the API's refusal is injected.
    rig.simulator.inject(400)
    result = rig.run("list", ORG, "--filter", "metadata.state=RUNNING")
    assert result.exit_code == Exit.REJECTED
    assert "HTTP 400: INVALID_ARGUMENT" in result.stderr


def test_list_takes_location_and_version(rig):
    assert rig.run("list", ORG, "--location", "eu", "--api-version", "v2").exit_code == 0
    assert rig.simulator.calls[0].path == f"/v2/{ORG}/operations"


def test_list_of_an_unavailable_api_exits_10(rig):
    rig.simulator.inject(503, count=10)
    assert rig.run("list", ORG).exit_code == Exit.API_UNAVAILABLE


def test_a_repeated_page_token_stops_the_listing_instead_of_looping():
    page = {"operations": [{"name": NAME, "done": False}], "nextPageToken": "again"}
    rig = Rig(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=page)))
    result = rig.run("list", ORG)
    assert result.exit_code == Exit.API_UNAVAILABLE
    assert "repeated a page token" in result.stderr


@pytest.mark.parametrize(
    "body",
    [[], {"operations": {}}, {"operations": ["x"]}, {"operations": [], "nextPageToken": 7}],
)
def test_a_list_body_that_is_not_a_list_of_operations_exits_10(body):
    rig = Rig(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=body)))
    result = rig.run("list", ORG)
    assert result.exit_code == Exit.API_UNAVAILABLE
    assert "not a list of Operations" in result.stderr


def test_the_list_method_builds_the_url_and_query_from_validated_parts():
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"operations": [{"name": NAME}], "nextPageToken": "t&x=1"})

    client = OperationsClient(
        auth=AnonymousAuth(), clock=FakeClock(), log=Logger(io.StringIO()), transport=httpx.MockTransport(answer)
    )
    operations, token = client.list(
        OperationParent(ORG, "eu", "v2"), filter="done=false & x", page_size=7, page_token="t&x=1"
    )
    assert (operations, token) == ([{"name": NAME}], "t&x=1")
    url = requests[0].url
    assert (url.host, url.path) == ("securitycenter.eu.rep.googleapis.com", f"/v2/{ORG}/operations")
    assert dict(url.params) == {"filter": "done=false & x", "pageSize": "7", "pageToken": "t&x=1"}
    # A parent validates itself, so no list call can be built from unvalidated parts.
    for parent, location, version in [
        ("organizations/1/x", "global", "v1"),
        (ORG, "mars", "v1"),
        (ORG, "global", "v9"),
        (ORG, "eu", "v1"),
        ("projects/my-proj/locations/us-central1", "us-central1", "v1"),
    ]:
        with pytest.raises(InvalidRequest):
            OperationParent(parent, location, version)
    assert len(requests) == 1


# publish


def test_publish_sends_one_request_to_the_requests_topic(rig):
    result = rig.run("publish", NAME)
    assert result.exit_code == 0
    assert result.stdout == f"published message 1 to projects/test-project/topics/opcancel-requests: {NAME}\n"
    ((data, attributes),) = rig.publisher.on("opcancel-requests")
    assert json.loads(data) == {"operation": NAME}
    assert attributes == {}
    assert rig.simulator.calls == []


def test_published_requests_are_what_the_function_acts_on(rig):
    names = [NAME, f"{ORG}/operations/def"]
    result = rig.run("publish", *names, "--location", "eu", "--api-version", "v2", "--idempotency-key", "ticket-7")
    assert result.exit_code == 0
    ((data, attributes),) = rig.publisher.on("opcancel-requests")
    assert json.loads(data) == {
        "operations": names,
        "location": "eu",
        "api_version": "v2",
        "idempotency_key": "ticket-7",
    }
    function = ServiceRig()
    function.service.handle(InboundMessage(data=data, attributes=attributes, message_id="p-1"))
    results = function.publisher.results()
    assert sorted((r["operation"], r["outcome"], r["location"], r["api_version"]) for r in results) == [
        (name, "CANCELLED", "eu", "v2") for name in names
    ]
    assert {r["idempotency_key"] for r in results} == {
        f"ticket-7/securitycenter.eu.rep.googleapis.com/{name}" for name in names
    }


def test_publish_json_names_the_topic_message_and_data(rig):
    result = rig.run("publish", NAME, "--idempotency-key", "k-1", "--json")
    assert as_json(result) == {
        "topic": "projects/test-project/topics/opcancel-requests",
        "message_id": "1",
        "data": {"operation": NAME, "idempotency_key": "k-1"},
    }


def test_publish_uses_the_configured_requests_topic():
    rig = Rig(settings=Settings(project="sec-ops", requests_topic="cancel-these", polling=POLICY))
    assert "projects/sec-ops/topics/cancel-these" in rig.run("publish", NAME).stdout
    assert len(rig.publisher.on("cancel-these")) == 1


def test_publish_rejects_the_whole_message_if_any_name_is_bad(rig):
    result = rig.run("publish", NAME, "organizations/1/operations/a?b", "organizations/1/operations/ok")
    assert result.exit_code == Exit.REJECTED
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: organizations/1/operations/a?b: operation id must be")
    assert line.endswith("nothing published")
    assert rig.publisher.messages == []


def test_publish_refuses_more_than_a_batch(rig):
    names = [f"{ORG}/operations/op-{index}" for index in range(101)]
    result = rig.run("publish", *names)
    assert result.exit_code == Exit.REJECTED
    assert "limit of 100" in result.stderr
    assert rig.publisher.messages == []


@pytest.mark.parametrize("names", [[NAME], [NAME, f"{ORG}/operations/def"]])
def test_publish_refuses_a_bad_idempotency_key(rig, names):
    result = rig.run("publish", *names, "--idempotency-key", "bad\nkey")
    assert result.exit_code == Exit.REJECTED
    assert "idempotency_key" in result.stderr
    assert rig.publisher.messages == []


@pytest.mark.parametrize("publisher", [True, False])
def test_publish_needs_a_project(publisher):
    rig = Rig(settings=Settings(polling=POLICY))
    if not publisher:
        # As main builds it without GOOGLE_CLOUD_PROJECT.
        rig.clients = dataclasses.replace(rig.clients, publisher=None)
    result = rig.run("publish", NAME)
    assert result.exit_code == Exit.BAD_CONFIGURATION
    assert result.stderr == "Error: GOOGLE_CLOUD_PROJECT: is required to publish to the requests topic\n"
    assert rig.publisher.messages == []


def test_an_unconfirmed_publish_exits_13(rig):
    rig.publisher.fail_next = 1
    result = rig.run("publish", NAME)
    assert result.exit_code == Exit.PUBLISH_FAILED
    assert result.stderr.startswith("Error: publish to opcancel-requests failed")


@pytest.mark.parametrize(
    ("emulator", "named"),
    [
        ("127.0.0.1:9", "(Pub/Sub at 127.0.0.1:9, from PUBSUB_EMULATOR_HOST)"),
        (None, "(Pub/Sub at pubsub.googleapis.com; PUBSUB_EMULATOR_HOST names an emulator instead)"),
    ],
)
def test_a_publish_that_cannot_connect_names_the_host_and_the_variable(emulator, named):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    publisher = PubSubPublisher(
        "test-project",
        auth=AnonymousAuth(),
        clock=FakeClock(),
        emulator_host=emulator,
        transport=httpx.MockTransport(refuse),
        jitter=lambda: 0.5,
    )
    settings = Settings(project="test-project", polling=POLICY, pubsub_emulator_host=emulator)
    rig = Rig(publisher=publisher, settings=settings)
    for args in (["publish", NAME], ["cancel", "--all", ORG, "--yes"]):
        rig.touch("abc")
        result = rig.run(*args)
        assert result.exit_code == Exit.PUBLISH_FAILED, result.output
        (line,) = result.stderr.splitlines()[-1:]
        assert line.startswith("Error: publish to opcancel-requests failed") and named in line, line


def test_publish_without_credentials_says_how_to_get_them():
    # The real adapters: ADC finds nothing, and the real publisher would ask the same auth.
    auth = DefaultCredentialsAuth(find=_no_credentials)
    sent: list[httpx.Request] = []
    publisher = PubSubPublisher(
        "test-project",
        auth=auth,
        clock=FakeClock(),
        transport=httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200, json={})),
    )
    rig = Rig(auth=auth, publisher=publisher)
    result = rig.run("publish", NAME)
    assert result.exit_code == Exit.NO_CREDENTIALS == 11
    assert "gcloud auth application-default login" in result.stderr
    assert "PUBSUB_EMULATOR_HOST" in result.stderr
    assert sent == []


def test_publish_to_the_emulator_needs_no_credentials():
    auth = DefaultCredentialsAuth(find=_no_credentials)
    publisher = PubSubPublisher(
        "test-project",
        auth=auth,
        clock=FakeClock(),
        emulator_host="127.0.0.1:8085",
        transport=httpx.MockTransport(lambda request: httpx.Response(200, json={"messageIds": ["7"]})),
    )
    rig = Rig(
        auth=auth,
        publisher=publisher,
        settings=Settings(project="test-project", polling=POLICY, pubsub_emulator_host="127.0.0.1:8085"),
    )
    result = rig.run("publish", NAME)
    assert result.exit_code == 0, result.output
    assert "published message 7" in result.stdout


# hostile names never reach the network


@pytest.mark.parametrize("hostile", HOSTILE)
@pytest.mark.parametrize("command", ["cancel", "get", "publish"])
def test_hostile_names_are_rejected_before_any_call(rig, command, hostile):
    result = rig.run(command, hostile)
    assert result.exit_code == Exit.REJECTED
    assert rig.simulator.calls == [] and rig.publisher.messages == []
    assert "\x1b" not in result.output and "\n" not in result.output.rstrip("\n")


@pytest.mark.parametrize("command", ["cancel", "get"])
def test_a_name_too_large_to_be_a_request_is_rejected_before_any_call(rig, command):
    result = rig.run(command, "organizations/1/operations/" + "a" * 1024 * 1024)
    assert result.exit_code == Exit.REJECTED
    assert "the limit is" in result.stderr
    assert rig.simulator.calls == []


def test_a_rejected_cancel_reports_the_offending_text_escaped(rig):
    result = rig.run("cancel", "organizations/1/operations/\x1b[31mred", "--json")
    report = json.loads(result.stdout)
    assert report["outcome"] == "REJECTED"
    assert report["operation"] == "organizations/1/operations/\\x1b[31mred"
    assert report["source"] == {"kind": "cli"}
    assert report["checks"] == 0 and report["final_operation"] is None


@pytest.mark.parametrize(
    "parent", ["organizations/01", "organizations/1/operations", "organizations/1?x=y", "projects/1", "1", ""]
)
def test_hostile_parents_are_rejected_before_any_call(rig, parent):
    result = rig.run("list", parent)
    assert result.exit_code == Exit.REJECTED
    assert result.stderr.startswith("Error: ")
    assert "parents must be organizations/ORG" in result.stderr or "use its full resource name" in result.stderr
    assert rig.simulator.calls == []


# the allow-list


@pytest.fixture
def guarded() -> Rig:
    return Rig(settings=Settings(project="p", polling=POLICY, allowed_parents=("organizations/42",)))


@pytest.mark.parametrize("command", ["cancel", "get", "publish"])
def test_the_allow_list_refuses_other_organizations(guarded, command):
    result = guarded.run(command, NAME)
    assert result.exit_code == Exit.REJECTED
    assert "organizations/1 is not in OPCANCEL_ALLOWED_PARENTS" in result.output
    assert guarded.simulator.calls == [] and guarded.publisher.messages == []


def test_the_allow_list_refuses_listing_other_organizations(guarded):
    result = guarded.run("list", ORG)
    assert result.exit_code == Exit.REJECTED
    assert result.stderr == "Error: organizations/1 is not in OPCANCEL_ALLOWED_PARENTS\n"
    assert guarded.simulator.calls == []


def test_the_allow_list_lets_its_organizations_through(guarded):
    assert guarded.run("cancel", "organizations/42/operations/abc").exit_code == 0
    assert guarded.run("list", "organizations/42").exit_code == 0
    assert guarded.run("publish", "organizations/42/operations/abc").exit_code == 0


# credentials


def _no_credentials(**_: object):
    raise google.auth.exceptions.DefaultCredentialsError("Your default credentials were not found.")


@pytest.mark.parametrize("args", [["cancel", NAME], ["get", NAME], ["list", ORG], ["cancel", NAME, "--wait", "--json"]])
def test_missing_credentials_exit_11_saying_how_to_fix_it(args):
    rig = Rig(auth=DefaultCredentialsAuth(find=_no_credentials))
    result = rig.run(*args)
    assert result.exit_code == Exit.NO_CREDENTIALS
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "gcloud auth application-default login" in line and "OPCANCEL_AUTH=anonymous" in line
    assert rig.simulator.calls == []


class _ExpiredCredentials:
    valid = False
    token = None

    def refresh(self, request: object) -> None:
        raise google.auth.exceptions.RefreshError("Reauthentication is needed.")


def test_credentials_that_cannot_be_refreshed_exit_11():
    rig = Rig(auth=DefaultCredentialsAuth(find=lambda **_: (_ExpiredCredentials(), None)))
    result = rig.run("get", NAME)
    assert result.exit_code == Exit.NO_CREDENTIALS
    assert "could not refresh credentials" in result.stderr and "application-default login" in result.stderr
    assert rig.simulator.calls == []


def test_a_rejected_name_needs_no_credentials():
    rig = Rig(auth=DefaultCredentialsAuth(find=_no_credentials))
    assert rig.run("cancel", "organizations/x/operations/y").exit_code == Exit.REJECTED


# python -m function: the environment, read once by main


def _environment(**values: str) -> dict[str, str]:
    keep = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "SYSTEMROOT") if name in os.environ}
    return {**keep, **values}


def _module(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "function", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_the_readme_one_liner_cancels_on_the_local_simulator():
    server = serve(Simulator())
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        env = _environment(
            OPCANCEL_API_ENDPOINT=endpoint, OPCANCEL_AUTH="anonymous", OPCANCEL_CHECK_INITIAL_DELAY_S="0.05"
        )
        done = _module("cancel", "organizations/1/operations/slow-2-x", "--wait", env=env)
        listing = _module("list", ORG, "--json", env=env)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    assert done.stdout == "CANCELLED organizations/1/operations/slow-2-x\n"
    assert "get 2: still running" in done.stderr
    assert json.loads(listing.stdout)["operations"][0]["done"] is True


def test_a_bad_setting_fails_naming_the_variable():
    result = _module("get", NAME, env=_environment(OPCANCEL_CHECK_MULTIPLIER="99"))
    assert result.returncode == Exit.BAD_CONFIGURATION
    assert result.stderr == "Error: OPCANCEL_CHECK_MULTIPLIER: '99' is outside 1..10\n"


def test_help_documents_every_exit_status():
    result = _module("--help", env=_environment())
    assert result.returncode == 0
    for status in Exit:
        if status is not Exit.OK:
            assert re.search(rf"^\s+{status.value}\s", result.stdout, re.MULTILINE), status
    # 1 is no Exit of the CLI's own, and --max is one way to 9: both said (issue 23).
    assert re.search(r"^\s+1\s+a crash, or Ctrl-C$", result.stdout, re.MULTILINE)
    assert "cancel --all matching more than --max" in result.stdout
