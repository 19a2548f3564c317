"""The guard rails through the entry points: dry runs and shadow mode, the cancel budget and its breaker, the
pause, held requests and their release, protected parents, and the audit entry of every cancel sent."""

from __future__ import annotations

import base64
import dataclasses
import json
import sys

import pytest

from function import MemoryStore, Runtime, Settings
from function._guard import STATE_CACHE_S, Guard
from function._settings import CancelBudget
from tests.entry.test_entrypoints import load_wired, post_event, pubsub_event
from tests.support import TEST_POLICY, Rig

ORG = "organizations/123456789"
BASE = Settings(project="test-project", polling=TEST_POLICY, store="memory")
BUDGET = dataclasses.replace(BASE, cancel_budget=CancelBudget(2, 3600.0))


def name(op_id: str) -> str:
    return f"{ORG}/operations/{op_id}"


def serve(target: str, settings: Settings = BASE, rig: Rig | None = None):
    """The wired function app serving a rig with ``settings`` (or ``rig`` itself)."""
    client, _ = load_wired(target, "cloudevent" if target == "on_event" else "http")
    rig = rig or Rig(settings=settings)
    module = sys.modules["wired"]
    module.rig, module.runtime = rig, Runtime(rig.service, log=rig.log)
    return client, rig


def send(client, body: str | dict, attributes: dict[str, str] | None = None, message_id: str = "m-1"):
    data = (json.dumps(body) if isinstance(body, dict) else body).encode()
    return post_event(client, pubsub_event(data, attributes, message_id=message_id))


def guard_of(rig: Rig) -> Guard:
    """An operator's guard over the rig's store, as the command line builds one."""
    return Guard.from_settings(rig.settings, store=rig.store, clock=rig.clock, log=rig.log)


def events(rig: Rig, event: str) -> list[dict]:
    return [line for line in rig.logs() if line.get("event") == event]


def results_by_outcome(rig: Rig) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for result in rig.publisher.results():
        grouped.setdefault(result["outcome"], []).append(result)
    return grouped


# Dry runs


def test_a_dry_run_looks_once_never_cancels_and_reports_the_get_body():
    client, rig = serve("on_event")
    assert send(client, name("a"), {"dry_run": "TRUE", "idempotency_key": "k1"}).status_code == 200
    assert rig.simulator.cancel_calls() == []
    assert [c.path for c in rig.simulator.calls] == [f"/v2/{name('a')}"]
    (result,) = rig.publisher.results()
    assert (result["outcome"], result["dry_run"], result["checks"], result["error"]) == ("DRY_RUN", True, 1, None)
    assert result["final_operation"]["name"] == name("a") and result["final_operation"]["done"] is False
    (line,) = events(rig, "result_published")
    assert (line["severity"], line["outcome"]) == ("NOTICE", "DRY_RUN")


def test_a_dry_run_never_binds_the_real_request_s_key_and_is_deduplicated_in_its_own():
    client, rig = serve("on_event")
    for _ in range(2):
        send(client, {"operation": name("a"), "idempotency_key": "k1", "dry_run": True})
    send(client, {"operation": name("a"), "idempotency_key": "k1"})
    assert [r["outcome"] for r in rig.publisher.results()] == ["DRY_RUN", "CANCELLED"]
    assert len(rig.simulator.cancel_calls()) == 1
    # The two results never share an event id.
    ids = [attributes["ce-id"] for _, attributes in rig.publisher.on("opcancel-results")]
    assert len(set(ids)) == 2


@pytest.mark.parametrize(("op_id", "outcome"), [("missing-1", "NOT_FOUND"), ("denied-1", "PERMISSION_DENIED")])
def test_a_dry_run_reports_what_the_get_refused(op_id, outcome):
    client, rig = serve("on_event")
    send(client, {"operation": name(op_id), "dry_run": True})
    (result,) = rig.publisher.results()
    assert (result["outcome"], result["dry_run"]) == (outcome, True)
    assert rig.simulator.cancel_calls() == []
    # The real request afterwards still gets its own result, under another event id.
    send(client, {"operation": name(op_id)})
    assert [r["dry_run"] for r in rig.publisher.results()] == [True, False]
    ids = {attributes["ce-id"] for _, attributes in rig.publisher.on("opcancel-results")}
    assert len(ids) == 2


