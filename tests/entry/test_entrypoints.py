"""The entry points through functions-framework's own test client, with CloudEvents built by ``cloudevents``."""

from __future__ import annotations

import base64
import io
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from functions_framework import create_app

from devkit.emulators import free_port
from function import Logger, Runtime
from function._clock import parse_time
from function._log import TRACE_FIELD
from function.errors import ConfigError
from tests.support import DATA_DIR, checks_source

ROOT = pathlib.Path(__file__).resolve().parents[2]
WIRED = ROOT / "tests" / "functions" / "wired.py"
NAME = "organizations/123456789/operations/abc"
TOPIC_SOURCE = "//pubsub.googleapis.com/projects/sec-ops-prod/topics/opcancel-requests"
CHECKS_SOURCE = "//pubsub.googleapis.com/projects/test-project/topics/opcancel-checks"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def load_wired(target: str, signature: str):
    """A fresh module and its rig per app: create_app executes the function module anew."""
    client = create_app(target, str(WIRED), signature).test_client()
    return client, sys.modules["wired"].rig


@pytest.fixture
def on_event():
    return load_wired("on_event", "cloudevent")


@pytest.fixture
def on_http():
    return load_wired("on_http", "http")


def pubsub_event(
    data: bytes,
    attributes: dict[str, str] | None = None,
    message_id: str = "2070443601311540",
    source: str = TOPIC_SOURCE,
) -> CloudEvent:
    return CloudEvent(
        {"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": source, "id": message_id},
        {
            "subscription": "projects/sec-ops-prod/subscriptions/eventarc-sub",
            "message": {
                "data": base64.b64encode(data).decode(),
                "attributes": attributes or {},
                "messageId": message_id,
                "publishTime": "2026-11-23T19:13:55.749Z",
            },
        },
    )


def post_event(client, event: CloudEvent, *, structured: bool = False):
    headers, body = (to_structured if structured else to_binary)(event)
    return client.post("/", headers=headers, data=body)


def eventarc_sample() -> tuple[dict[str, str], bytes]:
    head, body = (DATA_DIR / "eventarc-pubsub-cloudevent.http").read_text().split("\n\n", 1)
    headers = dict(line.split(": ", 1) for line in head.splitlines()[1:])
    return headers, body.strip().encode()


# on_event


def test_the_eventarc_sample_cancels_with_its_attribute_key(on_event):
    event_client, rig = on_event
    headers, body = eventarc_sample()
    response = event_client.post("/", headers=headers, data=body)
    assert response.status_code == 200
    (result,) = rig.publisher.results()
    assert result["outcome"] == "CANCELLED"
    assert result["operation"] == "organizations/123456789/operations/abc"
    assert result["idempotency_key"] == "k1"
    assert result["source"] == {"kind": "pubsub", "message_id": "2070443601311540"}


@pytest.mark.parametrize("structured", [False, True])
def test_a_messagepublished_cloudevent_in_either_mode(on_event, structured):
    event_client, rig = on_event
    event = pubsub_event(json.dumps({"operation": NAME, "location": "us", "api_version": "v2"}).encode())
    assert post_event(event_client, event, structured=structured).status_code == 200
    assert [c.path for c in rig.simulator.cancel_calls()] == [f"/v2/{NAME}:cancel"]
    (result,) = rig.publisher.results()
    assert (result["location"], result["api_version"]) == ("us", "v2")


def test_a_raw_pubsub_push_body_is_converted_by_the_framework(on_event):
    event_client, rig = on_event
    response = event_client.post("/", json=json.loads((DATA_DIR / "pubsub-push-body.json").read_text()))
    assert response.status_code == 200
    (result,) = rig.publisher.results()
    assert result["location"] == "eu"
    assert result["source"] == {"kind": "pubsub", "message_id": "17"}


def test_a_legacy_background_event_is_converted_by_the_framework(on_event):
    event_client, rig = on_event
    sample = json.loads((DATA_DIR / "legacy-background-event.json").read_text())
    # functions-framework converts the documented shape, whose message sits under "data".
    response = event_client.post("/", json={"data": sample["event"], "context": sample["context"]})
    assert response.status_code == 200
    (result,) = rig.publisher.results()
    assert result["operation"] == "organizations/123456789/operations/abc"
    assert result["source"]["message_id"] == "1215011316659232"


