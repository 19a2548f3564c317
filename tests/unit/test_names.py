"""Operation names: the three accepted forms, canonical identity, and everything that must be refused."""

from __future__ import annotations

import unicodedata

import pytest

from function import OperationRef, parse_name
from function._names import (
    GLOBAL,
    LOCATIONS,
    MAX_ECHO_LENGTH,
    SERVICE,
    VERSIONS,
    ParsedName,
    escape_text,
    host_for,
    validate_location,
    validate_version,
)
from function.errors import InvalidRequest

ORG = "123456789"
OP = "9c5fa5e5-e368-439a-baa4-08c17b77ec23"
RELATIVE = f"organizations/{ORG}/operations/{OP}"
HOSTS = {
    "global": "securitycenter.googleapis.com",
    "us": "securitycenter.us.rep.googleapis.com",
    "eu": "securitycenter.eu.rep.googleapis.com",
    "sa": "securitycenter.me-central2.rep.googleapis.com",
}
REGIONAL = tuple(location for location in LOCATIONS if location != GLOBAL)
OLDER_VERSIONS = tuple(version for version in VERSIONS if version != "v2")


def rejected(text: str) -> str:
    """Parse ``text``, expecting InvalidRequest; return its message."""
    with pytest.raises(InvalidRequest) as caught:
        parse_name(text)
    message = str(caught.value)
    assert message, "a rejection must say why"
    return message


# --- the accepted forms ------------------------------------------------------------------------


def test_the_sets_of_locations_and_versions_are_the_specs():
    assert LOCATIONS == ("global", "us", "eu", "sa")
    assert VERSIONS == ("v1beta1", "v1p1beta1", "v1", "v2")
    assert GLOBAL == "global"
    assert SERVICE == "securitycenter.googleapis.com"


def test_a_relative_name_fixes_neither_location_nor_version():
    assert parse_name(RELATIVE) == ParsedName(RELATIVE)


def test_a_full_resource_name_is_the_relative_name_on_the_global_service():
    assert parse_name(f"//securitycenter.googleapis.com/{RELATIVE}") == ParsedName(RELATIVE)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_global_url_fixes_location_and_any_version(version):
    parsed = parse_name(f"https://{HOSTS[GLOBAL]}/{version}/{RELATIVE}")
    assert parsed == ParsedName(RELATIVE, location=GLOBAL, api_version=version)


@pytest.mark.parametrize("location", REGIONAL)
def test_a_regional_url_fixes_its_location_and_v2(location):
    parsed = parse_name(f"https://{HOSTS[location]}/v2/{RELATIVE}")
    assert parsed == ParsedName(RELATIVE, location=location, api_version="v2")


def test_the_saudi_host_names_me_central2_and_reports_the_location_as_sa():
    parsed = parse_name(f"https://securitycenter.me-central2.rep.googleapis.com/v2/{RELATIVE}")
    assert parsed.location == "sa"


@pytest.mark.parametrize("location", REGIONAL)
@pytest.mark.parametrize("version", OLDER_VERSIONS)
def test_a_regional_url_with_another_version_is_rejected_naming_the_rule(location, version):
    message = rejected(f"https://{HOSTS[location]}/{version}/{RELATIVE}")
    assert f"location {location} takes api_version v2 only" in message
    assert version in message


@pytest.mark.parametrize("location", REGIONAL)
@pytest.mark.parametrize("version", OLDER_VERSIONS)
def test_no_ref_pairs_a_regional_location_with_another_version(location, version):
    with pytest.raises(InvalidRequest, match="takes api_version v2 only"):
        OperationRef(RELATIVE, location, version)


def test_a_ref_refuses_an_unknown_location_or_version():
    with pytest.raises(InvalidRequest, match="unknown location"):
        OperationRef(RELATIVE, "me-central2")
    with pytest.raises(InvalidRequest, match="unknown API version"):
        OperationRef(RELATIVE, GLOBAL, "v3")


def test_me_central2_is_an_alias_of_sa():
    assert validate_location("me-central2") == "sa"
    assert validate_location("sa") == "sa"


@pytest.mark.parametrize("text", [f"  {RELATIVE}  ", f"\n{RELATIVE}\n", f"\t{RELATIVE}\r\n"])
def test_surrounding_whitespace_is_ignored(text):
    assert parse_name(text) == ParsedName(RELATIVE)