def test_shadow_mode_makes_every_request_a_dry_run_and_dry_run_false_does_not_override_it():
    client, rig = serve("on_event", dataclasses.replace(BASE, mode="shadow"))
    send(client, {"operations": [name("a"), {"operation": name("b"), "dry_run": False}]})
    assert rig.simulator.cancel_calls() == []
    assert [(r["outcome"], r["dry_run"]) for r in rig.publisher.results()] == [("DRY_RUN", True)] * 2


@pytest.mark.parametrize("value", ["yes", "1", ""])
def test_a_dry_run_attribute_other_than_true_or_false_rejects_the_request_naming_it(value):
    client, rig = serve("on_event")
    send(client, name("a"), {"dry_run": value})
    (result,) = rig.publisher.results()
    assert (result["outcome"], result["error"]) == ("REJECTED", "attribute dry_run: must be true or false")
    assert rig.simulator.calls == []


def test_a_batch_dry_run_over_http_answers_each_item():
    client, rig = serve("on_http")
    response = client.post("/", json={"operations": [name("a"), name("b")], "dry_run": True})
    assert response.status_code == 202
    assert [item["outcome"] for item in response.get_json()["accepted"]] == ["DRY_RUN", "DRY_RUN"]
    assert rig.simulator.cancel_calls() == []


# Protected parents


def test_a_protected_parent_is_rejected_naming_the_rule_dry_run_or_not():
    settings = dataclasses.replace(BASE, protected_parents=(ORG,))
    client, rig = serve("on_http", settings)
    for body in ({"operation": name("a")}, {"operation": name("a"), "dry_run": True}):
        response = client.post("/", json=body)
        (item,) = response.get_json()["rejected"]
        assert item["error"] == f"{name('a')} is protected: {ORG} is in OPCANCEL_PROTECTED_PARENTS"
    assert rig.simulator.calls == []
    assert [(r["outcome"], r["dry_run"]) for r in rig.publisher.results()] == [("REJECTED", False), ("REJECTED", True)]


# The cancel budget and its breaker


def test_the_budget_holds_the_request_that_would_exceed_it_and_the_breaker_every_later_one():
    client, rig = serve("on_event", BUDGET)
    for i in range(4):
        send(client, name(f"op-{i}"), message_id=f"m-{i}")
    assert len(rig.simulator.cancel_calls()) == 2
    grouped = results_by_outcome(rig)
    assert len(grouped["CANCELLED"]) == 2 and len(grouped["HELD"]) == 2
    assert all("the cancel budget 2/1h is spent" in r["error"] for r in grouped["HELD"])
    (tripped,) = events(rig, "breaker_tripped")
    assert (tripped["severity"], tripped["operation"], tripped["budget_used"]) == ("ERROR", name("op-2"), 2)
    held = events(rig, "request_held")
    assert [(h["severity"], h["held_because"]) for h in held] == [("WARNING", "breaker")] * 2
    audit = events(rig, "cancel_sent")
    assert [(a["severity"], a["mode"], a["budget_used"], a["budget_limit"]) for a in audit] == [
        ("NOTICE", "enforce", 1, 2),
        ("NOTICE", "enforce", 2, 2),
    ]


def test_the_breaker_stays_open_past_the_window_until_reset_which_starts_a_fresh_one():
    client, rig = serve("on_event", BUDGET)
    for i in range(3):
        send(client, name(f"op-{i}"), message_id=f"m-{i}")
    rig.clock.advance(2 * 3600)
    send(client, name("later"))
    assert results_by_outcome(rig)["HELD"][-1]["operation"] == name("later")
    before = guard_of(rig).reset()
    assert before.tripped is not None
    rig.clock.advance(STATE_CACHE_S)
    send(client, name("after-reset"))
    assert rig.publisher.results()[-1]["outcome"] == "CANCELLED"


def test_a_held_request_is_reported_once_and_never_binds_its_key():
    client, rig = serve("on_event", dataclasses.replace(BASE, cancel_budget=CancelBudget(1, 3600.0)))
    send(client, name("first"))
    for _ in range(3):
        assert send(client, name("held"), {"idempotency_key": "k"}).status_code == 200
    assert [r["outcome"] for r in rig.publisher.results()] == ["CANCELLED", "HELD"]
    assert len(events(rig, "request_held")) == 1
    assert rig.store._load("explicit/k") is None
    (held,) = guard_of(rig).held()
    assert (held.key, held.operation, held.because, held.released) == ("explicit/k", name("held"), "breaker", False)


