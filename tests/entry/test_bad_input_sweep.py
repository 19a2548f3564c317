"""A property-based sweep of hostile input through the entry points, oversized bodies included: acknowledged
or answered 4xx, never 5xx for a permanent problem, no network for invalid input, exactly one result for every
valid request, and no key of one request blocking another's. Since issue 20 also crafted bodies (escape runs,
unterminated strings, deep nesting) up to the 1 MiB limit, partial ce- header sets, hostile retry hints, huge
or non-finite Operations and endless pages, with the work per message bounded (``cpu_bounded``)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import sqlite3
import sys
import tempfile
import unicodedata
from typing import Any

import httpx
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent
from functions_framework import create_app
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from function import Runtime, Settings, SqliteStore
from function._names import parse_name
from function._parsing import MAX_BODY_BYTES
from function.cli import Exit
from function.errors import InvalidRequest
from tests.cli.test_cli import Rig as CliRig
from tests.entry.test_entrypoints import WIRED
from tests.entry.test_hostile_senders_reading import Answering, cpu_bounded, once, strict_json
from tests.support import TEST_POLICY, Rig

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


# Through functions-framework's test client: ids, CloudEvent attributes, incident ids, HTTP framing and
# keys that look like other keys. One bounded profile keeps the sweep fast enough for every CI run.

settings.register_profile(
    "entry-sweep",
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ENTRY_SWEEP = settings.get_profile("entry-sweep")

VICTIM_ORG = "organizations/123456789"
#: Any Unicode a JSON string can carry, lone surrogates, separators and bidi controls included.
any_text = st.text(
    alphabet=st.one_of(
        st.characters(codec=None),
        st.sampled_from(["\ud800", "\udfff", "\u2028", "\u2029", "\u202e", "\x00", "\x1b", "\\", "/", "…"]),
    ),
    max_size=40,
)
long_or_hostile = st.one_of(any_text, st.integers(min_value=257, max_value=3000).map(lambda n: "9" * n))
_CLIENTS: dict[str, Any] = {}


def serve(target: str, rig: Rig):
    """The wired function app, built once per target, serving ``rig`` from now on."""
    if target not in _CLIENTS:
        client = create_app(target, str(WIRED), "cloudevent" if target == "on_event" else "http").test_client()
        _CLIENTS[target] = (client, sys.modules["wired"])
    client, module = _CLIENTS[target]
    module.rig, module.runtime = rig, Runtime(rig.service, log=rig.log)
    return client


def deliver_checks(client, rig: Rig) -> None:
    """Every published check to ``on_event``, each when due, as the checks subscription would deliver it."""
    source = f"//pubsub.googleapis.com/projects/{rig.settings.project}/topics/{rig.settings.checks_topic}"
    for _ in range(20):
        pending = rig.publisher.take_checks()
        if not pending:
            return
        for check in pending:
            rig.clock.advance(120)
            message = {
                "data": base64.b64encode(check.data).decode(),
                "attributes": check.attributes,
                "messageId": check.message_id,
            }
            event = CloudEvent({"type": PUBSUB, "source": source}, {"message": message, "subscription": "s"})
            headers, body = to_structured(event)
            assert client.post("/", headers=headers, data=body).status_code == 200
    raise AssertionError("check chain did not end")


def assert_echo_safe(text: str) -> None:
    assert len(text) <= 256
    assert not [ch for ch in text if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")], ascii(text)


def assert_calls_only_valid_names(rig: Rig) -> None:
    for call in rig.simulator.calls:
        version, name = call.path.removesuffix(":cancel").lstrip("/").split("/", 1)
        assert is_valid_name(name), call.path


PUBSUB = "google.cloud.pubsub.topic.v1.messagePublished"


@settings(ENTRY_SWEEP)
@given(
    message_id=long_or_hostile,
    slow=st.booleans(),
    framing=st.sampled_from(["pubsub", "cloudevent"]),
    event_type=st.one_of(st.just("com.example.cancel"), any_text.filter(lambda t: t != PUBSUB)),
    subject=any_text,
)
def test_any_id_or_cloudevent_attribute_leaves_a_valid_request_with_exactly_one_result(
    message_id, slow, framing, event_type, subject
):
    rig = Rig()
    client = serve("on_event", rig)
    name = "organizations/1/operations/" + ("slow-1-sweep" if slow else "sweep")
    if framing == "pubsub":
        message = {"data": base64.b64encode(name.encode()).decode(), "messageId": message_id}
        event = CloudEvent(
            {"type": PUBSUB, "source": "//pubsub.googleapis.com/projects/p/topics/t"}, {"message": message}
        )
    else:
        attributes = {"type": event_type or "t", "source": "//example", "id": message_id or "x", "subject": subject}
        event = CloudEvent(attributes, {"operation": name})
    headers, body = to_structured(event)
    response = client.post("/", headers=headers, data=body)
    if response.status_code != 200:
        # Refused by the framework as a CloudEvent: a 4xx, and nothing acted on.
        assert 400 <= response.status_code < 500
        assert rig.simulator.calls == [] and rig.publisher.messages == []
        return
    deliver_checks(client, rig)
    (result,) = rig.publisher.results()
    assert result["outcome"] == "CANCELLED"
    assert_echo_safe(result["source"].get("message_id", ""))
    for line in rig.logs():
        for field in ("message_id", "reason"):
            if field in line:
                assert_echo_safe(line[field])


def escaped_spelling(text: str) -> str:
    """``text`` with its non-printable characters spelled as escapes: the pair a naive escaper confuses."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode() for ch in text)