@pytest.mark.parametrize(
    ("organization", "operation_id"),
    [
        ("1", "a"),
        ("9" * 32, "x" * 128),
        ("42", "A-Za-z0-9._~"),
        ("42", "..."),
        ("42", ".hidden"),
        ("42", "a..b"),
        ("42", "~"),
        ("42", "-"),
        ("42", "_"),
    ],
)
def test_every_allowed_character_and_both_length_bounds_are_accepted(organization, operation_id):
    name = f"organizations/{organization}/operations/{operation_id}"
    assert parse_name(name).name == name


# --- hosts and identity ------------------------------------------------------------------------


@pytest.mark.parametrize("location", LOCATIONS)
def test_each_location_has_its_host(location):
    assert host_for(location) == HOSTS[location]
    assert OperationRef(RELATIVE, location).host == HOSTS[location]


def test_a_ref_defaults_to_global_and_v2():
    ref = OperationRef(RELATIVE)
    assert (ref.location, ref.api_version) == ("global", "v2")
    assert ref.name == RELATIVE
    assert ref.parent == f"organizations/{ORG}"
    assert ref.identity == f"securitycenter.googleapis.com/{RELATIVE}"


@pytest.mark.parametrize("location", LOCATIONS)
def test_identity_is_host_and_name_and_leaves_the_version_out(location):
    versions = VERSIONS if location == GLOBAL else ("v2",)
    identities = {OperationRef(RELATIVE, location, version).identity for version in versions}
    assert identities == {f"{HOSTS[location]}/{RELATIVE}"}


def test_identity_differs_between_locations():
    identities = {OperationRef(RELATIVE, location).identity for location in LOCATIONS}
    assert len(identities) == len(LOCATIONS)


def test_all_three_forms_of_one_operation_share_one_identity():
    forms = [RELATIVE, f"//securitycenter.googleapis.com/{RELATIVE}"] + [
        f"https://securitycenter.googleapis.com/{version}/{RELATIVE}" for version in VERSIONS
    ]
    identities = set()
    for form in forms:
        parsed = parse_name(form)
        location, version = parsed.location or GLOBAL, parsed.api_version or "v1"
        ref = OperationRef(parsed.name, location, version)
        identities.add(ref.identity)
    assert identities == {f"securitycenter.googleapis.com/{RELATIVE}"}


# --- hostile and malformed names ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"organizations/{ORG}/operations/a%2Fb",
        f"organizations/{ORG}/operations/a%2fb",
        f"organizations/{ORG}/operations/abc%00",
        f"organizations/{ORG}/operations/abc?alt=media",
        f"organizations/{ORG}/operations/abc?",
        f"organizations/{ORG}/operations/abc#frag",
        f"organizations/{ORG}/operations/abc:cancel",
        f"organizations/{ORG}/operations/a b",
        f"organizations/{ORG}/operations/a+b",
        f"organizations/{ORG}/operations/a@b",
        f"organizations/{ORG}/operations/a\\b",
        f"organizations/{ORG}/operations/x" + "y" * 128,
        f"organizations/{ORG}/operations/",
    ],
)
def test_ids_with_forbidden_characters_or_lengths_are_rejected(text):
    assert "operation id must be 1-128 characters" in rejected(text)


@pytest.mark.parametrize("dots", [".", ".."])
@pytest.mark.parametrize(
    "prefix", ["", "//securitycenter.googleapis.com/", "https://securitycenter.googleapis.com/v1/"]
)
def test_dot_and_dot_dot_ids_are_rejected_in_every_form(prefix, dots):
    assert "must not be '.' or '..'" in rejected(f"{prefix}organizations/{ORG}/operations/{dots}")


@pytest.mark.parametrize(
    "text",
    [
        f"{RELATIVE}/",
        f"{RELATIVE}/extra",
        f"{RELATIVE}/..",
        f"organizations/{ORG}/operations/../operations/{OP}",
        f"organizations/{ORG}%2Foperations%2F{OP}",
        f"organizations/{ORG}/../{ORG}/operations/{OP}",
        f"/organizations/{ORG}/operations/{OP}",
        f"organizations/{ORG}//operations/{OP}",
        f"organizations/{ORG}/operations",
        f"organizations/{ORG}",
        f"folders/{ORG}/operations/{OP}",
        f"organizations/{ORG}/locations/global/operations/{OP}",
        f"Organizations/{ORG}/operations/{OP}",
        f"organizations/{ORG}/Operations/{OP}",
        f"organizations/{ORG}/findings/{OP}",
        OP,
    ],
)
def test_names_with_the_wrong_segments_are_rejected(text):
    assert "operation names must be organizations/ORG/operations/ID" in rejected(text)