def test_a_released_request_is_sent_again_and_neither_counted_nor_stopped_by_the_breaker():
    client, rig = serve("on_event", dataclasses.replace(BASE, cancel_budget=CancelBudget(1, 3600.0)))
    send(client, name("first"))
    send(client, {"operation": name("held"), "idempotency_key": "k", "reason": "alert storm"})
    send(client, name("still-held"))
    guard = guard_of(rig)
    held = next(h for h in guard.held() if h.key == "explicit/k")
    guard.release(held, by="ana", publisher=rig.publisher, topic=rig.settings.requests_topic)
    ((data, attributes),) = rig.publisher.on("opcancel-requests")
    send(client, data.decode(), attributes, message_id="m-replayed")
    assert rig.publisher.results()[-1]["outcome"] == "CANCELLED"
    assert rig.publisher.results()[-1]["idempotency_key"] == "k"
    # Not counted: the window still holds only the first cancel, and the breaker is still open.
    status = guard.status()
    assert (status.used, status.tripped is not None) == (1, True)
    (audit,) = [a for a in events(rig, "cancel_sent") if a["operation"] == name("held")]
    assert (audit["released_by"], audit["reason"]) == ("ana", "alert storm")
    # The trigger reported is the held request's own (its message), not the operator's replay.
    assert audit["source"] == {"kind": "pubsub", "message_id": "m-1"}
    assert rig.publisher.results()[-1]["source"] == {"kind": "pubsub", "message_id": "m-1"}
    assert [h.key for h in guard.held()] == [f"securitycenter.googleapis.com/{name('still-held')}"]


def test_a_released_request_the_api_refuses_is_reported_once_and_leaves_the_held_list():
    client, rig = serve("on_event", dataclasses.replace(BASE, cancel_budget=CancelBudget(1, 3600.0)))
    send(client, name("first"))
    send(client, name("missing-1"))
    guard = guard_of(rig)
    (held,) = guard.held()
    guard.release(held, by="ana", publisher=rig.publisher, topic=rig.settings.requests_topic)
    ((data, attributes),) = rig.publisher.on("opcancel-requests")
    send(client, data.decode(), attributes, message_id="m-replayed")
    assert [r["outcome"] for r in rig.publisher.results()] == ["CANCELLED", "HELD", "NOT_FOUND"]
    assert guard.held() == []


def test_nothing_a_sender_puts_in_a_message_marks_it_released():
    client, rig = serve("on_event", dataclasses.replace(BASE, cancel_budget=CancelBudget(1, 3600.0)))
    send(client, name("first"))
    send(client, name("held"))
    for attributes in ({"released": "true"}, {"opcancel_kind": "release"}):
        send(client, name("held"), attributes)
    assert len(rig.simulator.cancel_calls()) == 1


def test_the_replay_of_an_alert_s_held_request_keeps_its_incident_key_and_source():
    client, rig = serve("on_event", dataclasses.replace(BASE, paused=True))
    incident = {
        "version": "1.2",
        "incident": {
            "incident_id": "0.abc",
            "state": "open",
            "policy_name": "runaway",
            "documentation": {"content": f"cancel {name('x')}"},
        },
    }
    send(client, incident)
    (held,) = guard_of(rig).held()
    assert held.result["source"] == {
        "kind": "alert",
        "message_id": "m-1",
        "incident_id": "0.abc",
        "policy_name": "runaway",
    }
    serve_again, rig2 = serve("on_event")
    data, attributes = held.replay["data"].encode(), held.replay["attributes"]
    send(serve_again, data.decode(), attributes, message_id="m-2")
    (result,) = rig2.publisher.results()
    assert result["idempotency_key"] == held.result["idempotency_key"]
    assert result["source"]["incident_id"] == "0.abc"


