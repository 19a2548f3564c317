"""The logger: whatever a field holds, the line is written, on any stdout, as one line."""

from __future__ import annotations

import io
import json

from function import Logger


def test_a_line_is_ascii_json_so_no_encoder_refuses_it_and_no_separator_splits_it():
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", errors="strict", write_through=True)
    Logger(stream).warning("hostile \u2028 text", event="x", reason="\ud800 \u2029 \u202e café")
    (line,) = raw.getvalue().split(b"\n")[:-1]
    entry = json.loads(line)
    assert entry["reason"] == "\ud800 \u2029 \u202e café"
    assert entry["message"] == "hostile \u2028 text"
