"""The pipeline through ``Pipeline.handle``: the simulator in-process, memory publisher and store, a fake clock."""

from __future__ import annotations

import json

import httpx
import pytest

from devkit.simulator import Simulator
from function import ItemStatus, Settings, format_time, parse_time
from function._messages import RESULT_EVENT_TYPE, event_id
from function._parsing import REJECTED_KEYS, payload_hash
from function._store import ClaimStatus
from tests.support import DATA_DIR, TEST_POLICY, FakeClock, Rig, open_store

ORG = "123456789"


def name(op_id: str) -> str:
    return f"organizations/{ORG}/operations/{op_id}"


@pytest.fixture
def rig():
    return Rig()


def only_result(rig: Rig) -> dict:
    results = rig.publisher.results()
    assert len(results) == 1, results
    return results[0]


@pytest.mark.parametrize(
    ("op_id", "outcome", "checks"),
    [
        ("plain", "CANCELLED", 1),
        ("completes-a", "COMPLETED", 1),
        ("fails-a", "FAILED", 1),
        ("unsupported-a", "UNSUPPORTED", 0),
        ("missing-a", "NOT_FOUND", 0),
        ("denied-a", "PERMISSION_DENIED", 0),
        ("invalid-a", "REJECTED", 0),
        ("done-a", "COMPLETED", 1),
        ("slow-3-a", "CANCELLED", 4),
    ],
)
def test_each_api_behaviour_ends_in_its_outcome(rig, op_id, outcome, checks):
    rig.send(name(op_id))
    rig.run_checks()
    result = only_result(rig)
    assert result["outcome"] == outcome
    assert result["checks"] == checks
    assert len(rig.simulator.cancel_calls(name(op_id))) == 1


@pytest.mark.parametrize("op_id", ["missing-a", "denied-a", "unsupported-a", "invalid-a"])
def test_a_refusal_frees_the_requests_key_and_is_reported_once_under_a_key_of_its_own(rig, op_id):
    for message_id in ("m-1", "m-2"):
        rig.send(name(op_id), message_id=message_id)
    assert len(rig.publisher.results()) == 1
    key = f"securitycenter.googleapis.com/{name(op_id)}"
    claim = rig.store.claim_request(key, payload_hash(key), now=rig.clock.now())
    assert (claim.status, claim.resumed) == (ClaimStatus.ACQUIRED, False)
    # Each delivery asked the API, which refused each time; only the first reported it.
    assert len(rig.simulator.cancel_calls(name(op_id))) == 2


def test_the_ce_id_is_deterministic_per_key_operation_and_outcome():
    key, operation = "securitycenter.googleapis.com/organizations/1/operations/a", "organizations/1/operations/a"
    assert event_id(key, operation, "CANCELLED") == event_id(key, operation, "CANCELLED")
    assert event_id(key, operation, "REJECTED") != event_id(key, operation, "CANCELLED")
    assert event_id(key + "x", operation, "CANCELLED") != event_id(key, operation, "CANCELLED")
    # Fields are framed, so no shifting of text from one to the next gives the same id.
    assert event_id("a\nb", "c", "CANCELLED") != event_id("a", "b\nc", "CANCELLED")


def test_the_result_event_is_a_binary_mode_cloudevent_with_every_field(rig):
    rig.send(name("plain"), message_id="msg-7")
    ((data, attributes),) = rig.publisher.on("opcancel-results")
    key = f"securitycenter.googleapis.com/{name('plain')}"
    assert attributes == {
        "ce-specversion": "1.0",
        "ce-id": event_id(key, name("plain"), "CANCELLED"),
        "ce-source": "//opcancel/projects/test-project",
        "ce-type": RESULT_EVENT_TYPE,
        "ce-time": format_time(rig.clock.now()),
        "ce-subject": name("plain"),
        "content-type": "application/json",
        "outcome": "CANCELLED",
        "operation": name("plain"),
    }
    body = json.loads(data)
    assert body == {
        "operation": name("plain"),
        "location": "global",
        "api_version": "v2",
        "service": "securitycenter.googleapis.com",
        "outcome": "CANCELLED",
        "idempotency_key": key,
        "dry_run": False,
        "requested_at": format_time(rig.clock.now()),
        "finished_at": format_time(rig.clock.now()),
        "checks": 1,
        "final_operation": {
            "name": name("plain"),
            "metadata": {"@type": "type.googleapis.com/google.protobuf.Empty"},
            "done": True,
            "error": {"code": 1, "message": "Operation was cancelled."},
        },
        "error": None,
        "source": {"kind": "pubsub", "message_id": "msg-7"},
    }


