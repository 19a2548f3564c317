"""The guard's decisions, and what each costs the store: the pause and the breaker are read at most once per
``STATE_CACHE_S`` per instance, only a cancel writes the budget document, and a tripped breaker is a read."""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time

import pytest

from function import MemoryStore
from function._envelopes import caller_email
from function._guard import STATE_CACHE_S, Guard, HeldBecause, Verdict
from function._log import Logger
from function._model import CancelRequest, Outcome, Result, Source, SourceKind
from function._names import OperationRef
from function._settings import MAX_BUDGET_COUNT, CancelBudget
from function._store.guard import BUDGET_KEY, PAUSE_KEY, Budget, Ledger
from function.errors import GuardContended, StoreUnavailable
from tests.support import FakeClock


class CountingStore(MemoryStore):
    """Counts the guard's document reads and writes, by key."""

    def __init__(self) -> None:
        super().__init__(lease_s=60, ttl_s=3600)
        self.reads: list[str] = []
        self.writes: list[str] = []

    def _load_document(self, key):
        self.reads.append(key)
        return super()._load_document(key)

    def _create_document(self, document):
        self.writes.append(document.key)
        return super()._create_document(document)

    def _replace_document(self, document, expected_version):
        self.writes.append(document.key)
        return super()._replace_document(document, expected_version)


def request(op_id: str, *, dry_run: bool = False) -> CancelRequest:
    name = f"organizations/1/operations/{op_id}"
    return CancelRequest(OperationRef(name), OperationRef(name).identity, Source(SourceKind.PUBSUB), dry_run=dry_run)


def guard(store=None, clock=None, **settings) -> Guard:
    return Guard(store=store or CountingStore(), clock=clock or FakeClock(), log=Logger(), **settings)


def test_a_dry_run_is_never_held_and_reads_nothing():
    store = CountingStore()
    store.set_pause(None, now=0)
    store.reads.clear()
    assert guard(store, pinned=True).decide(request("a", dry_run=True)).verdict is Verdict.DRY_RUN
    assert store.reads == []


def test_without_a_budget_a_request_costs_one_pause_read_per_cache_period():
    store, clock = CountingStore(), FakeClock()
    rails = guard(store, clock)
    for i in range(5):
        assert rails.decide(request(f"a{i}")).verdict is Verdict.GO
    assert (store.reads, store.writes) == ([PAUSE_KEY], [])
    clock.advance(STATE_CACHE_S)
    rails.decide(request("b"))
    assert store.reads == [PAUSE_KEY, PAUSE_KEY]


def test_a_pause_is_seen_once_the_cached_state_is_older_than_the_cache_period():
    store, clock = CountingStore(), FakeClock()
    rails = guard(store, clock)
    rails.decide(request("a"))
    Guard(store=store, clock=clock, log=Logger()).pause(by="ana", reason="why")
    clock.advance(STATE_CACHE_S - 0.5)
    assert rails.decide(request("b")).verdict is Verdict.GO
    clock.advance(0.5)
    held = rails.decide(request("c"))
    assert (held.verdict, held.because) == (Verdict.HOLD, HeldBecause.PAUSED)


def test_with_a_budget_each_cancel_reads_and_writes_the_budget_document_once_and_its_held_record_once():
    store = CountingStore()
    rails = guard(store, budget=CancelBudget(10, 3600))
    rails.decide(request("warm"))
    store.reads.clear(), store.writes.clear()
    decision = rails.decide(request("a"))
    assert (decision.verdict, decision.budget_used, decision.budget_limit) == (Verdict.GO, 2, 10)
    assert store.reads == ["held/" + request("a").idempotency_key, BUDGET_KEY]
    assert store.writes == [BUDGET_KEY]