@pytest.mark.parametrize(
    "organization",
    ["", "abc", "12a", "-1", "+1", "1.0", "1e3", " 1", "0x1f", "1" * 33, "１２３", "١٢٣", "¹²³", "%31"],
)
def test_organizations_must_be_1_to_32_ascii_digits(organization):
    assert "organization must be 1-32 digits without a leading zero" in rejected(
        f"organizations/{organization}/operations/{OP}"
    )


@pytest.mark.parametrize(
    "text",
    [
        # Cyrillic о, Greek ο and a dotless ı in the fixed words.
        f"оrganizations/{ORG}/operations/{OP}",
        f"organizations/{ORG}/οperations/{OP}",
        f"organızations/{ORG}/operations/{OP}",
        # Fullwidth solidus in place of "/".
        f"organizations／{ORG}/operations/{OP}",
    ],
)
def test_unicode_look_alikes_in_the_fixed_segments_are_rejected(text):
    rejected(text)


@pytest.mark.parametrize(
    "operation_id",
    ["аbc", "ａｂｃ", "abc\u200b", "\u202eabc", "abc\ufeff", "café", "ab\u0301c", "abc\u2024", "abc\u2215x"],
)
def test_unicode_look_alikes_and_invisible_characters_in_ids_are_rejected(operation_id):
    assert "operation id must be" in rejected(f"organizations/{ORG}/operations/{operation_id}")


@pytest.mark.parametrize("control", ["\x00", "\x1b", "\x7f", "\x85", "\r", "\n", "\t", "\u2028"])
def test_control_characters_inside_a_name_are_rejected(control):
    rejected(f"organizations/{ORG}/operations/ab{control}cd")
    rejected(f"organizations/{ORG}{control}/operations/{OP}")


def test_control_characters_inside_a_url_are_rejected():
    rejected(f"https://securitycenter.googleapis.com/v1/organizations/{ORG}/operations/ab\ncd")
    rejected(f"https://securitycenter.googleapis.com\n/v1/{RELATIVE}")


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_names_are_rejected(text):
    assert rejected(text) == "operation name is empty"


@pytest.mark.parametrize("value", [None, 123, ["organizations/1/operations/a"], {"operation": RELATIVE}, b"x"])
def test_non_strings_are_rejected(value):
    with pytest.raises(InvalidRequest, match="operation must be a string"):
        parse_name(value)  # type: ignore[arg-type]


def test_overlong_names_are_rejected_before_anything_else():
    assert "longer than 512" in rejected("organizations/1/operations/" + "a" * 600)


@pytest.mark.parametrize(
    "text",
    [
        f"https://evil.com/v1/{RELATIVE}",
        f"https://evil.com/securitycenter.googleapis.com/v1/{RELATIVE}",
        f"https://securitycenter.googleapis.com.evil.com/v1/{RELATIVE}",
        f"https://securitycenter.eu.rep.googleapis.com.evil.com/v1/{RELATIVE}",
        f"https://evilsecuritycenter.googleapis.com/v1/{RELATIVE}",
        f"https://x@securitycenter.googleapis.com/v1/{RELATIVE}",
        f"https://securitycenter.googleapis.com:x@evil.com/v1/{RELATIVE}",
        f"https://securitycenter.googleapis.com@evil.com/v1/{RELATIVE}",
        f"https://securitycenter.googleapis.com:443/v1/{RELATIVE}",
        f"https://securitycenter.googleapis.com:8443/v1/{RELATIVE}",
        f"https://securitycenter.eu.rep.googleapis.com:443/v1/{RELATIVE}",
        f"https://SECURITYCENTER.GOOGLEAPIS.COM/v1/{RELATIVE}",
        f"https://securitycenter.googleapis.com./v1/{RELATIVE}",
        f"https://securitycenter.googleapis.cоm/v1/{RELATIVE}",
        f"https://securitycenter.xx.rep.googleapis.com.evil/v1/{RELATIVE}",
        f"https://securitycenter.eu.googleapis.com/v1/{RELATIVE}",
        f"https://securitycenter.eu.eu.rep.googleapis.com/v1/{RELATIVE}",
        f"https://compute.googleapis.com/v1/{RELATIVE}",
        f"https:///v1/{RELATIVE}",
    ],
)
def test_urls_on_any_other_host_are_rejected(text):
    assert "is not a Security Command Center API host" in rejected(text)