def test_a_failed_operation_reports_its_error(rig):
    rig.send(name("fails-x"))
    assert only_result(rig)["error"] == "rpc code 13: Internal error during discovery."


def test_an_api_refusal_reports_the_api_message(rig):
    rig.send(name("denied-x"))
    result = only_result(rig)
    assert result["error"].startswith("HTTP 403: PERMISSION_DENIED")
    assert result["final_operation"] is None


def test_checks_back_off_exponentially_until_the_deadline_then_time_out(rig):
    start = rig.clock.now()
    rig.send(name("stuck-a"))
    due_times = []
    while checks := rig.publisher.take_checks():
        (check,) = checks
        body = json.loads(check.data)
        due_times.append(parse_time(body["due_at"]) - start)
        rig.clock.current = parse_time(body["due_at"])
        rig.service.handle(check)
    # Delays 5, 10, 20, 40, then capped at 60 s, and the last check lands on the 600 s deadline.
    assert due_times[:6] == [5, 15, 35, 75, 135, 195]
    assert due_times[-1] == TEST_POLICY.deadline_s
    result = only_result(rig)
    assert result["outcome"] == "TIMED_OUT"
    assert result["checks"] == len(due_times) + 1
    assert "deadline" in result["error"]
    assert result["final_operation"]["done"] is False


def test_checks_that_run_late_keep_the_chains_schedule(rig):
    """Each wait counts from when the check before was due, so delivery time does not add up along a chain."""
    start = rig.clock.now()
    rig.send(name("stuck-late"))
    due_times = []
    for _ in range(5):
        (check,) = rig.publisher.take_checks()
        due_at = parse_time(json.loads(check.data)["due_at"])
        due_times.append(due_at - start)
        rig.clock.current = due_at + 0.4  # the dispatch, the push and the run
        rig.service.handle(check)
    assert due_times == [5, 15, 35, 75, 135]


def test_a_check_that_ran_past_the_next_ones_time_is_followed_by_one_due_now_and_the_plan_goes_on_from_it(rig):
    start = rig.clock.now()
    rig.send(name("stuck-stalled"))
    due_times = []
    for ran_at in (5, 100, 100.3, 140):  # check 2, due at 15, ran at 100: past check 3's planned 35
        (check,) = rig.publisher.take_checks()
        due_times.append(parse_time(json.loads(check.data)["due_at"]) - start)
        rig.clock.current = start + ran_at
        rig.service.handle(check)
    (check,) = rig.publisher.take_checks()
    due_times.append(parse_time(json.loads(check.data)["due_at"]) - start)
    # Never a due time already past, and no burst of checks catching up with the plan: one at once, then 40 s.
    assert due_times == [5, 15, 100, 140, 200]


class Slow(httpx.BaseTransport):
    """The simulator, each call taking ``seconds`` on ``clock``."""

    def __init__(self, simulator: Simulator, clock: FakeClock, seconds: float) -> None:
        self.inner, self.clock, self.seconds = httpx.WSGITransport(app=simulator), clock, seconds

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        self.clock.advance(self.seconds)
        return response


