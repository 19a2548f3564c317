"""Hostile senders, round 2 (issue 20): keys. Each case through the entry points.

A refusal by the API never binds the key a later request for the operation uses; two different
rejections never share a key; no explicit key equals a batch item's key; and results report the key as
the sender gave it (or the derived default), never the store's namespace.
"""

from __future__ import annotations

import json

import httpx
import pytest

from devkit.simulator import Simulator
from function._messages import event_id
from function._parsing import payload_hash
from tests.entry.test_entrypoints import NAME, eventarc_sample, post_event, pubsub_event
from tests.entry.test_hostile_senders import wired
from tests.support import DATA_DIR, Rig

SCC = "securitycenter.googleapis.com"
EU_HOST = "securitycenter.eu.rep.googleapis.com"


class Refusing:
    """The simulator behind a gate: a call whose path holds ``refused`` is answered ``status`` while ``shut``."""

    def __init__(self, refused: str, status: int, reason: str) -> None:
        self.simulator = Simulator()
        self.refused, self.status, self.reason = refused, status, reason
        self.shut = True
        self.refusals = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.shut and self.refused in request.url.path:
            self.refusals += 1
            error = {"code": self.status, "message": f"refused: {self.reason}", "status": self.reason}
            return httpx.Response(self.status, json={"error": error})
        return httpx.WSGITransport(app=self.simulator).handle_request(request)


def refusing_rig(refused: str, status: int = 404, reason: str = "NOT_FOUND") -> tuple[Rig, Refusing]:
    gate = Refusing(refused, status, reason)
    # The host leads each path, so a gate can refuse one location's host.
    rig = Rig(transport=httpx.MockTransport(gate), endpoint="http://simulator.test/{host}", simulator=gate.simulator)
    return rig, gate


def results(rig: Rig) -> list[tuple[str, str]]:
    return [(result["outcome"], result["api_version"]) for result in rig.publisher.results()]


def event_ids(rig: Rig) -> list[str]:
    return [attributes["ce-id"] for _, attributes in rig.publisher.on("opcancel-results")]


# Finding 2: a refusal under one version or location never binds the key the right request uses.

REFUSALS = [(404, "NOT_FOUND", "NOT_FOUND"), (403, "PERMISSION_DENIED", "PERMISSION_DENIED")]
REFUSALS += [(501, "UNIMPLEMENTED", "UNSUPPORTED"), (400, "INVALID_ARGUMENT", "REJECTED")]


@pytest.mark.parametrize(("status", "reason", "outcome"), REFUSALS, ids=[r[2] for r in REFUSALS])
@pytest.mark.parametrize("key", [None, "change-4711"], ids=["derived-key", "explicit-key"])
def test_a_refusal_under_a_wrong_version_does_not_keep_the_right_one_from_cancelling(status, reason, outcome, key):
    rig, _ = refusing_rig("/v1/", status, reason)
    client, rig = wired("on_http", "http", rig)
    keyed = {"idempotency_key": key} if key else {}
    wrong = client.post("/", json={"operation": NAME, "api_version": "v1", **keyed}).get_json()
    assert [item["outcome"] for item in wrong["accepted"] + wrong["rejected"]] == [outcome]
    right = client.post("/", json={"operation": NAME, "api_version": "v2", **keyed}).get_json()
    assert [(item["status"], item["outcome"]) for item in right["accepted"]] == [("accepted", "CANCELLED")]
    assert results(rig) == [(outcome, "v1"), ("CANCELLED", "v2")]
    assert [call.path for call in rig.simulator.cancel_calls()] == [f"/{SCC}/v2/{NAME}:cancel"]


def test_a_refusal_under_a_wrong_location_does_not_keep_the_right_one_from_cancelling():
    rig, _ = refusing_rig(f"/{EU_HOST}/")
    client, rig = wired("on_event", "cloudevent", rig)
    attributes = {"idempotency_key": "change-4712"}
    wrong = json.dumps({"operation": NAME, "location": "eu"}).encode()
    assert post_event(client, pubsub_event(wrong, attributes, message_id="1")).status_code == 200
    assert post_event(client, pubsub_event(NAME.encode(), attributes, message_id="2")).status_code == 200
    assert [(r["outcome"], r["location"]) for r in rig.publisher.results()] == [
        ("NOT_FOUND", "eu"),
        ("CANCELLED", "global"),
    ]


