"""``parse_message``: every request format, its defaults, and every way a body can be wrong."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from function import InboundMessage, OperationRef, SourceKind
from function._model import Source
from function._names import GLOBAL, LOCATIONS, REGISTRY, VERSIONS, Service
from function._parsing import (
    BATCH_KEYS,
    EXPLICIT_KEYS,
    MAX_BATCH,
    MAX_BODY_BYTES,
    REJECTED_KEYS,
    Parsed,
    dry_run_key,
    parse_message,
    reported_key,
)
from tests.support import DATA_DIR

REGIONAL = tuple(location for location in LOCATIONS if location != GLOBAL)
OLDER_VERSIONS = tuple(version for version in VERSIONS if version != "v2")

ORG = "123456789"
GLOBAL_HOST = "securitycenter.googleapis.com"
EU_HOST = "securitycenter.eu.rep.googleapis.com"
NAME_PATTERN = re.compile(r"organizations/[0-9]{1,32}/operations/[A-Za-z0-9._~-]{1,128}")


def name(op_id: str, org: str = ORG) -> str:
    return f"organizations/{org}/operations/{op_id}"


def identity(op_id: str, host: str = GLOBAL_HOST, org: str = ORG) -> str:
    return f"{host}/{name(op_id, org)}"


def parse(
    body: str | bytes | dict | list,
    attributes: dict[str, str] | None = None,
    *,
    allowed: tuple[str, ...] | None = None,
    version: str = "v2",
    kind: SourceKind = SourceKind.PUBSUB,
    message_id: str | None = "m-1",
) -> Parsed:
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    data = body.encode("utf-8") if isinstance(body, str) else body
    message = InboundMessage(data=data, attributes=attributes or {}, message_id=message_id, kind=kind)
    return parse_message(message, default_version=version, allowed_parents=allowed)


def names_of(parsed: Parsed) -> list[str]:
    return [request.ref.name for request in parsed.requests]


def only_request(parsed: Parsed):
    assert parsed.ignored is None, parsed.ignored
    assert not parsed.rejections, parsed.rejections
    (request,) = parsed.requests
    return request


def only_rejection(parsed: Parsed):
    assert parsed.ignored is None, parsed.ignored
    assert not parsed.requests, parsed.requests
    (rejection,) = parsed.rejections
    return rejection


def assert_ignored(parsed: Parsed, reason: str, *, unreadable: bool = False, routine: bool = False) -> None:
    assert parsed.requests == [] and parsed.rejections == []
    assert parsed.ignored is not None and reason in parsed.ignored, parsed.ignored
    assert parsed.unreadable is unreadable
    assert parsed.routine is routine


def explicit(key: str) -> str:
    return EXPLICIT_KEYS + key


def batch(key: str, identity: str) -> str:
    return f"{BATCH_KEYS}{len(key)}/{key}/{identity}"


def incident(name_: str) -> dict:
    return json.loads((DATA_DIR / name_).read_text())


# --- plain text --------------------------------------------------------------------------------


def test_a_bare_name_is_one_request_with_every_default():
    request = only_request(parse(name("abc")))
    assert request.ref == OperationRef(f"organizations/{ORG}/operations/abc", "global", "v2")
    assert request.idempotency_key == identity("abc")
    assert request.source == Source(SourceKind.PUBSUB, message_id="m-1")
    assert request.reason is None
    assert request.deadline_s is None


def test_the_default_version_comes_from_the_caller():
    assert only_request(parse(name("abc"), version="v2")).ref.api_version == "v2"


def test_the_source_follows_the_message_kind_and_id():
    request = only_request(parse(name("abc"), kind=SourceKind.HTTP, message_id=None))
    assert request.source == Source(SourceKind.HTTP)


def test_plain_text_carries_one_name_per_line_and_ignores_whitespace():
    body = f"\n  {name('a')}  \r\n\t{name('b')}\n\n   \n{name('c')}\t\n"
    parsed = parse(body)
    assert names_of(parsed) == [name("a"), name("b"), name("c")]
    assert [r.idempotency_key for r in parsed.requests] == [identity("a"), identity("b"), identity("c")]
    assert parsed.rejections == [] and parsed.ignored is None


def test_each_form_of_name_works_as_plain_text():
    body = "\n".join(
        [
            name("a"),
            f"//securitycenter.googleapis.com/{name('b')}",
            f"https://securitycenter.eu.rep.googleapis.com/v2/{name('c')}",
        ]
    )
    refs = [request.ref for request in parse(body).requests]
    assert refs == [
        OperationRef(f"organizations/{ORG}/operations/a", "global", "v2"),
        OperationRef(f"organizations/{ORG}/operations/b", "global", "v2"),
        OperationRef(f"organizations/{ORG}/operations/c", "eu", "v2"),
    ]


def test_a_bad_line_is_rejected_and_the_good_lines_still_act():
    parsed = parse(f"{name('a')}\norganizations/1/operations/a%2Fb\n{name('c')}")
    assert names_of(parsed) == [name("a"), name("c")]
    (rejection,) = parsed.rejections
    assert rejection.offending == "organizations/1/operations/a%2Fb"
    assert "operation id must be 1-128 characters" in rejection.error
    assert rejection.idempotency_key.startswith(REJECTED_KEYS)
    assert (rejection.location, rejection.api_version) == ("global", "v2")
    assert rejection.source == Source(SourceKind.PUBSUB, message_id="m-1")


def test_a_rejection_key_is_deterministic_so_a_redelivery_reports_once():
    first = only_rejection(parse("not a name"))
    again = only_rejection(parse("not a name", message_id="m-2"))
    assert first.idempotency_key == again.idempotency_key
    assert first.idempotency_key.startswith(REJECTED_KEYS)


@pytest.mark.parametrize(
    ("body", "attributes"),
    [
        ({"operation": "not a name", "location": "us"}, None),
        ({"operation": "not a name", "api_version": "v1"}, None),
        ({"operation": "not a name", "deadline_seconds": 60}, None),
        ({"operation": "not a name", "reason": "another ticket"}, None),
        ({"operation": "not a name", "idempotency_key": "k"}, None),
        ({"operation": "not a name"}, {"location": "us"}),
        ({"operation": "not a name"}, {"api_version": "v1"}),
        ({"operation": "not a name"}, {"idempotency_key": "k"}),
        ({"operations": [{"operation": "not a name"}], "reason": "batch reason"}, None),
        ({"operation": "not a nam"}, None),
    ],
)
def test_rejections_that_differ_in_anything_the_request_carries_have_keys_of_their_own(body, attributes):
    """Location, version, deadline and reason were once left out of the hash, so one rejection's result
    stood for another's."""
    plain = only_rejection(parse({"operation": "not a name", "location": "eu"}))
    other = only_rejection(parse(body, attributes))
    assert plain.idempotency_key != other.idempotency_key
    assert only_rejection(parse(body, attributes, message_id="m-9")).idempotency_key == other.idempotency_key


def test_rejected_text_is_escaped_and_bounded():
    hostile = "organizations/1/operations/\x1b[2J" + "x" * 1000
    rejection = only_rejection(parse(json.dumps({"operation": hostile})))
    assert "\x1b" not in rejection.offending
    assert rejection.offending.startswith("organizations/1/operations/\\x1b[2J")
    assert len(rejection.offending) == 256


def test_a_hundred_lines_are_accepted():
    parsed = parse("\n".join(name(f"op-{i}") for i in range(MAX_BATCH)))
    assert len(parsed.requests) == MAX_BATCH == 100


def test_more_than_a_hundred_lines_are_set_aside_whole():
    parsed = parse("\n".join(name(f"op-{i}") for i in range(MAX_BATCH + 1)))
    assert_ignored(parsed, "names 101 operations; the limit is 100")


def test_a_json_string_body_is_text_and_its_quotes_make_it_invalid():
    rejection = only_rejection(parse(json.dumps(name("abc"))))
    assert rejection.offending == f'"{name("abc")}"'
    assert "operation names must be organizations/ORG/operations/ID" in rejection.error


# --- one JSON object ---------------------------------------------------------------------------