def test_every_held_item_of_a_batch_and_of_an_alert_storm_is_released_cancelled_once_and_reported_once():
    client, rig = serve("on_event", dataclasses.replace(BASE, cancel_budget=CancelBudget(1, 3600.0)))
    send(client, name("first"))
    send(client, {"operations": [name(f"item-{i}") for i in range(3)], "idempotency_key": "K"}, message_id="m-b")
    for i, incident_id in enumerate(("0.storm\\1", "0." + "x" * 300)):
        alert = {"incident_id": incident_id, "state": "open", "documentation": {"content": name(f"alert-{i}")}}
        send(client, {"version": "1.2", "incident": alert}, message_id=f"m-alert-{i}")
    guard = guard_of(rig)
    held = guard.held()
    assert len(held) == 5
    for request in held:
        if request.replay is not None:
            guard.release(request, by="ana", publisher=rig.publisher, topic=rig.settings.requests_topic)
        else:
            # No message can carry its key: the operator's side runs it through the function's own pipeline.
            item = rig.service.release(request, by="ana")
            assert item.outcome == "CANCELLED"
    for i, (data, attributes) in enumerate(rig.publisher.on("opcancel-requests")):
        for delivery in range(2):
            send(client, data.decode(), attributes, message_id=f"m-replayed-{i}-{delivery}")
    outcomes: dict[str, list[str]] = {}
    for result in rig.publisher.results():
        outcomes.setdefault(result["operation"], []).append(result["outcome"])
    assert outcomes.pop(name("first")) == ["CANCELLED"]
    assert outcomes == {request.operation: ["HELD", "CANCELLED"] for request in held}
    paths = [call.path for call in rig.simulator.cancel_calls()]
    assert len(paths) == len(set(paths)) == 6
    audit = [a for a in events(rig, "cancel_sent") if a.get("released_by")]
    assert len(audit) == 5 and {a["source"]["kind"] for a in audit} == {"pubsub", "alert"}
    assert (guard.status().used, guard.held()) == (1, [])


# The pause


def test_a_pause_holds_every_new_request_saying_who_why_and_since_and_is_seen_within_the_cache_time():
    client, rig = serve("on_event")
    send(client, name("before"))
    guard_of(rig).pause(by="ana@example.com", reason="INC-42")
    rig.clock.advance(STATE_CACHE_S)
    send(client, name("during"))
    held = rig.publisher.results()[-1]
    assert held["outcome"] == "HELD"
    assert held["error"].startswith("held: opcancel is paused by ana@example.com since ")
    assert held["error"].endswith(": INC-42")
    (paused,) = events(rig, "guard_paused")
    assert (paused["severity"], paused["paused_by"], paused["pause_reason"]) == ("WARNING", "ana@example.com", "INC-42")
    assert events(rig, "request_held")[-1]["held_because"] == "paused"
    guard_of(rig).unpause()
    rig.clock.advance(STATE_CACHE_S)
    send(client, name("after"))
    assert rig.publisher.results()[-1]["outcome"] == "CANCELLED"


def test_a_released_request_is_still_stopped_by_the_pause_and_reported_held_again_under_the_same_event_id():
    client, rig = serve("on_event", dataclasses.replace(BASE, cancel_budget=CancelBudget(1, 3600.0)))
    send(client, name("first"))
    send(client, name("held"))
    guard = guard_of(rig)
    guard.pause(by="ana", reason=None)
    guard.release(guard.held()[0], by="ana", publisher=rig.publisher, topic=rig.settings.requests_topic)
    rig.clock.advance(STATE_CACHE_S)
    ((data, attributes),) = rig.publisher.on("opcancel-requests")
    send(client, data.decode(), attributes, message_id="m-replayed")
    assert len(rig.simulator.cancel_calls()) == 1
    held_events = [a for _, a in rig.publisher.on("opcancel-results") if a["outcome"] == "HELD"]
    assert len(held_events) == 2 and held_events[0]["ce-id"] == held_events[1]["ce-id"]
    (again,) = guard.held()
    assert (again.holds, again.because, again.released) == (2, "paused", False)


def test_opcancel_paused_pins_the_pause_whatever_unpause_writes():
    client, rig = serve("on_event", dataclasses.replace(BASE, paused=True))
    guard_of(rig).unpause()
    send(client, name("a"))
    (result,) = rig.publisher.results()
    assert (result["outcome"], result["error"]) == (
        "HELD",
        "held: opcancel is paused by OPCANCEL_PAUSED=true, set at deploy",
    )
    assert rig.simulator.calls == []


def test_a_pause_does_not_stop_dry_runs_or_running_chains():
    client, rig = serve("on_event")
    send(client, name("slow-2-a"))
    guard_of(rig).pause(by="ana", reason=None)
    rig.clock.advance(STATE_CACHE_S)
    send(client, name("b"), {"dry_run": "true"})
    rig.run_checks()
    assert sorted(r["outcome"] for r in rig.publisher.results()) == ["CANCELLED", "DRY_RUN"]


def test_guard_state_that_cannot_be_read_cancels_nothing_and_the_message_is_retried():
    class Unreadable(MemoryStore):
        def _load_document(self, key):
            raise ConnectionError("guard state down")

    rig = Rig(store=Unreadable(lease_s=60, ttl_s=3600), settings=BASE)
    client, rig = serve("on_event", rig=rig)
    assert send(client, name("a")).status_code == 503
    assert rig.simulator.calls == [] and rig.publisher.results() == []
    # The key was handed back: once the state reads again, the redelivery cancels at once.
    rig.store._load_document = MemoryStore._load_document.__get__(rig.store)
    assert send(client, name("a")).status_code == 200
    assert rig.publisher.results()[0]["outcome"] == "CANCELLED"