def test_the_same_request_refused_once_is_acted_on_when_sent_again_after_the_api_relents():
    rig, gate = refusing_rig("/v2/", 403, "PERMISSION_DENIED")
    client, rig = wired("on_http", "http", rig)
    assert client.post("/", json={"operation": NAME}).get_json()["accepted"][0]["outcome"] == "PERMISSION_DENIED"
    gate.shut = False  # the role was granted
    assert client.post("/", json={"operation": NAME}).get_json()["accepted"][0]["outcome"] == "CANCELLED"
    assert results(rig) == [("PERMISSION_DENIED", "v2"), ("CANCELLED", "v2")]
    assert len(set(event_ids(rig))) == 2


def test_duplicates_of_a_refused_request_report_once():
    rig, gate = refusing_rig("/v1/")
    client, rig = wired("on_event", "cloudevent", rig)
    wrong = json.dumps({"operation": NAME, "api_version": "v1"}).encode()
    for _ in range(3):  # Pub/Sub redelivers the one message
        assert post_event(client, pubsub_event(wrong, message_id="7")).status_code == 200
    # Each delivery asks the API (the key is free), which refuses alike; only the first reports it.
    assert gate.refusals == 3
    assert results(rig) == [("NOT_FOUND", "v1")]
    assert post_event(client, pubsub_event(NAME.encode(), message_id="8")).status_code == 200
    assert post_event(client, pubsub_event(wrong, message_id="7")).status_code == 200
    assert results(rig) == [("NOT_FOUND", "v1"), ("CANCELLED", "v2")]
    assert len(rig.simulator.cancel_calls()) == 1


def test_a_refusal_on_a_taken_over_key_frees_it_too():
    """A worker died holding the key before any cancel was recorded; the successor's ``get`` is refused."""
    rig, _ = refusing_rig("/v1/")
    client, rig = wired("on_http", "http", rig)
    request = {"operation": NAME, "api_version": "v1"}
    rig.store.claim_request(f"{SCC}/{NAME}", payload_hash(f"{SCC}/{NAME}"), now=rig.clock.now())
    rig.clock.advance(rig.store.lease_s + 1)
    assert client.post("/", json=request).get_json()["accepted"][0]["outcome"] == "NOT_FOUND"
    right = client.post("/", json={"operation": NAME}).get_json()
    assert right["accepted"][0]["outcome"] == "CANCELLED"


# Finding 6: rejections that differ in anything the request carries have keys of their own.


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"operation": "not a name", "location": "eu"}, {"operation": "not a name", "location": "us"}),
        ({"operation": "not a name", "api_version": "v1"}, {"operation": "not a name", "api_version": "v2"}),
        ({"operation": NAME, "deadline_seconds": 0}, {"operation": NAME, "deadline_seconds": -5}),
        ({"operation": "not a name", "reason": "ticket 1"}, {"operation": "not a name", "reason": "ticket 2"}),
        (
            {"operation": NAME, "idempotency_key": "k", "api_version": "v9"},
            {"operation": NAME, "idempotency_key": "k", "deadline_seconds": -1},
        ),
    ],
    ids=["location", "version", "deadline", "reason", "error"],
)
def test_two_different_rejections_each_get_their_result(first, second):
    client, rig = wired("on_http", "http")
    for body in (first, second, first):
        (rejected,) = client.post("/", json=body).get_json()["rejected"]
        assert rejected["outcome"] == "REJECTED"
    assert [result["outcome"] for result in rig.publisher.results()] == ["REJECTED", "REJECTED"]
    assert len(set(event_ids(rig))) == 2


@pytest.mark.parametrize("attribute", ["location", "api_version"])
def test_the_same_body_rejected_under_different_attributes_gets_a_result_for_each(attribute):
    client, rig = wired("on_event", "cloudevent")
    values = {"location": ("eu", "us"), "api_version": ("v1", "v2")}[attribute]
    for number, value in enumerate(values):
        event = pubsub_event(b"not a name", {attribute: value}, message_id=str(number))
        assert post_event(client, event).status_code == 200
    assert [result["outcome"] for result in rig.publisher.results()] == ["REJECTED", "REJECTED"]


# Finding 7: no explicit key equals the key of one item of someone else's batch.


def test_an_explicit_key_cannot_occupy_an_item_of_another_senders_batch():
    client, rig = wired("on_http", "http")
    a, b = "organizations/1/operations/A", "organizations/1/operations/B"
    squatter = {"operation": "organizations/2/operations/other", "idempotency_key": f"K/{SCC}/{a}"}
    assert client.post("/", json=squatter).get_json()["accepted"][0]["outcome"] == "CANCELLED"
    batch = client.post("/", json={"operations": [a, b], "idempotency_key": "K"}).get_json()
    assert [(item["operation"], item["outcome"]) for item in batch["accepted"]] == [(a, "CANCELLED"), (b, "CANCELLED")]
    assert batch["rejected"] == []


# Results report the key the sender gave, never the store's namespace; ce-id stays what it was.