def test_the_first_check_is_due_its_delay_after_the_cancel_was_accepted_not_after_the_get_that_followed():
    simulator, clock = Simulator(), FakeClock()
    rig = Rig(simulator=simulator, clock=clock, transport=Slow(simulator, clock, 0.3))
    start = clock.now()
    rig.send(name("slow-1-first"))
    (check,) = rig.publisher.take_checks()
    # The cancel was accepted 0.3 s in and the immediate get came back at 0.6 s; the first delay is 5 s.
    assert parse_time(json.loads(check.data)["due_at"]) - start == pytest.approx(5.3)


def test_a_requests_deadline_seconds_replaces_the_default(rig):
    rig.send(json.dumps({"operation": name("stuck-b"), "deadline_seconds": 12}))
    assert rig.run_checks() == 2  # due at 5 s, then the deadline at 12 s
    assert only_result(rig)["outcome"] == "TIMED_OUT"


def test_check_messages_are_self_contained(rig):
    rig.send(name("slow-1-a"), message_id="m-9")
    (check,) = rig.publisher.take_checks()
    body = json.loads(check.data)
    assert check.attributes["opcancel_kind"] == "check"
    assert body == {
        "operation": name("slow-1-a"),
        "location": "global",
        "api_version": "v2",
        "idempotency_key": f"securitycenter.googleapis.com/{name('slow-1-a')}",
        "attempt": 1,
        "due_at": format_time(rig.clock.now() + 5),
        "deadline_at": format_time(rig.clock.now() + 600),
        "requested_at": format_time(rig.clock.now()),
        "source": {"kind": "pubsub", "message_id": "m-9"},
    }


def test_an_early_check_is_deferred_without_touching_the_api(rig):
    rig.send(name("slow-1-a"))
    (check,) = rig.publisher.take_checks()
    calls = len(rig.simulator.calls)
    report = rig.service.handle(check)
    assert report.must_retry
    assert report.items[0].retry_after == pytest.approx(5)
    assert len(rig.simulator.calls) == calls
    (deferred,) = [line for line in rig.logs() if line["event"] == "retry_later"]
    assert (deferred["reason"], deferred["operation"]) == ("check_not_due", name("slow-1-a"))
    rig.clock.advance(5)
    assert not rig.service.handle(check).must_retry
    assert only_result(rig)["outcome"] == "CANCELLED"


def test_a_redelivered_check_does_not_fork_a_second_chain(rig):
    rig.send(name("slow-5-a"))
    (check,) = rig.publisher.take_checks()
    rig.clock.advance(5)
    rig.service.handle(check)
    assert len(rig.publisher.on("opcancel-checks")) == 1
    report = rig.service.handle(check)  # Pub/Sub delivers check 1 again
    assert report.items[0].status is ItemStatus.SKIPPED
    assert len(rig.publisher.on("opcancel-checks")) == 1
    rig.run_checks()
    assert len(rig.publisher.results()) == 1


def test_duplicate_deliveries_cancel_once_and_report_once(rig):
    for message_id in ("m-1", "m-2", "m-3"):
        rig.send(name("slow-2-a"), message_id=message_id)
    rig.run_checks()
    for message_id in ("m-4", "m-5"):
        report = rig.send(name("slow-2-a"), message_id=message_id)
        assert report.items[0].status is ItemStatus.DUPLICATE
        assert report.items[0].outcome == "CANCELLED"
    assert len(rig.simulator.cancel_calls()) == 1
    assert only_result(rig)["source"]["message_id"] == "m-1"


def test_the_three_name_forms_share_one_identity_and_cancel_once(rig):
    rig.send(name("plain"))
    rig.send(f"//securitycenter.googleapis.com/{name('plain')}")
    rig.send(f"https://securitycenter.googleapis.com/v1/{name('plain')}")
    assert len(rig.simulator.cancel_calls()) == 1
    assert len(rig.publisher.results()) == 1