# The audit trail


def unsigned_token(claims: dict) -> str:
    part = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"Bearer eyJhbGciOiJSUzI1NiJ9.{part}.c2lnbmF0dXJl"


def test_every_cancel_sent_is_one_notice_naming_the_http_caller_from_the_token_cloud_run_verified():
    client, rig = serve("on_http", BUDGET)
    headers = {"Authorization": unsigned_token({"email": "ci-bot@proj.iam.gserviceaccount.com\u202e"})}
    assert client.post("/", json={"operation": name("a")}, headers=headers).status_code == 202
    (audit,) = events(rig, "cancel_sent")
    caller = "ci-bot@proj.iam.gserviceaccount.com\\u202e"
    assert audit["severity"] == "NOTICE"
    assert audit["source"] == {"kind": "http", "caller": caller}
    assert (audit["mode"], audit["budget_used"], audit["budget_limit"]) == ("enforce", 1, 2)
    assert rig.publisher.results()[0]["source"] == {"kind": "http", "caller": caller}


@pytest.mark.parametrize(
    "authorization", ["Basic dXNlcjpwYXNz", "Bearer not-a-jwt", "Bearer a.!!!.c", "Bearer a.e30.c"]
)
def test_a_token_without_a_readable_email_claim_names_no_caller(authorization):
    client, rig = serve("on_http")
    client.post("/", json={"operation": name("a")}, headers={"Authorization": authorization})
    assert rig.publisher.results()[0]["source"] == {"kind": "http"}


def test_an_alert_s_cancel_names_its_incident_and_policy():
    client, rig = serve("on_event")
    incident = {
        "version": "1.2",
        "incident": {"incident_id": "0.abc", "state": "open", "policy_name": "p", "summary": name("a")},
    }
    send(client, incident, message_id="alert-1")
    (audit,) = events(rig, "cancel_sent")
    assert audit["source"] == {"kind": "alert", "message_id": "alert-1", "incident_id": "0.abc", "policy_name": "p"}


# Start-up


def start_up_events(monkeypatch, capsys, **environment) -> dict[str, dict]:
    from functions_framework import create_app

    from tests.entry.test_entrypoints import ROOT

    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "local-project")
    monkeypatch.setenv("OPCANCEL_STORE", "memory")
    for variable in ("OPCANCEL_CANCEL_BUDGET", "OPCANCEL_PAUSED", "OPCANCEL_MODE"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    create_app("on_http", str(ROOT / "main.py"), "http")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return {line["event"]: line for line in lines}


def test_start_up_warns_of_an_unset_budget_and_of_a_pinned_pause(monkeypatch, capsys):
    logged = start_up_events(monkeypatch, capsys, OPCANCEL_PAUSED="true")
    assert logged["no_cancel_budget"]["severity"] == "WARNING"
    assert (logged["guard_paused"]["severity"], logged["guard_paused"]["paused_by"]) == ("WARNING", "OPCANCEL_PAUSED")
    logged = start_up_events(monkeypatch, capsys, OPCANCEL_CANCEL_BUDGET="100/1h")
    assert "no_cancel_budget" not in logged and "guard_paused" not in logged


def test_a_bad_guard_setting_fails_start_up_naming_it(monkeypatch, capsys):
    from function.errors import ConfigError

    with pytest.raises(ConfigError, match="OPCANCEL_CANCEL_BUDGET"):
        start_up_events(monkeypatch, capsys, OPCANCEL_CANCEL_BUDGET="100")


def test_a_held_request_let_through_after_a_reset_leaves_the_held_list():
    client, rig = serve("on_event", dataclasses.replace(BASE, cancel_budget=CancelBudget(1, 3600.0)))
    send(client, name("first"))
    send(client, name("held"))
    guard = guard_of(rig)
    guard.reset()
    rig.clock.advance(STATE_CACHE_S)
    # The alert fires again: the request comes anew, is counted in the fresh window, and cancels.
    send(client, name("held"), message_id="m-again")
    assert rig.publisher.results()[-1]["outcome"] == "CANCELLED"
    assert guard.held() == []
    (audit,) = [a for a in events(rig, "cancel_sent") if a["operation"] == name("held")]
    assert "released_by" not in audit