def test_a_pubsub_attribute_key_is_reported_as_given_and_the_event_id_is_unchanged():
    client, rig = wired("on_event", "cloudevent")
    event = pubsub_event(NAME.encode(), {"idempotency_key": "order-123"})
    assert post_event(client, event).status_code == 200
    (result,) = rig.publisher.results()
    assert result["idempotency_key"] == "order-123"
    # The id consumers already dedupe by: the same as before keys were reported as given.
    assert event_ids(rig) == [event_id("explicit/order-123", NAME, "CANCELLED")]


def test_the_eventarc_sample_reports_its_attribute_key_as_given():
    client, rig = wired("on_event", "cloudevent")
    headers, body = eventarc_sample()
    assert client.post("/", headers=headers, data=body).status_code == 200
    (result,) = rig.publisher.results()
    assert result["idempotency_key"] == "k1"


def test_an_http_key_is_reported_as_given_in_the_result_and_the_answer():
    client, rig = wired("on_http", "http")
    answer = client.post("/", json={"operation": NAME, "idempotency_key": "explicit/ticket 9"}).get_json()
    assert answer["accepted"][0]["idempotency_key"] == "explicit/ticket 9"
    (result,) = rig.publisher.results()
    assert result["idempotency_key"] == "explicit/ticket 9"
    again = client.post("/", json={"operation": NAME, "idempotency_key": "explicit/ticket 9"}).get_json()
    assert again["accepted"][0] == {
        "operation": NAME,
        "status": "duplicate",
        "idempotency_key": "explicit/ticket 9",
        "outcome": "CANCELLED",
        "detail": "finished",
    }


def test_a_batch_key_is_reported_with_each_operations_identity():
    client, rig = wired("on_event", "cloudevent")
    a, b = "organizations/1/operations/a", "organizations/1/operations/b"
    body = json.dumps({"operations": [a, {"operation": b, "location": "eu"}]}).encode()
    assert post_event(client, pubsub_event(body, {"idempotency_key": "ticket-7"})).status_code == 200
    assert sorted(result["idempotency_key"] for result in rig.publisher.results()) == [
        f"ticket-7/{EU_HOST}/{b}",
        f"ticket-7/{SCC}/{a}",
    ]


def test_a_slow_request_reports_its_key_as_given_after_its_checks():
    client, rig = wired("on_http", "http")
    client.post("/", json={"operation": "organizations/1/operations/slow-1-x", "idempotency_key": "order-9"})
    assert rig.run_checks() == 1
    (result,) = rig.publisher.results()
    assert (result["outcome"], result["idempotency_key"]) == ("CANCELLED", "order-9")


def test_an_alert_reports_its_incident_id_and_identity():
    client, rig = wired("on_event", "cloudevent")
    data = (DATA_DIR / "alert-incident-open.json").read_bytes()
    assert post_event(client, pubsub_event(data, message_id="alert-1")).status_code == 200
    (result,) = rig.publisher.results()
    incident_id = json.loads(data)["incident"]["incident_id"]
    assert result["idempotency_key"] == f"{incident_id}/{SCC}/{result['operation']}"


def test_a_rejection_reports_the_key_the_sender_gave_or_none():
    client, rig = wired("on_http", "http")
    client.post("/", json={"operation": "not a name", "idempotency_key": "order-5"})
    client.post("/", json={"operation": "not a name either"})
    keys = [result["idempotency_key"] for result in rig.publisher.results()]
    assert keys == ["order-5", None]


# Finding 6, on the check path: each chain stopped by the allow-list reports, the second one too.


@pytest.mark.parametrize("mode", ["tasks", "redelivery"])
def test_a_second_chain_of_one_key_stopped_by_the_allow_list_still_reports(mode):
    from tests.entry.test_checks import Chain, allowed_on, chain_taken_off_the_allow_list

    before, after, check = chain_taken_off_the_allow_list(mode)
    assert after.deliver_check(check) == ["ack"]
    # The parent put back: a new chain for the same key, then the parent taken off again.
    store, clock = before.rig.store, before.rig.clock
    again = Chain(mode, rig=Rig(settings=before.rig.settings, store=store, clock=clock))
    assert again.request(message_id="r-2") == "ack"
    (second_check,) = again.next_checks()
    clock.advance(60)
    off_again = Chain(mode, rig=Rig(settings=allowed_on("organizations/42"), store=store, clock=clock))
    assert off_again.deliver_check(second_check) == ["ack"]
    stopped = after.results() + off_again.results()
    assert [result["outcome"] for result in stopped] == ["REJECTED", "REJECTED"]
    assert [result["requested_at"] for result in stopped][0] != stopped[1]["requested_at"]
