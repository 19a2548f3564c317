"""Hostile senders (issue 13), each case through the entry points, with the logs on a strict UTF-8 byte stream.

Nothing a message carries may crash, stall, squat or forge: every echoed field bounded and escaped,
key namespaces that never meet, one size limit however a body is framed, one recursion-safe JSON
reader, and error texts that relay neither secrets nor raw upstream bodies.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import sys
import unicodedata

import httpx
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from function import FirestoreStore, Runtime, Settings
from function._gcp.auth import Authenticator
from function._parsing import MAX_BODY_BYTES
from tests.entry.test_entrypoints import NAME, load_wired, post_event, pubsub_event
from tests.support import DATA_DIR, TEST_POLICY, Rig

#: Valid JSON, ASCII on the wire, and each piece a way to break a log line, a terminal or an encoder.
HOSTILE_TEXT = "a\ud800b\u2028c\u2029d\u202ee\x1b[31mf\x00g\\h"
ECHO_LIMIT = 256
ALLOWED = Settings(project="test-project", polling=TEST_POLICY, store="memory", allowed_parents=("organizations/1",))
WIDENED = dataclasses.replace(ALLOWED, allowed_parents=("organizations/1", "organizations/123456789"))


def wired(target: str, signature: str, rig: Rig | None = None):
    """The wired test function, optionally serving ``rig`` instead of its own."""
    client, own = load_wired(target, signature)
    if rig is None:
        return client, own
    module = sys.modules["wired"]
    module.rig, module.runtime = rig, Runtime(rig.service, log=rig.log)
    return client, rig


def checks_topic_event(rig: Rig, data: bytes, attributes: dict[str, str], message_id: str) -> CloudEvent:
    source = f"//pubsub.googleapis.com/projects/{rig.settings.project}/topics/{rig.settings.checks_topic}"
    return CloudEvent(
        {"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": source, "id": message_id},
        {
            "subscription": "projects/test-project/subscriptions/checks",
            "message": {
                "data": base64.b64encode(data).decode(),
                "attributes": attributes,
                "messageId": message_id,
            },
        },
    )


def deliver_checks(client, rig: Rig) -> int:
    """Deliver every published check to ``on_event`` as the checks subscription would, each when due."""
    delivered = 0
    for _ in range(20):
        pending = rig.publisher.take_checks()
        if not pending:
            return delivered
        for number, check in enumerate(pending):
            rig.clock.advance(60)
            event = checks_topic_event(rig, check.data, check.attributes, f"check-{delivered}-{number}")
            assert post_event(client, event).status_code == 200
            delivered += 1
    raise AssertionError("check chain did not end")


def assert_echo_safe(text: str) -> None:
    """Bounded, and nothing left that breaks an encoder, a log line or a terminal."""
    assert len(text) <= ECHO_LIMIT, len(text)
    assert not [ch for ch in text if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")], ascii(text)


def result_bytes(rig: Rig) -> list[bytes]:
    return [data for data, _ in rig.publisher.on("opcancel-results")]


def assert_results_are_utf8(rig: Rig) -> None:
    for data in result_bytes(rig):
        data.decode("utf-8")  # strict: a lone surrogate passed through would fail here


# Long message ids: bounded at the edge, so the follow-up check stays well formed and the result comes.


@pytest.mark.parametrize("framing", ["pubsub message id", "cloudevent id"])
def test_a_long_message_id_is_bounded_and_the_request_still_gets_its_result(framing):
    client, rig = wired("on_event", "cloudevent")
    name = "organizations/1/operations/slow-1-long-id"
    long_id = "7" * 1000
    if framing == "pubsub message id":
        event = pubsub_event(name.encode(), message_id=long_id)
    else:
        event = CloudEvent({"type": "com.example.cancel", "source": "//example", "id": long_id}, {"operation": name})
    assert post_event(client, event).status_code == 200
    assert deliver_checks(client, rig) == 1
    (result,) = rig.publisher.results()
    assert (result["outcome"], result["checks"]) == ("CANCELLED", 2)
    message_id = result["source"]["message_id"]
    assert len(message_id) == ECHO_LIMIT and message_id.startswith("777") and message_id.endswith("…")
    assert not [line for line in rig.logs() if line.get("event") == "check_malformed"]


# Any Unicode in an echoed field: escaped once, at the edge, for logs, results and HTTP answers alike.


def test_hostile_unicode_in_a_reason_is_escaped_after_the_cancel_not_a_crash():
    client, rig = wired("on_event", "cloudevent")
    body = json.dumps({"operation": NAME, "reason": HOSTILE_TEXT + "x" * 500})  # ASCII on the wire
    assert post_event(client, pubsub_event(body.encode())).status_code == 200
    (result,) = rig.publisher.results()
    assert result["outcome"] == "CANCELLED"
    (sent,) = [line for line in rig.logs() if line.get("event") == "cancel_sent"]
    assert_echo_safe(sent["reason"])
    assert sent["reason"].startswith("a\\ud800b\\u2028c\\u2029d\\u202ee\\x1b[31mf\\x00g\\\\h")
    assert sent["reason"].endswith("…")


def test_hostile_unicode_in_an_http_message_id_is_escaped_in_the_result_and_the_answer():
    client, rig = wired("on_http", "http")
    push = {
        "subscription": "s",
        "message": {"data": base64.b64encode(NAME.encode()).decode(), "messageId": HOSTILE_TEXT},
    }
    response = client.post("/", data=json.dumps(push), content_type="application/json")
    assert response.status_code == 202
    response.get_data().decode("utf-8")
    (result,) = rig.publisher.results()
    assert result["outcome"] == "CANCELLED"
    assert_echo_safe(result["source"]["message_id"])
    assert result["source"]["message_id"] == "a\\ud800b\\u2028c\\u2029d\\u202ee\\x1b[31mf\\x00g\\\\h"
    assert_results_are_utf8(rig)
    for line in rig.logs():
        if "message_id" in line:
            assert_echo_safe(line["message_id"])


@pytest.mark.parametrize("entry", ["on_event", "on_http"])
def test_hostile_unicode_in_a_cloudevent_type_and_id_is_escaped(entry):
    client, rig = wired(entry, "cloudevent" if entry == "on_event" else "http")
    without_data = CloudEvent({"type": HOSTILE_TEXT, "source": "//example", "id": "e-1"}, None)
    response = post_event(client, without_data, structured=entry == "on_http")
    assert response.status_code == (200 if entry == "on_event" else 400)
    answer = response.get_data().decode("utf-8")
    if entry == "on_http":
        assert_echo_safe(json.loads(answer)["error"])
    with_data = CloudEvent({"type": HOSTILE_TEXT, "source": "//example", "id": HOSTILE_TEXT}, {"operation": NAME})
    assert post_event(client, with_data, structured=True).status_code in (200, 202)
    (result,) = rig.publisher.results()
    assert result["outcome"] == "CANCELLED"
    assert_echo_safe(result["source"]["message_id"])
    assert_results_are_utf8(rig)
    for line in rig.logs():
        for field in ("reason", "message_id", "message"):
            if field in line and field != "message":
                assert_echo_safe(line[field])
        assert "\ud800" not in line["message"] and "\u2028" not in line["message"]


def test_hostile_unicode_in_an_offending_name_and_an_incident_id_is_escaped():
    client, rig = wired("on_event", "cloudevent")
    incident = {
        "version": "1.2",
        "incident": {
            "incident_id": HOSTILE_TEXT,
            "state": "open",
            "metric": {"labels": {"organization_id": "1", "operation_id": "bad" + HOSTILE_TEXT}},
        },
    }
    assert post_event(client, pubsub_event(json.dumps(incident).encode())).status_code == 200
    (result,) = rig.publisher.results()
    assert result["outcome"] == "REJECTED"
    assert_echo_safe(result["operation"])
    assert_echo_safe(result["source"]["incident_id"])
    assert_results_are_utf8(rig)
    (_, attributes) = rig.publisher.on("opcancel-results")[0]
    assert_echo_safe(attributes["operation"])


# Deep nesting: one recursion-safe JSON reader, a clear 400 (or an acknowledged, logged message), never a 500.

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"operation": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}"


@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT], ids=["array", "object"])
def test_deeply_nested_json_to_on_http_is_a_clear_400(body):
    client, rig = wired("on_http", "http")
    response = client.post("/", data=body, content_type="application/json")
    assert response.status_code == 400
    assert "nested" in response.get_json()["error"]
    assert rig.simulator.calls == [] and rig.publisher.messages == []


@pytest.mark.parametrize("structured", [True, False], ids=["structured", "binary"])
def test_a_deeply_nested_cloudevent_to_on_http_is_a_clear_400(structured):
    client, rig = wired("on_http", "http")
    if structured:
        envelope = b'{"specversion": "1.0", "type": "t", "source": "//s", "id": "1", "data": ' + DEEP + b"}"
        response = client.post("/", data=envelope, content_type="application/cloudevents+json")
    else:
        headers = {"ce-specversion": "1.0", "ce-type": "t", "ce-source": "//s", "ce-id": "1"}
        response = client.post("/", data=DEEP, headers=headers, content_type="application/json")
    assert response.status_code == 400
    assert "nested" in response.get_json()["error"]
    assert rig.simulator.calls == [] and rig.publisher.messages == []


def test_deeply_nested_json_on_pubsub_is_acknowledged_and_logged():
    client, rig = wired("on_event", "cloudevent")
    assert post_event(client, pubsub_event(DEEP_OBJECT)).status_code == 200
    (line,) = [line for line in rig.logs() if line.get("event") == "message_ignored"]
    assert "nested" in line["reason"]
    assert rig.simulator.calls == [] and rig.publisher.messages == []


# Key namespaces: an explicit key never equals a derived one; a rejection never binds a valid request's key.


@pytest.mark.parametrize(
    "squatter",
    [
        {"operation": "garbage text", "idempotency_key": f"securitycenter.googleapis.com/{NAME}"},
        {"operation": "organizations/2/operations/other", "idempotency_key": f"securitycenter.googleapis.com/{NAME}"},
        {
            "operation": "organizations/1/operations/elsewhere",
            "idempotency_key": "incident/0.mtdi83m6w8ao/securitycenter.googleapis.com/organizations/123456789/operations/9c5fa5e5-e368-439a-baa4-08c17b77ec23",
        },
    ],
    ids=["garbage", "outside-allow-list", "incident-key"],
)
def test_an_explicit_key_that_looks_like_a_derived_key_blocks_nobody(squatter):
    rig = Rig(settings=WIDENED)
    client, rig = wired("on_http", "http", rig)
    assert client.post("/", json=squatter).status_code == 202
    victim = client.post("/", json={"operation": NAME}).get_json()
    assert [(item["operation"], item["status"], item["outcome"]) for item in victim["accepted"]] == [
        (NAME, "accepted", "CANCELLED")
    ]
    alert = client.post("/", data=(DATA_DIR / "alert-incident-open.json").read_bytes(), content_type="application/json")
    assert [item["outcome"] for item in alert.get_json()["accepted"]] == ["CANCELLED"]
    # The squatter's result reports its key as given, which may read like the victim's; each result is
    # still its own event, stored under its own key.
    event_ids = [attributes["ce-id"] for _, attributes in rig.publisher.on("opcancel-results")]
    assert len(event_ids) == len(set(event_ids)) == 3


@pytest.mark.parametrize("body", [{"operation": NAME}, {"operation": NAME, "idempotency_key": "change-4711"}])
def test_an_allow_list_rejection_does_not_stick_once_the_list_is_widened(body):
    narrow = Rig(settings=ALLOWED)
    client, _ = wired("on_http", "http", narrow)
    (rejected,) = client.post("/", json=body).get_json()["rejected"]
    assert rejected["outcome"] == "REJECTED"
    # The same store, as a redeploy with a widened OPCANCEL_ALLOWED_PARENTS would find it.
    wide = Rig(
        settings=WIDENED,
        store=narrow.store,
        clock=narrow.clock,
    )
    client, _ = wired("on_http", "http", wide)
    (accepted,) = client.post("/", json=body).get_json()["accepted"]
    assert (accepted["status"], accepted["outcome"]) == ("accepted", "CANCELLED")
    ((_, rejected_attributes),) = narrow.publisher.on("opcancel-results")
    ((_, cancelled_attributes),) = wide.publisher.on("opcancel-results")
    assert rejected_attributes["ce-id"] != cancelled_attributes["ce-id"]


def test_incident_ids_that_escape_alike_get_distinct_keys():
    client, rig = wired("on_event", "cloudevent")
    for incident_id in ("a\x01", "a\\x01"):
        incident = {
            "version": "1.2",
            "incident": {
                "incident_id": incident_id,
                "state": "open",
                "metric": {"labels": {"organization_id": "1", "operation_id": "incident-op"}},
            },
        }
        assert (
            post_event(client, pubsub_event(json.dumps(incident).encode(), message_id=incident_id)).status_code == 200
        )
    results = rig.publisher.results()
    assert len(results) == 2
    assert len({result["idempotency_key"] for result in results}) == 2
    assert len({result["source"]["incident_id"] for result in results}) == 2


def test_an_incident_with_a_long_id_is_acted_on_once_and_echoed_cut():
    client, rig = wired("on_event", "cloudevent")
    incident = {
        "version": "1.2",
        "incident": {
            "incident_id": "0." + "x" * 5000,
            "state": "open",
            "metric": {"labels": {"organization_id": "1", "operation_id": "slow-1-incident"}},
        },
    }
    for message_id in ("1", "2"):
        event = pubsub_event(json.dumps(incident).encode(), message_id=message_id)
        assert post_event(client, event).status_code == 200
    assert deliver_checks(client, rig) == 1
    assert len(rig.simulator.cancel_calls()) == 1
    (result,) = rig.publisher.results()
    assert result["outcome"] == "CANCELLED"
    # Reported as the default key it is: the digest of the escaped id, then the operation's identity.
    digest, _, identity = result["idempotency_key"].partition("/")
    assert len(digest) == 64 and identity == f"securitycenter.googleapis.com/{result['operation']}"
    assert len(result["source"]["incident_id"]) == ECHO_LIMIT and result["source"]["incident_id"].endswith("…")


def test_the_same_invalid_name_in_two_incidents_gets_a_result_for_each():
    client, rig = wired("on_event", "cloudevent")
    for incident_id in ("inc-a", "inc-b"):
        incident = {
            "version": "1.2",
            "incident": {
                "incident_id": incident_id,
                "state": "open",
                "metric": {"labels": {"organization_id": "1", "operation_id": "bad%2Fid"}},
            },
        }
        assert post_event(client, pubsub_event(json.dumps(incident).encode())).status_code == 200
    results = rig.publisher.results()
    assert [(r["outcome"], r["source"]["incident_id"]) for r in results] == [
        ("REJECTED", "inc-a"),
        ("REJECTED", "inc-b"),
    ]
    # No key was given and no operation named, so none is reported; each is still its own event.
    assert results[0]["idempotency_key"] is None and results[1]["idempotency_key"] is None
    ((_, first), (_, second)) = rig.publisher.on("opcancel-results")
    assert first["ce-id"] != second["ce-id"]


# One size limit however a body is framed.


class EndlessBody(io.RawIOBase):
    """A chunked upload of ``size`` bytes, made up as it is read, that counts what was read from it."""

    def __init__(self, size: int, fill: bytes = b"organizations/1/operations/a\n") -> None:
        self.size, self.fill, self.position, self.read_bytes = size, fill, 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        # The test client measures the stream by seeking to its end and back; nothing is read by that.
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence] + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self.size - self.position))
        start = self.position % len(self.fill)
        buffer[:count] = (self.fill * (count // len(self.fill) + 2))[start : start + count]
        self.position += count
        self.read_bytes += count
        return count


def post_chunked(client, body: io.RawIOBase, content_type: str = "text/plain"):
    # gunicorn, which serves Cloud Functions, de-chunks the body and sets wsgi.input_terminated.
    return client.post(
        "/",
        input_stream=body,
        headers={"Transfer-Encoding": "chunked", "Content-Type": content_type},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_a_chunked_body_over_the_limit_is_a_413_read_no_further_than_the_limit():
    client, rig = wired("on_http", "http")
    body = EndlessBody(20 * 1024 * 1024)
    response = post_chunked(client, body)
    assert response.status_code == 413
    assert "larger than" in response.get_json()["error"]
    assert body.read_bytes <= MAX_BODY_BYTES + 64 * 1024
    assert rig.simulator.calls == [] and rig.publisher.messages == []


def test_a_long_content_length_is_a_413_with_the_body_left_unread():
    client, rig = wired("on_http", "http")
    body = EndlessBody(20 * 1024 * 1024)
    response = client.post("/", input_stream=body, headers={"Content-Type": "text/plain"})
    assert response.status_code == 413
    assert "larger than" in response.get_json()["error"]
    # Neither opcancel nor functions-framework (which reads the whole body after most answers) read it.
    assert body.read_bytes == 0
    assert rig.simulator.calls == [] and rig.publisher.messages == []


def test_a_chunked_body_within_the_limit_is_read_and_served():
    client, rig = wired("on_http", "http")
    response = post_chunked(client, EndlessBody(len(NAME) + 1, fill=NAME.encode() + b"\n"))
    assert response.status_code == 202
    assert [item["outcome"] for item in response.get_json()["accepted"]] == ["CANCELLED"]


# Error texts: what failed, never a secret or a raw upstream body.

SECRET = "ya29.SECRET-TOKEN-VALUE"


def firestore_rig(handler) -> Rig:
    settings = Settings(project="test-project", polling=TEST_POLICY, store="firestore")
    store = FirestoreStore(
        project="test-project",
        lease_s=settings.lease_s,
        ttl_s=settings.record_ttl_s,
        auth=_SecretAuth(),
        transport=httpx.MockTransport(handler),
    )
    return Rig(settings=settings, store=store)


class _SecretAuth(Authenticator):
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {SECRET}"}

    def refresh(self) -> bool:
        return False


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(httpx.LocalProtocolError(f"Illegal header value b'Bearer {SECRET}'"), id="refused-header"),
        pytest.param(httpx.Response(500, text=f"<html>upstream page quoting {SECRET}</html>"), id="raw-500-body"),
    ],
)
def test_store_trouble_is_a_generic_503_and_a_log_line_without_the_secret(answer):
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        return answer

    client, rig = wired("on_http", "http", firestore_rig(handler))
    response = client.post("/", json={"operation": NAME})
    assert response.status_code == 503
    assert SECRET not in response.get_data(as_text=True)
    assert "upstream page" not in response.get_data(as_text=True)
    (retry,) = response.get_json()["retry"]
    assert retry["detail"] == "store_unavailable"
    logged = rig.raw_log.getvalue().decode("utf-8")
    assert SECRET not in logged and "upstream page" not in logged
    (line,) = [line for line in rig.logs() if line.get("event") == "retry_later"]
    assert line["reason"] == "store_unavailable"
    assert ("LocalProtocolError" if isinstance(answer, Exception) else "HTTP 500") in line["message"]


def test_an_api_refusal_reaches_the_result_escaped_and_bounded():
    message = "denied " + HOSTILE_TEXT + "y" * 600

    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": 403, "status": "PERMISSION_DENIED", "message": message}}
        return httpx.Response(403, content=json.dumps(body).encode(), headers={"content-type": "application/json"})

    client, rig = wired("on_http", "http", Rig(transport=httpx.MockTransport(handler)))
    response = client.post("/", json={"operation": NAME})
    assert response.status_code == 202
    (result,) = rig.publisher.results()
    assert result["outcome"] == "PERMISSION_DENIED"
    assert result["error"].startswith("HTTP 403: PERMISSION_DENIED: denied a\\ud800b\\u2028")
    assert_echo_safe(result["error"])
    assert_results_are_utf8(rig)


def test_an_api_outage_with_a_raw_body_is_a_generic_503():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text=f"<html>proxy page quoting {SECRET}</html>")

    client, rig = wired("on_http", "http", Rig(transport=httpx.MockTransport(handler)))
    response = client.post("/", json={"operation": NAME})
    assert response.status_code == 503
    assert response.get_json()["retry"][0]["detail"] == "api_unavailable"
    assert SECRET not in response.get_data(as_text=True)
    assert SECRET not in rig.raw_log.getvalue().decode("utf-8")


def test_structured_and_binary_events_to_on_http_are_still_read(
    # Guards the reader swap: both CloudEvent modes still reach the service.
):
    client, rig = wired("on_http", "http")
    for convert in (to_binary, to_structured):
        event = CloudEvent({"type": "com.example.cancel", "source": "//example"}, {"operation": NAME})
        headers, body = convert(event)
        assert client.post("/", headers=headers, data=body).status_code == 202
    assert len(rig.publisher.results()) == 1
