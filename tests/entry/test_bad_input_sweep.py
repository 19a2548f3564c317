"""A property-based sweep of hostile input through ``on_event``, oversized bodies included: acknowledged, no
network, a logged reason."""

from __future__ import annotations

import base64
import json

from cloudevents.http import CloudEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from function import Runtime
from function._names import parse_name
from function._requests import MAX_BODY_BYTES
from function.errors import InvalidRequest
from tests.support import Rig

HOSTILE_FRAGMENTS = [
    "organizations/1/operations/",
    "//securitycenter.googleapis.com/",
    "https://securitycenter.googleapis.com/v1/",
    "https://evil.example/v1/",
    "%2F",
    "%2e%2e",
    "../",
    "/..",
    "?alt=json",
    "#frag",
    ":cancel",
    "\u0000",
    "\r\n",
    "\u202e",
    "\ufeff",
    "ｏｒｇａｎｉｚａｔｉｏｎｓ",
    "'; DROP TABLE records; --",
    "${jndi:ldap://x}",
    "{{7*7}}",
    "<script>",
    "@evil.example",
    " ",
    "\t",
]

hostile_names = st.lists(
    st.one_of(st.sampled_from(HOSTILE_FRAGMENTS), st.text(max_size=12)), min_size=1, max_size=8
).map("".join)

payloads = st.one_of(
    st.binary(max_size=2048),
    hostile_names.map(str.encode),
    hostile_names.map(lambda name: json.dumps({"operation": name}).encode()),
    st.lists(hostile_names, max_size=5).map(lambda names: json.dumps({"operations": names}).encode()),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
        max_leaves=20,
    ).map(lambda value: json.dumps(value).encode()),
)

attributes = st.dictionaries(
    st.sampled_from(["idempotency_key", "location", "api_version", "opcancel_kind", "other"]),
    st.one_of(st.sampled_from(["eu", "v1", "check", "k"]), st.text(max_size=30)),
    max_size=3,
)


def event(data: bytes, attrs: dict[str, str]) -> CloudEvent:
    return CloudEvent(
        {
            "type": "google.cloud.pubsub.topic.v1.messagePublished",
            "source": "//pubsub.googleapis.com/projects/p/topics/t",
        },
        {"message": {"data": base64.b64encode(data).decode(), "attributes": attrs, "messageId": "sweep"}},
    )


def is_valid_name(text: str) -> bool:
    try:
        parse_name(text)
    except InvalidRequest:
        return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(data=payloads, attrs=attributes)
def test_any_payload_is_acknowledged_with_a_reason_and_never_reaches_the_network_unvalidated(data, attrs):
    rig = Rig()
    Runtime(rig.service, log=rig.log).on_event(event(data, attrs))  # returns: acknowledged
    for call in rig.simulator.calls:
        # Whatever reached the API is a validated name, rebuilt by opcancel.
        path = call.path.removesuffix(":cancel")
        version, name = path.lstrip("/").split("/", 1)
        assert is_valid_name(name), call.path
    logs = rig.logs()
    assert logs, "every delivery leaves at least one log line"
    for line in logs:
        assert line["severity"] and line["message"]
        if line.get("event") in ("message_ignored", "request_rejected", "check_malformed"):
            assert line.get("reason") or line.get("error") or "dropped" in line["message"]


@settings(max_examples=150, deadline=None, database=None)
@given(name=hostile_names)
def test_a_hostile_name_is_rejected_without_a_call_or_accepted_only_when_valid(name):
    rig = Rig()
    Runtime(rig.service, log=rig.log).on_event(event(json.dumps({"operation": name}).encode(), {}))
    if is_valid_name(name):
        return
    assert rig.simulator.calls == []
    (result,) = rig.publisher.results()
    assert result["outcome"] == "REJECTED"
    assert len(result["operation"]) <= 256
    assert all(ch.isprintable() for ch in result["operation"])
    assert result["error"]


oversized = st.tuples(
    st.sampled_from(
        [
            b"organizations/1/operations/a\n",
            b'{"operation": "organizations/1/operations/a", "reason": "',
            b'{"operations": ["organizations/1/operations/a", ',
            b"\xff\xfe\x00",
        ]
    ),
    st.binary(min_size=1, max_size=64),
    st.integers(min_value=MAX_BODY_BYTES + 1, max_value=2 * MAX_BODY_BYTES),
).map(lambda parts: (parts[0] + parts[1] * (parts[2] // len(parts[1]) + 1))[: parts[2]])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(data=oversized, attrs=attributes | st.just({"opcancel_kind": "check"}))
def test_an_oversized_payload_is_acknowledged_unread_with_its_size_logged(data, attrs):
    rig = Rig()
    Runtime(rig.service, log=rig.log).on_event(event(data, attrs))  # returns: acknowledged
    assert rig.simulator.calls == []
    assert rig.publisher.messages == []
    # Set aside as a request, or, carrying the check attribute, dropped as a malformed check: unread either way.
    (line,) = [line for line in rig.logs() if line.get("event") in ("message_ignored", "check_malformed")]
    assert line["reason"] == f"body is {len(data)} bytes; the limit is {MAX_BODY_BYTES}"