def test_an_explicit_key_reused_for_another_operation_is_rejected(rig):
    rig.send(json.dumps({"operation": name("plain"), "idempotency_key": "k-1"}))
    report = rig.send(json.dumps({"operation": name("other"), "idempotency_key": "k-1"}))
    assert report.items[0].status is ItemStatus.REJECTED
    first, second = rig.publisher.results()
    assert first["outcome"] == "CANCELLED"
    assert second["outcome"] == "REJECTED"
    assert second["operation"] == name("other")
    assert "different operation" in second["error"]
    assert len(rig.simulator.cancel_calls()) == 1


def test_a_key_reused_for_another_operation_reports_once_under_a_rejected_key(rig):
    """Issue 23: the same reuse sent three times published REJECTED three times, under the bound key."""
    rig.send(json.dumps({"operation": name("k2"), "idempotency_key": "t-1"}))
    for index in range(3):
        report = rig.send(json.dumps({"operation": name("k3"), "idempotency_key": "t-1"}), message_id=f"m-{index}")
        assert (report.items[0].status, report.items[0].idempotency_key) == (ItemStatus.REJECTED, "t-1")
    first, rejected = rig.publisher.results()
    assert (first["operation"], first["outcome"]) == (name("k2"), "CANCELLED")
    assert (rejected["operation"], rejected["outcome"], rejected["idempotency_key"]) == (name("k3"), "REJECTED", "t-1")
    # Its record is in the rejected namespace; the binding itself is untouched.
    assert any(key.startswith(REJECTED_KEYS) for key in rig.store._records)
    # Another operation reusing the same key is its own rejection.
    rig.send(json.dumps({"operation": name("k4"), "idempotency_key": "t-1"}))
    assert [r["operation"] for r in rig.publisher.results()][2:] == [name("k4")]
    duplicate = rig.send(json.dumps({"operation": name("k2"), "idempotency_key": "t-1"}))
    assert duplicate.items[0].status is ItemStatus.DUPLICATE
    assert len(rig.simulator.cancel_calls()) == 1


def test_invalid_input_is_rejected_once_without_any_network_call(rig):
    hostile = "organizations/1/operations/../../v1/organizations/2/operations/x:cancel"
    for _ in range(2):
        report = rig.send(hostile)
        assert not report.must_retry
        assert report.items[0].status is ItemStatus.REJECTED
    assert rig.simulator.calls == []
    result = only_result(rig)
    assert result["outcome"] == "REJECTED"
    assert result["operation"] == hostile
    assert result["checks"] == 0
    assert result["error"] == "operation names must be organizations/ORG/operations/ID"


def test_rejected_text_is_escaped_and_bounded(rig):
    rig.send(json.dumps({"operation": "bad\u0000name\u202e" + "x" * 400}))
    operation = only_result(rig)["operation"]
    assert len(operation) == 256
    assert "\\x00" in operation and "\\u202e" in operation
    assert "\u0000" not in operation


def test_disallowed_parents_are_rejected_before_the_network():
    rig = Rig(settings=Settings(project="p", polling=TEST_POLICY, allowed_parents=("organizations/42",)))
    rig.send(name("plain") + "\norganizations/42/operations/fine")
    assert [c.path for c in rig.simulator.cancel_calls()] == ["/v2/organizations/42/operations/fine:cancel"]
    outcomes = {r["operation"]: (r["outcome"], r["error"]) for r in rig.publisher.results()}
    assert outcomes[name("plain")] == ("REJECTED", f"organizations/{ORG} is not in OPCANCEL_ALLOWED_PARENTS")
    assert outcomes["organizations/42/operations/fine"][0] == "CANCELLED"


def test_a_batch_with_a_message_key_gives_each_item_its_own_key(rig):
    body = json.dumps({"operations": [name("a"), {"operation": name("b"), "location": "eu"}]})
    rig.send(body, attributes={"idempotency_key": "batch-1"})
    keys = sorted(r["idempotency_key"] for r in rig.publisher.results())
    assert keys == [
        f"batch-1/securitycenter.eu.rep.googleapis.com/{name('b')}",
        f"batch-1/securitycenter.googleapis.com/{name('a')}",
    ]
    assert {c.path for c in rig.simulator.cancel_calls()} == {
        f"/v2/{name('a')}:cancel",
        f"/v2/{name('b')}:cancel",
    }