@pytest.mark.parametrize(
    ("sample", "operations"),
    [
        ("alert-incident-open.json", ["organizations/123456789/operations/9c5fa5e5-e368-439a-baa4-08c17b77ec23"]),
        ("alert-incident-labels.json", ["organizations/123456789/operations/op-42"]),
        # Log-match policies: metric.labels empty, the extracted labels only in the summary.
        ("alert-incident-log-match.json", ["organizations/123456789/operations/op-7731"]),
        ("alert-incident-closed.json", []),
    ],
)
def test_monitoring_incidents_through_on_event(on_event, sample, operations):
    event_client, rig = on_event
    data = (DATA_DIR / sample).read_bytes()
    assert post_event(event_client, pubsub_event(data, message_id="alert-1")).status_code == 200
    results = rig.publisher.results()
    assert [r["operation"] for r in results] == operations
    assert [c.path.split("/v2/")[1] for c in rig.simulator.cancel_calls()] == [f"{o}:cancel" for o in operations]
    incident = json.loads(data)["incident"]
    incident_id, policy_name = incident["incident_id"], incident["policy_name"]
    for result in results:
        assert result["source"] == {
            "kind": "alert",
            "message_id": "alert-1",
            "incident_id": incident_id,
            "policy_name": policy_name,
        }
        assert result["idempotency_key"] == f"{incident_id}/securitycenter.googleapis.com/{result['operation']}"


def test_duplicate_deliveries_through_the_entry_point_cancel_once(on_event):
    event_client, rig = on_event
    for message_id in ("1", "2", "3", "4"):
        assert post_event(event_client, pubsub_event(NAME.encode(), message_id=message_id)).status_code == 200
    assert len(rig.simulator.cancel_calls()) == 1
    assert len(rig.publisher.results()) == 1


def test_transient_trouble_answers_503_so_pubsub_redelivers(on_event):
    event_client, rig = on_event
    rig.simulator.inject(503, count=4)
    response = post_event(event_client, pubsub_event(NAME.encode()))
    assert response.status_code == 503
    assert rig.publisher.messages == []
    assert post_event(event_client, pubsub_event(NAME.encode())).status_code == 200
    assert len(rig.publisher.results()) == 1


def test_a_conflict_the_api_will_not_change_its_mind_on_is_reported_not_redelivered(on_event):
    event_client, rig = on_event
    rig.simulator.inject(409, status_name="ALREADY_EXISTS")
    assert post_event(event_client, pubsub_event(NAME.encode())).status_code == 200
    (result,) = rig.publisher.results()
    assert result["outcome"] == "REJECTED"
    assert result["error"] == "HTTP 409: ALREADY_EXISTS: injected fault"
    # An ABORTED conflict is passing trouble: Pub/Sub is asked to deliver it again.
    rig.simulator.inject(409)
    assert post_event(event_client, pubsub_event(b"organizations/1/operations/other-x")).status_code == 503


def test_an_early_check_is_deferred_by_a_503(on_event):
    event_client, rig = on_event
    post_event(event_client, pubsub_event(b"organizations/1/operations/slow-1-x"))
    (check,) = rig.publisher.take_checks()
    event = pubsub_event(check.data, check.attributes, message_id="check-1", source=checks_source())
    assert post_event(event_client, event).status_code == 503
    rig.clock.advance(5)
    assert post_event(event_client, event).status_code == 200
    assert rig.publisher.results()[0]["checks"] == 2


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"subscription": "s", "message": {"data": "***not base64***", "messageId": "1"}}, "not valid base64"),
        (
            {"subscription": "s", "message": {"data": "", "attributes": {"a": 1}, "messageId": "1"}},
            "strings to strings",
        ),
        ({"nothing": "here"}, "without a message"),
        ("just a string", "without a message"),
    ],
)
def test_a_malformed_pubsub_event_is_acknowledged_and_logged(on_event, data, reason):
    event_client, rig = on_event
    event = CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": TOPIC_SOURCE}, data)
    assert post_event(event_client, event).status_code == 200
    assert rig.simulator.calls == [] and rig.publisher.messages == []
    (line,) = [line for line in rig.logs() if line.get("event") == "event_unusable"]
    assert reason in line["reason"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b"\xff\xfe\x00", "not UTF-8"), (b"   ", "empty"), (b"{oops", "not valid JSON"), (b'["a"]', "must be an object")],
)
def test_an_unusable_message_body_is_acknowledged_and_logged(on_event, payload, reason):
    event_client, rig = on_event
    assert post_event(event_client, pubsub_event(payload)).status_code == 200
    assert rig.simulator.calls == [] and rig.publisher.messages == []
    (line,) = [line for line in rig.logs() if line.get("event") == "message_ignored"]
    assert reason in line["reason"] and line["severity"] == "WARNING"