def test_a_json_object_with_every_field():
    body = {
        "operation": name("abc"),
        "location": "eu",
        "api_version": "v2",
        "idempotency_key": "my-key",
        "reason": "runaway discovery",
        "deadline_seconds": 3600,
    }
    request = only_request(parse(body))
    assert request.ref == OperationRef(f"organizations/{ORG}/operations/abc", "eu", "v2")
    assert request.idempotency_key == explicit("my-key")
    assert request.reason == "runaway discovery"
    assert request.deadline_s == 3600.0
    assert isinstance(request.deadline_s, float)


def test_a_json_object_needs_only_operation():
    request = only_request(parse({"operation": name("abc")}))
    assert request.ref == OperationRef(f"organizations/{ORG}/operations/abc", "global", "v2")
    assert request.idempotency_key == identity("abc")


def test_whitespace_around_a_json_body_is_ignored():
    only_request(parse("\n\t  " + json.dumps({"operation": name("abc")}) + "  \n"))


@pytest.mark.parametrize("version", VERSIONS)
def test_global_pairs_with_any_version(version):
    request = only_request(parse({"operation": name("abc"), "location": "global", "api_version": version}))
    assert (request.ref.location, request.ref.api_version) == ("global", version)


@pytest.mark.parametrize("location", REGIONAL)
@pytest.mark.parametrize("version", OLDER_VERSIONS)
def test_a_regional_location_with_another_version_than_v2_is_rejected_naming_the_rule(location, version):
    rejection = only_rejection(parse({"operation": name("abc"), "location": location, "api_version": version}))
    assert rejection.error == (
        f"location {location} takes api_version v2 only (data residency needs the v2 API), not {version}"
    )
    assert (rejection.location, rejection.api_version) == (location, version)


@pytest.mark.parametrize("location", REGIONAL)
def test_a_regional_location_without_a_version_takes_v2_whatever_the_default(location):
    request = only_request(parse({"operation": name("abc"), "location": location}, version="v1"))
    assert (request.ref.location, request.ref.api_version) == (location, "v2")


def test_the_configured_default_version_applies_at_global():
    assert only_request(parse(name("abc"), version="v1")).ref.api_version == "v1"


def test_me_central2_is_accepted_and_reported_as_sa():
    request = only_request(parse({"operation": name("abc"), "location": "me-central2"}))
    assert request.ref == OperationRef(f"organizations/{ORG}/operations/abc", "sa", "v2")
    assert request.idempotency_key == identity("abc", "securitycenter.me-central2.rep.googleapis.com")
    assert only_request(parse(name("abc"), {"location": "me-central2"})).ref.location == "sa"


def test_a_url_fixes_location_and_version_and_agreeing_fields_are_fine():
    url = f"https://{EU_HOST}/v2/{name('abc')}"
    for body in ({"operation": url}, {"operation": url, "location": "eu", "api_version": "v2"}):
        request = only_request(parse(body))
        assert request.ref == OperationRef(f"organizations/{ORG}/operations/abc", "eu", "v2")
        assert request.idempotency_key == identity("abc", EU_HOST)


def test_a_url_location_contradicting_an_explicit_field_is_rejected():
    url = f"https://{EU_HOST}/v2/{name('abc')}"
    rejection = only_rejection(parse({"operation": url, "location": "us"}))
    assert rejection.error == "location 'us' contradicts the URL, which says 'eu'"
    assert rejection.offending == url


def test_a_url_version_contradicting_an_explicit_field_is_rejected():
    url = f"https://{EU_HOST}/v2/{name('abc')}"
    rejection = only_rejection(parse({"operation": url, "api_version": "v1"}))
    assert rejection.error == "api_version 'v1' contradicts the URL, which says 'v2'"


def test_a_global_url_contradicts_a_regional_location():
    url = f"https://{GLOBAL_HOST}/v1/{name('abc')}"
    rejection = only_rejection(parse({"operation": url, "location": "eu"}))
    assert "contradicts the URL, which says 'global'" in rejection.error


def test_unknown_fields_are_rejected_naming_the_field():
    rejection = only_rejection(parse({"operation": name("abc"), "locaton": "eu"}))
    assert rejection.error == "unknown field 'locaton'"
    assert rejection.offending == name("abc")


def test_a_rejection_never_binds_the_explicit_key_but_is_keyed_by_it():
    rejection = only_rejection(parse({"operation": name("abc"), "bogus": 1, "idempotency_key": "k-1"}))
    other = only_rejection(parse({"operation": name("abc"), "bogus": 1, "idempotency_key": "k-2"}))
    assert rejection.idempotency_key.startswith(REJECTED_KEYS)
    assert rejection.idempotency_key != other.idempotency_key


def test_a_json_object_naming_nothing_is_set_aside():
    assert_ignored(parse({"name": name("abc")}), "names no operation")
    assert_ignored(parse({}), "names no operation")


@pytest.mark.parametrize(
    ("operation", "error"),
    [
        (None, "'operation' must be a string"),
        (123, "'operation' must be a string"),
        ([name("abc")], "'operation' must be a string"),
        ({"name": name("abc")}, "'operation' must be a string"),
        ("", "operation name is empty"),
        ("organizations/1/operations/..", "must not be '.' or '..'"),
    ],
)
def test_bad_operation_values_are_rejected(operation, error):
    assert error in only_rejection(parse({"operation": operation})).error


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, "must be more than 0 and at most 604800 seconds"),
        (0.0, "must be more than 0 and at most 604800 seconds"),
        (-1, "must be more than 0 and at most 604800 seconds"),
        (-0.5, "must be more than 0 and at most 604800 seconds"),
        (604_801, "must be more than 0 and at most 604800 seconds"),
        (604_800.5, "must be more than 0 and at most 604800 seconds"),
        pytest.param(10**400, "must be more than 0 and at most 604800 seconds", id="int-beyond-float-range"),
        pytest.param(
            -(10**400), "must be more than 0 and at most 604800 seconds", id="negative-int-beyond-float-range"
        ),
        (True, "must be a number of seconds"),
        (False, "must be a number of seconds"),
        ("NaN", "must be a number of seconds"),
        ("Infinity", "must be a number of seconds"),
        ("3600", "must be a number of seconds"),
        (None, "must be a number of seconds"),
        ([3600], "must be a number of seconds"),
        ({"s": 1}, "must be a number of seconds"),
    ],
)
def test_bad_deadlines_are_rejected(value, error):
    rejection = only_rejection(parse({"operation": name("abc"), "deadline_seconds": value}))
    assert rejection.error.startswith("deadline_seconds: ")
    assert error in rejection.error


def test_a_float_overflowing_to_infinity_is_rejected():
    body = '{"operation": "' + name("abc") + '", "deadline_seconds": 1e400}'
    assert "deadline_seconds: must be a number of seconds" in only_rejection(parse(body)).error


@pytest.mark.parametrize("value", [0.001, 1, 3600, 604_800, 604_800.0])
def test_deadlines_up_to_seven_days_are_accepted(value):
    assert only_request(parse({"operation": name("abc"), "deadline_seconds": value})).deadline_s == float(value)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "k" * 257,
        "key\nwith-newline",
        "key\x00nul",
        "key\x1b[31m",
        "key\u202eRLO",
        "key\u2028",
        " leading",
        "trailing ",
        "\ttab",
        123,
        None,
        True,
        ["k"],
    ],
)
def test_bad_idempotency_keys_are_rejected(key):
    rejection = only_rejection(parse({"operation": name("abc"), "idempotency_key": key}))
    assert rejection.error.startswith("idempotency_key: ")
    # A bad explicit key is never reused as the rejection's own key.
    assert rejection.idempotency_key.startswith(REJECTED_KEYS)


@pytest.mark.parametrize("key", ["k", "k" * 256, "has inner spaces", "a/b/c:d@e", "ключ-名前"])
def test_good_idempotency_keys_are_used_verbatim_in_their_own_namespace(key):
    assert only_request(parse({"operation": name("abc"), "idempotency_key": key})).idempotency_key == explicit(key)


@pytest.mark.parametrize("reason", [5, None, ["why"]])
def test_bad_reasons_are_rejected(reason):
    assert only_rejection(parse({"operation": name("abc"), "reason": reason})).error.startswith("reason: ")