incident_id_pairs = st.one_of(
    st.lists(any_text.filter(lambda t: t.strip()), min_size=2, max_size=2, unique=True),
    any_text.map(lambda t: "i" + t + "\x01").map(lambda t: [t, escaped_spelling(t)]),
)


@settings(ENTRY_SWEEP)
@given(ids=incident_id_pairs)
def test_distinct_incident_ids_never_share_a_key(ids):
    rig = Rig()
    client = serve("on_event", rig)
    for incident_id in ids:
        incident = {
            "version": "1.2",
            "incident": {
                "incident_id": incident_id,
                "state": "open",
                "metric": {"labels": {"organization_id": "1", "operation_id": "sweep-incident"}},
            },
        }
        headers, body = to_structured(event(json.dumps(incident).encode(), {}))
        assert client.post("/", headers=headers, data=body).status_code == 200
    results = rig.publisher.results()
    assert len(results) == 2 and len({result["idempotency_key"] for result in results}) == 2
    for result in results:
        assert_echo_safe(result["source"]["incident_id"])


CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "text/plain",
    "text/plain; charset=latin-1",
    "application/cloudevents+json",
    "application/xml",
    "multipart/form-data; boundary=x",
    "",
]


class CountedBody(io.RawIOBase):
    """A body sent without a length (chunked, de-chunked by the server), counting what was read."""

    def __init__(self, data: bytes) -> None:
        self.data, self.position = data, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: len(self.data)}[whence] + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        chunk = self.data[self.position : self.position + len(buffer)]
        buffer[: len(chunk)] = chunk
        self.position += len(chunk)
        return len(chunk)


