"""The topics' codecs: a check round-trips through its message and a tampered one is refused; a stored result
republishes byte for byte."""

from __future__ import annotations

import json
import re

import pytest

from function import InboundMessage, OperationRef, SourceKind
from function._messages import check_message, event_id, parse_check, result_message
from function._model import (
    MAX_FINAL_OPERATION_BYTES,
    CheckRequest,
    Outcome,
    Rejection,
    Result,
    Source,
    bounded_operation,
)
from function._names import GLOBAL, LOCATIONS, VERSIONS
from function.errors import InvalidRequest
from tests.unit.test_parsing import DATAPROC_NAME, EU_HOST, ORG, VERTEX_FULL, identity, name, only_request, parse

# --- checks ------------------------------------------------------------------------------------


def a_check(**changes) -> CheckRequest:
    fields = {
        "ref": OperationRef(f"organizations/{ORG}/operations/abc", "eu", "v2"),
        "idempotency_key": "incident/0.x/" + identity("abc", EU_HOST),
        "attempt": 3,
        "due_at": 1_790_000_005.25,
        "deadline_at": 1_790_003_600.0,
        "requested_at": 1_790_000_000.125,
        "source": Source(SourceKind.ALERT, message_id="m-1", incident_id="0.x"),
    }
    fields.update(changes)
    return CheckRequest(**fields)


def as_message(data: bytes, attributes: dict[str, str] | None = None) -> InboundMessage:
    return InboundMessage(data=data, attributes=attributes or {}, message_id="c-1")


@pytest.mark.parametrize(
    "source",
    [
        Source(SourceKind.ALERT, message_id="m-1", incident_id="0.x"),
        Source(SourceKind.PUBSUB, message_id="m-1"),
        Source(SourceKind.HTTP),
        Source(SourceKind.CLI),
    ],
)
def test_a_check_round_trips(source):
    check = a_check(source=source)
    data, attributes = check_message(check)
    message = as_message(data, attributes)
    assert parse_check(message) == check


def test_a_check_carries_its_trace():
    check = a_check(trace="projects/test-project/traces/4bf92f3577b34da6a3ce929d0e0e4736")
    assert parse_check(as_message(*check_message(check))) == check


def test_a_check_round_trips_for_every_location_and_version():
    for location in LOCATIONS:
        for version in VERSIONS if location == GLOBAL else ("v2",):
            check = a_check(ref=OperationRef(f"organizations/{ORG}/operations/abc", location, version))
            assert parse_check(as_message(*check_message(check))) == check


def tampered(**edits) -> InboundMessage:
    data, attributes = check_message(a_check())
    body = json.loads(data)
    for key, value in edits.items():
        if value is _DROP:
            del body[key]
        else:
            body[key] = value
    return as_message(json.dumps(body).encode(), attributes)


_DROP = object()


@pytest.mark.parametrize(
    ("edits", "error"),
    [
        ({"extra": 1}, "does not have exactly the check fields"),
        ({"trace": "projects/p/traces/xyz"}, "check trace must be"),
        ({"trace": 7}, "check trace must be"),
        ({"attempt": _DROP}, "does not have exactly the check fields"),
        ({"source": _DROP}, "does not have exactly the check fields"),
        ({"operation": f"https://{EU_HOST}/v2/{name('abc')}"}, "check messages carry relative names"),
        ({"operation": name("abc") + "/../x"}, "operation names must be"),
        ({"operation": "organizations/1/operations/a%2F"}, "operation id must be"),
        ({"operation": 7}, "operation must be a string"),
        ({"location": "mars"}, "unknown location"),
        ({"api_version": "v9"}, "unknown API version"),
        ({"attempt": 0}, "positive integer"),
        ({"attempt": -1}, "positive integer"),
        ({"attempt": 100_001}, "positive integer"),
        ({"attempt": True}, "positive integer"),
        ({"attempt": 1.0}, "positive integer"),
        ({"attempt": "3"}, "positive integer"),
        ({"due_at": "yesterday"}, "RFC 3339 UTC"),
        ({"due_at": "2026-11-23T19:13:55.749+02:00"}, "RFC 3339 UTC"),
        ({"deadline_at": 1790000000}, "RFC 3339 UTC"),
        ({"requested_at": None}, "RFC 3339 UTC"),
        ({"idempotency_key": "bad\nkey"}, "control characters"),
        ({"idempotency_key": "k" * 4097}, "1-4096 characters"),
        ({"idempotency_key": ""}, "1-4096 characters"),
        ({"source": "pubsub"}, "check source is malformed"),
        ({"source": {}}, "check source is malformed"),
        ({"source": {"kind": "pubsub", "extra": "x"}}, "check source is malformed"),
        ({"source": {"kind": "email"}}, "check source kind is unknown"),
        ({"source": {"kind": "pubsub", "message_id": 5}}, "check source message_id is malformed"),
        ({"source": {"kind": "alert", "incident_id": "i" * 257}}, "check source incident_id is malformed"),
    ],
)
def test_a_tampered_check_is_refused(edits, error):
    with pytest.raises(InvalidRequest) as caught:
        parse_check(tampered(**edits))
    assert error in str(caught.value)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff", b"not json", b"[]", b'"check"', b"null", b'{"a":' * 5000, b'{"attempt": NaN}'],
)
def test_a_check_that_is_not_a_json_object_is_refused(data):
    with pytest.raises(InvalidRequest):
        parse_check(as_message(data, {"opcancel_kind": "check"}))