def test_a_tripped_breaker_is_a_read_of_the_held_record_and_no_write():
    store = CountingStore()
    rails = guard(store, budget=CancelBudget(1, 3600))
    rails.decide(request("a"))
    tripping = rails.decide(request("b"))
    assert (tripping.verdict, tripping.because) == (Verdict.HOLD, HeldBecause.BREAKER)
    store.reads.clear(), store.writes.clear()
    for i in range(5):
        assert rails.decide(request(f"c{i}")).verdict is Verdict.HOLD
    assert store.writes == []
    assert BUDGET_KEY not in store.reads


def test_another_instance_sees_the_breaker_when_it_counts_and_then_from_its_cache():
    store, clock = CountingStore(), FakeClock()
    first, second = guard(store, clock, budget=CancelBudget(1, 3600)), guard(store, clock, budget=CancelBudget(1, 3600))
    second.decide(request("warm-cache"))
    first.decide(request("b"))
    store.reads.clear(), store.writes.clear()
    assert second.decide(request("c")).verdict is Verdict.HOLD
    assert second.decide(request("d")).verdict is Verdict.HOLD
    assert store.writes == [] and store.reads.count(BUDGET_KEY) == 1


def test_a_held_request_released_by_an_operator_goes_uncounted_past_the_breaker_but_not_past_the_pause():
    store, clock = CountingStore(), FakeClock()
    rails = guard(store, clock, budget=CancelBudget(1, 3600))
    rails.decide(request("a"))
    held_request = request("b")
    decision = rails.decide(held_request)
    result = Result(
        "n",
        "global",
        "v2",
        Outcome.HELD,
        held_request.idempotency_key,
        0.0,
        0.0,
        0,
        None,
        decision.error,
        Source(SourceKind.PUBSUB),
    )
    held = rails.hold(held_request, result, decision.because)

    class Nowhere:
        def publish_all(self, topic, messages):
            return ["1"]

    rails.release(held, by="ana", publisher=Nowhere(), topic="t")
    store.writes.clear()
    released = rails.decide(held_request)
    assert (released.verdict, released.released_by, released.budget_used) == (Verdict.GO, "ana", None)
    assert store.writes == []
    rails.pause(by="bo", reason=None)
    clock.advance(STATE_CACHE_S)
    assert rails.decide(held_request).because is HeldBecause.PAUSED


def test_status_reads_afresh_and_reports_the_window_s_use():
    store, clock = CountingStore(), FakeClock()
    rails = guard(store, clock, budget=CancelBudget(3, 60))
    rails.decide(request("a"))
    clock.advance(30)
    rails.decide(request("b"))
    clock.advance(31)
    status = rails.status()
    assert (status.used, status.tripped, status.pause, status.held) == (1, None, None, 0)
    assert status.to_json()["budget"] == "3/1m"
    assert dataclasses.replace(status, pinned=True).to_json()["paused"] is True


def test_an_instance_holding_from_its_cached_breaker_still_lets_a_request_counted_before_it_tripped_go():
    store = CountingStore()
    rails = guard(store, budget=CancelBudget(1, 3600))
    rails.decide(request("a"))
    rails.decide(request("b"))
    store.writes.clear()
    assert rails.decide(request("a")).verdict is Verdict.GO
    assert store.writes == []


# The audit's HTTP caller: the email claim of the token Cloud Run verified, read as a claim.


def bearer(payload: bytes) -> str:
    return "Bearer h." + base64.urlsafe_b64encode(payload).decode().rstrip("=") + ".s"


def test_the_caller_is_the_email_claim_escaped_and_bounded():
    assert (
        caller_email(bearer(b'{"email": "a@b.iam.gserviceaccount.com", "sub": "1"}')) == "a@b.iam.gserviceaccount.com"
    )
    assert caller_email(bearer(b'{"email": "x\\u2028y"}')) == "x\\u2028y"
    assert len(caller_email(bearer(('{"email": "' + "a" * 1000 + '"}').encode()))) == 256


