"""One contract, run against every store backend."""

from __future__ import annotations

import dataclasses
import glob
import json
import multiprocessing
import os
import sqlite3
import threading

import pytest

from function import IdempotencyStore, MemoryStore, SqliteStore, State
from function._store import ClaimStatus, Record, TransitionRefused
from function._store import sqlite as sqlite_backend
from function._store.firestore import FirestoreStore
from function._store.guard import BUDGET_KEY, HeldRequest, Pause, _digest
from function.errors import KeyBusy, StaleFence, StoreUnavailable
from tests.support import DelegatingStore, open_store

LEASE = 60.0
TTL = 3600.0
NOW = 1_000_000.0


@pytest.fixture(params=["memory", "sqlite", pytest.param("firestore", marks=pytest.mark.emulator)])
def store(request, tmp_path):
    if request.param == "memory":
        spec = {"kind": "memory"}
    elif request.param == "sqlite":
        spec = {"kind": "sqlite", "path": str(tmp_path / "store.sqlite3")}
    else:
        spec = request.getfixturevalue("firestore_spec")
    return open_store(spec, lease_s=LEASE, ttl_s=TTL)


def test_first_claim_acquires_a_fresh_record(store):
    claim = store.claim_request("k", "h", now=NOW)
    assert claim.status is ClaimStatus.ACQUIRED
    assert not claim.resumed
    assert claim.record.state is State.CLAIMED
    assert claim.record.fence == 1
    assert claim.record.lease_until == NOW + LEASE
    assert claim.record.expire_at == NOW + TTL


def test_a_live_lease_makes_the_key_busy(store):
    store.claim_request("k", "h", now=NOW)
    with pytest.raises(KeyBusy) as busy:
        store.claim_request("k", "h", now=NOW + 1)
    assert busy.value.retry_after == pytest.approx(LEASE - 1)


def test_concurrent_claims_have_exactly_one_winner(store):
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def contend():
        barrier.wait()
        try:
            outcomes.append(store.claim_request("race", "h", now=NOW).status.value)
        except KeyBusy:
            outcomes.append("busy")

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["acquired"] + ["busy"] * 7


def test_an_expired_lease_is_taken_over_with_a_higher_fence(store):
    first = store.claim_request("k", "h", now=NOW).record
    claim = store.claim_request("k", "h", now=NOW + LEASE + 1)
    assert claim.status is ClaimStatus.ACQUIRED
    assert claim.resumed
    assert claim.record.fence == first.fence + 1


def test_the_old_holder_is_fenced_off_after_a_takeover(store):
    zombie = store.claim_request("k", "h", now=NOW).record
    newer = store.claim_request("k", "h", now=NOW + LEASE + 1).record
    with pytest.raises(StaleFence):
        store.cancel_sent(zombie, now=NOW + LEASE + 2, deadline_at=NOW + 99)
    with pytest.raises(StaleFence):
        store.released(zombie, now=NOW + LEASE + 2)
    assert store.cancel_sent(newer, now=NOW + LEASE + 2, deadline_at=NOW + 99).state is State.CANCEL_SENT


def test_transitions_keep_state_and_bump_the_version(store):
    record = store.claim_request("k", "h", now=NOW).record
    updated = store.cancel_sent(record, now=NOW + 5, deadline_at=NOW + 99)
    assert updated.version == record.version + 1
    assert updated.expire_at == NOW + 5 + TTL
    assert updated.cancel_accepted_at == NOW + 5
    released = store.released(updated, now=NOW + 6)
    claim = store.claim_request("k", "h", now=NOW + 7)
    assert claim.status is ClaimStatus.ACQUIRED
    assert claim.record.state is State.CANCEL_SENT
    assert claim.record.deadline_at == NOW + 99
    assert claim.record.fence == released.fence + 1


def test_a_finished_key_stays_finished_with_its_result(store):
    record = store.claim_request("k", "h", now=NOW).record
    record = store.result_ready(record, now=NOW, result={"outcome": "CANCELLED"}, checks=0)
    store.finished(record, now=NOW)
    claim = store.claim_request("k", "h", now=NOW + 1)
    assert claim.status is ClaimStatus.FINISHED
    assert claim.record.result == {"outcome": "CANCELLED"}


def test_the_same_key_for_another_payload_is_a_mismatch(store):
    store.claim_request("k", "h1", now=NOW)
    assert store.claim_request("k", "h2", now=NOW + 1).status is ClaimStatus.MISMATCH