def test_another_cloudevent_type_carries_the_request_as_its_data(on_event):
    event_client, rig = on_event
    event = CloudEvent(
        {"type": "com.example.cancel.requested", "source": "//example", "id": "e-1"}, {"operation": NAME}
    )
    assert post_event(event_client, event).status_code == 200
    (result,) = rig.publisher.results()
    assert result["source"] == {"kind": "http", "message_id": "e-1"}


# on_http


def test_http_json_request_answers_202_with_each_items_fate(on_http):
    http_client, rig = on_http
    body = {
        "operations": [
            NAME,
            "organizations/1/operations/bad%2Fid",
            {"operation": "organizations/1/operations/missing-1"},
        ]
    }
    response = http_client.post("/", json=body)
    assert response.status_code == 202
    answer = response.get_json()
    assert [(i["operation"], i["status"], i.get("outcome")) for i in answer["accepted"]] == [
        (NAME, "accepted", "CANCELLED"),
        ("organizations/1/operations/missing-1", "accepted", "NOT_FOUND"),
    ]
    (rejected,) = answer["rejected"]
    assert rejected["operation"] == "organizations/1/operations/bad%2Fid"
    assert rejected["outcome"] == "REJECTED"
    assert "A-Z a-z 0-9" in rejected["error"]
    assert {r["source"]["kind"] for r in rig.publisher.results()} == {"http"}


def test_http_items_carry_only_the_fields_docs_requests_md_lists(on_http):
    http_client, _ = on_http
    body = {"operations": [NAME, "organizations/1/operations/slow-3-x", "organizations/1/operations/bad%2Fid"]}
    answer = http_client.post("/", json=body).get_json()
    items = answer["accepted"] + answer["rejected"]
    (running,) = [item for item in items if item["operation"].endswith("slow-3-x")]
    assert running["detail"].startswith("check 1 due ")
    row = next(line for line in (ROOT / "docs" / "requests.md").read_text().splitlines() if line.startswith("| `202`"))
    documented = set(re.findall(r"`([a-z_]+)`", row.split("each item with", 1)[1].split(";", 1)[0]))
    assert {field for item in items for field in item} <= documented, documented


def test_http_plain_text_names_one_per_line(on_http):
    http_client, rig = on_http
    response = http_client.post("/", data=f"  {NAME}  \n\norganizations/1/operations/b\n", content_type="text/plain")
    assert response.status_code == 202
    assert len(response.get_json()["accepted"]) == 2


def test_http_duplicate_reports_the_first_outcome(on_http):
    http_client, rig = on_http
    http_client.post("/", json={"operation": NAME})
    answer = http_client.post("/", json={"operation": NAME}).get_json()
    assert answer["accepted"][0]["status"] == "duplicate"
    assert answer["accepted"][0]["outcome"] == "CANCELLED"
    assert len(rig.simulator.cancel_calls()) == 1


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        ({"data": b"", "content_type": "application/json"}, 400, "body is empty"),
        ({"data": b"{not json", "content_type": "application/json"}, 400, "not valid JSON"),
        ({"data": b"\xff\xfe", "content_type": "text/plain"}, 400, "not UTF-8"),
        ({"data": b"<x/>", "content_type": "application/xml"}, 400, "is not application/json"),
        # curl -d sends this unless told otherwise: a clear 400 naming the types that are read.
        (
            {"data": b"organizations/1/operations/abc", "content_type": "application/x-www-form-urlencoded"},
            400,
            "is not application/json",
        ),
        ({"data": b"x" * (1024 * 1024 + 1), "content_type": "text/plain"}, 413, "larger than"),
    ],
)
def test_http_unusable_bodies_get_a_clear_error(on_http, kwargs, status, error):
    http_client, rig = on_http
    response = http_client.post("/", **kwargs)
    assert response.status_code == status
    assert error in response.get_json()["error"]
    assert rig.simulator.calls == [] and rig.publisher.messages == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"operations": [NAME] * 101}, "exceeds the limit of 100"),
        ({"hello": "world"}, "names no operation"),
        ({"operations": [NAME], "priority": "high"}, "unknown field 'priority'"),
    ],
)
def test_http_readable_bodies_naming_nothing_are_accepted_with_the_reason(on_http, body, reason):
    http_client, rig = on_http
    response = http_client.post("/", json=body)
    assert response.status_code == 202
    answer = response.get_json()
    assert answer["accepted"] == [] and answer["rejected"] == []
    assert reason in answer["ignored"]
    assert rig.simulator.calls == [] and rig.publisher.messages == []