def test_a_reason_is_only_echoed_so_it_is_escaped_and_bounded_not_refused():
    assert only_request(parse({"operation": name("abc"), "reason": "r" * 256})).reason == "r" * 256
    assert only_request(parse({"operation": name("abc"), "reason": "r" * 5000})).reason == "r" * 255 + "…"
    hostile = only_request(parse({"operation": name("abc"), "reason": "a\ud800\u2028\\"})).reason
    assert hostile == "a\\ud800\\u2028\\\\"


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("location", "mars", "location: unknown location mars;"),
        ("location", "EU", "location: unknown location EU;"),
        ("location", None, "location: unknown location None;"),
        ("api_version", "v3", "api_version: unknown API version v3"),
        ("api_version", 1, "api_version: unknown API version 1"),
    ],
)
def test_bad_locations_and_versions_in_an_object_are_rejected(field, value, error):
    rejection = only_rejection(parse({"operation": name("abc"), field: value}))
    assert rejection.error.startswith(error)


# --- idempotency key defaults ------------------------------------------------------------------


def test_the_default_key_is_the_identity_and_leaves_the_version_out():
    keys = {only_request(parse({"operation": name("abc"), "api_version": v})).idempotency_key for v in VERSIONS}
    assert keys == {identity("abc")}


def test_the_default_key_follows_the_location():
    assert only_request(parse({"operation": name("abc"), "location": "eu"})).idempotency_key == identity("abc", EU_HOST)
    us = only_request(parse({"operation": name("abc"), "location": "us"})).idempotency_key
    assert us == identity("abc", "securitycenter.us.rep.googleapis.com")


def test_every_form_of_one_operation_gets_one_default_key():
    forms = [name("abc"), f"//{GLOBAL_HOST}/{name('abc')}"]
    forms += [f"https://{GLOBAL_HOST}/{v}/{name('abc')}" for v in VERSIONS]
    assert {only_request(parse(form)).idempotency_key for form in forms} == {identity("abc")}


def test_an_explicit_key_wins_over_the_attribute_and_the_default():
    body = {"operation": name("abc"), "idempotency_key": "body-key"}
    assert only_request(parse(body, {"idempotency_key": "attr-key"})).idempotency_key == explicit("body-key")


# --- batches -----------------------------------------------------------------------------------


def test_a_batch_mixes_names_and_objects():
    body = {
        "operations": [
            name("a"),
            {"operation": name("b"), "location": "eu", "reason": "why", "deadline_seconds": 60},
            f"https://securitycenter.us.rep.googleapis.com/v2/{name('c')}",
            {"operation": name("d"), "idempotency_key": "own-key"},
        ]
    }
    parsed = parse(body)
    assert parsed.rejections == [] and parsed.ignored is None
    a, b, c, d = parsed.requests
    assert a.ref == OperationRef(f"organizations/{ORG}/operations/a") and a.idempotency_key == identity("a")
    assert b.ref == OperationRef(f"organizations/{ORG}/operations/b", "eu") and (b.reason, b.deadline_s) == (
        "why",
        60.0,
    )
    assert b.idempotency_key == identity("b", EU_HOST)
    assert c.ref == OperationRef(f"organizations/{ORG}/operations/c", "us", "v2")
    assert d.idempotency_key == explicit("own-key")


def test_batch_level_fields_are_defaults_that_items_override():
    body = {
        "operations": [name("a"), {"operation": name("b"), "location": "us", "reason": "mine", "deadline_seconds": 9}],
        "location": "eu",
        "api_version": "v2",
        "reason": "batch reason",
        "deadline_seconds": 120,
    }
    a, b = parse(body).requests
    assert (a.ref.location, a.ref.api_version, a.reason, a.deadline_s) == ("eu", "v2", "batch reason", 120.0)
    assert (b.ref.location, b.ref.api_version, b.reason, b.deadline_s) == ("us", "v2", "mine", 9.0)


def test_a_url_in_a_batch_is_not_contradicted_by_batch_defaults():
    body = {"operations": [f"https://{GLOBAL_HOST}/v1/{name('a')}"], "location": "us", "api_version": "v2"}
    assert only_request(parse(body)).ref == OperationRef(f"organizations/{ORG}/operations/a", "global", "v1")


def test_a_batch_level_key_is_combined_with_each_identity():
    body = {"operations": [name("a"), {"operation": name("b"), "location": "eu"}], "idempotency_key": "batch-7"}
    keys = [request.idempotency_key for request in parse(body).requests]
    assert keys == [batch("batch-7", identity("a")), batch("batch-7", f"{identity('b', EU_HOST)}")]


def test_a_bad_item_in_a_batch_is_rejected_and_the_rest_act():
    body = {"operations": [name("a"), "organizations/x/operations/b", 42, None, ["x"], {"reason": "no op"}, name("c")]}
    parsed = parse(body)
    assert names_of(parsed) == [name("a"), name("c")]
    offending_and_errors = [(r.offending, r.error) for r in parsed.rejections]
    assert offending_and_errors == [
        ("organizations/x/operations/b", "organization must be 1-32 digits without a leading zero"),
        ("42", "each operation must be a name or an object"),
        ("null", "each operation must be a name or an object"),
        ('["x"]', "each operation must be a name or an object"),
        ('{"reason": "no op"}', "request object has no 'operation'"),
    ]


def test_a_batch_of_a_hundred_is_accepted():
    parsed = parse({"operations": [name(f"op-{i}") for i in range(100)]})
    assert len(parsed.requests) == 100 and parsed.rejections == []


def test_a_batch_over_the_bound_is_rejected_whole_without_rejections():
    parsed = parse({"operations": [name(f"op-{i}") for i in range(101)]})
    assert_ignored(parsed, "batch of 101 operations exceeds the limit of 100")


def test_an_oversized_batch_of_invalid_items_still_yields_no_rejections():
    parsed = parse({"operations": ["bad"] * 101})
    assert_ignored(parsed, "exceeds the limit of 100")


@pytest.mark.parametrize("operations", [[], {}, name("a"), None, 7])
def test_operations_must_be_a_non_empty_list(operations):
    assert_ignored(parse({"operations": operations}), "'operations' must be a non-empty list")


def test_a_batch_with_an_unknown_field_is_set_aside_whole():
    assert_ignored(parse({"operations": [name("a")], "priority": "high"}), "batch has unknown field 'priority'")


def test_a_batch_with_a_bad_default_is_set_aside_whole():
    assert_ignored(parse({"operations": [name("a")], "location": "Mars!"}), "batch location: unknown location")
    assert_ignored(parse({"operations": [name("a")], "deadline_seconds": 0}), "batch deadline_seconds:")


# --- Pub/Sub attributes ------------------------------------------------------------------------


def test_attributes_apply_to_a_bare_name():
    request = only_request(parse(name("abc"), {"idempotency_key": "attr-key", "location": "eu", "api_version": "v2"}))
    assert request.ref == OperationRef(f"organizations/{ORG}/operations/abc", "eu", "v2")
    assert request.idempotency_key == explicit("attr-key")


def test_the_body_overrides_attributes():
    body = {"operation": name("abc"), "location": "global", "api_version": "v1", "idempotency_key": "body-key"}
    request = only_request(parse(body, {"idempotency_key": "attr-key", "location": "eu", "api_version": "v2"}))
    assert request.ref == OperationRef(f"organizations/{ORG}/operations/abc", "global", "v1")
    assert request.idempotency_key == explicit("body-key")


def test_a_url_overrides_attributes_without_contradiction():
    url = f"https://{GLOBAL_HOST}/v1/{name('abc')}"
    request = only_request(parse(url, {"location": "us", "api_version": "v2"}))
    assert request.ref == OperationRef(f"organizations/{ORG}/operations/abc", "global", "v1")


def test_batch_level_fields_override_attributes():
    body = {"operations": [name("a")], "location": "us"}
    assert only_request(parse(body, {"location": "eu", "api_version": "v2"})).ref == OperationRef(
        f"organizations/{ORG}/operations/a", "us", "v2"
    )


def test_a_message_key_on_a_batch_is_combined_so_items_never_collide():
    body = {"operations": [name("a"), name("b"), {"operation": name("a"), "location": "eu"}, {"operation": name("c")}]}
    keys = [r.idempotency_key for r in parse(body, {"idempotency_key": "msg-key"}).requests]
    assert keys == [
        batch("msg-key", identity("a")),
        batch("msg-key", identity("b")),
        batch("msg-key", identity("a", EU_HOST)),
        batch("msg-key", identity("c")),
    ]
    assert len(set(keys)) == 4


