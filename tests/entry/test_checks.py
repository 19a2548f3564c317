"""Checks through the entry points, in both scheduling modes: recognised by their topic alone, counted only
where the record agrees, ended with a result when their parent leaves the allow-list, and resumed when lost.

``mode`` runs a test with checks scheduled as Cloud Tasks (the real adapter into the devkit stand-in,
in-process on the rig's clock) and with checks published at once and refused until due (redelivery).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys

import pytest
from click.testing import CliRunner
from cloudevents.http import CloudEvent

from function import RedeliveryRequested, Runtime, Settings, SourceKind, State, parse_time
from function.cli import CliClients, Exit, cli
from tests.entry.test_entrypoints import load_wired, post_event
from tests.support import TEST_POLICY, Rig, checks_source

NAME = "organizations/123456789/operations/slow-2-chain"
KEY = f"securitycenter.googleapis.com/{NAME}"
REQUESTS = "//pubsub.googleapis.com/projects/test-project/topics/opcancel-requests"
CHECKS = checks_source()


@pytest.fixture(params=["tasks", "redelivery"])
def mode(request):
    return request.param


def event(data: bytes, attributes: dict[str, str] | None = None, *, source: str, message_id: str = "1") -> CloudEvent:
    return CloudEvent(
        {"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": source, "id": message_id},
        {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes or {}, "messageId": message_id}},
    )


def deliver(runtime: Runtime, cloud_event: CloudEvent, handler: str = "on_event") -> str:
    try:
        getattr(runtime, handler)(cloud_event)
    except RedeliveryRequested:
        return "retry"
    return "ack"


class Chain:
    """A rig behind a Runtime, and the checks its scheduler has sent, delivered from the checks topic."""

    def __init__(self, mode: str, *, settings: Settings | None = None, rig: Rig | None = None) -> None:
        self.rig = rig or Rig(tasks=mode == "tasks", settings=settings)
        self.runtime = Runtime(self.rig.service, log=self.rig.log)

    def request(self, name: str = NAME, message_id: str = "r-1") -> str:
        return deliver(self.runtime, event(name.encode(), source=REQUESTS, message_id=message_id))

    def next_checks(self) -> list:
        """The checks that reach the checks topic next (a task dispatched at its time, or published at once)."""
        if self.rig.cloudtasks is not None:
            self.rig.dispatch_tasks()
        return self.rig.publisher.take_checks()

    def deliver_check(self, check, *, until_acknowledged: bool = True) -> list[str]:
        self.rig.clock.current = max(self.rig.clock.current, parse_time(json.loads(check.data)["due_at"]))
        fates = [deliver(self.runtime, event(check.data, check.attributes, source=CHECKS, message_id="c"))]
        while until_acknowledged and fates[-1] == "retry" and len(fates) < 5:
            fates.append(deliver(self.runtime, event(check.data, check.attributes, source=CHECKS, message_id="c")))
        return fates

    def drain(self) -> int:
        delivered = 0
        while checks := self.next_checks():
            for check in checks:
                self.deliver_check(check)
                delivered += 1
        return delivered

    def results(self) -> list[dict]:
        return self.rig.publisher.results()


def test_a_chain_ends_in_one_result_with_each_check_delivered_once(mode):
    chain = Chain(mode)
    assert chain.request() == "ack"
    assert chain.drain() == 2
    (result,) = chain.results()
    assert (result["outcome"], result["checks"]) == ("CANCELLED", 3)
    assert len(chain.rig.simulator.cancel_calls()) == 1
    if mode == "tasks":
        # Each check was one task, created once and dispatched once, at its due time.
        tasks = chain.rig.cloudtasks.tasks.values()
        assert [len(task.attempts) for task in tasks] == [1, 1]
        assert all(task.succeeded_at == task.schedule_time for task in tasks)


def test_checks_delivered_late_keep_the_chains_schedule(mode):
    """However long each check takes to arrive and run, the next is due its delay after this one was due."""
    chain = Chain(mode)
    start = chain.rig.clock.now()
    chain.request("organizations/123456789/operations/stuck-late-chain")
    due_times = []
    for _ in range(4):
        (check,) = chain.next_checks()
        due_at = parse_time(json.loads(check.data)["due_at"])
        due_times.append(due_at - start)
        chain.rig.clock.current = due_at + 0.4
        assert chain.deliver_check(check) == ["ack"]
    assert due_times == [5, 15, 35, 75]
    if mode == "tasks":
        schedule = sorted(task.schedule_time - start for task in chain.rig.cloudtasks.tasks.values())
        assert schedule == [5, 15, 35, 75, 135]


# --- recognised by where it came from --------------------------------------------------------------


def test_a_check_shaped_message_on_the_requests_topic_is_a_request_and_rejected_as_one(mode):
    chain = Chain(mode)
    chain.request()
    (check,) = chain.next_checks()
    # The very check, attributes and all, published by someone to the requests topic.
    assert deliver(chain.runtime, event(check.data, check.attributes, source=REQUESTS)) == "ack"
    (rejected,) = chain.results()
    assert rejected["outcome"] == "REJECTED"
    assert "attempt" in rejected["error"]
    assert len(chain.rig.simulator.calls) == 2  # the request's cancel and get: nothing more
    # The chain it imitated goes on untouched and ends in its own one result.
    chain.deliver_check(check)
    chain.drain()
    assert [r["outcome"] for r in chain.results()] == ["REJECTED", "CANCELLED"]


def test_on_request_never_takes_a_check_even_from_the_checks_topic(mode):
    chain = Chain(mode)
    chain.request()
    (check,) = chain.next_checks()
    chain.rig.clock.current = parse_time(json.loads(check.data)["due_at"])
    calls = len(chain.rig.simulator.calls)
    assert deliver(chain.runtime, event(check.data, check.attributes, source=CHECKS), "on_request") == "ack"
    assert len(chain.rig.simulator.calls) == calls
    assert [r["outcome"] for r in chain.results()] == ["REJECTED"]


def test_on_check_sets_aside_an_event_from_anywhere_else():
    chain = Chain("redelivery")
    chain.request()
    (check,) = chain.next_checks()
    chain.rig.clock.current = parse_time(json.loads(check.data)["due_at"])
    calls = len(chain.rig.simulator.calls)
    for source in (REQUESTS, "//pubsub.googleapis.com/projects/other/topics/opcancel-checks", "//evil/x"):
        assert deliver(chain.runtime, event(check.data, check.attributes, source=source), "on_check") == "ack"
    assert len(chain.rig.simulator.calls) == calls
    assert chain.results() == []
    ignored = [line for line in chain.rig.logs() if line.get("event") == "message_ignored"]
    assert [line["event_source"] for line in ignored] == [
        REQUESTS,
        "//pubsub.googleapis.com/projects/other/topics/opcancel-checks",
        "//evil/x",
    ]
    # The real one, from the checks topic, runs.
    assert chain.deliver_check(check, until_acknowledged=False) == ["ack"]
    assert len(chain.rig.simulator.calls) == calls + 1


def test_through_functions_framework_on_check_and_on_request_route_by_source():
    check_client, rig = load_wired("on_check", "cloudevent")
    rig.send(NAME)
    (check,) = rig.publisher.take_checks()
    rig.clock.current = parse_time(json.loads(check.data)["due_at"])
    calls = len(rig.simulator.calls)
    assert post_event(check_client, event(check.data, check.attributes, source=REQUESTS)).status_code == 200
    assert len(rig.simulator.calls) == calls
    assert post_event(check_client, event(check.data, check.attributes, source=CHECKS)).status_code == 200
    assert len(rig.simulator.calls) == calls + 1

    request_client, rig = load_wired("on_request", "cloudevent")
    rig.send(NAME)
    (check,) = rig.publisher.take_checks()
    rig.clock.current = parse_time(json.loads(check.data)["due_at"])
    assert post_event(request_client, event(check.data, check.attributes, source=CHECKS)).status_code == 200
    assert [r["outcome"] for r in rig.publisher.results()] == ["REJECTED"]


@pytest.mark.parametrize("structured", [False, True])
def test_on_http_never_takes_a_check_whatever_cloudevent_carries_it(structured):
    http_client, rig = load_wired("on_http", "http")
    rig.send(NAME)
    (check,) = rig.publisher.take_checks()
    rig.clock.current = parse_time(json.loads(check.data)["due_at"])
    calls = len(rig.simulator.calls)
    response = post_event(http_client, event(check.data, check.attributes, source=CHECKS), structured=structured)
    assert response.status_code == 202
    (rejected,) = response.get_json()["rejected"]
    assert "attempt" in rejected["error"]
    response = http_client.post("/", data=check.data, content_type="application/json")
    assert response.get_json()["accepted"] == []
    assert len(rig.simulator.calls) == calls


# --- counted only where the record agrees ------------------------------------------------------------


def altered(check, **changes):
    body = json.loads(check.data)
    body.update(changes)
    return type(check)(
        data=json.dumps(body).encode(), attributes=check.attributes, message_id="forged", kind=SourceKind.PUBSUB
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"attempt": 2},
        {"attempt": 7},
        {"api_version": "v1"},
        {"location": "eu", "api_version": "v2"},
        {"source": {"kind": "http"}},
        {"deadline_at": "2099-01-01T00:00:00.000Z"},
        {"due_at": "2020-01-01T00:00:00.000Z"},
    ],
    ids=lambda changes: ",".join(changes),
)
def test_a_check_the_record_does_not_wait_for_can_neither_end_stall_nor_rewrite_the_chain(mode, changes):
    chain = Chain(mode)
    chain.request()
    (check,) = chain.next_checks()
    record_before = chain.rig.store._load(KEY)
    calls = len(chain.rig.simulator.calls)
    assert chain.deliver_check(altered(check, **changes)) == ["ack"]
    assert len(chain.rig.simulator.calls) == calls
    assert chain.rig.store._load(KEY) == record_before
    assert chain.next_checks() == []
    assert chain.results() == []
    # Stale, or, naming another host, bound to another operation: refused either way.
    (stale,) = [line for line in chain.rig.logs() if line.get("event") in ("stale_check", "mismatch")]
    assert stale["idempotency_key"] == KEY
    # The chain's own check still runs, and the chain ends as it would have.
    chain.deliver_check(check)
    chain.drain()
    assert [(r["outcome"], r["checks"]) for r in chain.results()] == [("CANCELLED", 3)]


def test_a_check_of_another_chain_cannot_touch_this_one(mode):
    chain = Chain(mode)
    chain.request()
    chain.request("organizations/123456789/operations/slow-2-other", message_id="r-2")
    mine, other = chain.next_checks()
    # The other chain's check, aimed at this chain's key.
    assert chain.deliver_check(altered(other, idempotency_key=KEY)) == ["ack"]
    assert chain.results() == []
    for check in (mine, other):
        chain.deliver_check(check)
    chain.drain()
    assert sorted(r["outcome"] for r in chain.results()) == ["CANCELLED", "CANCELLED"]


def test_a_task_delivered_check_runs_when_early_by_less_than_the_skew_and_waits_when_earlier():
    chain = Chain("tasks")
    chain.request()
    (check,) = chain.next_checks()
    due = parse_time(json.loads(check.data)["due_at"])
    chain.rig.clock.current = due - 3.0
    assert deliver(chain.runtime, event(check.data, check.attributes, source=CHECKS)) == "retry"
    chain.rig.clock.current = due - 1.5
    assert deliver(chain.runtime, event(check.data, check.attributes, source=CHECKS)) == "ack"
    assert [line["attempt"] for line in chain.rig.logs() if line.get("event") == "check_scheduled"] == [1, 2]


def test_in_redelivery_mode_an_early_check_is_refused_until_due():
    chain = Chain("redelivery")
    chain.request()
    (check,) = chain.next_checks()
    due = parse_time(json.loads(check.data)["due_at"])
    chain.rig.clock.current = due - 0.5
    assert deliver(chain.runtime, event(check.data, check.attributes, source=CHECKS)) == "retry"


# --- the allow-list on the check path ------------------------------------------------------------------


def allowed_on(parent: str) -> Settings:
    return Settings(project="test-project", polling=TEST_POLICY, store="memory", allowed_parents=(parent,))


def chain_taken_off_the_allow_list(mode) -> tuple[Chain, Chain, object]:
    """A chain with its first check scheduled, and the function redeployed with the parent gone from the
    list (the store and the clock stay): the chain before, the chain after, and the check."""
    before = Chain(mode, settings=allowed_on("organizations/123456789"))
    before.request()
    (check,) = before.next_checks()
    after = Chain(
        mode, rig=Rig(settings=allowed_on("organizations/42"), store=before.rig.store, clock=before.rig.clock)
    )
    return before, after, check


def test_a_check_for_a_parent_taken_off_the_allow_list_ends_the_chain_rejected(mode):
    before, after, check = chain_taken_off_the_allow_list(mode)
    calls = len(before.rig.simulator.calls)
    assert after.deliver_check(check) == ["ack"]
    assert after.rig.simulator.calls == [] and len(before.rig.simulator.calls) == calls
    (result,) = after.results()
    assert result["outcome"] == "REJECTED"
    assert "OPCANCEL_ALLOWED_PARENTS" in result["error"] and "organizations/123456789" in result["error"]
    assert (result["operation"], result["checks"]) == (NAME, 1)
    # Stored under a rejection's key, never the request's: that key is freed, so no rejection binds it.
    # The result still reports the request's key, as a consumer knows it.
    assert result["idempotency_key"] == KEY
    assert after.rig.store._load(KEY) is None
    assert after.next_checks() == []
    # Delivered again, the check belongs to no chain: still one result.
    assert after.deliver_check(check) == ["ack"]
    assert len(after.results()) == 1
    # The parent put back on the list: the next request for the operation is acted on at once.
    again = Chain(mode, rig=Rig(settings=before.rig.settings, store=before.rig.store, clock=before.rig.clock))
    assert again.request(message_id="r-2") == "ack"
    assert len(again.rig.simulator.cancel_calls()) == 1
    assert again.rig.store._load(KEY) is not None


def test_a_chain_stopped_by_the_allow_list_reports_once_when_its_worker_died_before_freeing_the_key(mode):
    _, after, check = chain_taken_off_the_allow_list(mode)
    waiting = after.rig.store._load(KEY)
    assert after.deliver_check(check) == ["ack"]
    # As if the worker had died after publishing, before the key was freed: the record is back as it was.
    assert after.rig.store._create(waiting)
    assert after.deliver_check(check) == ["ack"]
    assert len(after.results()) == 1
    assert after.rig.store._load(KEY) is None


# --- liveness --------------------------------------------------------------------------------------------


def overdue(chain: Chain) -> None:
    chain.rig.clock.advance(TEST_POLICY.initial_delay_s + TEST_POLICY.max_delay_s + 1)


def test_a_lost_check_is_resumed_by_the_request_delivered_again_once_overdue(mode):
    chain = Chain(mode)
    chain.request()
    lost = chain.next_checks()  # dead-lettered, dropped: never delivered
    assert len(lost) == 1
    # Delivered again before the chain is overdue, the request is a duplicate.
    assert chain.request(message_id="r-2") == "ack"
    assert chain.next_checks() == []
    overdue(chain)
    assert chain.request(message_id="r-3") == "ack"
    (resumed,) = [line for line in chain.rig.logs() if line.get("event") == "chain_resumed"]
    assert (resumed["attempt"], resumed["overdue_check"]) == (2, 1)
    chain.drain()
    (result,) = chain.results()
    assert result["outcome"] == "CANCELLED"
    assert len(chain.rig.simulator.cancel_calls()) == 1
    # The lost check, should it turn up after all, is stale.
    assert chain.deliver_check(lost[0]) == ["ack"]
    assert len(chain.results()) == 1


def test_under_the_default_policy_a_chain_is_resumed_only_once_its_check_is_later_than_the_longest_delay(mode):
    chain = Chain(mode, settings=Settings(project="test-project", store="memory"))
    chain.request()
    assert len(chain.next_checks()) == 1  # lost
    due_at = chain.rig.store._load(KEY).due_at
    grace = chain.rig.settings.polling.max_delay_s
    for number, at in enumerate((due_at, due_at + grace / 2, due_at + grace)):
        chain.rig.clock.current = at
        assert chain.request(message_id=f"r-{number + 2}") == "ack"
        assert chain.next_checks() == [], f"resumed {at - due_at:g} s after its due time"
    assert not [line for line in chain.rig.logs() if line.get("event") == "chain_resumed"]
    chain.rig.clock.current = due_at + grace + 0.001
    assert chain.request(message_id="r-late") == "ack"
    (resumed,) = [line for line in chain.rig.logs() if line.get("event") == "chain_resumed"]
    assert (resumed["attempt"], resumed["overdue_check"]) == (2, 1)
    chain.drain()
    assert [r["outcome"] for r in chain.results()] == ["CANCELLED"]


def test_a_task_the_queue_lost_is_resumed_as_a_new_task():
    chain = Chain("tasks")
    chain.rig.cloudtasks.lose_rate = 1.0
    chain.request()
    assert chain.next_checks() == []
    chain.rig.cloudtasks.lose_rate = 0.0
    overdue(chain)
    chain.request(message_id="r-2")
    chain.drain()
    assert [r["outcome"] for r in chain.results()] == ["CANCELLED"]
    names = list(chain.rig.cloudtasks.tasks)
    assert len(names) == len(set(names)) == 3


def test_a_failed_schedule_puts_the_record_back_so_the_redelivery_schedules_again(mode):
    chain = Chain(mode)
    if mode == "tasks":
        chain.rig.cloudtasks.create_failure_rate = 1.0
    else:
        chain.rig.publisher.fail_next = 1
    assert chain.request() == "retry"
    record = chain.rig.store._load(KEY)
    assert (record.state, record.check, record.lease_until) == (State.CANCEL_SENT, None, 0.0)
    if mode == "tasks":
        chain.rig.cloudtasks.create_failure_rate = 0.0
    assert chain.request(message_id="r-2") == "ack"
    chain.drain()
    assert [r["outcome"] for r in chain.results()] == ["CANCELLED"]
    assert len(chain.rig.simulator.cancel_calls()) == 1


def resume_clients(chain: Chain) -> CliClients:
    """The CLI on the chain's own pipeline; its settings name a configured store, as an operator's would."""
    settings = dataclasses.replace(chain.rig.settings, store="firestore", store_configured=True)
    return CliClients(
        settings=settings, auth=None, api=chain.rig.api, clock=chain.rig.clock, pipeline=lambda _: chain.rig.service
    )


def test_resume_lists_overdue_chains_and_resumes_them(mode):
    chain = Chain(mode)
    for index in range(3):
        chain.request(f"organizations/123456789/operations/slow-1-r{index}", message_id=f"r-{index}")
    lost = chain.next_checks()
    assert len(lost) == 3
    (first,) = [check for check in lost if json.loads(check.data)["operation"].endswith("r0")]
    chain.deliver_check(first)  # the first chain ends; the other two lost their checks
    clients = resume_clients(chain)
    runner = CliRunner()
    fresh = runner.invoke(cli, ["resume", "--dry-run"], obj=clients)
    assert (fresh.exit_code, fresh.stdout.strip()) == (0, "0 overdue chain(s)")
    assert fresh.stderr.startswith("store: firestore project test-project database (default)")
    overdue(chain)
    dry = runner.invoke(cli, ["resume", "--dry-run", "--json"], obj=clients)
    assert dry.exit_code == 0, dry.output
    listed = json.loads(dry.stdout)
    assert listed["dry_run"] is True
    assert sorted(row["operation"] for row in listed["overdue"]) == [
        "organizations/123456789/operations/slow-1-r1",
        "organizations/123456789/operations/slow-1-r2",
    ]
    assert chain.next_checks() == []
    done = runner.invoke(cli, ["resume"], obj=clients)
    assert done.exit_code == 0, done.output
    assert done.output.count("resumed: overdue chain resumed: check 2") == 2
    assert done.stdout.strip().endswith("2 overdue chain(s), 2 resumed")
    chain.drain()
    assert sorted(r["operation"][-2:] for r in chain.results()) == ["r0", "r1", "r2"]
    again = runner.invoke(cli, ["resume"], obj=clients)
    assert again.stdout.strip() == "0 overdue chain(s), 0 resumed"


def test_resume_exits_unavailable_when_a_chain_cannot_be_rescheduled():
    chain = Chain("redelivery")
    chain.request()
    chain.next_checks()
    overdue(chain)
    chain.rig.publisher.fail_next = 1
    clients = resume_clients(chain)
    result = CliRunner().invoke(cli, ["resume"], obj=clients)
    assert result.exit_code == Exit.UNAVAILABLE
    assert "not resumed" in result.output
    # Nothing was lost: the chain is still overdue, and the next run resumes it.
    assert CliRunner().invoke(cli, ["resume"], obj=clients).exit_code == 0
    chain.drain()
    assert [r["outcome"] for r in chain.results()] == ["CANCELLED"]


def test_resume_is_an_operator_command_of_the_function(tmp_path):
    import subprocess

    run = subprocess.run(
        [sys.executable, "-m", "function", "resume", "--help"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert "--dry-run" in run.stdout


def test_resume_skips_a_chain_that_moved_on_since_it_was_listed():
    chain = Chain("redelivery")
    chain.request()
    chain.next_checks()
    overdue(chain)
    listed = chain.rig.service.overdue_chains()
    assert len(listed) == 1
    # Another runner resumes it first.
    (first,) = chain.rig.service.resume(listed).items
    (second,) = chain.rig.service.resume(listed).items
    assert (first.status.value, second.status.value) == ("accepted", "skipped")
    assert len(chain.next_checks()) == 1


def test_on_resume_serves_cloud_scheduler_through_functions_framework():
    client, rig = load_wired("on_resume", "http")
    rig.send(NAME)
    rig.publisher.take_checks()  # lost
    assert client.get("/").status_code == 405
    fresh = client.post("/")
    assert (fresh.status_code, fresh.get_json()) == (200, {"dry_run": False, "overdue": []})
    due_at = rig.store._load(KEY).due_at
    for at in (due_at + rig.settings.polling.max_delay_s / 2, due_at + rig.settings.polling.max_delay_s):
        rig.clock.current = at
        assert client.post("/?dry_run=true").get_json()["overdue"] == []
    rig.clock.current = due_at + rig.settings.polling.max_delay_s + 0.001
    listed = client.post("/?dry_run=true")
    assert listed.status_code == 200
    assert listed.get_json()["overdue"] == [{"operation": NAME, "idempotency_key": KEY, "attempt": 1}]
    assert rig.publisher.take_checks() == []
    rig.publisher.fail_next = 1
    failed = client.post("/")
    assert failed.status_code == 503 and failed.get_json()["overdue"][0]["status"] == "retry"
    done = client.post("/")
    assert done.status_code == 200 and done.get_json()["overdue"][0]["status"] == "accepted"
    (check,) = rig.publisher.take_checks()
    assert json.loads(check.data)["attempt"] == 2