def test_http_only_accepts_post(on_http):
    http_client, _ = on_http
    response = http_client.get("/")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


def test_http_closed_incident_is_accepted_as_nothing_to_do(on_http):
    http_client, rig = on_http
    response = http_client.post(
        "/", data=(DATA_DIR / "alert-incident-closed.json").read_bytes(), content_type="application/json"
    )
    assert response.status_code == 202
    assert "only open incidents act" in response.get_json()["ignored"]


def test_http_transient_trouble_answers_503_with_retry_after(on_http):
    http_client, rig = on_http
    rig.simulator.inject(429, retry_delay="30s")
    response = http_client.post("/", json={"operation": NAME})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert response.get_json()["retry"][0]["operation"] == NAME


@pytest.mark.parametrize("structured", [False, True])
def test_http_accepts_cloudevents_in_either_mode(on_http, structured):
    http_client, rig = on_http
    response = post_event(http_client, pubsub_event(NAME.encode()), structured=structured)
    assert response.status_code == 202
    assert response.get_json()["accepted"][0]["outcome"] == "CANCELLED"
    assert rig.publisher.results()[0]["source"]["kind"] == "pubsub"


def test_http_malformed_cloudevent_is_a_400(on_http):
    http_client, rig = on_http
    response = http_client.post("/", data=b"{}", headers={"ce-specversion": "1.0", "Content-Type": "application/json"})
    assert response.status_code == 400
    assert "malformed CloudEvent" in response.get_json()["error"]


BINARY = {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "//sender", "ce-type": "dev.example.cancel"}
STRUCTURED = {"specversion": "1.0", "id": "e-1", "source": "//sender", "type": "dev.example.cancel", "data": NAME}


@pytest.mark.parametrize(
    ("dropped", "error"),
    [
        ("ce-source", "malformed CloudEvent: no ce-source"),
        ("ce-id", "malformed CloudEvent: no ce-id"),
        ("ce-type", "malformed CloudEvent: no ce-type"),
    ],
)
def test_http_binary_cloudevent_without_a_required_header_is_a_400_naming_it(on_http, dropped, error):
    http_client, rig = on_http
    headers = {name: value for name, value in BINARY.items() if name != dropped}
    response = http_client.post("/", data=NAME.encode(), headers={**headers, "Content-Type": "text/plain"})
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(f"{error}, and the body is ")
    as_json = http_client.post("/", json={"operation": NAME}, headers=headers)
    assert (as_json.status_code, as_json.get_json()) == (400, {"error": error})
    assert rig.simulator.cancel_calls() == []
    complete = http_client.post("/", data=NAME.encode(), headers={**BINARY, "Content-Type": "text/plain"})
    assert complete.status_code == 202, complete.get_json()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"id": None}, "malformed CloudEvent: no id"),
        ({"specversion": None}, "malformed CloudEvent: no specversion"),
        ({"source": ""}, "malformed CloudEvent: no source"),
        ({"specversion": "0.3"}, "malformed CloudEvent: specversion '0.3' is not 1.0"),
    ],
)
def test_http_structured_cloudevent_without_its_required_attributes_is_a_400(on_http, change, error):
    http_client, rig = on_http
    event = {name: value for name, value in {**STRUCTURED, **change}.items() if value is not None}
    response = http_client.post("/", data=json.dumps(event), content_type="application/cloudevents+json")
    assert (response.status_code, response.get_json()) == (400, {"error": error})
    assert rig.simulator.cancel_calls() == []
    complete = http_client.post("/", data=json.dumps(STRUCTURED), content_type="application/cloudevents+json")
    assert complete.status_code == 202, complete.get_json()


@pytest.mark.parametrize(
    ("sample", "message_id"),
    [("pubsub-push-body.json", "17"), ("legacy-background-event.json", "1215011316659232")],
)
def test_http_accepts_pubsub_push_bodies_and_legacy_background_events(on_http, sample, message_id):
    http_client, rig = on_http
    response = http_client.post("/", data=(DATA_DIR / sample).read_bytes(), content_type="application/json")
    assert response.status_code == 202
    assert rig.publisher.results()[0]["source"] == {"kind": "pubsub", "message_id": message_id}


# main.py itself


