"""Shared fixtures: Google's Firestore emulator, started once per session where gcloud exists (the e2e
tier brings its own Pub/Sub emulator, in ``devkit.local_stack``); Google's published contract, checked on
every request a test's ``httpx.MockTransport`` or a devkit stand-in sees; the tier summary."""

from __future__ import annotations

import uuid
from collections import Counter

import httpx
import pytest

from devkit.discovery import LEDGER
from devkit.emulators import Emulator, EmulatorUnavailable
from tests.support import check_contract

_handle_mock_request = httpx.MockTransport.handle_request


def _checked_mock_request(self: httpx.MockTransport, request: httpx.Request) -> httpx.Response:
    """Every request a test's ``MockTransport`` answers is first held to Google's discovery documents."""
    check_contract(request)
    return _handle_mock_request(self, request)


# Instrumenting httpx's test transport (not our code) reaches every unit test's requests at once.
httpx.MockTransport.handle_request = _checked_mock_request  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def google_contract(request):
    """Fail a test on the first request outside Google's published contract that a stand-in or a
    ``MockTransport`` saw, naming the request and the rule (``off_contract`` tests probe on purpose)."""
    LEDGER.take()
    yield
    seen = LEDGER.take()
    if seen and request.node.get_closest_marker("off_contract") is None:
        pytest.fail(f"{len(seen)} request(s) outside Google's published contract; the first: {seen[0]}", pytrace=False)


@pytest.fixture(scope="session")
def firestore_emulator():
    try:
        emulator = Emulator("firestore")
    except EmulatorUnavailable as reason:
        pytest.skip(str(reason))
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def firestore_spec(firestore_emulator):
    """A fresh collection per test, so tests never see each other's records."""
    return {
        "kind": "firestore",
        "project": "opcancel-test",
        "collection": f"t-{uuid.uuid4().hex[:12]}",
        "emulator_host": firestore_emulator.host,
    }


def pytest_terminal_summary(terminalreporter) -> None:
    """Which tiers ran, and why an emulator tier was skipped: CI's log must say so."""
    counts: dict[str, Counter[str]] = {}
    reasons: dict[str, list[str]] = {}
    for outcome in ("passed", "failed", "error", "skipped", "xfailed", "xpassed"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "") or ""
            if not nodeid:
                continue  # a collection-wide warning or error, not a test
            parts = nodeid.split("/")
            tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else "other"
            if "emulator" in report.keywords:
                tier += " (emulator)"
            counts.setdefault(tier, Counter())[outcome] += 1
            if outcome == "skipped" and isinstance(report.longrepr, tuple):
                reason = report.longrepr[2].removeprefix("Skipped: ")
                if reason not in reasons.setdefault(tier, []):
                    reasons[tier].append(reason)
    if not counts:
        return
    terminalreporter.section("test tiers")
    for tier in sorted(counts):
        tally = counts[tier]
        ran = sum(n for outcome, n in tally.items() if outcome != "skipped")
        done = ", ".join(f"{n} {outcome}" for outcome, n in sorted(tally.items()) if outcome != "skipped")
        if not ran:
            line = f"skipped ({tally['skipped']}): " + "; ".join(reasons.get(tier, ["no reason given"]))
        elif tally["skipped"]:
            line = f"ran ({done}), {tally['skipped']} skipped: " + "; ".join(reasons.get(tier, []))
        else:
            line = f"ran ({done})"
        terminalreporter.write_line(f"{tier:20} {line}", red=bool(tally["failed"] or tally["error"]))
