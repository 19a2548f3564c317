"""``guard`` and ``held``: what each command prints and changes, on the store the function writes."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from function import SqliteStore
from function._settings import CancelBudget
from function.cli import CliClients, Exit, cli
from tests.support import Rig


class GuardRig:
    """A function (a rig on an SQLite file) with a budget of one, and the CLI on the same file."""

    def __init__(self, tmp_path, *, project: bool = True) -> None:
        path = str(tmp_path / "state.sqlite3")
        settings = dataclasses.replace(
            Rig().settings,
            store="sqlite",
            store_configured=True,
            sqlite_path=path,
            cancel_budget=CancelBudget(1, 3600.0),
        )
        self.store = SqliteStore(path, lease_s=60, ttl_s=settings.record_ttl_s)
        self.rig = Rig(settings=settings, store=self.store)
        self.clients = CliClients(
            settings=settings,
            auth=None,
            api=self.rig.api,
            clock=self.rig.clock,
            publisher=self.rig.publisher if project else None,
            store=lambda chosen: SqliteStore(chosen.sqlite_path, lease_s=60, ttl_s=settings.record_ttl_s),
            # The function's own pipeline on the same file, as `resume` and `held release` open it.
            pipeline=lambda chosen: self.rig.service,
        )

    def run(self, *args: str):
        return CliRunner().invoke(cli, list(args), obj=self.clients, catch_exceptions=False)

    def trip(self) -> None:
        """One cancel, then two requests held by the breaker."""
        for op_id in ("first", "a", "b"):
            self.rig.send(f"organizations/1/operations/{op_id}")

    def deliver_released(self):
        """What `held release` published to the requests topic, delivered to the function."""
        released = self.rig.publisher.on("opcancel-requests")
        self.rig.publisher.messages = [m for m in self.rig.publisher.messages if m[0] != "opcancel-requests"]
        for data, attributes in released:
            self.rig.send(data, attributes, message_id="m-released")


KEY_A = "securitycenter.googleapis.com/organizations/1/operations/a"
KEY_B = "securitycenter.googleapis.com/organizations/1/operations/b"


@pytest.fixture
def state(tmp_path):
    return GuardRig(tmp_path)


def test_guard_status_prints_the_mode_the_budget_s_use_the_breaker_and_the_pause(state):
    result = state.run("guard", "status")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "mode:    enforce",
        "budget:  0 of 1 cancels used in the last 1h",
        "breaker: closed",
        "pause:   not paused",
        "held:    0 request(s) (`python -m function held`)",
    ]
    assert result.stderr.startswith("store: sqlite ")
    state.trip()
    status = json.loads(state.run("guard", "status", "--json").stdout)
    assert (status["budget"], status["budget_used"], status["held"], status["paused"]) == ("1/1h", 1, 2, False)
    assert status["breaker"]["tripped_by"] == KEY_A


def test_held_lists_and_release_sends_a_held_request_past_the_open_breaker_uncounted(state):
    state.trip()
    listed = state.run("held")
    assert listed.exit_code == 0
    assert listed.stdout.splitlines()[-1] == "2 held request(s)"
    assert [row["key"] for row in json.loads(state.run("held", "--json").stdout)] == [KEY_A, KEY_B]
    released = state.run("held", "release", KEY_A, "--by", "ana")
    assert released.exit_code == 0, released.output
    assert released.stdout == f"released {KEY_A} (organizations/1/operations/a): published to opcancel-requests\n"
    state.deliver_released()
    assert state.rig.publisher.results()[-1]["outcome"] == "CANCELLED"
    assert len(state.rig.simulator.cancel_calls()) == 2
    assert json.loads(state.run("guard", "status", "--json").stdout)["budget_used"] == 1
    assert [row["key"] for row in json.loads(state.run("held", "--json").stdout)] == [KEY_B]


def test_a_release_whose_publish_fails_names_the_pub_sub_host_and_keeps_the_request_held(state):
    state.trip()
    state.rig.publisher.fail_next = 1
    result = state.run("held", "release", KEY_A)
    assert result.exit_code == Exit.PUBLISH_FAILED
    assert "(Pub/Sub at pubsub.googleapis.com; PUBSUB_EMULATOR_HOST names an emulator instead)" in result.stderr
    assert [row["idempotency_key"] for row in json.loads(state.run("held", "--json").stdout)] == [KEY_A, KEY_B]


def test_held_drop_forgets_without_cancelling(state):
    state.trip()
    result = state.run("held", "drop", "--all")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"dropped {KEY_A} (organizations/1/operations/a)",
        f"dropped {KEY_B} (organizations/1/operations/b)",
    ]
    assert state.run("held").stdout == "0 held request(s)\n"
    assert len(state.rig.simulator.cancel_calls()) == 1


def test_release_or_drop_of_a_key_not_held_changes_nothing_and_exits_6(state):
    state.trip()
    for command in ("release", "drop"):
        result = state.run("held", command, KEY_A, "explicit/nope")
        assert result.exit_code == Exit.NOT_FOUND
        assert result.stderr.endswith("Error: not held: explicit/nope\n")
    assert len(json.loads(state.run("held", "--json").stdout)) == 2


@pytest.mark.parametrize("args", [(), (KEY_A, "--all")])
def test_release_needs_keys_or_all_but_not_both(state, args):
    assert state.run("held", "release", *args).exit_code == 2


def test_release_without_a_project_is_bad_configuration(tmp_path):
    state = GuardRig(tmp_path, project=False)
    state.trip()
    result = state.run("held", "release", "--all")
    assert result.exit_code == Exit.BAD_CONFIGURATION and "GOOGLE_CLOUD_PROJECT" in result.stderr


def test_reset_closes_the_breaker_and_says_what_it_closed(state):
    state.trip()
    result = state.run("guard", "reset")
    assert result.exit_code == 0
    assert result.stdout.startswith("breaker closed (tripped at ")
    assert result.stdout.endswith(f"by {KEY_A}); a fresh window starts now (1 earlier cancels no longer count)\n")
    state.rig.clock.advance(10)
    state.rig.send("organizations/1/operations/after-reset")
    assert state.rig.publisher.results()[-1]["outcome"] == "CANCELLED"
    again = state.run("guard", "reset")
    assert again.stdout == "breaker was closed; a fresh window starts now (1 earlier cancels no longer count)\n"


def test_pause_and_unpause_print_what_they_changed(state):
    paused = state.run("guard", "pause", "--reason", "INC-7 \u202e", "--by", "ana")
    assert (paused.exit_code, paused.stdout) == (0, "paused by ana: INC-7 \\u202e\n")
    assert "PAUSED by ana since " in state.run("guard", "status").stdout
    state.rig.send("organizations/1/operations/while-paused")
    assert state.rig.publisher.results()[-1]["outcome"] == "HELD"
    again = state.run("guard", "pause", "--by", "bo")
    assert again.stdout.startswith("paused by bo (was paused by ana since ")
    unpaused = state.run("guard", "unpause")
    assert unpaused.stdout.startswith("unpaused (was paused by bo since ")
    assert state.run("guard", "unpause").stdout == "not paused; nothing changed\n"


def test_a_held_request_is_named_by_its_stored_key_or_the_key_its_result_reported(state):
    state.trip()
    state.rig.send('{"operation": "organizations/1/operations/c", "idempotency_key": "mine"}')
    (row,) = [row for row in json.loads(state.run("held", "--json").stdout) if row["operation"].endswith("/c")]
    assert (row["key"], row["idempotency_key"]) == ("explicit/mine", "mine")
    assert state.run("held", "drop", "mine").stdout == "dropped explicit/mine (organizations/1/operations/c)\n"


def test_the_command_line_never_cancels_or_publishes_a_protected_parent_but_may_look_at_it():
    from tests.cli.test_cli import Rig as CliRig

    settings = dataclasses.replace(CliRig().settings, protected_parents=("organizations/1",))
    cli_rig = CliRig(settings=settings)
    for args in (("cancel", "organizations/1/operations/a"), ("publish", "organizations/1/operations/a")):
        result = cli_rig.run(*args)
        assert result.exit_code == Exit.REJECTED
        assert "is protected: organizations/1 is in OPCANCEL_PROTECTED_PARENTS" in result.output
    assert cli_rig.simulator.cancel_calls() == [] and cli_rig.publisher.messages == []
    assert cli_rig.run("get", "organizations/1/operations/a").exit_code == 0


def incident(incident_id: str, operation: str) -> str:
    return json.dumps(
        {
            "version": "1.2",
            "incident": {
                "incident_id": incident_id,
                "state": "open",
                "policy_name": "storm",
                "documentation": {"content": f"cancel {operation}"},
            },
        }
    )


def test_release_all_cancels_and_reports_each_held_item_of_a_batch_and_of_an_alert_storm_once(state):
    state.rig.send("organizations/1/operations/first")
    batch = [f"organizations/1/operations/item-{i}" for i in range(3)]
    state.rig.send(json.dumps({"operations": batch, "idempotency_key": "K"}), message_id="m-batch")
    # Incident ids no message can carry back into their keys: one escaped in it, one too long, keyed by a digest.
    for i, incident_id in enumerate(("0.storm\\1", "0." + "x" * 300)):
        state.rig.send(incident(incident_id, f"organizations/1/operations/alert-{i}"), message_id=f"m-alert-{i}")
    held = json.loads(state.run("held", "--json").stdout)
    assert [row["release_path"] for row in held] == ["publish"] * 3 + ["in-process"] * 2
    assert all(row["can_release"] for row in held)
    released = state.run("held", "release", "--all", "--by", "ana")
    assert released.exit_code == 0, released.output
    lines = released.stdout.splitlines()
    assert [line.endswith(": published to opcancel-requests") for line in lines] == [True] * 3 + [False] * 2
    assert all(line.endswith(": run here, CANCELLED") for line in lines[3:])
    state.deliver_released()
    state.deliver_released()
    # Each held item cancelled once and reported once as HELD, then once as CANCELLED.
    paths = [call.path for call in state.rig.simulator.cancel_calls()]
    assert len(paths) == len(set(paths)) == 1 + 5
    outcomes: dict[str, list[str]] = {}
    for result in state.rig.publisher.results():
        outcomes.setdefault(result["operation"], []).append(result["outcome"])
    assert outcomes.pop("organizations/1/operations/first") == ["CANCELLED"]
    assert outcomes == {row["operation"]: ["HELD", "CANCELLED"] for row in held}
    status = json.loads(state.run("guard", "status", "--json").stdout)
    assert (status["budget_used"], status["held"], status["breaker"] is not None) == (1, 0, True)
    # The released alert's result names its incident, not the command line.
    (alert,) = [
        r for r in state.rig.publisher.results() if r["operation"].endswith("alert-0") and r["outcome"] == "CANCELLED"
    ]
    assert alert["source"] == {
        "kind": "alert",
        "message_id": "m-alert-0",
        "incident_id": "0.storm\\\\1",
        "policy_name": "storm",
    }


def test_a_request_released_in_process_is_still_held_by_the_pause_and_listed_again(state):
    state.trip()
    state.rig.send(incident("0.storm\\2", "organizations/1/operations/alert"), message_id="m-alert")
    # Named as `held` prints it: the backslash escaped, as every key printed for a terminal is.
    (key,) = [line.split()[0] for line in state.run("held").stdout.splitlines() if "operations/alert " in line]
    assert "0.storm\\\\\\\\2" in key
    state.run("guard", "pause", "--by", "bo")
    state.rig.clock.advance(10)
    released = state.run("held", "release", key, "--by", "ana")
    assert released.exit_code == 0, released.output
    assert released.stdout.endswith(" (organizations/1/operations/alert): run here, HELD\n")
    (row,) = [row for row in json.loads(state.run("held", "--json").stdout) if row["operation"].endswith("alert")]
    assert (row["holds"], row["held_because"], row["released"]) == (2, "paused", False)
    assert len(state.rig.simulator.cancel_calls()) == 1