def test_a_message_key_on_multi_line_text_is_combined_too():
    keys = [r.idempotency_key for r in parse(f"{name('a')}\n{name('b')}", {"idempotency_key": "k"}).requests]
    assert keys == [batch("k", identity("a")), batch("k", f"{identity('b')}")]


def test_an_item_key_in_a_batch_wins_over_the_message_key():
    body = {"operations": [{"operation": name("a"), "idempotency_key": "own"}, name("b")]}
    keys = [r.idempotency_key for r in parse(body, {"idempotency_key": "msg"}).requests]
    assert keys == [explicit("own"), batch("msg", identity("b"))]


#: Sender texts that spell other kinds' keys, and texts built from the pieces of every namespace.
_SPELLINGS = ["K", f"K/{identity('a')}", f"K/{identity('b')}", f"K/{GLOBAL_HOST}", f"1/K/{identity('a')}"]
_SPELLINGS += [f"batch/1/K/{identity('a')}", "explicit/K", f"incident/K/{identity('a')}", identity("a")]
_KEY_PIECES = st.sampled_from(
    ["explicit/", "batch/", "incident/", "incident-digest/", "rejected/", "K", "K/", "/", "1/", "2/", "12/"]
    + [f"{GLOBAL_HOST}/", f"{identity('a')}", f"{identity('b')}", f"{EU_HOST}/", "//", "organizations/"]
)
_SENDER_TEXT = st.one_of(
    st.sampled_from(_SPELLINGS),
    st.lists(_KEY_PIECES, min_size=1, max_size=6).map("".join),
).filter(lambda text: text == text.strip() and len(text) <= 256)


def _keys_of(kind: str, text: str, names: list[str]) -> list[tuple[tuple[str, str, str], str]]:
    """What each kind of request keys its operations by, through ``parse_message``: (origin, key) pairs."""
    if kind == "derived":
        parsed = parse("\n".join(names))
    elif kind == "explicit":
        parsed = parse({"operation": names[0], "idempotency_key": text})
    elif kind == "batch":
        parsed = parse({"operations": names, "idempotency_key": text})
    else:
        body = incident("alert-incident-open.json")
        body["incident"]["incident_id"] = text
        body["incident"]["documentation"]["content"] = " ".join(names)
        parsed = parse(body)
    assert not parsed.rejections, parsed.rejections
    origin_text = "" if kind == "derived" else text
    return [((kind, origin_text, r.ref.identity), r.idempotency_key) for r in parsed.requests]


_KINDS = ["derived", "explicit", "batch", "incident"]
_EVERY_SPELLING = [(kind, text, second) for kind in _KINDS for text in _SPELLINGS for second in (False, True)]


@settings(max_examples=200, deadline=None, database=None)
@given(
    requests=st.lists(
        st.tuples(st.sampled_from(_KINDS), _SENDER_TEXT, st.booleans()),
        min_size=1,
        max_size=6,
    )
)
def test_key_namespaces_are_disjoint_by_construction(requests):
    """No two requests that differ in kind, sender text or operation share a key, whatever the text spells."""
    keys: dict[str, tuple[str, str, str]] = {}
    for kind, text, second in _EVERY_SPELLING + requests:
        names = [name("a"), name("b")] if kind == "batch" or second else [name("a")]
        for origin, key in _keys_of(kind, text, names):
            assert keys.setdefault(key, origin) == origin, (key, origin, keys[key])


@pytest.mark.parametrize(
    ("body", "attributes", "reported"),
    [
        (name("a"), None, identity("a")),
        ({"operation": name("a"), "idempotency_key": "order-123"}, None, "order-123"),
        (name("a"), {"idempotency_key": "explicit/x"}, "explicit/x"),
        ({"operations": [name("a"), name("b")], "idempotency_key": "K/1"}, None, f"K/1/{identity('a')}"),
        (f"{name('a')}\n{name('b')}", {"idempotency_key": "K"}, f"K/{identity('a')}"),
    ],
)
def test_results_report_the_key_the_sender_gave_never_the_stored_form(body, attributes, reported):
    request = parse(body, attributes).requests[0]
    assert reported_key(request.idempotency_key) == reported
    assert reported_key(dry_run_key(request.idempotency_key)) == reported


def test_an_incidents_key_is_reported_as_its_id_and_identity():
    request = only_request(parse(incident("alert-incident-open.json")))
    assert reported_key(request.idempotency_key) == f"0.mtdi83m6w8ao/{GLOBAL_HOST}/{OPEN_OP}"


def test_a_batch_item_stored_in_the_old_form_is_reported_as_the_new_one():
    assert reported_key(f"explicit/K/{identity('a')}") == reported_key(batch("K", identity("a")))


def test_a_rejection_reports_the_key_it_carried_escaped_when_that_key_was_the_problem():
    assert only_rejection(parse({"operation": "bad", "idempotency_key": "k-1"})).reported_key == "k-1"
    assert only_rejection(parse({"operation": name("a"), "idempotency_key": "a\nb"})).reported_key == "a\\nb"
    assert only_rejection(parse({"operation": name("a"), "idempotency_key": 5})).reported_key is None
    assert only_rejection(parse("bad", {"idempotency_key": "attr"})).reported_key == "attr"
    assert only_rejection(parse("bad")).reported_key is None
    outside = only_rejection(parse(name("a"), allowed=("organizations/1",)))
    assert outside.reported_key == identity("a")
    batch_item = parse({"operations": ["bad", name("a")], "idempotency_key": "K"}).rejections[0]
    assert batch_item.reported_key == "K"


def test_an_explicit_key_spelling_a_batch_item_is_not_that_item():
    squatter = only_request(parse({"operation": name("x"), "idempotency_key": f"K/{identity('a')}"}))
    items = parse({"operations": [name("a"), name("b")], "idempotency_key": "K"}).requests
    assert squatter.idempotency_key not in {item.idempotency_key for item in items}
    # Nor can one batch's key with one split spell another's item with another split.
    other = parse({"operations": [name("a"), name("b")], "idempotency_key": f"K/{GLOBAL_HOST}"}).requests
    assert not {item.idempotency_key for item in other} & {item.idempotency_key for item in items}


def test_unrelated_attributes_are_ignored():
    request = only_request(parse(name("abc"), {"googclient_schemaencoding": "JSON", "origin": "x\n"}))
    assert request.idempotency_key == identity("abc")


@pytest.mark.parametrize(
    ("attributes", "error"),
    [
        ({"location": "Mars!"}, "attribute location: unknown location Mars!;"),
        ({"location": ""}, "attribute location: unknown location"),
        ({"api_version": "v9"}, "attribute api_version: unknown API version v9"),
        ({"idempotency_key": "bad\nkey"}, "attribute idempotency_key: must not contain control characters"),
        ({"idempotency_key": "k" * 257}, "attribute idempotency_key: must be a string of 1-256 characters"),
        ({"idempotency_key": ""}, "attribute idempotency_key: must be a string of 1-256 characters"),
    ],
)
def test_an_invalid_attribute_rejects_every_item(attributes, error):
    body = {"operations": [name("a"), {"operation": name("b"), "location": "eu", "idempotency_key": "own"}, "junk"]}
    parsed = parse(body, attributes)
    assert parsed.requests == [] and parsed.ignored is None
    assert [r.offending for r in parsed.rejections] == [name("a"), name("b"), "junk"]
    assert all(r.error.startswith(error) for r in parsed.rejections), [r.error for r in parsed.rejections]


def test_an_invalid_attribute_rejects_a_bare_name():
    rejection = only_rejection(parse(name("abc"), {"location": "Mars!"}))
    assert rejection.offending == name("abc")
    assert rejection.location == "global"


def test_an_invalid_attribute_rejects_what_an_open_incident_names():
    rejection = only_rejection(parse(incident("alert-incident-open.json"), {"api_version": "v0"}, message_id="m-5"))
    assert rejection.offending == "organizations/123456789/operations/9c5fa5e5-e368-439a-baa4-08c17b77ec23"
    assert rejection.source == Source(
        SourceKind.ALERT, message_id="m-5", incident_id="0.mtdi83m6w8ao", policy_name="runaway-scc-operation"
    )