def test_main_fails_start_up_naming_the_bad_variable(monkeypatch):
    monkeypatch.setenv("OPCANCEL_CHECK_MULTIPLIER", "fast")
    with pytest.raises(ConfigError, match="OPCANCEL_CHECK_MULTIPLIER"):
        create_app("on_event", str(ROOT / "main.py"), "cloudevent")


def test_main_fails_start_up_on_a_sqlite_path_that_cannot_hold_the_database(monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "local-project")
    monkeypatch.setenv("OPCANCEL_STORE", "sqlite")
    monkeypatch.setenv("OPCANCEL_SQLITE_PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="OPCANCEL_SQLITE_PATH: cannot hold the database"):
        create_app("on_event", str(ROOT / "main.py"), "cloudevent")


def test_main_needs_a_project_for_pubsub(monkeypatch):
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.setenv("OPCANCEL_STORE", "memory")
    with pytest.raises(ConfigError, match="GOOGLE_CLOUD_PROJECT"):
        create_app("on_http", str(ROOT / "main.py"), "http")


def test_main_serves_and_warns_when_every_parent_is_allowed(monkeypatch, capsys):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "local-project")
    monkeypatch.setenv("OPCANCEL_STORE", "memory")
    monkeypatch.delenv("OPCANCEL_ALLOWED_PARENTS", raising=False)
    client = create_app("on_http", str(ROOT / "main.py"), "http").test_client()
    warning = json.loads(capsys.readouterr().out.splitlines()[0])
    assert warning["event"] == "allow_all_parents" and warning["severity"] == "WARNING"
    assert client.get("/").status_code == 405
    response = client.post(
        "/", data=(DATA_DIR / "alert-incident-closed.json").read_bytes(), content_type="application/json"
    )
    assert response.status_code == 202


def test_an_unexpected_failure_is_logged_and_raised_for_redelivery():
    class Exploding:
        def handle(self, message):
            raise KeyError("bug")

    rig_log = io.StringIO()
    runtime = Runtime(Exploding(), log=Logger(rig_log))
    with pytest.raises(KeyError):
        runtime.on_event(pubsub_event(NAME.encode(), message_id="m-bug"))
    (line,) = [json.loads(text) for text in rig_log.getvalue().splitlines()]
    assert (line["severity"], line["event"], line["message_id"]) == ("ERROR", "unexpected_error", "m-bug")


@pytest.mark.parametrize(
    ("store", "unasked"),
    [("sqlite", ("function._store.firestore",)), ("firestore", ("function._store.sqlite", "sqlite3"))],
)
def test_main_loads_only_what_requirements_txt_installs_and_nothing_heavy(tmp_path, store, unasked):
    """Cold start is mostly imports (bench/RESULTS.md): starting and serving a request must not pull in
    Google's gRPC clients, which only the tests and the local stack use, or a store backend unasked."""
    heavy = ("grpc", "google.protobuf", "google.cloud.pubsub_v1", "google.api_core", "requests", *unasked)
    probe = (
        "import sys, main\n"
        "from function import InboundMessage\n"
        "main.runtime._pipeline.handle(InboundMessage(data=b'organizations/1/operations/../x'))\n"
        f"print(sorted(name for name in {heavy!r} if name in sys.modules))\n"
    )
    closed = f"127.0.0.1:{free_port()}"
    env = {
        "PATH": os.environ["PATH"],
        # Nothing listens there: the request's result publish fails at once, without leaving the machine.
        "PUBSUB_EMULATOR_HOST": closed,
        "OPCANCEL_API_ENDPOINT": f"http://{closed}",
        "GOOGLE_CLOUD_PROJECT": "local-project",
        "OPCANCEL_STORE": store,
        "OPCANCEL_SQLITE_PATH": str(tmp_path / "store.sqlite3"),
        "FIRESTORE_EMULATOR_HOST": closed,
        "OPCANCEL_ALLOWED_PARENTS": "organizations/1",
    }
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines()[-1] == "[]", done.stdout


# traces


def deliver_checks_through_on_event(event_client, rig, headers: dict[str, str]) -> int:
    """Deliver every scheduled check as the checks topic's push subscription would, each with its own trace."""
    delivered = 0
    for _ in range(20):
        pending = rig.publisher.take_checks()
        if not pending:
            return delivered
        for check in pending:
            rig.clock.current = max(rig.clock.current, parse_time(json.loads(check.data)["due_at"]))
            event = pubsub_event(check.data, check.attributes, message_id=f"check-{delivered}", source=CHECKS_SOURCE)
            event_headers, body = to_binary(event)
            assert event_client.post("/", headers={**event_headers, **headers}, data=body).status_code == 200
            delivered += 1
    raise AssertionError("check chain did not end")