def test_no_caller_where_the_header_holds_no_readable_email_claim():
    for authorization in (
        None,
        "",
        "Basic abc",
        "Bearer only-one-part",
        bearer(b"[1, 2]"),
        bearer(b'{"email": 7}'),
        bearer(b'{"email": ""}'),
        bearer(b"\xff\xfe"),
        bearer(b"[" * 100_000),
        "Bearer " + "a" * 20_000,
    ):
        assert caller_email(authorization) is None


class LosingRaces(CountingStore):
    """Loses the budget document's race ``losses`` times before counting."""

    def __init__(self, losses: int) -> None:
        super().__init__()
        self.losses = losses

    def count_cancels(self, keys, *, now, limit, window_s):
        if self.losses:
            self.losses -= 1
            return None
        return super().count_cancels(keys, now=now, limit=limit, window_s=window_s)


def test_races_lost_for_the_budget_document_are_waited_out_with_jittered_backoff():
    clock = FakeClock()
    rails = guard(LosingRaces(3), clock, budget=CancelBudget(5, 3600))
    assert rails.decide(request("a")).verdict is Verdict.GO
    assert len(clock.slept) == 3 and clock.slept[0] < clock.slept[2]


def test_a_request_that_keeps_losing_the_race_is_retried_later_and_nothing_is_sent():
    rails = guard(LosingRaces(1000), FakeClock(), budget=CancelBudget(5, 3600))
    with pytest.raises(GuardContended):
        rails.decide(request("a"))


class OneAtATime(CountingStore):
    """Records the keys of each count, and how many counts ever ran at once; the first count lasts until
    ``until()`` is true (the other requests are waiting behind it), so they must share the next one."""

    def __init__(self) -> None:
        super().__init__()
        self.until = lambda: True
        self.counts: list[list[str]] = []
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def count_cancels(self, keys, *, now, limit, window_s):
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.counts.append(list(keys))
            first = len(self.counts) == 1
        try:
            deadline = time.monotonic() + 10
            while first and not self.until():
                assert time.monotonic() < deadline, "the other requests never came"
                time.sleep(0.001)
            return super().count_cancels(keys, now=now, limit=limit, window_s=window_s)
        finally:
            with self._lock:
                self.running -= 1


def waiting_to_count(rails: Guard, number: int):
    """True once ``number`` requests wait for the count under way on ``rails``'s instance."""
    return lambda: len(rails._tally._waiting) >= number