def test_rejections_carry_the_location_and_version_the_message_asked_for():
    rejection = only_rejection(parse("bad", {"location": "eu", "api_version": "v2"}))
    assert (rejection.location, rejection.api_version) == ("eu", "v2")


# --- allow-list --------------------------------------------------------------------------------


def test_the_allow_list_passes_listed_parents_and_rejects_the_rest():
    body = "\n".join([name("a", "111"), name("b", "222"), name("c", "333")])
    parsed = parse(body, allowed=("organizations/111", "organizations/333"))
    assert names_of(parsed) == [name("a", "111"), name("c", "333")]
    (rejection,) = parsed.rejections
    assert rejection.offending == name("b", "222")
    assert rejection.error == "organizations/222 is not in OPCANCEL_ALLOWED_PARENTS"
    # Never the key the request would have had: a widened allow-list takes effect at once.
    assert rejection.idempotency_key.startswith(REJECTED_KEYS)


def test_the_allow_list_rejection_keeps_the_request_location_and_version_not_its_key():
    url = f"https://{EU_HOST}/v2/{name('a', '222')}"
    rejection = only_rejection(parse({"operation": url, "idempotency_key": "k"}, allowed=("organizations/111",)))
    assert (rejection.location, rejection.api_version) == ("eu", "v2")
    assert rejection.idempotency_key.startswith(REJECTED_KEYS)
    assert rejection.offending == name("a", "222")


def test_the_allow_list_is_an_exact_match_not_a_prefix():
    parsed = parse(name("a", "1111"), allowed=("organizations/111",))
    assert "is not in OPCANCEL_ALLOWED_PARENTS" in only_rejection(parsed).error


def test_no_allow_list_allows_everything():
    assert names_of(parse(name("a", "999"), allowed=None)) == [name("a", "999")]


def test_the_allow_list_applies_to_incidents():
    parsed = parse(incident("alert-incident-open.json"), allowed=("organizations/1",))
    assert "organizations/123456789 is not in OPCANCEL_ALLOWED_PARENTS" in only_rejection(parsed).error


# --- malformed payloads ------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"\xff\xfe\xfd", b"organizations/1/operations/\xc3", b"\xed\xa0\x80"])
def test_a_body_that_is_not_utf8_is_set_aside(data):
    assert_ignored(parse(data), "body is not UTF-8 text", unreadable=True)


@pytest.mark.parametrize("data", [b"", b"   ", b"\n\r\n\t"])
def test_an_empty_body_is_set_aside(data):
    assert_ignored(parse(data), "body is empty", unreadable=True)


@pytest.mark.parametrize(
    "body",
    ['{"operation": ', "{not json}", '{"operation": "organizations/1/operations/a",}', "{'operation': 'x'}", "[1,"],
)
def test_invalid_json_is_set_aside(body):
    assert_ignored(parse(body), "body is not valid JSON", unreadable=True)


@pytest.mark.parametrize("body", ["[]", json.dumps([name("a")]), json.dumps([{"operation": name("a")}])])
def test_a_json_array_is_set_aside(body):
    assert_ignored(parse(body), "a JSON body must be an object")


@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_deeply_nested_json_is_set_aside(depth):
    assert_ignored(parse('{"operation":' + "[" * depth + "]" * depth + "}"), "nested deeper than 64", unreadable=True)
    assert_ignored(parse('{"a":' * depth + "1" + "}" * depth), "nested deeper than 64", unreadable=True)


def test_brackets_inside_strings_do_not_count_as_nesting():
    deep_text = "[" * 10_000 + '\\"{' * 100
    assert "longer than 512" in only_rejection(parse({"operation": deep_text})).error


def test_moderately_nested_json_items_are_rejected_not_raised():
    nested = "[" * 60 + "]" * 60
    rejection = only_rejection(parse('{"operations": [' + nested + "]}"))
    assert rejection.error == "each operation must be a name or an object"
    assert len(rejection.offending) <= 256


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_constants_are_refused(constant):
    body = '{"operation": "' + name("a") + '", "deadline_seconds": ' + constant + "}"
    assert_ignored(parse(body), f"{constant} is not valid JSON", unreadable=True)