def test_an_expired_record_counts_as_absent_even_before_ttl_deletion(store):
    finish(store, store.claim_request("k", "h1", now=NOW).record, {"outcome": "CANCELLED"})
    claim = store.claim_request("k", "h2", now=NOW + TTL + 1)
    assert claim.status is ClaimStatus.ACQUIRED
    assert claim.record.fence == 1
    assert claim.record.payload_hash == "h2"


def test_a_rate_limit_pause_defers_the_next_claim(store):
    record = store.claim_request("k", "h", now=NOW).record
    store.released(record, now=NOW, not_before=NOW + 30)
    with pytest.raises(KeyBusy) as busy:
        store.claim_request("k", "h", now=NOW + 10)
    assert busy.value.retry_after == pytest.approx(20)
    assert store.claim_request("k", "h", now=NOW + 31).status is ClaimStatus.ACQUIRED


def test_sqlite_refuses_to_write_a_non_finite_number_that_would_break_every_later_read(tmp_path):
    # Nothing should get this far (retry hints are bounded, JSON numbers read finite); if anything did,
    # SQLite's JSON functions would fail on the whole table, so the write is refused instead.
    store = SqliteStore(str(tmp_path / "store.sqlite3"), lease_s=LEASE, ttl_s=TTL)
    record = store.claim_request("k", "h", now=NOW).record
    with pytest.raises(StoreUnavailable, match="ValueError"):
        store.released(record, now=NOW, not_before=float("inf"))
    assert list(store.chains(NOW)) == []


def test_a_duplicate_request_while_checks_run_adds_nothing(store):
    waiting_for(store, check(1))
    assert store.claim_request("k", "h", now=NOW + 1).status is ClaimStatus.CHAIN_RUNNING


def check(attempt: int, **changes) -> dict:
    """A check body as the service records and publishes it."""
    return {
        "operation": "organizations/1/operations/x",
        "attempt": attempt,
        "due_at": "2001-01-01T00:00:00.000Z",
        **changes,
    }


def waiting_for(store, body: dict, attempt: int | None = None, key: str = "k"):
    record = store.claim_request(key, "h", now=NOW).record
    record = store.cancel_sent(record, now=NOW, deadline_at=NOW + 99)
    return store.check_scheduled(
        record, now=NOW, attempt=attempt or body["attempt"], check=body, due_at=NOW + 5, checks=1
    )


def finish(store, record, result: dict):
    """A held record's result stored and published: the key is finished."""
    record = store.result_ready(record, now=NOW, result=result, checks=record.checks)
    return store.finished(record, now=NOW)


def test_only_the_check_the_record_waits_for_is_acquired(store):
    waiting_for(store, check(3))
    assert store.claim_check("k", "h", check(2), now=NOW + 1).status is ClaimStatus.STALE_CHECK
    # A later attempt, or the same attempt saying anything else, is not the chain's check either.
    assert store.claim_check("k", "h", check(4), now=NOW + 1).status is ClaimStatus.STALE_CHECK
    assert store.claim_check("k", "h", check(3, api_version="v1"), now=NOW + 1).status is ClaimStatus.STALE_CHECK
    claim = store.claim_check("k", "h", check(3), now=NOW + 1)
    assert claim.status is ClaimStatus.ACQUIRED
    assert claim.record.attempt == 3
    assert claim.record.fence == 2
    assert not claim.resumed


def test_a_check_for_an_unknown_key_or_before_any_cancel_is_not_run(store):
    assert store.claim_check("nobody", "h", check(1), now=NOW).status is ClaimStatus.UNKNOWN_KEY
    record = store.claim_request("k", "h", now=NOW).record
    store.released(record, now=NOW)
    assert store.claim_check("k", "h", check(1), now=NOW + 1).status is ClaimStatus.STALE_CHECK


def test_the_check_whose_result_is_stored_may_publish_it_again(store):
    record = waiting_for(store, check(1))
    record = store.claim_check("k", "h", check(1), now=NOW + 1).record
    record = store.result_ready(record, now=NOW + 1, result={"outcome": "CANCELLED"}, checks=2)
    store.released(record, now=NOW + 1)
    claim = store.claim_check("k", "h", check(1), now=NOW + 2)
    assert claim.status is ClaimStatus.ACQUIRED and claim.record.state is State.RESULT_READY


def test_running_chains_are_listed_and_nothing_else(store):
    waiting_for(store, check(2))
    finish(store, store.claim_request("done", "h", now=NOW).record, {"outcome": "CANCELLED"})
    store.claim_request("held", "h", now=NOW)
    (chain,) = store.chains(NOW + 1)
    assert (chain.key, chain.attempt, chain.check) == ("k", 2, check(2))
    # An expired record is no chain, whatever TTL deletion has not caught up with yet.
    assert list(store.chains(NOW + TTL + 1)) == []


