"""Structured logs: one JSON line per event on stdout, in Cloud Logging's structured form.

Cloud Logging lifts ``severity`` and ``message`` out of each line and keeps the
other fields in ``jsonPayload``, so ``jsonPayload.outcome="CANCELLED"`` or
``jsonPayload.idempotency_key=...`` work as log queries. Callers pass only
values opcancel produced or escaped; credentials never reach a logger.
Lines are written as ASCII JSON (anything else as a JSON escape), so a line can be
written to any stdout, whatever its encoding, and never splits on U+2028.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

_LABELS = {"component": "opcancel"}
TRACE_FIELD = "logging.googleapis.com/trace"
# Per request (each worker thread has its own context), so concurrent invocations never share a trace.
_TRACE: contextvars.ContextVar[str | None] = contextvars.ContextVar("opcancel_trace", default=None)


def current_trace() -> str | None:
    """The trace of the work in hand, ``projects/P/traces/T``, so a scheduled check can carry it on."""
    return _TRACE.get()


@contextlib.contextmanager
def traced(trace: str | None) -> Iterator[None]:
    """Every line logged inside carries ``trace``: one log query then shows a request, its checks and its result."""
    token = _TRACE.set(trace)
    try:
        yield
    finally:
        _TRACE.reset(token)


class Logger:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def debug(self, message: str, **fields: Any) -> None:
        self._emit("DEBUG", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit("INFO", message, fields)

    def notice(self, message: str, **fields: Any) -> None:
        self._emit("NOTICE", message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._emit("WARNING", message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._emit("ERROR", message, fields)

    def _emit(self, severity: str, message: str, fields: dict[str, Any]) -> None:
        entry = {"severity": severity, "message": message}
        entry.update((name, value) for name, value in fields.items() if value is not None)
        entry["logging.googleapis.com/labels"] = _LABELS
        trace = _TRACE.get()
        if trace is not None:
            entry[TRACE_FIELD] = trace
        line = json.dumps(entry, default=str, separators=(",", ":"))
        # Resolved per call so a test runner's stdout capture sees the line.
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(line + "\n")
            stream.flush()
