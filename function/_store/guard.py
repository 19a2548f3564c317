"""The guard's state in the store: the cancel budget and its breaker, the pause, and held requests.

Written once, here, over four primitives each backend adds beside its records' (load, create if absent,
replace or delete if the version matches, list by kind), so every backend keeps the guard's state the
same way and the store's contract tests cover it. Guard documents share the records' table or collection
under keys of their own namespaces (``guard/`` and ``held/``), whose first segment no idempotency key
has (a derived key starts with an API host, which has a dot; the others are ``explicit/``, ``incident/``,
``incident-digest/``, ``rejected/`` and ``dry-run/``).

The budget document is the one hot document: only a request about to send its first cancel writes it
(one conditional write, shared by an instance's simultaneous requests, which also trips the breaker when
the budget is spent; a write lost to a race is tried again after a jittered wait, by the guard); a tripped
breaker is only read. Deciding what the state means (go, dry run, hold) is ``function._guard``'s.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import GuardContended, StaleFence
from .failures import GUARD_STATE, store_call

BUDGET_KEY = "guard/budget"
PAUSE_KEY = "guard/pause"
HELD_KEYS = "held/"
HELD_KIND = "held"
GUARD_KIND = "guard"
#: 9999-12-31T23:59:59Z, Firestore's last timestamp: the breaker and the pause never expire by themselves.
NEVER = 253402300799.0
#: A store call on the guard's documents: its failures say "guard state".
_call = functools.partial(store_call, subject=GUARD_STATE)


@dataclass(frozen=True)
class Document:
    """A guard document: JSON under a key of the guard's namespaces, versioned and expiring like a record."""

    key: str
    #: Stored where a record keeps its state, so one query finds every document of a kind (held requests).
    kind: str
    body: dict[str, Any]
    version: int = 1
    expire_at: float = NEVER
    created_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "state": self.kind,
            "version": self.version,
            "expire_at": self.expire_at,
            "created_at": self.created_at,
            "body": self.body,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Document:
        return cls(
            data["key"], data["state"], data["body"], data["version"], data["expire_at"], data.get("created_at", 0.0)
        )


@dataclass(frozen=True)
class Trip:
    """The breaker tripped: when, by which request (its key), and how many cancels the window held."""

    at: float
    by: str
    used: int


@dataclass(frozen=True)
class Ledger:
    """The cancels counted since the last reset, oldest first, as one string of fixed-width entries: each a
    send time (milliseconds, 13 digits) and a digest of its request's key (32 hex digits).

    Every count reads and rewrites the hot budget document whole, so the entries are kept as the cheapest
    thing to decode, encode, search, cut and append: one string, never parsed entry by entry. Times never
    decrease along it (an entry takes the time of the one before it if its instance's clock is behind), so
    the window's start is found by bisection, and an entry is only ever counted for longer than it was.
    """

    text: str = ""

    _TIME = 13
    _WIDTH = _TIME + 32

    def __len__(self) -> int:
        return len(self.text) // self._WIDTH

    def live(self, now: float, window_s: float) -> Ledger:
        """The entries inside the sliding window ending ``now``: sent after ``now - window_s``."""
        start_ms = math.floor((now - window_s) * 1000)
        low, high = 0, len(self)
        while low < high:
            middle = (low + high) // 2
            if self._time_ms(middle) > start_ms:
                high = middle
            else:
                low = middle + 1
        return Ledger(self.text[low * self._WIDTH :])

    def has(self, digest: str) -> bool:
        at = self.text.find(digest)
        while at != -1:
            if at % self._WIDTH == self._TIME:
                return True
            at = self.text.find(digest, at + 1)
        return False

    def add(self, now: float, digest: str, *, not_before: float = 0.0) -> Ledger:
        """With one more entry, sent at ``now`` (or, where that is earlier, at the last entry's time or
        ``not_before``)."""
        sent_ms = max(math.floor(now * 1000), math.ceil(not_before * 1000), self._time_ms(len(self) - 1) if self else 0)
        return Ledger(self.text + self._entry(sent_ms, digest))

    def _time_ms(self, index: int) -> int:
        at = index * self._WIDTH
        return int(self.text[at : at + self._TIME])

    @classmethod
    def _entry(cls, sent_ms: int, digest: str) -> str:
        return f"{sent_ms:0{cls._TIME}d}{digest}"

    @classmethod
    def of_entries(cls, entries: Any, *, since: float) -> Ledger:
        """A ledger from a list of ``[sent at (seconds), digest]``, as versions before the ledger kept it
        (where an entry from before the last reset, ``since``, no longer counted). Built in one pass: a
        tripped budget is only ever read, so a document of that version may be read many times."""
        kept = sorted((float(at), str(digest)) for at, digest in entries if float(at) >= since)
        return cls("".join(cls._entry(math.floor(at * 1000), digest) for at, digest in kept))