def decide_at_once(rails: Guard, names: list[str]) -> dict[str, object]:
    """Each request decided on its own thread, as an instance serves simultaneous requests."""
    answers: dict[str, object] = {}

    def one(name):
        try:
            answers[name] = rails.decide(request(name))
        except Exception as problem:
            answers[name] = problem

    threads = [threading.Thread(target=one, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return answers


def test_an_instance_counts_its_simultaneous_requests_together_and_never_races_itself():
    store = OneAtATime()
    rails = guard(store, FakeClock(), budget=CancelBudget(5, 3600))
    store.until = waiting_to_count(rails, 7)
    answers = decide_at_once(rails, [f"r{i}" for i in range(8)])
    # The first request counted alone; the other seven came while it counted, and shared one count.
    assert [len(keys) for keys in store.counts] == [1, 7]
    assert store.most_at_once == 1
    assert [key for key in store.writes if key == BUDGET_KEY] == [BUDGET_KEY, BUDGET_KEY]
    decisions = list(answers.values())
    assert sum(d.verdict is Verdict.GO for d in decisions) == 5
    assert sum(d.verdict is Verdict.HOLD for d in decisions) == 3
    assert sorted(d.budget_used for d in decisions if d.verdict is Verdict.GO) == [1, 2, 3, 4, 5]
    assert store.budget().tripped is not None


def test_a_failed_count_fails_every_request_that_shared_it_and_the_next_count_starts_afresh():
    class Failing(OneAtATime):
        def count_cancels(self, keys, *, now, limit, window_s):
            if len(keys) > 1:
                raise StoreUnavailable("the store is down")
            return super().count_cancels(keys, now=now, limit=limit, window_s=window_s)

    store = Failing()
    rails = guard(store, FakeClock(), budget=CancelBudget(50, 3600))
    store.until = waiting_to_count(rails, 3)
    answers = decide_at_once(rails, ["a", "b", "c", "d"])
    failed = [name for name, answer in answers.items() if isinstance(answer, StoreUnavailable)]
    assert len(failed) == 3 and len(answers) == 4
    assert rails.decide(request(failed[0])).verdict is Verdict.GO


def test_many_instances_racing_for_the_budget_never_count_past_it():
    store = MemoryStore(lease_s=60, ttl_s=3600)
    clock = FakeClock()
    instances = [guard(store, clock, budget=CancelBudget(30, 3600)) for _ in range(4)]
    answers: list[object] = []
    lock = threading.Lock()

    def serve(rails, names):
        decided = decide_at_once(rails, names)
        with lock:
            answers.extend(decided.values())

    threads = [
        threading.Thread(target=serve, args=(rails, [f"i{n}-r{i}" for i in range(25)]))
        for n, rails in enumerate(instances)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == 100
    assert sum(a.verdict is Verdict.GO for a in answers) == 30
    assert sum(a.verdict is Verdict.HOLD for a in answers) == 70


# The budget's ledger: one string of fixed-width entries, read and rewritten by every count.

DIGEST = "0123456789abcdef0123456789abcdef"


def test_the_ledger_keeps_times_from_decreasing_so_an_entry_is_only_ever_counted_longer():
    ledger = Ledger().add(100.0, "a" * 32).add(99.5, "b" * 32).add(101.0, "c" * 32, not_before=102.0)
    assert len(ledger) == 3
    # b's instance's clock was behind: b takes a's time; c comes after a reset at 102 s and takes that.
    assert [ledger._time_ms(i) for i in range(3)] == [100_000, 100_000, 102_000]
    # The window (100 s, 110 s] holds c only; (99.999 s, 109.999 s] holds all three.
    assert len(ledger.live(210.0, 110.0)) == 1 and ledger.live(210.0, 110.0).has("c" * 32)
    assert len(ledger.live(209.999, 110.0)) == 3
    assert len(ledger.live(1000.0, 10.0)) == 0 and len(ledger.live(0.0, 10.0)) == 3


def test_the_ledger_finds_a_digest_only_where_an_entry_holds_it():
    ledger = Ledger().add(1.0, DIGEST).add(2.0, "f" * 32)
    assert ledger.has(DIGEST) and ledger.has("f" * 32)
    # Straddling two entries (the end of one digest and the next entry's time), or inside one: not an entry.
    straddling = ledger.text[30:62]
    assert len(straddling) == 32 and not ledger.has(straddling)
    assert not ledger.has("1" * 32)


def test_a_full_budget_of_the_largest_n_fits_a_firestore_document_with_room_to_spare():
    ledger = Ledger()
    for i in range(MAX_BUDGET_COUNT):
        ledger = ledger.add(1_790_000_000 + i, f"{i:032x}")
    assert len(ledger) == MAX_BUDGET_COUNT
    encoded = json.dumps(Budget(ledger).to_body())
    # Firestore's limit on a document is 1 MiB (cloud.google.com/firestore/quotas).
    assert len(encoded.encode()) < 512 * 1024


def test_a_count_that_answers_wrongly_fails_its_requests_and_never_stops_the_next_count():
    class Short(CountingStore):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def count_cancels(self, keys, *, now, limit, window_s):
            self.calls += 1
            answers = super().count_cancels(keys, now=now, limit=limit, window_s=window_s)
            return answers[:-1] if self.calls == 1 else answers

    rails = guard(Short(), FakeClock(), budget=CancelBudget(5, 3600))
    with pytest.raises(AssertionError, match="0 answers to a count of 1"):
        rails.decide(request("a"))
    assert rails.decide(request("b")).verdict is Verdict.GO
