"""The guard: the port the pipeline asks, once, just before a cancel, whether to send it.

Its answer is "go", "dry run" or "hold (why)". A dry run (the request's ``dry_run``, or shadow mode) is never
held: it only looks. Otherwise the pause holds every request (``guard pause``, or ``OPCANCEL_PAUSED=true``
pinned at deploy); then, with a cancel budget, a request an operator released goes (it is neither counted
nor stopped by the breaker), an open breaker holds, and any other request is counted in the budget's window
or, the budget spent, trips the breaker and is held. Its state lives in the store (``_store.guard``), so it
holds across instances; each instance reads the pause and the breaker at most every ``STATE_CACHE_S`` (the
SPEC's "within 10 seconds"), while counting always reads and writes the budget document itself. Where the
state cannot be read, the guard raises (the request is retried): nothing is ever cancelled unguarded.

The operator's side (``status``, ``pause``, ``unpause``, ``reset``, ``held``, ``release``, ``drop``) is here
too, so the command line only parses arguments and prints.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._backoff import Backoff, TryAgain, retry_context
from ._clock import Clock, format_time
from ._gcp.pubsub import Publisher
from ._log import Logger
from ._model import CancelRequest, Result, Source
from ._names import escape_text
from ._parsing import plain_body, replay_body
from ._settings import CancelBudget, Settings
from ._store import IdempotencyStore
from ._store.guard import Budget, Counted, HeldRequest, Pause, Trip
from .errors import GuardContended

#: How long an instance trusts the pause and the breaker it read: the SPEC has every instance see a pause
#: within 10 seconds.
STATE_CACHE_S = 10.0
#: Who paused, when the pause is ``OPCANCEL_PAUSED=true``.
PINNED = "OPCANCEL_PAUSED"
#: Waiting out races for the budget document: bounded well inside a request's time, then retried later.
BUDGET_RACES = Backoff(first_s=0.01, max_s=0.5, attempts=64, budget_s=20.0)


class Verdict(enum.Enum):
    GO = "go"
    DRY_RUN = "dry_run"
    HOLD = "hold"


class HeldBecause(enum.Enum):
    BREAKER = "breaker"
    PAUSED = "paused"


@dataclass(frozen=True)
class Decision:
    """The guard's answer, with what the audit entry and a HELD result say about it."""

    verdict: Verdict
    because: HeldBecause | None = None
    #: Why it was held, as the HELD result's ``error`` says it.
    error: str | None = None
    #: Cancels counted in the window, this one included, and the budget's N (None without a budget).
    budget_used: int | None = None
    budget_limit: int | None = None
    #: This request's held record (with a budget, where there is one): released by an operator, or held
    #: earlier and now let through (a reset, an unpause); forgotten once the cancel is recorded.
    held: HeldRequest | None = None

    @property
    def released_by(self) -> str | None:
        return self.held.released_by if self.held is not None and self.held.released else None

    @property
    def trigger(self) -> Source | None:
        """What triggered a released request: the one that was held (an alert, an HTTP caller), not the
        operator's replay of it, which only carried it back; None for any other request."""
        if self.released_by is None or self.held is None:
            return None
        return Source.from_json(self.held.result["source"])


@dataclass(frozen=True)
class GuardStatus:
    """What ``guard status`` prints."""

    mode: str
    budget: CancelBudget | None
    used: int
    tripped: Trip | None
    pause: Pause | None
    pinned: bool
    held: int

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "budget": str(self.budget) if self.budget is not None else None,
            "budget_used": self.used if self.budget is not None else None,
            "breaker": _trip_json(self.tripped),
            "paused": self.pause is not None or self.pinned,
            "pause": _pause_json(self.pause),
            "pinned": self.pinned,
            "held": self.held,
        }


@dataclass(frozen=True)
class _View:
    """The pause and the breaker as this instance last read them."""

    pause: Pause | None
    #: The budget as read (empty without one): once tripped it changes only by a reset, so it can be trusted.
    budget: Budget
    read_at: float


class _Tally:
    """An instance's simultaneous requests count their cancels together (a group commit): one request counts
    every key waiting, in one read and one write of the budget document, while the others wait for its
    answer. An instance then never races itself for the document (each race lost is a wait), and a storm
    writes the hot document once per round trip per instance, not once per request."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting: list[_Entry] = []
        self._counting = False

    def count(self, key: str, count_all: Callable[[list[str]], list[Counted]]) -> Counted:
        entry = _Entry(key)
        with self._changed:
            self._waiting.append(entry)
            while self._counting and not entry.done:
                self._changed.wait()
            if entry.done:
                return entry.answer()
            self._counting = True
            batch, self._waiting = self._waiting, []
        outcomes: list[Counted | BaseException]
        try:
            outcomes = list(count_all([waiting.key for waiting in batch]))
            if len(outcomes) != len(batch):
                raise AssertionError(f"{len(outcomes)} answers to a count of {len(batch)}")
        except BaseException as problem:
            outcomes = [problem] * len(batch)
        # Whatever happened, the next count may start: a count left running would stop every request.
        with self._changed:
            for waiting, outcome in zip(batch, outcomes, strict=True):
                waiting.done, waiting.outcome = True, outcome
            self._counting = False
            self._changed.notify_all()
        return entry.answer()


@dataclass
class _Entry:
    """One request's place in a count: its answer, or the failure every request of the count shares."""

    key: str
    done: bool = False
    outcome: Counted | BaseException | None = None

    def answer(self) -> Counted:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        assert self.outcome is not None
        return self.outcome