def test_a_closed_incident_makes_no_call_and_no_result(rig):
    report = rig.send((DATA_DIR / "alert-incident-closed.json").read_bytes())
    assert report.ignored and not report.unreadable
    assert [line["severity"] for line in rig.logs()] == ["INFO"]
    assert rig.simulator.calls == [] and rig.publisher.messages == []


def test_an_open_incident_cancels_what_it_names(rig):
    rig.send((DATA_DIR / "alert-incident-open.json").read_bytes(), message_id="alert-1")
    result = only_result(rig)
    assert result["source"] == {
        "kind": "alert",
        "message_id": "alert-1",
        "incident_id": "0.mtdi83m6w8ao",
        "policy_name": "runaway-scc-operation",
    }
    assert result["idempotency_key"].startswith("0.mtdi83m6w8ao/securitycenter.googleapis.com/")


# Transient trouble


def test_unavailable_api_is_retried_in_process_then_succeeds(rig):
    rig.simulator.inject(503, count=2)
    report = rig.send(name("plain"))
    assert not report.must_retry
    assert len(rig.clock.slept) == 2
    assert only_result(rig)["outcome"] == "CANCELLED"


def test_a_persistently_unavailable_api_asks_for_redelivery_and_frees_the_key(rig):
    rig.simulator.inject(503, count=4)
    report = rig.send(name("plain"))
    assert report.must_retry
    assert rig.publisher.messages == []
    # The lease was handed back, so the redelivery goes on at once.
    assert not rig.send(name("plain")).must_retry
    assert only_result(rig)["outcome"] == "CANCELLED"


def test_rate_limiting_defers_to_redelivery_until_the_retry_delay(rig):
    rig.simulator.inject(429, retry_delay="30s")
    report = rig.send(name("plain"))
    assert report.must_retry and report.items[0].retry_after == 30
    assert rig.clock.slept == []
    calls = len(rig.simulator.calls)
    rig.clock.advance(10)
    assert rig.send(name("plain")).must_retry
    assert len(rig.simulator.calls) == calls  # deferred without calling the API
    rig.clock.advance(21)
    assert not rig.send(name("plain")).must_retry
    assert only_result(rig)["outcome"] == "CANCELLED"


def test_an_unconfirmed_result_publish_is_republished_identically_without_a_second_cancel(rig):
    rig.publisher.fail_next = 1
    assert rig.send(name("plain")).must_retry
    rig.clock.advance(3)
    assert not rig.send(name("plain")).must_retry
    assert len(rig.simulator.cancel_calls()) == 1
    result = only_result(rig)
    assert result["finished_at"] == format_time(rig.clock.now() - 3)


def test_a_failed_check_publish_is_retried_without_a_second_cancel(rig):
    rig.publisher.fail_next = 1
    assert rig.send(name("slow-1-a")).must_retry
    assert not rig.send(name("slow-1-a")).must_retry
    rig.run_checks()
    assert len(rig.simulator.cancel_calls()) == 1
    assert only_result(rig)["outcome"] == "CANCELLED"


def test_a_live_holder_makes_a_duplicate_wait(rig):
    rig.store.claim_request(
        f"securitycenter.googleapis.com/{name('plain')}",
        payload_hash(f"securitycenter.googleapis.com/{name('plain')}"),
        now=rig.clock.now(),
    )
    report = rig.send(name("plain"))
    assert report.must_retry
    assert report.items[0].detail == "key_busy"
    assert rig.simulator.calls == []