@pytest.mark.parametrize(
    "header",
    [
        {"X-Cloud-Trace-Context": f"{TRACE_ID}/1;o=1"},
        {"X-Cloud-Trace-Context": TRACE_ID.upper()},
        {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
    ],
)
def test_one_trace_follows_a_request_through_its_checks_to_its_result(on_event, header):
    event_client, rig = on_event
    headers, body = to_binary(pubsub_event(b"organizations/123456789/operations/slow-2-traced"))
    assert event_client.post("/", headers={**headers, **header}, data=body).status_code == 200
    other = {"X-Cloud-Trace-Context": "0af7651916cd43dd8448eb211c80319c/7;o=1"}
    assert deliver_checks_through_on_event(event_client, rig, other) >= 2
    (result,) = rig.publisher.results()
    assert result["outcome"] == "CANCELLED"
    logs = rig.logs()
    events = [line["event"] for line in logs]
    assert {"cancel_sent", "check_scheduled", "result_published"} <= set(events)
    assert {line.get(TRACE_FIELD) for line in logs} == {f"projects/test-project/traces/{TRACE_ID}"}


@pytest.mark.parametrize(
    "header",
    [
        {},
        {"X-Cloud-Trace-Context": "not-a-trace"},
        {"X-Cloud-Trace-Context": "0" * 32 + "/1"},
        {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7"},
        {"X-Cloud-Trace-Context": f"{TRACE_ID}/1;o=1 X-Evil: 1"},
    ],
)
def test_no_usable_trace_header_leaves_the_trace_out(on_http, header):
    http_client, rig = on_http
    response = http_client.post("/", data=NAME, headers={"Content-Type": "text/plain", **header})
    assert response.status_code == 202
    assert rig.logs() and all(TRACE_FIELD not in line for line in rig.logs())


def test_on_http_logs_carry_the_trace_of_the_request(on_http):
    http_client, rig = on_http
    response = http_client.post(
        "/", data=NAME, headers={"Content-Type": "text/plain", "X-Cloud-Trace-Context": f"{TRACE_ID}/9"}
    )
    assert response.status_code == 202
    assert {line.get(TRACE_FIELD) for line in rig.logs()} == {f"projects/test-project/traces/{TRACE_ID}"}


# other Google APIs


def test_a_vertex_ai_operation_through_on_event_gets_a_result_naming_its_service(on_event):
    client, rig = on_event
    name = "projects/my-proj/locations/us-central1/operations/8812"
    response = post_event(client, pubsub_event(f"//aiplatform.googleapis.com/{name}".encode()))
    assert response.status_code == 200
    (result,) = rig.publisher.results()
    assert (result["operation"], result["outcome"], result["service"], result["location"]) == (
        name,
        "CANCELLED",
        "aiplatform.googleapis.com",
        "us-central1",
    )
    assert [call.path for call in rig.simulator.cancel_calls()] == [f"/v1/{name}:cancel"]


def test_http_reports_other_services_accepted_and_unregistered_or_bare_names_rejected(on_http):
    http_client, rig = on_http
    dataproc = "projects/my-proj/regions/us-east1/operations/d-1"
    body = {
        "operations": [
            f"https://us-east1-dataproc.googleapis.com/v1/{dataproc}",
            "//compute.googleapis.com/projects/my-proj/operations/c-1",
            "projects/my-proj/operations/p-1",
        ]
    }
    response = http_client.post("/", json=body)
    assert response.status_code == 202
    answer = response.get_json()
    assert [(item["operation"], item.get("outcome")) for item in answer["accepted"]] == [(dataproc, "CANCELLED")]
    errors = [item["error"] for item in answer["rejected"]]
    assert "service compute.googleapis.com is not in the registry" in errors[0]
    assert "use its full resource name" in errors[1]
    assert len(rig.simulator.cancel_calls()) == 1


def test_main_fails_start_up_naming_a_bad_opcancel_services(monkeypatch):
    monkeypatch.setenv("OPCANCEL_SERVICES", '{"x": {"version": "v1", "host": "x.evil.com"}}')
    with pytest.raises(ConfigError, match="OPCANCEL_SERVICES: the entry for 'x'"):
        create_app("on_event", str(ROOT / "main.py"), "cloudevent")