def test_running_chains_are_listed_past_one_page(store):
    for index in range(305):
        waiting_for(store, check(1), key=f"k{index}")
    assert len({chain.key for chain in store.chains(NOW + 1)}) == 305


def test_each_claim_carries_its_own_token(store):
    first = store.claim_request("k", "h", now=NOW).record
    taken = store.claim_request("k", "h", now=NOW + LEASE + 1).record
    assert first.claim_token and taken.claim_token and first.claim_token != taken.claim_token
    # Updates keep the claim's token: it names the claim, not the write.
    assert store.cancel_sent(taken, now=NOW + LEASE + 1, deadline_at=NOW + 99).claim_token == taken.claim_token


def test_backend_failures_surface_as_store_unavailable():
    class BrokenStore(MemoryStore):
        def _load(self, key):
            raise ConnectionError("store is down")

        def _create(self, record):
            raise ConnectionError("store is down")

    with pytest.raises(StoreUnavailable, match="ConnectionError") as caught:
        BrokenStore(lease_s=LEASE, ttl_s=TTL).claim_request("k", "h", now=NOW)
    # Named by type alone: a backend's exception text can quote what the call carried (a refused header).
    assert "store is down" not in str(caught.value)


def test_sqlite_records_survive_a_restart(tmp_path):
    path = str(tmp_path / "nested" / "store.sqlite3")
    record = SqliteStore(path, lease_s=LEASE, ttl_s=TTL).claim_request("k", "h", now=NOW).record
    finish(SqliteStore(path, lease_s=LEASE, ttl_s=TTL), record, {"outcome": "FAILED"})
    claim = SqliteStore(path, lease_s=LEASE, ttl_s=TTL).claim_request("k", "h", now=NOW + 1)
    assert claim.status is ClaimStatus.FINISHED
    assert claim.record.result == {"outcome": "FAILED"}


def _claim_in_process(path: str, results) -> None:
    store = SqliteStore(path, lease_s=LEASE, ttl_s=TTL)
    try:
        results.put(store.claim_request("shared", "h", now=NOW).status.value)
    except KeyBusy:
        results.put("busy")