def test_a_dead_holder_after_a_recorded_cancel_is_resumed_without_a_second_cancel(rig):
    key = f"securitycenter.googleapis.com/{name('slow-1-a')}"
    record = rig.store.claim_request(key, payload_hash(key), now=rig.clock.now()).record
    rig.store.cancel_sent(record, now=rig.clock.now(), deadline_at=rig.clock.now() + 3600)
    rig.clock.advance(rig.settings.lease_s + 1)
    rig.send(name("slow-1-a"))
    assert rig.simulator.cancel_calls() == []
    assert [c.method for c in rig.simulator.calls] == ["GET"]
    assert len(rig.publisher.on("opcancel-checks")) == 1
    assert [line["fence"] for line in rig.logs() if line["event"] == "takeover"] == [2]


def claimed_by_a_dead_holder(rig: Rig, op_id: str) -> None:
    """The key was claimed and its holder died before recording any cancel."""
    key = f"securitycenter.googleapis.com/{name(op_id)}"
    rig.store.claim_request(key, payload_hash(key), now=rig.clock.now())
    rig.clock.advance(rig.settings.lease_s + 1)


def test_a_dead_holders_cancel_that_got_through_is_not_sent_again():
    rig = Rig()
    claimed_by_a_dead_holder(rig, "plain")
    # What the dead holder managed before it died: the API accepted its cancel.
    with httpx.Client(transport=httpx.WSGITransport(app=rig.simulator), base_url="http://sim") as http:
        http.post(f"/v2/{name('plain')}:cancel")
    assert not rig.send(name("plain")).must_retry
    assert len(rig.simulator.cancel_calls()) == 1
    result = only_result(rig)
    assert (result["outcome"], result["checks"]) == ("CANCELLED", 1)


@pytest.mark.parametrize(
    ("op_id", "outcome"), [("done-a", "COMPLETED"), ("missing-a", "NOT_FOUND"), ("denied-a", "PERMISSION_DENIED")]
)
def test_a_resumed_claim_that_finds_the_operation_ended_or_refused_makes_no_cancel(rig, op_id, outcome):
    claimed_by_a_dead_holder(rig, op_id)
    rig.send(name(op_id))
    assert rig.simulator.cancel_calls() == []
    result = only_result(rig)
    assert (result["outcome"], result["checks"]) == (outcome, 1)


def test_a_resumed_claim_that_finds_the_operation_running_cancels_and_counts_every_get(rig):
    claimed_by_a_dead_holder(rig, "slow-1-a")
    rig.send(name("slow-1-a"))
    rig.run_checks()
    assert [c.method for c in rig.simulator.calls] == ["GET", "POST", "GET", "GET"]
    assert only_result(rig)["checks"] == 3


def test_a_resumed_claim_whose_look_fails_asks_for_redelivery_and_frees_the_key(rig):
    claimed_by_a_dead_holder(rig, "plain")
    rig.simulator.inject(503, count=4)
    assert rig.send(name("plain")).must_retry
    assert rig.simulator.cancel_calls() == []
    assert not rig.send(name("plain")).must_retry
    assert len(rig.simulator.cancel_calls()) == 1