def test_the_global_api_is_not_reachable_through_a_made_up_regional_host():
    message = rejected(f"https://securitycenter.global.rep.googleapis.com/v1/{RELATIVE}")
    assert "securitycenter.global.rep.googleapis.com is not a Security Command Center API host" in message


@pytest.mark.parametrize(
    "text",
    [
        f"http://securitycenter.googleapis.com/v1/{RELATIVE}",
        f"ftp://securitycenter.googleapis.com/v1/{RELATIVE}",
        f"HTTPS://securitycenter.googleapis.com/v1/{RELATIVE}",
        f"file://securitycenter.googleapis.com/v1/{RELATIVE}",
        f"https://securitycenter.googleapis.com/{RELATIVE}".replace("https://", "https:/"),
        "https://securitycenter.googleapis.com",
        "https://securitycenter.googleapis.com/v1",
    ],
)
def test_other_schemes_and_truncated_urls_are_rejected(text):
    rejected(text)


def test_plain_http_gets_the_url_shape_message():
    assert "URLs must look like https://securitycenter.googleapis.com/VERSION/" in rejected(
        f"http://securitycenter.googleapis.com/v1/{RELATIVE}"
    )


@pytest.mark.parametrize(
    "text",
    [
        f"//evil.com/{RELATIVE}",
        f"//securitycenter.googleapis.com.evil.com/{RELATIVE}",
        f"//securitycenter.eu.rep.googleapis.com/{RELATIVE}",
        f"//x@securitycenter.googleapis.com/{RELATIVE}",
        f"//securitycenter.googleapis.com:443/{RELATIVE}",
    ],
)
def test_full_resource_names_that_name_no_service_are_rejected(text):
    assert "full resource names must start with //SERVICE.googleapis.com/" in rejected(text)


@pytest.mark.parametrize(
    "text",
    [
        f"//securitycenter.googleapis.com/{RELATIVE}/",
        f"//securitycenter.googleapis.com/{RELATIVE}?x=1",
        f"//securitycenter.googleapis.com//{RELATIVE}",
        f"//securitycenter.googleapis.com/v1/{RELATIVE}",
    ],
)
def test_full_resource_names_are_held_to_the_relative_rules(text):
    rejected(text)


@pytest.mark.parametrize("version", ["v3", "V1", "v1beta", "v1beta2", "", "..", "v1%2F", "v1?x", "latest"])
def test_unknown_versions_in_urls_are_rejected(version):
    message = rejected(f"https://securitycenter.googleapis.com/{version}/{RELATIVE}")
    assert "unknown API version" in message
    assert "v1beta1, v1p1beta1, v1, v2" in message


@pytest.mark.parametrize("location", ["asia", "us-central1", "europe", "xx", "me-central1", "eu1", "sa", "global"])
def test_unknown_regional_hosts_are_rejected(location):
    message = rejected(f"https://securitycenter.{location}.rep.googleapis.com/v2/{RELATIVE}")
    assert "is not a Security Command Center API host" in message
    assert "securitycenter[.{us,eu,me-central2}.rep].googleapis.com" in message


@pytest.mark.parametrize(
    "suffix",
    ["/", "/extra", "?alt=json", "#x", "%2F..", ":cancel", "/..", "/./"],
)
def test_urls_with_anything_after_the_id_are_rejected(suffix):
    rejected(f"https://securitycenter.googleapis.com/v1/{RELATIVE}{suffix}")


def test_urls_with_dot_segments_before_the_name_are_rejected():
    rejected(f"https://securitycenter.googleapis.com/v1/../{RELATIVE}")
    rejected(f"https://securitycenter.googleapis.com/v1/./{RELATIVE}")
    rejected(f"https://securitycenter.googleapis.com/./v1/{RELATIVE}")