def in_processes(start_method: str, count: int, target, argument) -> list[str]:
    """Run ``target(argument, results)`` in ``count`` processes at once; what they put, sorted."""
    context = multiprocessing.get_context(start_method)
    results = context.Queue()
    workers = [context.Process(target=target, args=(argument, results)) for _ in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    return sorted(results.get(timeout=5) for _ in workers)


def test_sqlite_claims_across_processes_have_one_winner(tmp_path):
    path = str(tmp_path / "store.sqlite3")
    SqliteStore(path, lease_s=LEASE, ttl_s=TTL)
    assert in_processes("spawn", 4, _claim_in_process, path) == ["acquired"] + ["busy"] * 3


def open_files_under(directory) -> list[str]:
    """The files below ``directory`` this process holds open."""
    links = (os.readlink(fd) for fd in glob.glob("/proc/self/fd/*") if os.path.islink(fd))
    return sorted(link for link in links if link.startswith(str(directory)))


def test_a_sqlite_path_that_cannot_hold_a_database_fails_at_once(tmp_path):
    (tmp_path / "store.sqlite3").mkdir()
    with pytest.raises(sqlite3.OperationalError):
        SqliteStore(str(tmp_path / "store.sqlite3"), lease_s=LEASE, ttl_s=TTL)


def _claim_in_forked_child(store: SqliteStore, results) -> None:
    try:
        results.put(store.claim_request("forked", "h", now=NOW).status.value)
    except Exception as problem:
        results.put(f"{type(problem).__name__}: {problem}")


def test_a_sqlite_store_made_before_a_fork_opens_its_own_connection_in_each_child(tmp_path):
    # As gunicorn does: main.py (and the store) is built in the master, then workers fork.
    path = tmp_path / "store.sqlite3"
    store = SqliteStore(str(path), lease_s=LEASE, ttl_s=TTL)
    assert open_files_under(tmp_path) == [], "building the store must leave no connection to carry across fork"
    # Here the parent uses it too, so the children inherit an open connection they must leave alone.
    assert store.claim_request("parent", "h", now=NOW).status is ClaimStatus.ACQUIRED
    assert in_processes("fork", 3, _claim_in_forked_child, store) == [
        "KeyBusy: another worker holds the key",
        "KeyBusy: another worker holds the key",
        "acquired",
    ]
    with pytest.raises(KeyBusy):
        store.claim_request("forked", "h", now=NOW)


class LostResponses(DelegatingStore):
    """Any backend whose writes land but whose next ``lose`` answers are lost, as over a flaky network."""

    def __init__(self, backend: IdempotencyStore) -> None:
        super().__init__(backend)
        self.lose = 0

    def _answer(self, written: bool) -> bool:
        if self.lose:
            self.lose -= 1
            raise TimeoutError("response lost")
        return written

    def _create(self, record):
        return self._answer(self._backend._create(record))

    def _replace(self, record, expected_version):
        return self._answer(self._backend._replace(record, expected_version))


def test_a_lost_create_response_is_recovered_by_checking_what_landed(store):
    store = LostResponses(store)
    store.lose = 1
    claim = store.claim_request("k", "h", now=NOW)
    assert claim.status is ClaimStatus.ACQUIRED and claim.record.fence == 1
    with pytest.raises(KeyBusy):
        store.claim_request("k", "h", now=NOW + 1)


def test_a_lost_update_response_is_recovered_and_a_stale_writer_still_fenced(store):
    store = LostResponses(store)
    record = store.claim_request("k", "h", now=NOW).record
    store.lose = 1
    updated = store.cancel_sent(record, now=NOW, deadline_at=NOW + 99)
    assert updated.state is State.CANCEL_SENT
    # The old version is gone for good: writing from it again is refused, never applied twice.
    with pytest.raises(StaleFence):
        store.cancel_sent(record, now=NOW, deadline_at=NOW + 99)


def test_a_store_that_keeps_failing_is_unavailable_after_bounded_attempts(store):
    store = LostResponses(store)
    store.lose = 3
    with pytest.raises(StoreUnavailable, match="TimeoutError"):
        store.claim_request("k", "h", now=NOW)
    # All three attempts were the same create; the first landed, so the key is held.
    with pytest.raises(KeyBusy):
        store.claim_request("k", "h", now=NOW + 1)


class Counted(DelegatingStore):
    """Any backend, counting the primitives a claim costs (on Firestore each is one request)."""

    def __init__(self, backend: IdempotencyStore) -> None:
        super().__init__(backend)
        self.calls: list[str] = []

    def _load(self, key):
        self.calls.append("load")
        return self._backend._load(key)

    def _create(self, record):
        self.calls.append("create")
        return self._backend._create(record)

    def _replace(self, record, expected_version):
        self.calls.append("replace")
        return self._backend._replace(record, expected_version)

    def _delete_if_version(self, key, expected_version):
        self.calls.append("delete")
        return self._backend._delete_if_version(key, expected_version)


def test_a_new_key_is_claimed_by_one_create_and_no_read(store):
    store = Counted(store)
    assert store.claim_request("k", "h", now=NOW).status is ClaimStatus.ACQUIRED
    assert store.calls == ["create"]


def test_a_known_key_costs_the_refused_create_and_one_read(store):
    store = Counted(store)
    finish(store, store.claim_request("k", "h", now=NOW).record, {"outcome": "CANCELLED"})
    store.calls.clear()
    assert store.claim_request("k", "h", now=NOW + 1).status is ClaimStatus.FINISHED
    assert store.calls == ["create", "load"]


def test_an_expired_record_is_deleted_and_the_key_claimed_afresh(store):
    store = Counted(store)
    store.claim_request("k", "h", now=NOW)
    store.calls.clear()
    claim = store.claim_request("k", "other", now=NOW + TTL + 1)
    assert claim.status is ClaimStatus.ACQUIRED and claim.record.payload_hash == "other"
    assert store.calls == ["create", "load", "delete", "create"]


# Each transition starts only from the states the pipeline reaches it from; written out here, not read
# from the code, so a widened or narrowed rule fails.
STARTS_FROM = {
    "cancel_sent": {State.CLAIMED},
    "check_scheduled": {State.CANCEL_SENT, State.CHECKING},
    "scheduling_failed": {State.CHECKING},
    "deadline_set": {State.CHECKING},
    "result_ready": {State.CLAIMED, State.CANCEL_SENT, State.CHECKING},
    "finished": {State.RESULT_READY},
    "released": {State.CLAIMED, State.CANCEL_SENT, State.CHECKING, State.RESULT_READY},
}


def held_in(store, state: State, key: str) -> Record:
    """A record of ``key`` in ``state``, written through the store's own transitions, as its holder has it."""
    record = store.claim_request(key, "h", now=NOW).record
    if state in (State.RESULT_READY, State.FINISHED):
        record = store.result_ready(record, now=NOW, result={"outcome": "CANCELLED"}, checks=0)
        return store.finished(record, now=NOW) if state is State.FINISHED else record
    if state is State.CLAIMED:
        return record
    record = store.cancel_sent(record, now=NOW, deadline_at=NOW + 99)
    if state is State.CANCEL_SENT:
        return record
    return store.check_scheduled(record, now=NOW, attempt=1, check=check(1), due_at=NOW + 5, checks=1)


def transition(store, name: str, held: Record) -> Record:
    later = NOW + 1
    return {
        "cancel_sent": lambda: store.cancel_sent(held, now=later, deadline_at=NOW + 99),
        "check_scheduled": lambda: store.check_scheduled(
            held, now=later, attempt=2, check=check(2), due_at=NOW + 9, checks=2
        ),
        "scheduling_failed": lambda: store.scheduling_failed(
            held, now=later, back_to=dataclasses.replace(held, state=State.CANCEL_SENT), not_before=0.0
        ),
        "deadline_set": lambda: store.deadline_set(held, now=later, deadline_at=NOW + 99),
        "result_ready": lambda: store.result_ready(held, now=later, result={"outcome": "FAILED"}, checks=1),
        "finished": lambda: store.finished(held, now=later),
        "released": lambda: store.released(held, now=later),
    }[name]()


@pytest.mark.parametrize("name", STARTS_FROM)
def test_each_transition_is_written_only_from_the_states_it_starts_from(store, name):
    for state in State:
        key = f"{name}-{state.value}"
        held = held_in(store, state, key)
        if state in STARTS_FROM[name]:
            assert transition(store, name, held).version == held.version + 1
            continue
        with pytest.raises(TransitionRefused, match=f"{name} cannot start from {state.value}"):
            transition(store, name, held)
        # Refused before any write: the stored record is still the one its holder has.
        assert store._load(key) == held


def test_a_record_refuses_a_transition_from_a_state_it_does_not_start_from():
    """The same rules on the record alone, and the two a store applies without a name of their own."""
    fresh = Record.claimed("k", "h", now=NOW, lease_s=LEASE, ttl_s=TTL)
    for state in State:
        record = dataclasses.replace(fresh, state=state)
        if state is State.FINISHED:
            with pytest.raises(TransitionRefused):
                record.taken_over(now=NOW, lease_s=LEASE)
        else:
            assert record.taken_over(now=NOW, lease_s=LEASE).fence == fresh.fence + 1
    scheduled = dataclasses.replace(fresh, state=State.CHECKING)
    for state in State:
        back_to = dataclasses.replace(fresh, state=state)
        if state in (State.CANCEL_SENT, State.CHECKING):
            assert scheduled.scheduling_failed(back_to=back_to, not_before=0.0).state is state
        else:
            with pytest.raises(TransitionRefused):
                scheduled.scheduling_failed(back_to=back_to, not_before=0.0)


def test_scheduling_failed_puts_back_the_check_the_chain_waited_for(store):
    before = held_in(store, State.CHECKING, "k")
    scheduled = store.check_scheduled(before, now=NOW + 1, attempt=2, check=check(2), due_at=NOW + 9, checks=2)
    restored = store.scheduling_failed(scheduled, now=NOW + 2, back_to=before, not_before=NOW + 30)
    assert (restored.state, restored.attempt, restored.check, restored.due_at) == (
        State.CHECKING,
        1,
        check(1),
        NOW + 5,
    )
    assert (restored.checks, restored.lease_until, restored.not_before) == (2, 0.0, NOW + 30)


def _open_new_store(path: str, barrier) -> None:
    barrier.wait()
    SqliteStore(path, lease_s=60.0, ttl_s=3600.0)


def test_processes_opening_a_new_sqlite_file_together_all_start(tmp_path):
    # Gunicorn's workers open the file at once on a first start; the switch to WAL must not fail one.
    context = multiprocessing.get_context("spawn")
    failed = 0
    for round_ in range(12):
        barrier = context.Barrier(6)
        path = str(tmp_path / f"round-{round_}.sqlite3")
        processes = [context.Process(target=_open_new_store, args=(path, barrier)) for _ in range(6)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(30)
        failed += sum(process.exitcode != 0 for process in processes)
    assert failed == 0


# Expired records are deleted, not only treated as absent: keys never sent again must not stay for ever.


def test_a_claim_sweeps_away_every_record_that_expired(store):
    finish(store, store.claim_request("old", "h", now=NOW).record, {"outcome": "CANCELLED"})
    store.claim_request("recent", "h", now=NOW + TTL / 2)
    store.claim_request("new", "h", now=NOW + TTL)
    gone = store._load("old") is None
    # Firestore's own TTL policy on expire_at deletes them there (docs/deploy.md); the emulator has none.
    assert gone is not isinstance(store, FirestoreStore)
    assert store._load("recent") is not None and store._load("new") is not None


def test_the_sweep_runs_on_a_process_s_first_claim_and_then_once_an_interval(tmp_path):
    path = str(tmp_path / "store.sqlite3")
    store = SqliteStore(path, lease_s=LEASE, ttl_s=TTL)
    store.claim_request("a", "h", now=NOW)
    store._create(expired_record("stale", at=NOW - 1))
    store.claim_request("b", "h", now=NOW + 1)
    assert store._load("stale") is not None, "swept again within the interval"
    # Another process (a CLI run, a new worker) sweeps on its first claim.
    SqliteStore(path, lease_s=LEASE, ttl_s=TTL).claim_request("c", "h", now=NOW + 2)
    assert store._load("stale") is None
    store._create(expired_record("stale", at=NOW + 3))
    store.claim_request("d", "h", now=NOW + 3599)
    assert store._load("stale") is not None
    store.claim_request("e", "h", now=NOW + 3600)
    assert store._load("stale") is None


def test_the_memory_store_sweeps_too():
    store = MemoryStore(lease_s=LEASE, ttl_s=TTL)
    store._create(expired_record("stale", at=NOW - 1))
    store.claim_request("k", "h", now=NOW)
    assert store._load("stale") is None and store._load("k") is not None


def test_the_sqlite_sweep_finds_expired_records_by_an_index(tmp_path):
    path = str(tmp_path / "store.sqlite3")
    SqliteStore(path, lease_s=LEASE, ttl_s=TTL)
    connection = sqlite3.connect(path)
    try:
        plan = connection.execute(f"EXPLAIN QUERY PLAN {sqlite_backend._DELETE_EXPIRED}", (NOW - TTL, NOW)).fetchall()
    finally:
        connection.close()
    assert any("USING INDEX records_by_creation" in step[3] for step in plan), plan


def test_a_record_created_long_ago_but_written_since_is_not_swept(store):
    long_chain = store.claim_request("chain", "h", now=NOW - TTL - 10).record
    store.cancel_sent(long_chain, now=NOW - 5, deadline_at=NOW + 99)
    store._create(expired_record("stale", at=NOW - 1))
    store.claim_request("k", "h", now=NOW)
    assert store._load("chain") is not None
    assert store._load("stale") is None or isinstance(store, FirestoreStore)


def test_a_sweep_deletes_past_one_batch(tmp_path):
    store = SqliteStore(str(tmp_path / "store.sqlite3"), lease_s=LEASE, ttl_s=TTL)
    expired = 2 * sqlite_backend._SWEEP_BATCH + 1
    for index in range(expired):
        store._create(expired_record(f"stale-{index}", at=NOW - 1))
    assert store._delete_expired(NOW) == expired
    assert store._load("stale-0") is None and store._load(f"stale-{expired - 1}") is None


def test_a_sqlite_database_from_before_the_sweep_is_swept(tmp_path):
    path = str(tmp_path / "store.sqlite3")
    stale = expired_record("stale", at=NOW - 1)
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("CREATE TABLE records (key TEXT PRIMARY KEY, version INTEGER NOT NULL, body TEXT NOT NULL)")
        connection.execute(
            "INSERT INTO records VALUES (?, ?, ?)", (stale.key, stale.version, json.dumps(stale.to_json()))
        )
    connection.close()
    store = SqliteStore(path, lease_s=LEASE, ttl_s=TTL)
    assert store._load("stale") == stale
    store.claim_request("k", "h", now=NOW)
    assert store._load("stale") is None


def expired_record(key: str, *, at: float) -> Record:
    """A finished record whose expiry is ``at``, as a key last written a TTL before then leaves it."""
    record = Record.claimed(key, "h", now=at - TTL, lease_s=LEASE, ttl_s=TTL)
    return dataclasses.replace(record, state=State.FINISHED, lease_until=0.0, result={"outcome": "CANCELLED"})


# The guard's state: the budget and its breaker, the pause, held requests. The same contract on every backend.


def count_one(store, key, **when):
    """One request's count, as ``count_cancels`` answers it alone (None: a race lost)."""
    answers = store.count_cancels([key], **when)
    return None if answers is None else answers[0]


def test_the_budget_counts_each_request_once_until_it_is_spent_then_trips_and_stays_tripped(store):
    counts = [count_one(store, f"k{i}", now=NOW + i, limit=3, window_s=100) for i in range(3)]
    assert [(c.allowed, c.used) for c in counts] == [(True, 1), (True, 2), (True, 3)]
    # A redelivery of a counted request is allowed without counting again.
    again = count_one(store, "k1", now=NOW + 5, limit=3, window_s=100)
    assert (again.allowed, again.used) == (True, 3)
    tripping = count_one(store, "k3", now=NOW + 6, limit=3, window_s=100)
    assert (tripping.allowed, tripping.tripped_now, tripping.tripped.by, tripping.tripped.used) == (
        False,
        True,
        "k3",
        3,
    )
    # Tripped until reset, even long after the window: and now nothing at all is allowed, a counted key neither.
    for key in ("k4", "k1"):
        later = count_one(store, key, now=NOW + 10_000, limit=3, window_s=100)
        assert (later.allowed, later.tripped_now, later.tripped.at) == (False, False, NOW + 6)
    assert store.budget().tripped.by == "k3"


def test_keys_counted_together_take_their_places_in_order_in_one_write(store):
    count_one(store, "k0", now=NOW, limit=4, window_s=100)
    version = store._load_document(BUDGET_KEY).version
    answers = store.count_cancels(["k1", "k0", "k2", "k1", "k3", "k4", "k5"], now=NOW + 1, limit=4, window_s=100)
    assert [(a.allowed, a.used, a.tripped_now) for a in answers] == [
        (True, 2, False),
        (True, 2, False),  # counted before
        (True, 3, False),
        (True, 3, False),  # counted earlier in the same count
        (True, 4, False),
        (False, 4, True),  # the first beyond the budget trips the breaker
        (False, 4, False),
    ]
    assert answers[6].tripped.by == "k4"
    assert store._load_document(BUDGET_KEY).version == version + 1
    assert store.budget() == answers[0].budget


def test_a_budget_document_of_the_version_before_the_ledger_is_read_and_rewritten_as_a_ledger(store):
    # Before the ledger, the counted cancels were a list of [sent at, digest of the key], under "counted".
    count_one(store, "k0", now=NOW, limit=3, window_s=100)
    # Outside the window; inside it but before the last reset (no longer counted); counted.
    entries = [[NOW - 200, "0" * 32], [NOW - 60, _digest("before-reset")], [NOW - 1, _digest("old")]]
    listed = {"counted": entries, "since": NOW - 50, "tripped": None}
    document = store._load_document(BUDGET_KEY)
    assert store._replace_document(
        dataclasses.replace(document, body=listed, version=document.version + 1), document.version
    )
    assert len(store.budget().live(NOW, 100)) == 1
    again = count_one(store, "old", now=NOW, limit=3, window_s=100)
    assert (again.allowed, again.used) == (True, 1)  # counted before, under the old format: not again
    fresh = count_one(store, "new", now=NOW, limit=3, window_s=100)
    assert (fresh.allowed, fresh.used) == (True, 2)
    assert "ledger" in store._load_document(BUDGET_KEY).body


def test_a_count_that_changes_nothing_writes_nothing(store):
    count_one(store, "k0", now=NOW, limit=1, window_s=100)
    count_one(store, "k1", now=NOW, limit=1, window_s=100)
    version = store._load_document(BUDGET_KEY).version
    answers = store.count_cancels(["k0", "k2"], now=NOW + 1, limit=1, window_s=100)
    assert [(a.allowed, a.tripped_now) for a in answers] == [(True, False), (False, False)]
    assert store._load_document(BUDGET_KEY).version == version


def test_the_window_slides(store):
    for i in range(3):
        count_one(store, f"k{i}", now=NOW + i, limit=3, window_s=100)
    # At NOW + 100 the first cancel (at NOW) has left the window.
    assert count_one(store, "k3", now=NOW + 100, limit=3, window_s=100).allowed
    assert not count_one(store, "k4", now=NOW + 100.5, limit=3, window_s=100).allowed


def test_a_reset_closes_the_breaker_and_starts_a_fresh_window(store):
    for i in range(3):
        count_one(store, f"k{i}", now=NOW, limit=2, window_s=100)
    before = store.reset_budget(now=NOW + 1)
    assert before.tripped is not None and len(before.counted) == 2
    assert store.budget().tripped is None
    assert [count_one(store, f"n{i}", now=NOW + 2, limit=2, window_s=100).allowed for i in range(3)] == [
        True,
        True,
        False,
    ]


def test_concurrent_requests_never_count_past_the_budget_and_one_trips_it(store):
    answers = []
    barrier = threading.Barrier(12)

    def request(i):
        barrier.wait()
        # A race lost is None: the guard waits and tries again.
        while (answer := count_one(store, f"k{i}", now=NOW, limit=5, window_s=100)) is None:
            pass
        answers.append(answer)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(a.allowed for a in answers) == 5
    assert sum(a.tripped_now for a in answers) == 1


def test_a_pause_is_stored_and_ended_each_write_returning_what_it_replaced(store):
    assert store.pause() is None
    assert store.set_pause(Pause("ana", "incident 42", NOW), now=NOW) is None
    assert store.pause() == Pause("ana", "incident 42", NOW)
    assert store.set_pause(None, now=NOW + 1) == Pause("ana", "incident 42", NOW)
    assert store.pause() is None


def held(key="explicit/k", **changes) -> HeldRequest:
    fields = {
        "key": key,
        "operation": "organizations/1/operations/x",
        "because": "breaker",
        "held_at": NOW,
        "holds": 1,
        "result": {"outcome": "HELD"},
        "replay": {"data": "organizations/1/operations/x", "attributes": {}},
    }
    return HeldRequest(**{**fields, **changes})


def test_a_request_is_held_once_and_reported_once(store):
    kept = store.hold(held(), now=NOW)
    assert (kept.reported, kept.holds, kept.expire_at) == (False, 1, NOW + TTL)
    reported = store.held_reported(kept, now=NOW + 1)
    again = store.hold(held(held_at=NOW + 2), now=NOW + 2)
    assert again == reported and again.reported and again.held_at == NOW
    # Holding never touches the request's own key.
    assert store._load("explicit/k") is None


def test_a_released_request_held_again_is_kept_anew_to_be_reported_again(store):
    kept = store.held_reported(store.hold(held(), now=NOW), now=NOW)
    released = store.release(kept, by="ana", now=NOW + 1)
    assert (released.released, released.released_by, released.released_at) == (True, "ana", NOW + 1)
    assert store.held_request("explicit/k", now=NOW + 1).released
    again = store.hold(held(because="paused", held_at=NOW + 2), now=NOW + 2)
    assert (again.released, again.reported, again.holds, again.because) == (False, False, 2, "paused")


def test_held_requests_are_listed_oldest_first_until_they_expire_or_are_dropped(store):
    first = store.hold(held("explicit/a"), now=NOW)
    store.hold(held("explicit/b", held_at=NOW + 1), now=NOW + 1)
    assert [h.key for h in store.held_requests(now=NOW + 2)] == ["explicit/a", "explicit/b"]
    assert store.forget_held(first)
    assert [h.key for h in store.held_requests(now=NOW + 2)] == ["explicit/b"]
    assert store.held_requests(now=NOW + 1 + TTL) == []
    assert store.held_request("explicit/b", now=NOW + 1 + TTL) is None


def test_a_held_request_changed_since_it_was_read_is_neither_dropped_nor_released(store):
    kept = store.hold(held(), now=NOW)
    store.held_reported(kept, now=NOW)
    assert not store.forget_held(kept)
    with pytest.raises(StaleFence):
        store.release(kept, by="ana", now=NOW)


def test_guard_documents_are_not_records_and_records_are_not_guard_documents(store):
    store.hold(held(), now=NOW)
    count_one(store, "k", now=NOW, limit=1, window_s=10)
    waiting_for(store, check(1))
    assert [record.key for record in store.chains(NOW)] == ["k"]
    assert [h.key for h in store.held_requests(now=NOW)] == ["explicit/k"]


def test_guard_state_that_cannot_be_read_is_store_unavailable():
    class Broken(MemoryStore):
        def _load_document(self, key):
            raise OSError("disk on fire")

    with pytest.raises(StoreUnavailable, match="guard state: OSError"):
        Broken(lease_s=LEASE, ttl_s=TTL).pause()


def test_expired_held_requests_are_swept_with_the_records(tmp_path):
    store = open_store({"kind": "sqlite", "path": str(tmp_path / "s.sqlite3")}, lease_s=LEASE, ttl_s=TTL)
    store.hold(held(), now=NOW)
    count_one(store, "k", now=NOW, limit=1, window_s=10)
    store.claim_request("new", "h", now=NOW + TTL + 1)
    assert store._load_document("held/explicit/k") is None
    # The breaker and the budget never expire.
    assert store._load_document("guard/budget") is not None


def test_a_request_counted_before_the_breaker_tripped_may_still_send_its_cancel(store):
    count_one(store, "k0", now=NOW, limit=1, window_s=100)
    assert count_one(store, "k1", now=NOW + 1, limit=1, window_s=100).tripped_now
    # A redelivery of the counted request (its cancel may be out already) goes; it does not count again.
    again = count_one(store, "k0", now=NOW + 2, limit=1, window_s=100)
    assert (again.allowed, again.used, again.tripped is not None) == (True, 1, True)
