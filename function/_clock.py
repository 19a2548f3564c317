"""The clock port, and the one timestamp format opcancel writes (RFC 3339, UTC, milliseconds)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def format_time(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str) -> float:
    """Parse an RFC 3339 timestamp; raises ``ValueError`` on anything else."""
    if not isinstance(text, str) or not text.endswith(("Z", "z", "+00:00")):
        raise ValueError("timestamps must be RFC 3339 in UTC")
    moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "Zz" else text)
    return moment.timestamp()
