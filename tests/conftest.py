"""Shared fixtures: Google's emulators, started once per session where gcloud exists; the tier summary."""

from __future__ import annotations

import uuid

import pytest

from devkit.emulators import Emulator, EmulatorUnavailable


def _emulator(kind: str):
    try:
        return Emulator(kind)
    except EmulatorUnavailable as reason:
        pytest.skip(str(reason))


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
    """Which tiers ran, and why an emulator tier was skipped: CI's log must say so."""
    tiers: dict[str, dict[str, int]] = {}
    skip_reasons: dict[str, str] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            parts = (getattr(report, "nodeid", "") or "").split("/")
            tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else "other"
            if "emulator" in getattr(report, "keywords", {}):
                tier += " (emulator)"
                if outcome == "skipped" and isinstance(report.longrepr, tuple):
                    skip_reasons.setdefault(tier, report.longrepr[2].removeprefix("Skipped: "))
            tiers.setdefault(tier, {}).setdefault(outcome, 0)
            tiers[tier][outcome] += 1
    terminalreporter.section("test tiers")
    for tier in sorted(tiers):
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(tiers[tier].items()))
        reason = f"  <- skipped: {skip_reasons[tier]}" if tier in skip_reasons else ""
        terminalreporter.write_line(f"{tier:24} {counts}{reason}")