def test_a_body_over_one_mebibyte_is_set_aside_unread():
    data = (name("a") + "\n").encode() * (MAX_BODY_BYTES // 20)
    assert len(data) > MAX_BODY_BYTES == 1024 * 1024
    assert_ignored(parse(data), f"body is {len(data)} bytes; the limit is 1048576", unreadable=True)


def test_a_body_of_exactly_one_mebibyte_is_read():
    data = name("a").encode().ljust(MAX_BODY_BYTES, b" ")
    assert len(data) == MAX_BODY_BYTES
    assert names_of(parse(data)) == [name("a")]


def test_a_huge_json_body_is_set_aside_unread():
    body = json.dumps({"operation": name("a"), "reason": "r" * MAX_BODY_BYTES})
    assert_ignored(parse(body), "the limit is 1048576", unreadable=True)


# --- Cloud Monitoring incidents ----------------------------------------------------------------

OPEN_OP = "organizations/123456789/operations/9c5fa5e5-e368-439a-baa4-08c17b77ec23"


def test_an_open_incident_cancels_the_operation_its_documentation_names():
    request = only_request(parse(incident("alert-incident-open.json"), message_id="m-42"))
    assert request.ref == OperationRef(
        "organizations/123456789/operations/9c5fa5e5-e368-439a-baa4-08c17b77ec23", "global", "v2"
    )
    assert request.idempotency_key == f"incident/0.mtdi83m6w8ao/{GLOBAL_HOST}/{OPEN_OP}"
    assert request.source == Source(
        SourceKind.ALERT, message_id="m-42", incident_id="0.mtdi83m6w8ao", policy_name="runaway-scc-operation"
    )


def test_a_closed_incident_is_ignored_as_a_legitimate_no_op():
    parsed = parse(incident("alert-incident-closed.json"))
    assert_ignored(parsed, "incident state is 'closed'; only open incidents act", routine=True)


@pytest.mark.parametrize("state", ["closed", "OPEN", None, 1, "acknowledged"])
def test_only_the_open_state_acts(state):
    body = incident("alert-incident-open.json")
    body["incident"]["state"] = state
    assert_ignored(parse(body), "only open incidents act", routine=True)


def test_incident_labels_compose_the_operation_name():
    request = only_request(parse(incident("alert-incident-labels.json")))
    assert request.ref.name == "organizations/123456789/operations/op-42"
    key = f"incident/0.labels0example/{GLOBAL_HOST}/organizations/123456789/operations/op-42"
    assert request.idempotency_key == key
    assert request.source.kind is SourceKind.ALERT
    assert request.source.incident_id == "0.labels0example"


@pytest.mark.parametrize("path", [("resource", "labels"), ("policy_user_labels",)])
def test_resource_and_policy_labels_compose_names_too(path):
    body = incident("alert-incident-labels.json")
    body["incident"]["metric"]["labels"] = {}
    target = body["incident"]
    for step in path:
        target = target.setdefault(step, {})
    target.update({"organization_id": "5", "operation_id": "from-labels"})
    assert only_request(parse(body)).ref.name == "organizations/5/operations/from-labels"


def test_one_label_of_the_pair_is_not_enough():
    body = incident("alert-incident-labels.json")
    body["incident"]["metric"]["labels"] = {"operation_id": "op-42"}
    assert_ignored(parse(body), "names no operation", routine=True)


def test_the_default_incident_key_includes_the_incident_id():
    first = incident("alert-incident-open.json")
    second = incident("alert-incident-open.json")
    second["incident"]["incident_id"] = "0.another"
    keys = {only_request(parse(body)).idempotency_key for body in (first, second)}
    assert keys == {f"incident/0.mtdi83m6w8ao/{GLOBAL_HOST}/{OPEN_OP}", f"incident/0.another/{GLOBAL_HOST}/{OPEN_OP}"}


def test_several_names_make_several_requests_with_distinct_keys():
    body = incident("alert-incident-labels.json")
    body["incident"]["documentation"] = {
        "subject": f"[ALERT] {name('from-subject')} is stuck",
        "content": (
            f"Cancel {name('one')} and https://{EU_HOST}/v2/{name('two')}.\n"
            f"Also //securitycenter.googleapis.com/{name('three')}; and {name('one')} again."
        ),
    }
    parsed = parse(body)
    assert parsed.rejections == [] and parsed.ignored is None
    refs = [r.ref for r in parsed.requests]
    assert refs == [
        OperationRef(f"organizations/{ORG}/operations/from-subject"),
        OperationRef(f"organizations/{ORG}/operations/one"),
        OperationRef(f"organizations/{ORG}/operations/two", "eu", "v2"),
        OperationRef(f"organizations/{ORG}/operations/three"),
        OperationRef("organizations/123456789/operations/op-42"),
    ]
    keys = [r.idempotency_key for r in parsed.requests]
    assert len(set(keys)) == len(keys)
    assert all(key.startswith("incident/0.labels0example/") for key in keys)
    assert keys[2] == f"incident/0.labels0example/{EU_HOST}/{name('two')}"


def test_a_name_at_the_end_of_a_sentence_loses_only_the_full_stop():
    body = incident("alert-incident-open.json")
    body["incident"]["documentation"]["content"] = f"Please cancel {name('abc')}."
    assert only_request(parse(body)).ref.name == name("abc")


def test_an_open_incident_naming_nothing_is_ignored_as_a_legitimate_no_op():
    body = incident("alert-incident-labels.json")
    body["incident"]["metric"]["labels"] = {}
    assert_ignored(parse(body), "open incident names no operation", routine=True)


def test_labels_composing_an_invalid_name_are_rejected():
    body = incident("alert-incident-labels.json")
    body["incident"]["metric"]["labels"] = {"organization_id": "123", "operation_id": "../../x"}
    rejection = only_rejection(parse(body))
    assert rejection.offending == "organizations/123/operations/../../x"
    assert rejection.source.incident_id == "0.labels0example"


def test_a_message_key_wins_over_the_incident_default():
    request = only_request(parse(incident("alert-incident-open.json"), {"idempotency_key": "k"}))
    assert request.idempotency_key == explicit("k")


def test_attribute_location_and_version_apply_to_incident_names():
    request = only_request(parse(incident("alert-incident-open.json"), {"location": "eu", "api_version": "v2"}))
    assert (request.ref.location, request.ref.api_version) == ("eu", "v2")
    assert request.idempotency_key == f"incident/0.mtdi83m6w8ao/{EU_HOST}/{OPEN_OP}"


@pytest.mark.parametrize("incident_id", [None, "", "   ", 7])
def test_an_open_incident_without_a_usable_id_is_set_aside(incident_id):
    body = incident("alert-incident-open.json")
    body["incident"]["incident_id"] = incident_id
    assert_ignored(parse(body), "open incident has no usable incident_id")


def test_a_long_incident_id_is_cut_where_it_is_echoed_and_keyed_by_its_digest():
    body = incident("alert-incident-open.json")
    long_id = "i" * 256 + "-tail-that-is-cut"
    body["incident"]["incident_id"] = long_id
    request = only_request(parse(body))
    assert len(request.source.incident_id) == 256 and request.source.incident_id.endswith("…")
    digest = hashlib.sha256(long_id.encode()).hexdigest()
    assert request.idempotency_key == f"incident-digest/{digest}/securitycenter.googleapis.com/{OPEN_OP}"
    # Two ids alike in what is echoed are still two incidents.
    body["incident"]["incident_id"] = "i" * 256 + "-another-tail"
    assert only_request(parse(body)).idempotency_key != request.idempotency_key


def test_an_incident_id_of_the_echo_limit_keeps_its_readable_key():
    body = incident("alert-incident-open.json")
    body["incident"]["incident_id"] = "i" * 256
    request = only_request(parse(body))
    assert request.source.incident_id == "i" * 256
    assert request.idempotency_key == f"incident/{'i' * 256}/securitycenter.googleapis.com/{OPEN_OP}"


def test_an_incident_id_with_control_characters_is_escaped():
    body = incident("alert-incident-open.json")
    body["incident"]["incident_id"] = "0.abc\n\x1b"
    request = only_request(parse(body))
    assert request.source.incident_id == "0.abc\\n\\x1b"
    assert "\n" not in request.idempotency_key and "\x1b" not in request.idempotency_key


@pytest.mark.parametrize("value", [None, "open", [], 3])
def test_an_incident_that_is_not_an_object_is_set_aside(value):
    assert_ignored(parse({"version": "1.2", "incident": value}), "'incident' must be an object")


def test_a_log_match_incident_names_its_operation_in_the_summary_labels():
    body = incident("alert-incident-log-match.json")
    assert body["incident"]["metric"]["labels"] == {}
    assert names_of(parse(body)) == [name("op-7731", "123456789")]


@pytest.mark.parametrize(
    "summary",
    [
        "Log match condition with labels {organization_id=123456789, operation_id=op-7731} fired.",
        'Log match condition with labels {"operation_id": "op-7731", "organization_id": "123456789"} fired.',
        "Log match condition fired for organizations/123456789/operations/op-7731.",
    ],
)
def test_the_summary_is_searched_for_names_and_label_pairs(summary):
    body = incident("alert-incident-log-match.json")
    body["incident"]["summary"] = summary
    assert names_of(parse(body)) == [name("op-7731", "123456789")]


@pytest.mark.parametrize(
    "summary",
    [
        "Log match condition with labels {operation_id=op-7731} fired.",
        "Log match condition with labels {xorganization_id=1, operation_id=op-7731} fired.",
        "Log match condition with labels {organization_id=12/3, operation_id=op-7731} fired.",
    ],
)
def test_a_summary_without_a_whole_label_pair_names_nothing(summary):
    body = incident("alert-incident-log-match.json")
    body["incident"]["summary"] = summary
    parsed = parse(body)
    assert parsed.requests == [] and parsed.rejections == []


def test_an_incident_naming_over_a_hundred_operations_is_set_aside():
    body = incident("alert-incident-open.json")
    body["incident"]["documentation"]["content"] = " ".join(name(f"op-{i}") for i in range(101))
    assert_ignored(parse(body), "incident names 101 operations; the limit is 100")


# --- property: nothing a publisher sends can make parsing raise ---------------------------------

_ID_ALPHABET = st.sampled_from(list("abcXYZ019._~-") + ["/", "%2F", "?", "#", ":", " ", "\n", "\x00", "é", "а", ".."])
_names = st.builds(
    lambda prefix, org, op_id: f"{prefix}organizations/{org}/operations/{op_id}",
    st.sampled_from(
        [
            "",
            "//securitycenter.googleapis.com/",
            "https://securitycenter.googleapis.com/v1/",
            "https://securitycenter.eu.rep.googleapis.com/v2/",
            "https://securitycenter.global.rep.googleapis.com/v1/",
            "https://evil.com/v1/",
            "http://securitycenter.googleapis.com/v1/",
            " ",
        ]
    ),
    st.one_of(st.from_regex(r"[0-9]{1,33}", fullmatch=True), st.text(max_size=5)),
    st.one_of(st.lists(_ID_ALPHABET, min_size=0, max_size=140).map("".join), st.text(max_size=20)),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    _names,
    st.sampled_from([*LOCATIONS, *VERSIONS, "mars", "v9", 10**400]),
)
_json_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
_field_names = st.sampled_from(
    ["operation", "location", "api_version", "idempotency_key", "reason", "deadline_seconds", "bogus"]
)
_deadlines = st.one_of(
    st.integers(), st.floats(), st.sampled_from([10**400, -(10**400), 0, 604_800, 604_801, True, "NaN"])
)
_request_objects = st.one_of(
    st.dictionaries(_field_names, st.one_of(_names, _scalars), max_size=6),
    st.fixed_dictionaries(
        {"operation": _names},
        optional={
            "location": st.sampled_from([*LOCATIONS, "mars", None]),
            "api_version": st.sampled_from([*VERSIONS, "v9", 1]),
            "idempotency_key": st.text(max_size=8),
            "reason": st.one_of(st.text(max_size=8), st.integers()),
            "deadline_seconds": _deadlines,
        },
    ),
)
_bodies = st.one_of(
    st.binary(max_size=512),
    st.text(max_size=512).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.lists(_names, max_size=5).map(lambda lines: "\n".join(lines).encode()),
    _request_objects.map(lambda body: json.dumps(body).encode()),
    st.fixed_dictionaries(
        {"operations": st.lists(st.one_of(_names, _request_objects, _json_values), max_size=6)},
        optional={"idempotency_key": _scalars, "location": _scalars, "api_version": _scalars, "extra": _scalars},
    ).map(lambda body: json.dumps(body).encode()),
    st.fixed_dictionaries(
        {
            "incident": st.fixed_dictionaries(
                {
                    "state": st.sampled_from(["open", "closed", None]),
                    "incident_id": st.one_of(st.text(max_size=10), _scalars),
                    "documentation": st.fixed_dictionaries({"content": st.lists(_names, max_size=4).map(" ".join)}),
                    "metric": st.fixed_dictionaries(
                        {
                            "labels": st.dictionaries(
                                st.sampled_from(["organization_id", "operation_id"]), st.text(max_size=12)
                            )
                        }
                    ),
                }
            )
        }
    ).map(lambda body: json.dumps(body).encode()),
    _json_values.map(lambda value: json.dumps(value).encode()),
)
_attributes = st.dictionaries(
    st.sampled_from(["idempotency_key", "location", "api_version", "other"]),
    st.one_of(st.sampled_from([*LOCATIONS, *VERSIONS, "k-1"]), st.text(max_size=20)),
    max_size=4,
)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=_bodies,
    attributes=_attributes,
    allowed=st.sampled_from([None, ("organizations/0",), ("organizations/1",)]),
)
def test_no_body_makes_parsing_raise_and_every_request_is_well_formed(data, attributes, allowed):
    parsed = parse_message(
        InboundMessage(data=data, attributes=attributes, message_id="p-1"),
        default_version="v1beta1",
        allowed_parents=allowed,
    )
    if parsed.ignored is not None:
        assert parsed.requests == [] and parsed.rejections == []
    for request in parsed.requests:
        assert NAME_PATTERN.fullmatch(request.ref.name), request.ref.name
        assert request.ref.name.rsplit("/", 1)[1] not in (".", "..")
        assert request.ref.location in LOCATIONS and request.ref.api_version in VERSIONS
        assert len(request.idempotency_key) > 0
        assert allowed is None or request.ref.parent in allowed
        assert request.deadline_s is None or 0 < request.deadline_s <= 7 * 24 * 3600
    for rejection in parsed.rejections:
        assert len(rejection.offending) <= 256
        assert rejection.error
        assert rejection.idempotency_key