class Guard:
    def __init__(
        self,
        *,
        store: IdempotencyStore,
        clock: Clock,
        log: Logger,
        mode: str = "enforce",
        budget: CancelBudget | None = None,
        pinned: bool = False,
    ) -> None:
        self._store = store
        self._clock = clock
        self._log = log
        self._mode = mode
        self._budget = budget
        self._pinned = pinned
        self._view: _View | None = None
        self._tally = _Tally()

    @classmethod
    def from_settings(cls, settings: Settings, *, store: IdempotencyStore, clock: Clock, log: Logger) -> Guard:
        return cls(
            store=store, clock=clock, log=log, mode=settings.mode, budget=settings.cancel_budget, pinned=settings.paused
        )

    @property
    def mode(self) -> str:
        return self._mode

    # The pipeline's side

    def decide(self, request: CancelRequest) -> Decision:
        """Whether to send ``request``'s first cancel. Raises ``TransientError`` where the state cannot be read."""
        if request.dry_run:
            return Decision(Verdict.DRY_RUN)
        now = self._clock.now()
        view = self._current_view(now)
        pause = self._pinned_pause() or view.pause
        if pause is not None:
            return Decision(Verdict.HOLD, HeldBecause.PAUSED, _paused_error(pause))
        if self._budget is None:
            return Decision(Verdict.GO)
        limit = self._budget.count
        held = self._store.held_request(request.idempotency_key, now=now)
        if held is not None and held.released:
            return Decision(Verdict.GO, budget_limit=limit, held=held)
        window_s = self._budget.window_s
        # A request counted before the breaker tripped (redelivered, taken over) goes: its cancel may be out.
        if view.budget.tripped is not None and not view.budget.counts(request.idempotency_key, now, window_s):
            return self._tripped(view.budget.tripped)
        counted = self._count(request.idempotency_key, limit=limit, window_s=window_s)
        if counted.allowed:
            return Decision(Verdict.GO, budget_used=counted.used, budget_limit=limit, held=held)
        assert counted.tripped is not None
        if view.budget.tripped is None:
            # The breaker's budget no longer changes until a reset: this instance holds from it, reading nothing.
            self._view = dataclasses.replace(view, budget=counted.budget)
        if counted.tripped_now:
            self._log.error(
                f"cancel budget {self._budget} spent: breaker tripped; every request is held until "
                "`python -m function guard reset`",
                event="breaker_tripped",
                budget=str(self._budget),
                budget_used=counted.used,
                budget_limit=limit,
                operation=request.ref.name,
                idempotency_key=request.idempotency_key,
                source=request.source.to_json(),
            )
        return self._tripped(counted.tripped)

    def _count(self, key: str, *, limit: int, window_s: float) -> Counted:
        return self._tally.count(key, lambda keys: self._count_all(keys, limit=limit, window_s=window_s))

    def _count_all(self, keys: list[str], *, limit: int, window_s: float) -> list[Counted]:
        """Count the cancels in the budget document, waiting out races with other instances with jittered
        backoff: under a storm of simultaneous requests, losers that tried again at once would each spend a
        write a round for nothing."""
        try:
            for attempt in retry_context(BUDGET_RACES, self._clock):
                with attempt:
                    counted = self._store.count_cancels(keys, now=self._clock.now(), limit=limit, window_s=window_s)
                    if counted is None:
                        raise TryAgain("lost a race for the budget document")
                    return counted
        except TryAgain as given_up:
            raise GuardContended(f"lost {given_up.attempts} races for the budget document") from None
        raise AssertionError("retry_context ends in a return or a raise")

    def hold(self, request: CancelRequest, result: Result, because: HeldBecause) -> HeldRequest:
        """Keep the held request (unless it is kept already); ``reported`` on the answer says whether its HELD
        result is out yet."""
        now = self._clock.now()
        replay = replay_body(request)
        held = HeldRequest(
            key=request.idempotency_key,
            operation=request.ref.name,
            because=because.value,
            held_at=now,
            holds=1,
            result=result.to_json(),
            replay={"data": replay[0].decode("utf-8"), "attributes": replay[1]} if replay is not None else None,
            request={"data": json.dumps(plain_body(request))} if replay is None else None,
        )
        return self._store.hold(held, now=now)

    def reported(self, held: HeldRequest) -> HeldRequest:
        return self._store.held_reported(held, now=self._clock.now())

    def answered(self, held: HeldRequest) -> None:
        """The held request is answered (its cancel recorded, or refused): its held record has done its work."""
        self._store.forget_held(held)

    def _current_view(self, now: float) -> _View:
        view = self._view
        if view is not None and 0 <= now - view.read_at < STATE_CACHE_S:
            return view
        pause = self._store.pause()
        budget = self._store.budget() if self._budget is not None else Budget()
        if pause is not None and (view is None or view.pause is None):
            self._log.warning(
                f"paused by {pause.by}: nothing is cancelled until `python -m function guard unpause`",
                event="guard_paused",
                **_pause_json(pause),
            )
        self._view = _View(pause, budget, now)
        return self._view

    def _pinned_pause(self) -> Pause | None:
        return Pause(PINNED, "set to true at deploy", 0.0) if self._pinned else None

    def _tripped(self, trip: Trip) -> Decision:
        assert self._budget is not None
        error = (
            f"held: the cancel budget {self._budget} is spent; the breaker tripped at {format_time(trip.at)} and holds "
            "every request until an operator runs `python -m function guard reset`"
        )
        return Decision(
            Verdict.HOLD, HeldBecause.BREAKER, error, budget_used=trip.used, budget_limit=self._budget.count
        )

    # The operator's side

    def status(self) -> GuardStatus:
        """Read afresh, not from the cache."""
        now = self._clock.now()
        budget = self._store.budget()
        used = len(budget.live(now, self._budget.window_s)) if self._budget is not None else 0
        return GuardStatus(
            mode=self._mode,
            budget=self._budget,
            used=used,
            tripped=budget.tripped,
            pause=self._store.pause(),
            pinned=self._pinned,
            held=len(self._store.held_requests(now=now)),
        )

    def pause(self, *, by: str, reason: str | None) -> Pause | None:
        """Pause every instance (within ``STATE_CACHE_S``); returns the pause it replaced, if any."""
        now = self._clock.now()
        pause = Pause(escape_text(by), escape_text(reason) if reason else None, now)
        return self._store.set_pause(pause, now=now)

    def unpause(self) -> Pause | None:
        """End the stored pause (a pinned one stays); returns the pause it ended, if any."""
        return self._store.set_pause(None, now=self._clock.now())

    def reset(self) -> Budget:
        """Close the breaker and start a fresh window; returns the budget as it was."""
        return self._store.reset_budget(now=self._clock.now())

    def held(self) -> list[HeldRequest]:
        return self._store.held_requests(now=self._clock.now())

    def release(self, held: HeldRequest, *, by: str, publisher: Publisher, topic: str) -> HeldRequest:
        """Mark ``held`` released in the store, then publish it again to the requests topic: released first, so
        the request finds itself released when it comes. A request no message can carry is refused here:
        ``Pipeline.release`` runs it in-process instead."""
        if held.replay is None:
            raise ValueError(f"{held.key} cannot be published again: no message carries its key")
        released = self.mark_released(held, by=by)
        replay = held.replay
        publisher.publish_all(topic, [(replay["data"].encode("utf-8"), dict(replay["attributes"]))])
        return released

    def mark_released(self, held: HeldRequest, *, by: str) -> HeldRequest:
        """Only mark ``held`` released (``StaleFence`` if it changed since it was read): whoever runs it next
        passes the breaker uncounted. Only the operator's side calls this; nothing in a message can."""
        return self._store.release(held, by=escape_text(by), now=self._clock.now())

    def drop(self, held: HeldRequest) -> bool:
        """Forget ``held`` without cancelling; False if it changed since it was read."""
        return self._store.forget_held(held)


