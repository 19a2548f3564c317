"""The one JSON reader for everything that arrives: request bodies, CloudEvents, checks and upstream answers.

Python's ``json`` recurses once per nesting level, so a small body of brackets raises ``RecursionError``
(or worse, near the interpreter's limit, fails somewhere else). Nesting is measured first, in one pass
outside strings, and anything deeper than any message opcancel reads is refused with a clear reason.
Every step is linear in the text, however it is crafted: the string pattern never backtracks, and an
unterminated string ends the scan instead of being tried again from each later quote.

A number too large for a double (``1e999``) is valid JSON that Python reads as infinity, which no
strict JSON reader (SQLite's included) takes back: it is read as the string proto3 JSON writes for a
double's infinity, ``"Infinity"`` or ``"-Infinity"``, so no non-finite number reaches a record or an event.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any

#: Far deeper than any request, incident, CloudEvent or Operation opcancel reads.
MAX_JSON_DEPTH = 64

#: A string, or an unterminated one up to the end of the text. Possessive: each character is looked at
#: once, and a match never fails, so no later quote starts the scan over (which made it quadratic).
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_ONE_KIND = str.maketrans("{}", "[]")
_STEP = {"[": 1, "]": -1}


class JsonUnreadable(ValueError):
    """Not JSON opcancel reads: not UTF-8, malformed, a non-standard constant, or nested too deeply."""


def read_json(data: bytes | str) -> Any:
    """Parse ``data``, or raise ``JsonUnreadable`` with a reason that echoes nothing of it."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise JsonUnreadable("not UTF-8 text") from None
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).translate(_ONE_KIND)
    depth = max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)
    if depth > MAX_JSON_DEPTH:
        raise JsonUnreadable(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except ValueError as problem:
        # The decoder's own words name a line and column, never the text itself.
        if isinstance(problem, json.JSONDecodeError):
            raise JsonUnreadable(
                f"not valid JSON: {problem.msg} at line {problem.lineno} column {problem.colno}"
            ) from None
        raise JsonUnreadable(f"not valid JSON: {problem}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float | str:
    value = float(text)
    if math.isfinite(value):
        return value
    return "Infinity" if value > 0 else "-Infinity"