@pytest.mark.parametrize(
    ("text", "location"),
    [(VERTEX_FULL, "us-central1"), (f"//dataproc.googleapis.com/{DATAPROC_NAME}", "europe-west1")],
)
def test_a_check_of_another_service_round_trips_carrying_the_service(text, location):
    ref = only_request(parse(text)).ref
    check = a_check(ref=ref, idempotency_key=ref.identity)
    data, attributes = check_message(check)
    body = json.loads(data)
    assert (body["service"], body["operation"], body["location"]) == (ref.service_name, ref.name, location)
    assert parse_check(as_message(data, attributes)) == check


def test_a_security_command_center_check_keeps_its_shape_and_may_name_its_service():
    data, attributes = check_message(a_check())
    assert "service" not in json.loads(data)
    assert parse_check(tampered(service="securitycenter.googleapis.com")) == a_check()


def vertex_check(**edits) -> InboundMessage:
    ref = only_request(parse(VERTEX_FULL)).ref
    data, attributes = check_message(a_check(ref=ref))
    body = {**json.loads(data), **edits}
    return as_message(json.dumps(body).encode(), attributes)


@pytest.mark.parametrize(
    ("edits", "problem"),
    [
        ({"service": "compute.googleapis.com"}, "is not in the registry"),
        ({"service": "evil.com/x"}, "full resource names must start with"),
        ({"service": 7}, "relative names and a service name"),
        ({"operation": VERTEX_FULL}, "relative names and a service name"),
        ({"operation": "projects/my-proj/operations/../x"}, "names must be projects/P"),
        ({"location": "us-east1"}, "is not the name's own"),
        ({"location": 1}, "must be strings"),
        ({"api_version": "v2"}, "unknown API version v2 for aiplatform"),
        ({"operation": name("abc")}, "names must be projects/P"),
    ],
)
def test_a_tampered_check_of_another_service_is_refused(edits, problem):
    with pytest.raises(InvalidRequest, match=re.escape(problem)):
        parse_check(vertex_check(**edits))


# --- results -----------------------------------------------------------------------------------


def a_result(**changes) -> Result:
    fields = {
        "operation": name("abc"),
        "location": "eu",
        "api_version": "v2",
        "outcome": Outcome.CANCELLED,
        "idempotency_key": identity("abc", EU_HOST),
        # Not on a millisecond: the stored form keeps milliseconds, and republishing must not drift.
        "requested_at": 1_790_000_000.1239,
        "finished_at": 1_790_000_012.9871,
        "checks": 2,
        "final_operation": {"name": name("abc"), "done": True, "error": {"code": 1, "message": "Cancelled \ud800"}},
        "error": None,
        "source": Source(SourceKind.ALERT, message_id="m-1", incident_id="0.x"),
        "service": "securitycenter.googleapis.com",
    }
    fields.update(changes)
    return Result(**fields)