def _paused_error(pause: Pause) -> str:
    if pause.by == PINNED:
        return "held: opcancel is paused by OPCANCEL_PAUSED=true, set at deploy"
    why = f": {pause.reason}" if pause.reason else ""
    return f"held: opcancel is paused by {pause.by} since {format_time(pause.since)}{why}"


def _pause_json(pause: Pause | None) -> dict[str, Any] | None:
    if pause is None:
        return None
    return {"paused_by": pause.by, "pause_reason": pause.reason, "paused_since": format_time(pause.since)}


def _trip_json(trip: Trip | None) -> dict[str, Any] | None:
    if trip is None:
        return None
    return {"tripped_at": format_time(trip.at), "tripped_by": trip.by, "budget_used": trip.used}


def describe_held(held: HeldRequest) -> dict[str, Any]:
    """A held request as ``held --json`` prints it: ``key`` as stored (what ``held release`` takes), and
    ``idempotency_key`` as its HELD result reported it (which ``held release`` takes too, where unambiguous)."""
    return {
        "key": held.key,
        "idempotency_key": held.result.get("idempotency_key"),
        "operation": held.operation,
        "held_because": held.because,
        "held_at": format_time(held.held_at),
        "holds": held.holds,
        "error": held.result.get("error"),
        "released": held.released,
        "released_by": held.released_by,
        "released_at": format_time(held.released_at) if held.released_at is not None else None,
        "expires_at": format_time(held.expire_at),
        "can_release": held.replay is not None or held.request is not None,
        # Published to the requests topic, or (no message can carry its key) run by `held release` itself.
        "release_path": "publish" if held.replay is not None else "in-process" if held.request is not None else None,
    }
