"""docs/configuration.md's table of log events, held to the events the code can log and their severities.

The events are read from the source: every call of a logger method with ``event=`` (a literal, or a claim
status, which ``Results.duplicate`` logs as its event); a call through a local ``log`` chosen between two
methods counts at both severities. Each must be in the table, at a severity its row names, and each
event the table names must be one the code logs.
"""

from __future__ import annotations

import ast
import pathlib
import re

from function._store import ClaimStatus

ROOT = pathlib.Path(__file__).resolve().parents[2]
LEVELS = {"debug": "DEBUG", "info": "INFO", "notice": "NOTICE", "warning": "WARNING", "error": "ERROR"}


def logged_events() -> dict[str, set[str]]:
    """Each event the code logs, with every severity it can be logged at."""
    events: dict[str, set[str]] = {}
    for path in [ROOT / "main.py", *sorted((ROOT / "function").rglob("*.py"))]:
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            chosen = _chosen_methods(function)
            for call in ast.walk(function):
                if not isinstance(call, ast.Call):
                    continue
                event = next((k.value for k in call.keywords if k.arg == "event"), None)
                if event is None:
                    continue
                if isinstance(call.func, ast.Attribute) and call.func.attr in LEVELS:
                    levels = {LEVELS[call.func.attr]}
                elif isinstance(call.func, ast.Name) and call.func.id in chosen:
                    levels = chosen[call.func.id]
                else:
                    raise AssertionError(f"{path.name}:{call.lineno}: a log call the test cannot read")
                if isinstance(event, ast.Constant) and isinstance(event.value, str):
                    names = [event.value]
                elif ast.unparse(event) == "claim.status.value":
                    names = [status.value for status in ClaimStatus if status is not ClaimStatus.ACQUIRED]
                else:
                    raise AssertionError(f"{path.name}:{call.lineno}: an event the test cannot read")
                for name in names:
                    events.setdefault(name, set()).update(levels)
    return events


def _chosen_methods(function: ast.AST) -> dict[str, set[str]]:
    """``log = self._log.info if ... else self._log.warning``: the local names bound to logger methods."""
    chosen: dict[str, set[str]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            options = [value.body, value.orelse] if isinstance(value, ast.IfExp) else [value]
            if all(isinstance(o, ast.Attribute) and o.attr in LEVELS for o in options):
                chosen[node.targets[0].id] = {LEVELS[o.attr] for o in options}
    return chosen


def documented_events() -> dict[str, set[str]]:
    text = (ROOT / "docs" / "configuration.md").read_text()
    table = text.split("\n## Logs\n", 1)[1].split("\n\n| event |", 1)[1].split("\n\n", 1)[0]
    events: dict[str, set[str]] = {}
    for row in table.splitlines()[2:]:
        names, severity = row.split("|")[1:3]
        for name in re.findall(r"`([a-z_]+)`", names):
            events[name] = set(re.findall(r"\b(DEBUG|INFO|NOTICE|WARNING|ERROR)\b", severity))
    return events


def test_the_code_logs_events_the_reader_can_find():
    events = logged_events()
    assert {"cancel_sent", "result_published", "key_mismatch", "finished"} <= set(events)


def test_every_event_the_code_logs_is_in_the_table_at_its_severities():
    documented = documented_events()
    for event, levels in logged_events().items():
        assert event in documented, f"{event} is logged but not in docs/configuration.md's event table"
        assert levels <= documented[event], f"{event} is logged at {sorted(levels)}, documented {documented[event]}"


def test_the_table_names_no_event_the_code_does_not_log():
    assert set(documented_events()) - set(logged_events()) == set()