#: Pieces that strain a JSON reader: escapes, quotes that open or close strings, brackets in or out of them.
CRAFTED_PIECES = ['\\"', "\\\\", "\\", '"', "[", "{", "]", "}", ":", ",", "\\u", "\\ud800", "x", " "]
#: A body up to the 1 MiB limit built from a start and a run of crafted pieces repeated: unterminated strings,
#: runs of escapes, deep nesting, and their mixtures.
crafted_bodies = st.builds(
    lambda head, unit, size: (head + unit * (size // len(unit) + 1)).encode()[:size],
    head=st.sampled_from(["", "{", '{"', '{"operation": "', '{"operation": ', "[", '["']),
    unit=st.lists(st.sampled_from(CRAFTED_PIECES), min_size=1, max_size=6).map("".join),
    size=st.one_of(st.integers(min_value=1, max_value=MAX_BODY_BYTES), st.just(MAX_BODY_BYTES)),
)

http_bodies = st.one_of(
    payloads,
    st.builds(
        lambda depth: b'{"operation": ' + b"[" * depth + b"]" * depth + b"}",
        st.one_of(st.integers(min_value=60, max_value=5000), st.sampled_from([65, 1_000, 100_000])),
    ),
    crafted_bodies,
    st.lists(st.sampled_from(["organizations/1/operations/a", "organizations/1/operations/missing-b"]), min_size=1).map(
        lambda names: json.dumps({"operations": names}).encode()
    ),
)


CE_HEADERS = {"ce-specversion": "1.0", "ce-type": "t", "ce-source": "//s", "ce-id": "1"}


def post_framed(client, data: bytes, headers: dict[str, str], framing: str):
    """POST ``data`` with a length, or chunked (checking it was read no further than the limit)."""
    if framing != "chunked":
        return client.post("/", data=data, headers=headers)
    body = CountedBody(data)
    response = client.post(
        "/",
        input_stream=body,
        headers={**headers, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert body.position <= MAX_BODY_BYTES + 64 * 1024
    return response


def assert_answered_202_or_4xx(rig: Rig, data: bytes, response) -> None:
    """Never 5xx; 413 past the limit; only valid names called; exactly one result for every key acted on."""
    assert response.status_code in (202, 400, 413), response.status_code
    if len(data) > MAX_BODY_BYTES:
        assert response.status_code == 413
    assert_calls_only_valid_names(rig)
    results = rig.publisher.results()
    if response.status_code != 202:
        assert results == [] and rig.simulator.calls == []
        return
    answer = response.get_json()
    acted = [item for item in answer.get("accepted", []) + answer.get("rejected", []) if item["status"] != "duplicate"]
    # Exactly one result for every key acted on (the same invalid text twice in a batch is one rejection):
    # each its own event, and each reporting the key its item was answered with.
    event_ids = [attributes["ce-id"] for _, attributes in rig.publisher.on("opcancel-results")]
    assert len(event_ids) == len(set(event_ids))
    assert {item.get("idempotency_key") for item in acted} == {result["idempotency_key"] for result in results}
    for item in answer.get("rejected", []):
        assert_echo_safe(item["operation"])


@settings(ENTRY_SWEEP)
@given(
    data=http_bodies,
    content_type=st.one_of(st.sampled_from(CONTENT_TYPES), st.text(max_size=30)),
    framing=st.sampled_from(["content-length", "chunked"]),
    oversize=st.integers(min_value=0, max_value=8).map(lambda n: n == 0),
    # Any set of the four required ce- headers: a partial one once made the cloudevents library read the body.
    ce_headers=st.sets(st.sampled_from(sorted(CE_HEADERS))),
)
def test_any_http_body_however_framed_is_answered_202_or_4xx_never_5xx(
    data, content_type, framing, oversize, ce_headers
):
    rig = Rig()
    client = serve("on_http", rig)
    if oversize:
        data = (data or b"x") * (MAX_BODY_BYTES // max(len(data), 1) + 1)
    headers = {"Content-Type": content_type, **{name: CE_HEADERS[name] for name in ce_headers}}
    try:
        with cpu_bounded():
            response = post_framed(client, data, headers, framing)
    except (UnicodeEncodeError, ValueError):
        assume(False)  # a header value the test client itself cannot send
    assert_answered_202_or_4xx(rig, data, response)


def key_lookalikes(victim: str) -> st.SearchStrategy[str]:
    identity = f"securitycenter.googleapis.com/{victim}"
    return st.one_of(
        st.just(identity),
        st.just("//" + identity),
        any_text.map(lambda incident: f"incident/{incident}/{identity}"),
        st.just("rejected/" + "0" * 40),
        st.just(f"explicit/{identity}"),
        st.just(f"k/{identity}"),
    ).filter(lambda key: key.isprintable() and key == key.strip() and 0 < len(key) <= 256)


@settings(ENTRY_SWEEP)
@given(
    data=st.data(),
    op_id=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    squatter_operation=st.sampled_from(
        ["garbage text", "organizations/2/operations/outside", "organizations/1/operations/bystander", "%2e%2e"]
    ),
    victim_form=st.sampled_from(["plain", "object", "incident"]),
)
def test_no_key_of_one_request_blocks_another(data, op_id, squatter_operation, victim_form):
    victim = f"{VICTIM_ORG}/operations/{op_id}"
    key = data.draw(key_lookalikes(victim))
    allowed = Settings(
        project="test-project",
        polling=TEST_POLICY,
        store="memory",
        allowed_parents=("organizations/1", VICTIM_ORG),
    )
    rig = Rig(settings=allowed)
    client = serve("on_http", rig)
    squatter = client.post("/", json={"operation": squatter_operation, "idempotency_key": key})
    assert squatter.status_code == 202
    if victim_form == "incident":
        incident = {
            "version": "1.2",
            "incident": {
                "incident_id": "0.sweep",
                "state": "open",
                "metric": {"labels": {"organization_id": VICTIM_ORG.split("/")[1], "operation_id": op_id}},
            },
        }
        response = client.post("/", json=incident)
    elif victim_form == "object":
        response = client.post("/", json={"operation": victim})
    else:
        response = client.post("/", data=victim, content_type="text/plain")
    (item,) = response.get_json()["accepted"]
    assert (item["status"], item["outcome"]) == ("accepted", "CANCELLED")
    assert len(rig.simulator.cancel_calls(victim)) == 1
    assert sum(result["operation"] == victim for result in rig.publisher.results()) == 1


# Round two (issue 20): crafted bodies read in bounded work, partial ce- header sets, hostile retry hints,
# huge or non-finite Operations and endless pages. Properties as above, plus "work per message bounded":
# every delivery runs under ``cpu_bounded`` (a CPU-time bound, not a wall-clock one; see its module).

settings.register_profile(
    "round-two",
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
ROUND_TWO = settings.get_profile("round-two")
#: Bodies at the limit are the ones that cost most, so they are drawn often.
large_crafted_bodies = crafted_bodies | st.builds(
    lambda head, unit: (head + unit * (MAX_BODY_BYTES // len(unit) + 1)).encode()[:MAX_BODY_BYTES],
    head=st.sampled_from(["", "{", '{"', '{"operation": "', "["]),
    unit=st.lists(st.sampled_from(CRAFTED_PIECES), min_size=1, max_size=4).map("".join),
)
FRAMINGS = {
    "json": {"Content-Type": "application/json"},
    "text": {"Content-Type": "text/plain"},
    "structured": {"Content-Type": "application/cloudevents+json"},
    "binary": {"Content-Type": "application/json", **CE_HEADERS},
    "partial": {"Content-Type": "application/json", "ce-specversion": "1.0"},
}


@settings(ROUND_TWO)
@given(data=large_crafted_bodies, framing=st.sampled_from([*FRAMINGS, "on_event", "on_check"]))
def test_any_crafted_body_is_read_in_bounded_work_however_it_is_framed(data, framing):
    rig = Rig()
    if framing in FRAMINGS:
        client = serve("on_http", rig)
        with cpu_bounded():
            response = client.post("/", data=data, headers=FRAMINGS[framing])
        assert_answered_202_or_4xx(rig, data, response)
        return
    client = serve(framing, rig)
    source = (
        f"//pubsub.googleapis.com/projects/test-project/topics/{'opcancel-checks' if framing == 'on_check' else 't'}"
    )
    envelope = CloudEvent({"type": PUBSUB, "source": source}, {"message": {"data": base64.b64encode(data).decode()}})
    headers, body = to_structured(envelope)
    with cpu_bounded():
        response = client.post("/", headers=headers, data=body)
    assert response.status_code == 200
    assert_calls_only_valid_names(rig)
    if framing == "on_check":
        assert rig.simulator.calls == [] and rig.publisher.messages == []


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@settings(ROUND_TWO)
@given(
    ce_headers=st.sets(st.sampled_from(sorted(CE_HEADERS))).filter(lambda names: len(names) < len(CE_HEADERS)),
    data=st.one_of(
        st.sampled_from([65, 1_000, 100_000, 500_000]).map(nested),
        st.sampled_from([65, 1_000, 100_000]).map(lambda depth: b'{"operation": ' + nested(depth) + b"}"),
        crafted_bodies,
        payloads,
    ),
    content_type=st.one_of(st.sampled_from(CONTENT_TYPES + ["application/cloudevents+jsonx"]), st.text(max_size=30)),
)
def test_a_partial_ce_header_set_never_hands_the_body_to_another_reader(ce_headers, data, content_type):
    rig = Rig()
    client = serve("on_http", rig)
    headers = {"Content-Type": content_type, **{name: CE_HEADERS[name] for name in ce_headers}}
    try:
        with cpu_bounded():
            response = client.post("/", data=data, headers=headers)
    except (UnicodeEncodeError, ValueError):
        assume(False)  # a header value the test client itself cannot send
    assert_answered_202_or_4xx(rig, data, response)


#: What an API may put in a retry hint: Unicode digits and other text, numbers too large for any clock,
#: well-formed hints of any length, and values of the wrong JSON type.
header_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"),
    max_size=20,
).filter(lambda text: text == text.strip())
retry_after_values = st.one_of(
    st.none(),
    header_text,
    st.integers(min_value=0, max_value=10**30).map(str),
    st.integers(min_value=1, max_value=5000).map(lambda n: "9" * n),
)
retry_delay_values = st.one_of(
    st.none(),
    header_text,
    header_text.map(lambda text: text + "s"),
    st.from_regex(r"[0-9]{1,20}(\.[0-9]{1,12})?s", fullmatch=True),
    st.integers(min_value=1, max_value=500).map(lambda n: "9" * n + "s"),
    st.sampled_from(["Infinitys", "NaNs", "-1s", "1e999s", "\u00b2s", "\u0661s"]),
    st.integers() | st.floats(allow_nan=False) | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def rate_limited(retry_delay: object, retry_after: str | None) -> httpx.Response:
    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}]
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": details if retry_delay else []}}
    headers = {"retry-after": retry_after.encode()} if retry_after is not None else {}
    return httpx.Response(429, content=json.dumps(body).encode(), headers=headers)


def sqlite_rig(directory: str, transport: Answering) -> Rig:
    settings = Settings(project="test-project", polling=TEST_POLICY, store="memory")
    store = SqliteStore(f"{directory}/records.db", lease_s=settings.lease_s, ttl_s=settings.record_ttl_s)
    return Rig(settings=settings, store=store, simulator=transport.simulator, transport=transport)


def assert_store_is_strict_json(directory: str, rig: Rig) -> None:
    """No non-finite number stored, and every reader of the store still works."""
    with contextlib.closing(sqlite3.connect(f"{directory}/records.db")) as connection:
        for (body,) in connection.execute("SELECT body FROM records"):
            strict_json(body)
    rig.service.overdue_chains()


@settings(ROUND_TWO, max_examples=40)
@given(retry_delay=retry_delay_values, retry_after=retry_after_values, method=st.sampled_from(["POST", "GET"]))
def test_any_retry_hint_is_honoured_up_to_ten_minutes_or_ignored(retry_delay, retry_after, method):
    name = "organizations/1/operations/sweep-hint"
    transport = Answering(once(rate_limited(retry_delay, retry_after), method=method))
    with tempfile.TemporaryDirectory() as directory:
        rig = sqlite_rig(directory, transport)
        client = serve("on_http", rig)
        with cpu_bounded():
            first = client.post("/", json={"operation": name})
        assert first.status_code == 503, first.status_code
        assert 1 <= int(first.headers["Retry-After"]) <= 600
        assert_store_is_strict_json(directory, rig)
        rig.clock.advance(600)
        with cpu_bounded():
            (item,) = client.post("/", json={"operation": name}).get_json()["accepted"]
        assert (item["status"], item["outcome"]) == ("accepted", "CANCELLED")
        assert len(rig.publisher.results()) == 1
        assert_store_is_strict_json(directory, rig)


NUMBER_LITERALS = ["1e999", "-1e999", "1E400", "1e308", "0.5", "-0.0", "2.5e-400", "12345678901234567890123", "7"]


def operation_text(numbers: list[str], rows: int, message_size: int, done: bool, error: int | None) -> bytes:
    """An Operation as raw JSON text, so number literals no Python float holds (``1e999``) arrive as sent."""
    metadata = f'{{"@type": "t", "n": [{",".join(numbers)}], "rows": {json.dumps(["r" * 100] * rows)}}}'
    failure = f', "error": {{"code": {error}, "message": "{"m" * message_size}"}}' if error is not None else ""
    head = '{"name": "organizations/1/operations/sweep-op", "done": ' + ("true" if done else "false")
    return f'{head}, "metadata": {metadata}{failure}}}'.encode()


operation_bodies = st.builds(
    operation_text,
    numbers=st.lists(st.sampled_from(NUMBER_LITERALS), max_size=8),
    rows=st.one_of(st.integers(min_value=0, max_value=50), st.integers(min_value=600, max_value=40_000)),
    message_size=st.one_of(st.integers(min_value=0, max_value=100), st.integers(min_value=70_000, max_value=2_000_000)),
    done=st.booleans(),
    error=st.none() | st.sampled_from([1, 2, 13]),
)


@settings(ROUND_TWO)
@given(body=operation_bodies)
def test_any_huge_or_non_finite_operation_ends_in_one_bounded_strict_result(body):
    name = "organizations/1/operations/sweep-op"
    transport = Answering(once(httpx.Response(200, content=body), method="GET"))
    with tempfile.TemporaryDirectory() as directory:
        rig = sqlite_rig(directory, transport)
        client = serve("on_http", rig)
        with cpu_bounded():
            response = client.post("/", json={"operation": name})
        assert response.status_code == 202
        # Still running is followed by checks, which the simulator then answers as cancelled.
        deliver_checks(serve("on_event", rig), rig)
        ((data, _),) = rig.publisher.on("opcancel-results")
        result = strict_json(data)
        final = result["final_operation"]
        assert len(json.dumps(final, separators=(",", ":"))) <= 64 * 1024
        if len(body) > 64 * 1024 + 1024 and json.loads(body)["done"]:
            assert final["truncated"] is True and final["name"] == name and final["done"] is True
        assert_store_is_strict_json(directory, rig)


class EndlessPages:
    """An API that hands out page tokens by ``rule``: ever new ones, one handed back again, or an end."""

    def __init__(self, rule: str, after: int, per_page: int) -> None:
        self.rule, self.after, self.per_page, self.requests = rule, after, per_page, 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        page: dict[str, Any] = {
            "operations": [
                {"name": f"organizations/1/operations/p{self.requests}-{i}", "done": True} for i in range(self.per_page)
            ]
        }
        if self.rule == "endless" or self.requests < self.after:
            page["nextPageToken"] = f"t{self.requests}"
        elif self.rule == "repeats":
            page["nextPageToken"] = "t1"
        return httpx.Response(200, json=page)


@settings(ROUND_TWO, max_examples=10)
@given(
    rule=st.sampled_from(["endless", "repeats", "ends"]),
    after=st.integers(min_value=2, max_value=1500),
    per_page=st.integers(min_value=0, max_value=2),
    command=st.sampled_from([["list", "organizations/1"], ["cancel", "--dry-run", "--all", "organizations/1"]]),
)
def test_a_listing_ends_whatever_page_tokens_the_api_hands_out(rule, after, per_page, command):
    api = EndlessPages(rule, after, per_page)
    with cpu_bounded(60.0):
        result = CliRig(transport=httpx.MockTransport(api)).run(*command)
    assert api.requests <= 1000
    if rule == "ends" and after <= 1000:
        assert result.exit_code == Exit.OK, result.stderr
        assert api.requests == after
    else:
        assert result.exit_code == Exit.API_UNAVAILABLE
        assert "the listing is incomplete" in result.stderr