@dataclass(frozen=True)
class Budget:
    """The cancels counted since the last reset (``Ledger``), and the breaker."""

    counted: Ledger = Ledger()
    #: The last ``guard reset``: cancels before it no longer count.
    since: float = 0.0
    tripped: Trip | None = None

    def live(self, now: float, window_s: float) -> Ledger:
        """The cancels inside the sliding window ending ``now``."""
        return self.counted.live(now, window_s)

    def counts(self, key: str, now: float, window_s: float) -> bool:
        """Whether the request with ``key`` was counted in the window: its cancel may go (again), tripped or not."""
        return self.live(now, window_s).has(_digest(key))

    def to_body(self) -> dict[str, Any]:
        tripped = dataclasses.asdict(self.tripped) if self.tripped is not None else None
        return {"ledger": self.counted.text, "since": self.since, "tripped": tripped}

    @classmethod
    def from_document(cls, document: Document | None) -> Budget:
        if document is None:
            return cls()
        body = document.body
        tripped = body.get("tripped")
        # A document written before the ledger keeps its entries as a list, under "counted".
        since = float(body.get("since", 0.0))
        if "ledger" in body:
            ledger = Ledger(str(body["ledger"]))
        else:
            ledger = Ledger.of_entries(body.get("counted", ()), since=since)
        return cls(ledger, since, Trip(**tripped) if tripped else None)


@dataclass(frozen=True)
class Counted:
    """What counting a cancel found: whether it may be sent (``counted`` or counted before) and the budget's use."""

    allowed: bool
    used: int
    #: The breaker, when it is open; ``tripped_now`` when this very request tripped it.
    tripped: Trip | None = None
    tripped_now: bool = False
    #: The budget as this count left it.
    budget: Budget = Budget()


@dataclass(frozen=True)
class Pause:
    by: str
    reason: str | None
    since: float


