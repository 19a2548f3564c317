"""The one JSON reader: nesting measured before parsing, reasons that echo nothing of the text."""

from __future__ import annotations

import pytest

from function._json import MAX_JSON_DEPTH, JsonUnreadable, read_json


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_nesting_up_to_the_limit_is_read():
    expected: list = []
    for _ in range(MAX_JSON_DEPTH - 1):
        expected = [expected]
    assert read_json(nested(MAX_JSON_DEPTH)) == expected


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 10_000, 1_000_000])
def test_deeper_nesting_is_refused_without_recursing(depth):
    with pytest.raises(JsonUnreadable, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        read_json(nested(depth))


def test_objects_and_arrays_both_count():
    text = '{"a": [' * 40 + "1" + "]}" * 40
    with pytest.raises(JsonUnreadable, match="nested deeper"):
        read_json(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"operation": "' + "[" * 10_000 + '"}',
        '{"operation": "' + '\\"[' * 10_000 + '"}',
        '["\\\\", "' + "{" * 500 + '"]',
    ],
    ids=["brackets", "escaped-quotes", "escaped-backslash"],
)
def test_brackets_inside_strings_are_text_not_nesting(text):
    assert read_json(text)


def test_unbalanced_closers_are_malformed_not_negative_depth():
    with pytest.raises(JsonUnreadable, match="not valid JSON"):
        read_json("]]]]" + nested(MAX_JSON_DEPTH))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_constants_are_refused(constant):
    with pytest.raises(JsonUnreadable, match=f"{constant} is not valid JSON"):
        read_json('{"a": ' + constant + "}")


def test_bytes_must_be_utf8():
    with pytest.raises(JsonUnreadable, match="not UTF-8"):
        read_json(b'{"a": "\xff"}')


def test_a_malformed_body_is_named_by_position_never_by_its_text():
    with pytest.raises(JsonUnreadable) as caught:
        read_json('{"token": "ya29.SECRET", oops}')
    assert "line 1 column" in str(caught.value)
    assert "SECRET" not in str(caught.value)


def test_a_lone_surrogate_escape_is_valid_json_and_read_as_such():
    assert read_json(b'"\\ud800"') == "\ud800"


@pytest.mark.parametrize(
    "text",
    ['{"' + '\\"' * 1000, '{"operation": "' + "\\\\" * 1000, '{"' + "[" * 1000, "{" + '"' * 1001],
    ids=["escaped-quotes", "escape-run", "brackets", "quotes"],
)
def test_an_unterminated_string_is_malformed_json_whatever_it_holds(text):
    # Scanned once to its end (tests/entry/test_hostile_senders_reading.py bounds the work of 1 MiB of each).
    with pytest.raises(JsonUnreadable, match="not valid JSON"):
        read_json(text)


def test_a_number_too_large_for_a_double_is_read_as_proto3_json_spells_infinity():
    assert read_json('{"a": 1e999, "b": -1e999, "c": [0.5, 1e308, 2.5e-400]}') == {
        "a": "Infinity",
        "b": "-Infinity",
        "c": [0.5, 1e308, 0.0],
    }