@pytest.mark.parametrize(
    "result",
    [
        a_result(),
        a_result(outcome=Outcome.FAILED, error="rpc code 13: internal", source=Source(SourceKind.CLI)),
        a_result(outcome=Outcome.TIMED_OUT, final_operation=None, service=None, requested_at=0.0005),
    ],
)
def test_a_stored_result_republishes_byte_for_byte(result):
    stored = json.loads(json.dumps(result.to_json()))
    assert Result.from_json(stored).to_json() == stored
    again = result_message(Result.from_json(stored), key="k", project="p")
    assert again == result_message(result, key="k", project="p")


def test_the_event_id_comes_from_the_stored_key_not_the_key_the_result_reports():
    result = a_result(idempotency_key="order-123")
    _, attributes = result_message(result, key="explicit/order-123", project="p")
    assert attributes["ce-id"] == event_id("explicit/order-123", result.operation, "CANCELLED")
    _, other = result_message(result, key="rejected/abc", project="p")
    assert other["ce-id"] != attributes["ce-id"]


def test_a_rejection_has_the_one_result_schema_with_what_was_sent():
    rejection = Rejection(
        "organizations/x", "bad name", "rejected/abc", Source(SourceKind.HTTP), GLOBAL, "v2", reported_key="k-1"
    )
    result = Result.of_rejection(rejection, requested_at=1.0, finished_at=2.0)
    assert result.to_json() == {
        "operation": "organizations/x",
        "location": "global",
        "api_version": "v2",
        "service": None,
        "outcome": "REJECTED",
        "idempotency_key": "k-1",
        "dry_run": False,
        "requested_at": "1970-01-01T00:00:01.000Z",
        "finished_at": "1970-01-01T00:00:02.000Z",
        "checks": 0,
        "final_operation": None,
        "error": "bad name",
        "source": {"kind": "http"},
    }


# A result's final_operation: at most 64 KiB of JSON (SPEC), whatever the API answered.


def compact_size(value: object) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def test_a_final_operation_at_the_bound_is_kept_whole_and_one_byte_over_is_cut():
    operation = {"name": "n", "done": True, "metadata": {"@type": "t", "pad": ""}}
    operation["metadata"]["pad"] = "x" * (MAX_FINAL_OPERATION_BYTES - compact_size(operation))
    assert compact_size(operation) == MAX_FINAL_OPERATION_BYTES
    assert bounded_operation(operation) is operation
    operation["metadata"]["pad"] += "x"
    assert bounded_operation(operation) == {"name": "n", "done": True, "metadata": {"@type": "t"}, "truncated": True}


@pytest.mark.parametrize(
    ("operation", "kept"),
    [
        (
            {"name": "n" * 100_000, "done": True, "error": {"code": 13, "message": "m", "details": ["d" * 100_000]}},
            {"name": "n" * 1024, "done": True, "error": {"code": 13, "message": "m"}},
        ),
        ({"name": "n", "done": True, "error": "e" * 100_000}, {"name": "n", "done": True, "error": "e" * 1024}),
        ({"done": False, "metadata": ["\ud83d\ude00" * 100_000]}, {"done": False}),
        (
            {"name": "n", "metadata": {"@type": "\ud800" * 70_000}},
            {"name": "n", "metadata": {"@type": "\ud800" * 1024}},
        ),
    ],
    ids=["huge-name-and-details", "error-not-an-object", "metadata-not-an-object", "huge-type"],
)
def test_an_operation_whose_kept_fields_are_huge_too_is_still_bounded(operation, kept):
    bounded = bounded_operation(operation)
    assert bounded == {**kept, "truncated": True}
    assert compact_size(bounded) <= MAX_FINAL_OPERATION_BYTES


def test_a_result_is_bounded_as_it_is_made_so_storing_and_republishing_agree():
    huge = {"name": "n", "done": True, "response": {"rows": ["r" * 1000] * 100}}
    result = Result(
        operation="organizations/1/operations/a",
        location=GLOBAL,
        api_version="v2",
        outcome=Outcome.COMPLETED,
        idempotency_key="k",
        requested_at=1_790_000_000.0,
        finished_at=1_790_000_001.0,
        checks=1,
        final_operation=huge,
        error=None,
        source=Source(SourceKind.PUBSUB),
    )
    assert result.final_operation == {"name": "n", "done": True, "truncated": True}
    assert Result.from_json(result.to_json()) == result
    again = Result.from_json(result.to_json())
    assert result_message(again, key="k", project="p") == result_message(result, key="k", project="p")