# --- other Google APIs -------------------------------------------------------------------------

VERTEX_NAME = "projects/my-proj/locations/us-central1/operations/1234"
VERTEX_FULL = f"//aiplatform.googleapis.com/{VERTEX_NAME}"
VERTEX_URL = f"https://us-central1-aiplatform.googleapis.com/v1/{VERTEX_NAME}"
DATAPROC_NAME = "projects/my-proj/regions/europe-west1/operations/5e6c"


@pytest.mark.parametrize("text", [VERTEX_FULL, VERTEX_URL, f"  {VERTEX_FULL}\n"])
def test_another_services_operation_is_one_request_keyed_by_its_full_resource_name(text):
    request = only_request(parse(text))
    ref = request.ref
    assert (ref.name, ref.location, ref.api_version, ref.service_name) == (
        VERTEX_NAME,
        "us-central1",
        "v1",
        "aiplatform.googleapis.com",
    )
    assert request.idempotency_key == VERTEX_FULL


def test_another_service_takes_the_registrys_version_not_the_security_command_center_default():
    assert only_request(parse(VERTEX_FULL, version="v1beta1")).ref.api_version == "v1"


def test_an_api_version_the_service_does_not_serve_is_rejected_naming_the_field_and_the_service():
    rejection = only_rejection(parse({"operation": VERTEX_FULL, "api_version": "v2"}))
    assert rejection.error.startswith("api_version: unknown API version v2 for aiplatform.googleapis.com")
    assert (rejection.service, rejection.location) == ("aiplatform.googleapis.com", "us-central1")
    message_level = only_rejection(parse(VERTEX_FULL, {"api_version": "v2"}))
    assert "unknown API version v2 for aiplatform.googleapis.com" in message_level.error


def test_a_location_field_may_repeat_the_names_location_but_not_contradict_it():
    documentai = "//documentai.googleapis.com/projects/my-proj/locations/eu/operations/7"
    assert only_request(parse({"operation": documentai, "location": "eu"})).ref.location == "eu"
    rejection = only_rejection(parse({"operation": documentai, "location": "us"}))
    assert "contradicts the name, which says 'eu'" in rejection.error
    assert "contradicts the name" in only_rejection(parse(documentai, {"location": "us"})).error
    # A region no Security Command Center location is named so: read as a place, then held to the name's.
    assert only_request(parse({"operation": VERTEX_FULL, "location": "us-central1"})).ref.location == "us-central1"
    assert only_request(parse(VERTEX_FULL, {"location": "us-central1"})).ref.location == "us-central1"
    rejection = only_rejection(parse({"operation": VERTEX_FULL, "location": "europe-west4"}))
    assert "contradicts the name, which says 'us-central1'" in rejection.error


def test_a_location_only_another_service_has_rejects_security_command_center_names_one_by_one():
    parsed = parse({"operations": [name("a"), VERTEX_FULL], "location": "us-central1"})
    assert [request.ref.name for request in parsed.requests] == [VERTEX_NAME]
    (rejection,) = parsed.rejections
    assert rejection.error.startswith("location: unknown location us-central1; expected one of global")


def test_a_batch_mixes_services_and_a_message_key_combines_with_each_identity():
    body = {"operations": [VERTEX_FULL, f"//dataproc.googleapis.com/{DATAPROC_NAME}", name("a")]}
    parsed = parse(body, {"idempotency_key": "ticket-7"})
    assert [request.idempotency_key for request in parsed.requests] == [
        batch("ticket-7", VERTEX_FULL),
        batch("ticket-7", f"//dataproc.googleapis.com/{DATAPROC_NAME}"),
        batch("ticket-7", identity("a")),
    ]
    assert [request.ref.service_name for request in parsed.requests] == [
        "aiplatform.googleapis.com",
        "dataproc.googleapis.com",
        "securitycenter.googleapis.com",
    ]


def test_a_bare_projects_name_and_an_unregistered_service_are_rejected_without_a_service():
    bare = only_rejection(parse(VERTEX_NAME))
    assert "use its full resource name" in bare.error and bare.service is None
    unknown = only_rejection(parse("//compute.googleapis.com/projects/my-proj/operations/x"))
    assert "is not in the registry" in unknown.error and unknown.service is None


def test_the_allow_list_admits_a_project_for_every_service_at_segment_boundaries():
    allowed = ("projects/my-proj",)
    assert names_of(parse(VERTEX_FULL, allowed=allowed)) == [VERTEX_NAME]
    assert names_of(parse(f"//dataproc.googleapis.com/{DATAPROC_NAME}", allowed=allowed)) == [DATAPROC_NAME]
    other = VERTEX_FULL.replace("my-proj", "my-proj-2")
    rejection = only_rejection(parse(other, allowed=allowed))
    assert rejection.error == (
        "//aiplatform.googleapis.com/projects/my-proj-2/locations/us-central1 is not in OPCANCEL_ALLOWED_PARENTS"
    )
    assert (rejection.service, rejection.location, rejection.api_version) == (
        "aiplatform.googleapis.com",
        "us-central1",
        "v1",
    )
    # An organization admits Security Command Center names only; a service prefix admits that service only.
    assert only_rejection(parse(VERTEX_FULL, allowed=("organizations/1",)))
    only_rejection(
        parse(f"//dataproc.googleapis.com/{DATAPROC_NAME}", allowed=("//aiplatform.googleapis.com/projects/my-proj",))
    )


def test_an_incident_naming_another_services_operation_acts_on_it():
    body = incident("alert-incident-open.json")
    body["incident"]["documentation"]["content"] = (
        f"Pipeline runaway. Cancel {VERTEX_FULL}. Also {f'https://europe-west1-dataproc.googleapis.com/v1/{DATAPROC_NAME}'}."
    )
    incident_id = body["incident"]["incident_id"]
    parsed = parse(body)
    assert parsed.rejections == []
    assert [(r.ref.name, r.idempotency_key) for r in parsed.requests] == [
        (VERTEX_NAME, f"incident/{incident_id}/{VERTEX_FULL}"),
        (DATAPROC_NAME, f"incident/{incident_id}///dataproc.googleapis.com/{DATAPROC_NAME}"),
    ]