@dataclass(frozen=True)
class HeldRequest:
    """A request the guard held: its HELD result (published once), how to send it again (``replay`` or
    ``request``), and whether an operator released it (the only thing that lets it past the breaker)."""

    key: str
    operation: str
    because: str
    held_at: float
    holds: int
    result: dict[str, Any]
    #: The message that parses back to the request and its key: ``{"data": text, "attributes": {...}}``.
    replay: dict[str, Any] | None
    #: Where no message can carry the key: the request as a message without a key (``plain_body``), which
    #: ``held release`` parses and runs in-process under ``key`` (``Pipeline.release``).
    request: dict[str, Any] | None = None
    reported: bool = False
    released: bool = False
    released_by: str | None = None
    released_at: float | None = None
    version: int = 1
    expire_at: float = NEVER

    def to_body(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        for name in ("version", "expire_at"):
            del body[name]
        return body

    @classmethod
    def from_document(cls, document: Document) -> HeldRequest:
        return cls(**document.body, version=document.version, expire_at=document.expire_at)


class GuardRecords:
    """The guard's state over a backend's document primitives; mixed into ``IdempotencyStore``."""

    #: Attempts at an operator's or a held request's write lost to a concurrent one, before giving up as
    #: contended (and retried); the budget's races are waited out by the guard instead (``count_cancels``).
    _GUARD_ROUNDS = 64

    ttl_s: float

    # The budget and its breaker

    def budget(self) -> Budget:
        return Budget.from_document(_call(self._load_document, BUDGET_KEY))

    def count_cancels(self, keys: Sequence[str], *, now: float, limit: int, window_s: float) -> list[Counted] | None:
        """Count the first cancels of the requests with ``keys``, in order, while the budget allows one more
        in the window ending ``now``; the first beyond it trips the breaker, and those after it find it
        tripped. A key counted in the window already (or earlier in ``keys``) is allowed again without
        counting, so a redelivery or a takeover of the same request never counts twice. One read and at most
        one conditional write for all of them, so an instance's simultaneous requests share one write: None
        when another write came between (the caller waits a little and tries again, ``function._guard``),
        so no two requests ever take the same place in the budget."""
        document = _call(self._load_document, BUDGET_KEY)
        budget = Budget.from_document(document)
        live = budget.live(now, window_s)
        tripped = budget.tripped
        changed = False
        answers: list[Counted] = []
        for key in keys:
            digest = _digest(key)
            if live.has(digest):
                # Counted before (a redelivery, a takeover; tripped or not): its cancel may have gone already.
                answers.append(Counted(True, len(live), tripped))
            elif tripped is not None:
                answers.append(Counted(False, len(live), tripped))
            elif len(live) >= limit:
                tripped, changed = Trip(now, key, len(live)), True
                answers.append(Counted(False, len(live), tripped, tripped_now=True))
            else:
                live, changed = live.add(now, digest, not_before=budget.since), True
                answers.append(Counted(True, len(live)))
        if not changed:
            return [dataclasses.replace(answer, budget=budget) for answer in answers]
        counted = Budget(live, budget.since, tripped)
        if not self._put(document, BUDGET_KEY, GUARD_KIND, counted.to_body(), now=now, expire_at=NEVER):
            return None
        return [dataclasses.replace(answer, budget=counted) for answer in answers]

    def reset_budget(self, *, now: float) -> Budget:
        """Close the breaker and start a fresh window; returns the budget as it was."""
        before, _ = self._rewrite(
            BUDGET_KEY, GUARD_KIND, lambda _: Budget(since=now).to_body(), now=now, what="the budget document"
        )
        return Budget.from_document(before)

    # The pause

    def pause(self) -> Pause | None:
        document = _call(self._load_document, PAUSE_KEY)
        return _pause_of(document)

    def set_pause(self, pause: Pause | None, *, now: float) -> Pause | None:
        """Pause (or, with None, unpause); returns the pause as it was."""
        body = {"pause": dataclasses.asdict(pause) if pause is not None else None}
        before, _ = self._rewrite(PAUSE_KEY, GUARD_KIND, lambda _: body, now=now, what="the pause document")
        return _pause_of(before)

    # Held requests

    def hold(self, held: HeldRequest, *, now: float) -> HeldRequest:
        """Keep ``held`` unless the request is held already; a released one is held again (``holds`` + 1), to
        be reported again. Returns what the store now keeps: its ``reported`` says whether to publish."""

        def held_again(document: Document | None) -> dict[str, Any] | None:
            if document is None or document.expire_at <= now:
                return held.to_body()
            kept = HeldRequest.from_document(document)
            return dataclasses.replace(held, holds=kept.holds + 1).to_body() if kept.released else None

        before, written = self._rewrite(
            HELD_KEYS + held.key, HELD_KIND, held_again, now=now, what="a held request", ttl=True
        )
        kept = written or before
        assert kept is not None
        return HeldRequest.from_document(kept)

    def held_reported(self, held: HeldRequest, *, now: float) -> HeldRequest:
        """The HELD result is out: a later delivery of the request does not publish it again."""
        return self._change_held(held, dataclasses.replace(held, reported=True), now=now)

    def release(self, held: HeldRequest, *, by: str, now: float) -> HeldRequest:
        """Let the request past the breaker the next time it comes (the pause still stops it)."""
        return self._change_held(
            held, dataclasses.replace(held, released=True, released_by=by, released_at=now), now=now
        )

    def held_request(self, key: str, *, now: float) -> HeldRequest | None:
        document = _call(self._load_document, HELD_KEYS + key)
        if document is None or document.expire_at <= now:
            return None
        return HeldRequest.from_document(document)

    def held_requests(self, *, now: float) -> list[HeldRequest]:
        """Every held request that has not expired, oldest first."""
        documents = _call(lambda: list(self._documents_of_kind(HELD_KIND)))
        held = [HeldRequest.from_document(d) for d in documents if d.expire_at > now]
        return sorted(held, key=lambda request: (request.held_at, request.key))

    def forget_held(self, held: HeldRequest) -> bool:
        """Delete ``held`` if unchanged since it was read; False if it changed (or is gone)."""
        return bool(_call(self._delete_document, HELD_KEYS + held.key, held.version))

    def _change_held(self, held: HeldRequest, changed: HeldRequest, *, now: float) -> HeldRequest:
        current = Document(HELD_KEYS + held.key, HELD_KIND, held.to_body(), held.version, held.expire_at)
        written = self._put(current, current.key, HELD_KIND, changed.to_body(), now=now, expire_at=now + self.ttl_s)
        if written is None:
            raise StaleFence("the held request changed since it was read")
        return HeldRequest.from_document(written)

    # The rules

    def _rewrite(
        self,
        key: str,
        kind: str,
        change: Callable[[Document | None], dict[str, Any] | None],
        *,
        now: float,
        what: str,
        ttl: bool = False,
    ) -> tuple[Document | None, Document | None]:
        """Write ``change(document)`` as the next version of the document at ``key``, read afresh each round
        until no other write comes between (``change`` None: write nothing). Returns the document as it was
        and as written. Guard documents never expire; held requests expire a TTL after their last write."""
        for _ in range(self._GUARD_ROUNDS):
            document = _call(self._load_document, key)
            body = change(document)
            if body is None:
                return document, None
            expire_at = now + self.ttl_s if ttl else NEVER
            written = self._put(document, key, kind, body, now=now, expire_at=expire_at)
            if written is not None:
                return document, written
        raise GuardContended(f"lost {self._GUARD_ROUNDS} races for {what}")

    def _put(
        self, current: Document | None, key: str, kind: str, body: dict[str, Any], *, now: float, expire_at: float
    ) -> Document | None:
        """``body`` as the next version of ``current`` (created if None); None if another write came between."""
        if current is None:
            fresh = Document(key, kind, body, 1, expire_at, created_at=now)
            return fresh if _call(self._create_document, fresh) else None
        changed = Document(key, kind, body, current.version + 1, expire_at, current.created_at)
        return changed if _call(self._replace_document, changed, current.version) else None

    # The backend's primitives: every backend of the project has them (the store's contract tests hold each
    # to them); a stand-in without them has no guard state, which reads as unavailable (nothing is cancelled).

    def _load_document(self, key: str) -> Document | None:
        raise NotImplementedError

    def _create_document(self, document: Document) -> bool:
        """Write ``document`` only if its key is absent; True if written."""
        raise NotImplementedError

    def _replace_document(self, document: Document, expected_version: int) -> bool:
        """Overwrite only if the stored version is ``expected_version``; True if written."""
        raise NotImplementedError

    def _delete_document(self, key: str, expected_version: int) -> bool:
        """Delete only if the stored version is ``expected_version``; True if deleted."""
        raise NotImplementedError

    def _documents_of_kind(self, kind: str) -> Iterator[Document]:
        """Every stored document of ``kind`` (expired ones included)."""
        raise NotImplementedError


def _digest(key: str) -> str:
    """What the budget document keeps of a request's key: enough to tell requests apart, bounded in size."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _pause_of(document: Document | None) -> Pause | None:
    pause = document.body.get("pause") if document is not None else None
    return Pause(**pause) if pause else None