def test_a_zombie_is_fenced_off_when_its_lease_was_taken_over():
    simulator = Simulator()
    passthrough = httpx.WSGITransport(app=simulator)
    rigs: list[Rig] = []
    takeover_reports = []
    stalled = []

    def slow_cancel(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(":cancel") and not stalled:
            stalled.append(request)
            # While the first worker waits on the API, its lease runs out and a redelivery takes over.
            rigs[0].clock.advance(rigs[0].settings.lease_s + 1)
            takeover_reports.append(rigs[0].send(name("plain"), message_id="redelivery"))
        return passthrough.handle_request(request)

    rigs.append(Rig(simulator=simulator, transport=httpx.MockTransport(slow_cancel)))
    rig = rigs[0]
    zombie = rig.send(name("plain"), message_id="first")
    assert zombie.must_retry
    assert zombie.items[0].detail == "stale_fence"
    assert not takeover_reports[0].must_retry
    assert only_result(rig)["source"]["message_id"] == "redelivery"
    # The zombie's redelivery then finds the key finished.
    assert rig.send(name("plain"), message_id="first").items[0].status is ItemStatus.DUPLICATE
    assert len(rig.publisher.results()) == 1


def test_every_log_line_is_structured_and_token_free(rig):
    rig.send(name("slow-1-a"))
    rig.run_checks()
    rig.send("not a name")
    lines = rig.logs()
    assert lines
    for line in lines:
        assert line["severity"] in {"DEBUG", "INFO", "NOTICE", "WARNING", "ERROR"}
        assert line["message"]
        assert "Bearer" not in json.dumps(line)
    events = [line["event"] for line in lines]
    assert events[:3] == ["cancel_sent", "check_scheduled", "result_published"]
    published = [line for line in lines if line["event"] == "result_published"]
    assert {line["outcome"] for line in published} == {"CANCELLED", "REJECTED"}


# --- other Google APIs -------------------------------------------------------------------------

VERTEX_NAME = "projects/my-proj/locations/us-central1/operations/slow-1-train"
VERTEX_FULL = f"//aiplatform.googleapis.com/{VERTEX_NAME}"
DATAPROC_NAME = "projects/my-proj/regions/us-east1/operations/cluster-delete"


def test_another_services_operation_is_cancelled_at_its_regional_host_and_checked_to_its_result():
    rig = Rig(endpoint="http://simulator.test/{host}")
    rig.send(VERTEX_FULL)
    assert rig.run_checks() == 1
    result = only_result(rig)
    assert (result["operation"], result["service"], result["location"], result["api_version"]) == (
        VERTEX_NAME,
        "aiplatform.googleapis.com",
        "us-central1",
        "v1",
    )
    assert (result["outcome"], result["checks"], result["idempotency_key"]) == ("CANCELLED", 2, VERTEX_FULL)
    services = {
        line["event"]: line.get("service")
        for line in rig.logs()
        if line["event"] in ("cancel_sent", "result_published")
    }
    assert services == {"cancel_sent": "aiplatform.googleapis.com", "result_published": "aiplatform.googleapis.com"}
    host = "/us-central1-aiplatform.googleapis.com/v1/"
    assert [(c.method, c.path) for c in rig.simulator.calls] == [
        ("POST", f"{host}{VERTEX_NAME}:cancel"),
        ("GET", f"{host}{VERTEX_NAME}"),
        ("GET", f"{host}{VERTEX_NAME}"),
    ]
    # The key is the full resource name: the same request again finds it finished.
    (item,) = rig.send(VERTEX_FULL).items
    assert (item.status, item.idempotency_key) == (ItemStatus.DUPLICATE, VERTEX_FULL)


def test_a_repeated_request_for_another_service_cancels_once_and_reports_once():
    rig = Rig()
    for form in (
        f"//dataproc.googleapis.com/{DATAPROC_NAME}",
        f"https://us-east1-dataproc.googleapis.com/v1/{DATAPROC_NAME}",
    ):
        rig.send(form)
    assert len(rig.simulator.cancel_calls()) == 1
    assert only_result(rig)["service"] == "dataproc.googleapis.com"


def test_an_unregistered_service_and_a_project_outside_the_allow_list_are_rejected_with_no_call():
    settings = Settings(project="p", polling=TEST_POLICY, allowed_parents=("projects/my-proj",))
    rig = Rig(settings=settings)
    outside = VERTEX_FULL.replace("my-proj", "my-proj-2")
    unknown = "//compute.googleapis.com/projects/my-proj/operations/x"
    rig.send(f"{outside}\n{unknown}")
    assert rig.simulator.calls == []
    results = {r["operation"]: r for r in rig.publisher.results()}
    assert results[outside.removeprefix("//aiplatform.googleapis.com/")]["error"] == (
        "//aiplatform.googleapis.com/projects/my-proj-2/locations/us-central1 is not in OPCANCEL_ALLOWED_PARENTS"
    )
    assert results[outside.removeprefix("//aiplatform.googleapis.com/")]["service"] == "aiplatform.googleapis.com"
    assert "is not in the registry" in results[unknown]["error"] and results[unknown]["service"] is None
    rig.send(VERTEX_FULL)
    assert len(rig.simulator.cancel_calls()) == 1


def test_a_check_for_another_service_outside_the_allow_list_ends_its_chain_rejected_without_a_call():
    rig = Rig()
    rig.send(VERTEX_FULL)
    (check,) = rig.publisher.take_checks()
    narrowed = Rig(
        settings=Settings(project="test-project", polling=TEST_POLICY, allowed_parents=("projects/other-proj",)),
        store=rig.store,
        clock=rig.clock,
    )
    narrowed.clock.current += 3600
    (item,) = narrowed.service.handle(check).items
    assert (item.status, item.outcome) == (ItemStatus.REJECTED, "REJECTED")
    assert "OPCANCEL_ALLOWED_PARENTS" in item.detail
    assert narrowed.simulator.calls == []
    (result,) = narrowed.publisher.results()
    assert (result["outcome"], result["service"]) == ("REJECTED", "aiplatform.googleapis.com")


def test_security_command_center_results_name_their_service_and_keep_their_identity(rig):
    rig.send(name("plain"))
    result = only_result(rig)
    assert result["service"] == "securitycenter.googleapis.com"
    assert result["idempotency_key"] == f"securitycenter.googleapis.com/{name('plain')}"


# --- liveness: when a chain counts as overdue --------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", pytest.param("firestore", marks=pytest.mark.emulator)])
def store_spec(request, tmp_path):
    if request.param == "memory":
        return {"kind": "memory"}
    if request.param == "sqlite":
        return {"kind": "sqlite", "path": str(tmp_path / "store.sqlite3")}
    return request.getfixturevalue("firestore_spec")


def chain_whose_check_was_lost(store_spec) -> tuple[Rig, float]:
    """A rig with the default polling policy on ``store_spec``'s backend, one chain waiting for a check that
    never comes; and that check's due time as the store holds it."""
    settings = Settings(project="test-project", store="memory")
    rig = Rig(settings=settings, store=open_store(store_spec, lease_s=settings.lease_s, ttl_s=settings.record_ttl_s))
    rig.send(name("slow-1-lost"))
    assert len(rig.publisher.take_checks()) == 1  # dead-lettered, dropped: never delivered
    return rig, rig.store._load(LOST_KEY).due_at


LOST_KEY = f"securitycenter.googleapis.com/organizations/{ORG}/operations/slow-1-lost"


def test_a_chain_is_overdue_only_once_its_check_is_later_than_the_longest_polling_delay(store_spec):
    rig, due_at = chain_whose_check_was_lost(store_spec)
    grace = rig.settings.polling.max_delay_s
    for at in (due_at, due_at + 0.001, due_at + grace / 2, due_at + grace):
        rig.clock.current = at
        assert rig.service.overdue_chains() == [], f"overdue {at - due_at:g} s after its due time"
    rig.clock.current = due_at + grace + 0.001
    assert [record.key for record in rig.service.overdue_chains()] == [LOST_KEY]


def test_a_request_delivered_again_resumes_a_chain_only_once_it_is_overdue(store_spec):
    rig, due_at = chain_whose_check_was_lost(store_spec)
    grace = rig.settings.polling.max_delay_s
    for number, at in enumerate((due_at + 0.001, due_at + grace / 2, due_at + grace)):
        rig.clock.current = at
        (item,) = rig.send(name("slow-1-lost"), message_id=f"again-{number}").items
        assert item.status is ItemStatus.DUPLICATE, f"{at - due_at:g} s after its due time: {item}"
        assert rig.publisher.take_checks() == []
    rig.clock.current = due_at + grace + 0.001
    (item,) = rig.send(name("slow-1-lost"), message_id="again-late").items
    assert item.status is ItemStatus.ACCEPTED and item.detail == "overdue chain resumed: check 2"
    rig.run_checks()
    assert only_result(rig)["outcome"] == "CANCELLED"
    assert len(rig.simulator.cancel_calls()) == 1