def test_a_custom_registry_reaches_the_parser():
    registry = REGISTRY.with_entries(
        [Service("workflows", "v1", ("v1",), "workflows.googleapis.com", "workflows.googleapis.com")]
    )
    message = InboundMessage(data=b"//workflows.googleapis.com/projects/my-proj/operations/x", message_id="m-1")
    (request,) = parse_message(message, default_version="v2", allowed_parents=None, services=registry).requests
    assert request.ref.host == "workflows.googleapis.com"


@pytest.mark.parametrize(
    "text",
    [
        "projects/my-proj/operations/x",
        "//evil.example.com/organizations/1/operations/a",
        "https://securitycenter.googleapis.com/v9/organizations/1/operations/a",
    ],
)
def test_a_rejected_name_of_no_known_api_gets_no_security_command_center_location_or_version(text):
    rejection = only_rejection(parse(text))
    assert (rejection.location, rejection.api_version, rejection.service) == (None, None, None)
    stated = only_rejection(parse({"operation": text, "location": "eu", "api_version": "v1"}))
    assert (stated.location, stated.api_version) == ("eu", "v1")


def test_a_rejected_security_command_center_name_keeps_its_defaults():
    rejection = only_rejection(parse("organizations/1/operations/a?b"))
    assert (rejection.location, rejection.api_version) == (GLOBAL, "v2")


# --- guard rails: dry_run, protected parents, the trigger ------------------------------------


def test_dry_run_is_a_field_of_a_request():
    (request,) = parse({"operation": name("a"), "dry_run": True}).requests
    assert request.dry_run
    (request,) = parse({"operation": name("a"), "dry_run": False}).requests
    assert not request.dry_run
    # Its key is the real request's: the pipeline keeps dry runs in a namespace of their own.
    assert request.idempotency_key == identity("a")


@pytest.mark.parametrize(("value", "dry_run"), [("true", True), ("TRUE", True), ("False", False), ("fAlSe", False)])
def test_the_dry_run_attribute_takes_true_or_false_in_any_case(value, dry_run):
    (request,) = parse(name("a"), {"dry_run": value}).requests
    assert request.dry_run is dry_run


@pytest.mark.parametrize("value", ["yes", "1", "", " true"])
def test_another_dry_run_attribute_rejects_the_request_naming_it(value):
    parsed = parse(name("a"), {"dry_run": value})
    assert not parsed.requests
    assert only_rejection(parsed).error == "attribute dry_run: must be true or false"


@pytest.mark.parametrize("value", ["true", 1, None, "false"])
def test_a_dry_run_field_that_is_not_a_boolean_rejects_the_request_naming_it(value):
    parsed = parse({"operation": name("a"), "dry_run": value})
    assert only_rejection(parsed).error == "dry_run: must be true or false"


def test_a_batch_carries_dry_run_beside_operations_for_every_item_unless_an_item_says_otherwise():
    parsed = parse({"operations": [name("a"), {"operation": name("b"), "dry_run": False}], "dry_run": True})
    assert [request.dry_run for request in parsed.requests] == [True, False]


def test_the_body_s_dry_run_wins_over_the_attribute():
    (request,) = parse({"operation": name("a"), "dry_run": False}, {"dry_run": "true"}).requests
    assert not request.dry_run


def test_shadow_mode_makes_every_request_a_dry_run_whatever_it_says():
    message = InboundMessage(data=json.dumps({"operation": name("a"), "dry_run": False}).encode())
    (request,) = parse_message(message, default_version="v2", allowed_parents=None, shadow=True).requests
    assert request.dry_run


def test_a_dry_run_s_rejection_says_so_and_is_keyed_apart_from_the_real_one_s():
    dry = only_rejection(parse({"operation": "nope", "dry_run": True}))
    real = only_rejection(parse({"operation": "nope"}))
    assert dry.dry_run and not real.dry_run
    assert dry.idempotency_key != real.idempotency_key


def protected(body, rules: tuple[str, ...], allowed: tuple[str, ...] | None = None) -> Parsed:
    message = InboundMessage(data=json.dumps(body).encode(), message_id="m-1")
    return parse_message(message, default_version="v2", allowed_parents=allowed, protected_parents=rules)


def test_a_protected_parent_is_rejected_naming_the_rule_even_where_the_allow_list_admits_it():
    parsed = protected(
        {"operation": name("a")}, ("organizations/999", f"organizations/{ORG}"), (f"organizations/{ORG}",)
    )
    rejection = only_rejection(parsed)
    assert rejection.error == f"{name('a')} is protected: organizations/{ORG} is in OPCANCEL_PROTECTED_PARENTS"
    assert rejection.idempotency_key.startswith(REJECTED_KEYS)


def test_a_dry_run_of_a_protected_parent_is_rejected_like_the_real_request():
    rejection = only_rejection(protected({"operation": name("a"), "dry_run": True}, (f"organizations/{ORG}",)))
    assert "is protected" in rejection.error and rejection.dry_run


def test_protection_matches_whole_segments_and_full_resource_prefixes():
    vertex = "//aiplatform.googleapis.com/projects/my-proj-2/locations/us-central1/operations/1"
    assert protected({"operation": vertex}, ("projects/my-proj",)).requests
    parsed = protected({"operation": vertex}, ("//aiplatform.googleapis.com/projects/my-proj-2",))
    assert "//aiplatform.googleapis.com/projects/my-proj-2 is in" in only_rejection(parsed).error


def test_an_alert_s_source_names_its_policy_escaped():
    incident = json.loads((DATA_DIR / "alert-incident-open.json").read_text())
    incident["incident"]["policy_name"] = "policy\u202e"
    (request, *_) = parse(incident).requests
    assert request.source.policy_name == "policy\\u202e"


def test_an_http_request_s_source_names_its_caller():
    message = InboundMessage(data=name("a").encode(), kind=SourceKind.HTTP, caller="sre@example.com")
    (request,) = parse_message(message, default_version="v2", allowed_parents=None).requests
    assert request.source == Source(SourceKind.HTTP, caller="sre@example.com")


@pytest.mark.parametrize(
    ("body", "attributes"),
    [
        ({"operation": name("a")}, {}),
        ({"operation": name("a"), "location": "eu", "reason": "storm", "deadline_seconds": 60}, {}),
        ({"operation": name("a"), "idempotency_key": "k1"}, {}),
        ({"operations": [name("a"), name("b")]}, {"idempotency_key": "shared"}),
        ({"operation": "//aiplatform.googleapis.com/projects/my-proj/locations/us-central1/operations/1"}, {}),
        (json.loads((DATA_DIR / "alert-incident-open.json").read_text()), {}),
    ],
)
def test_a_held_request_s_replay_parses_back_to_the_same_request_and_key(body, attributes):
    from function._parsing import replay_body

    original = parse(body, attributes).requests[0]
    data, replay_attributes = replay_body(original)
    again = parse(data.decode(), replay_attributes).requests[0]
    assert again.idempotency_key == original.idempotency_key
    assert (again.ref, again.reason, again.deadline_s) == (original.ref, original.reason, original.deadline_s)
    assert (again.source.kind, again.source.incident_id) == (original.source.kind, original.source.incident_id)


@pytest.mark.parametrize(
    "incident_id",
    ["0.storm\\1", "0.storm\n1", "0." + "x" * 300],
)
def test_an_incident_key_no_message_can_carry_has_no_replay_but_a_plain_body_of_the_same_request(incident_id):
    from function._parsing import plain_body, replay_body

    incident = {"incident_id": incident_id, "state": "open", "documentation": {"content": name("a")}}
    original = parse({"version": "1.2", "incident": incident}).requests[0]
    assert replay_body(original) is None
    again = parse(plain_body(original)).requests[0]
    assert (again.ref, again.reason, again.deadline_s) == (original.ref, original.reason, original.deadline_s)
    assert again.idempotency_key == original.ref.identity