def test_rejection_messages_escape_a_hostile_host():
    message = rejected(f"https://evil.com\x1b[31m/v1/{RELATIVE}")
    assert "\x1b" not in message
    assert "\\x1b" in message


def test_rejection_messages_bound_a_long_hostile_host():
    message = rejected(f"https://{'h' * 300}/v1/{RELATIVE}")
    assert "h" * 80 not in message
    assert len(message) < 200


def test_rejection_messages_escape_a_hostile_version():
    message = rejected(f"https://securitycenter.googleapis.com/v1\u202e/{RELATIVE}")
    assert "\u202e" not in message
    assert "\\u202e" in message


# --- location and version validation -----------------------------------------------------------


@pytest.mark.parametrize("location", LOCATIONS)
def test_validate_location_accepts_each_location(location):
    assert validate_location(location) == location


@pytest.mark.parametrize("value", ["", "Global", "EU", "europe-west1", None, 1, ["eu"], "eu\n"])
def test_validate_location_rejects_the_rest(value):
    with pytest.raises(InvalidRequest, match="unknown location"):
        validate_location(value)


@pytest.mark.parametrize("version", VERSIONS)
def test_validate_version_accepts_each_version(version):
    assert validate_version(version) == version


@pytest.mark.parametrize("value", ["", "V1", "v3", "v1beta", None, 1, ["v1"], "v1\x00"])
def test_validate_version_rejects_the_rest(value):
    with pytest.raises(InvalidRequest, match="unknown API version"):
        validate_version(value)


def test_validate_location_escapes_what_it_echoes():
    with pytest.raises(InvalidRequest) as caught:
        validate_location("eu\x00\x1b" + "x" * 100)
    message = str(caught.value)
    assert "\x00" not in message and "\x1b" not in message
    assert "x" * 40 not in message


# --- escape_text -------------------------------------------------------------------------------


def test_escape_text_leaves_ordinary_text_alone():
    assert escape_text(RELATIVE) == RELATIVE
    assert escape_text("café naïve ünïcode 名前") == "café naïve ünïcode 名前"


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a\nb", "a\\nb"),
        ("a\rb", "a\\rb"),
        ("a\tb", "a\\tb"),
        ("\x00", "\\x00"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("\x7f", "\\x7f"),
        ("\x85", "\\x85"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
        ("\u202e", "\\u202e"),
        ("\u200b", "\\u200b"),
        ("\ufeff", "\\ufeff"),
        ("\ud800", "\\ud800"),
        ("\\", "\\\\"),
    ],
)
def test_escape_text_escapes_control_format_and_separator_characters(raw, escaped):
    assert escape_text(raw) == escaped


def test_escape_text_is_unambiguous_so_escaped_text_never_collides():
    assert escape_text("a\x01") != escape_text("a\\x01")
    assert escape_text("a\x01", None) == "a\\x01"
    assert escape_text("a\\x01", None) == "a\\\\x01"


def test_escape_text_with_no_limit_keeps_the_whole_text():
    assert escape_text("k" * 5000, None) == "k" * 5000


def test_escape_text_output_has_no_control_characters_left():
    text = "".join(chr(code) for code in range(0, 0x100)) + "\u2028\u2029\u202a\u202e\u2066"
    escaped = escape_text(text, 10_000)
    assert not [ch for ch in escaped if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")]
    assert "\\xad" in escaped  # soft hyphen, an invisible format character


def test_escape_text_is_bounded_to_256_by_default():
    assert MAX_ECHO_LENGTH == 256
    assert escape_text("a" * 256) == "a" * 256
    bounded = escape_text("a" * 257)
    assert len(bounded) == 256
    assert bounded == "a" * 255 + "…"
    assert len(escape_text("b" * 100_000)) == 256


def test_escape_text_bounds_after_escaping():
    bounded = escape_text("\x00" * 100)
    assert len(bounded) == 256
    assert bounded.startswith("\\x00\\x00")
    assert bounded.endswith("…")


def test_escape_text_takes_a_limit():
    assert escape_text("abcdef", 4) == "abc…"
    assert escape_text("abcd", 4) == "abcd"


@pytest.mark.parametrize("organization", ["0", "0123", "00"])
def test_organizations_with_a_leading_zero_are_rejected(organization):
    assert "without a leading zero" in rejected(f"organizations/{organization}/operations/{OP}")
