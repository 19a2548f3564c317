"""Shared fixtures: Google's emulators, started once per session where gcloud exists; the tier summary."""

from __future__ import annotations

import uuid

import pytest

from devkit.emulators import Emulator, EmulatorUnavailable

_emulator_skips: dict[str, str] = {}
_emulators_started: set[str] = set()


def _emulator(kind: str):
    if kind in _emulator_skips:
        pytest.skip(_emulator_skips[kind])
    try:
        emulator = Emulator(kind)
    except EmulatorUnavailable as reason:
        _emulator_skips[kind] = str(reason)
        pytest.skip(str(reason))
    _emulators_started.add(kind)
    return emulator


@pytest.fixture(scope="session")
def firestore_emulator():
    emulator = _emulator("firestore")
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def pubsub_emulator():
    emulator = _emulator("pubsub")
    yield emulator
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
    tiers: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "") or ""
            parts = nodeid.split("/")
            tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else "other"
            if "emulator" in getattr(report, "keywords", {}):
                tier += " (emulator)"
            tiers.setdefault(tier, {}).setdefault(outcome, 0)
            tiers[tier][outcome] += 1
    terminalreporter.section("test tiers")
    for tier in sorted(tiers):
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(tiers[tier].items()))
        terminalreporter.write_line(f"{tier:24} {counts}")
    for kind in ("pubsub", "firestore"):
        if kind in _emulator_skips:
            terminalreporter.write_line(f"{kind} emulator tier SKIPPED: {_emulator_skips[kind]}")
        elif kind in _emulators_started:
            terminalreporter.write_line(f"{kind} emulator tier ran against Google's emulator")
        else:
            terminalreporter.write_line(f"{kind} emulator tier not selected")
