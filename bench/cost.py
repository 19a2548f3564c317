"""Cost per cancellation, counted: Operations API calls, Pub/Sub publishes and idempotency store reads
and writes for each kind of request, through the real pipeline (simulator in-process, the SQLite store,
a fake clock that jumps to each check's due time); and the guard's own store operations (its documents:
the pause, the budget, held requests), with no budget, below a budget and with its breaker open."""

from __future__ import annotations

import collections
import io
import json
import pathlib
from dataclasses import dataclass

import httpx

from devkit.simulator import Simulator
from function import (
    AnonymousAuth,
    InboundMessage,
    Logger,
    OperationsClient,
    Pipeline,
    Settings,
    SourceKind,
    SqliteStore,
    parse_time,
)
from function._settings import CancelBudget

ORG = "organizations/123456789"
CHECKS_TOPIC = "opcancel-checks"
_PROJECT = "opcancel-bench"
#: The CloudEvent source a check arrives with: only that makes it a check.
CHECKS_SOURCE = f"//pubsub.googleapis.com/projects/{_PROJECT}/topics/{CHECKS_TOPIC}"

#: (scenario, what is delivered): each message is delivered once, and its checks after it.
SCENARIOS = (
    ("cancelled at once (the immediate get shows it done)", [f"{ORG}/operations/cost-a"]),
    ("cancelled after 2 delayed checks", [f"{ORG}/operations/slow-2-cost-b"]),
    ("the same request delivered 3 times", [f"{ORG}/operations/cost-c"] * 3),
    ("already finished: cancel refused as done, get reports it", [f"{ORG}/operations/done-cost-d"]),
    ("rejected: a hostile name", [f"{ORG}/operations/../../v1/projects"]),
    ("a batch of 10 operations", [json.dumps({"operations": [f"{ORG}/operations/cost-e{i}" for i in range(10)]})]),
)


#: (scenario, budget, what is delivered before counting, what is delivered and counted): the guard's cost
#: per request on a warm instance. An instance reads the pause (and, with a budget, the budget document) on
#: its first request and then at most every 10 s: one request first, uncounted, so that read is left out.
GUARD_SCENARIOS = (
    ("no budget: cancelled at once", None, [f"{ORG}/operations/guard-a0"], [f"{ORG}/operations/guard-a1"]),
    (
        "budget set, below it: cancelled at once",
        CancelBudget(100, 3600.0),
        [f"{ORG}/operations/guard-b0"],
        [f"{ORG}/operations/guard-b1"],
    ),
    (
        "budget set, below it: the same request delivered 3 times",
        CancelBudget(100, 3600.0),
        [f"{ORG}/operations/guard-c0"],
        [f"{ORG}/operations/guard-c1"] * 3,
    ),
    (
        "budget spent: the request that trips the breaker, held",
        CancelBudget(1, 3600.0),
        [f"{ORG}/operations/guard-d0"],
        [f"{ORG}/operations/guard-d1"],
    ),
    (
        "breaker open: a request held",
        CancelBudget(1, 3600.0),
        [f"{ORG}/operations/guard-e0", f"{ORG}/operations/guard-e1"],
        [f"{ORG}/operations/guard-e2"],
    ),
    (
        "breaker open: a held request delivered again",
        CancelBudget(1, 3600.0),
        [f"{ORG}/operations/guard-f0", f"{ORG}/operations/guard-f1", f"{ORG}/operations/guard-f2"],
        [f"{ORG}/operations/guard-f2"],
    ),
)


@dataclass(frozen=True)
class Cost:
    scenario: str
    operations: int
    api_calls: collections.Counter
    publish_calls: int
    messages: collections.Counter
    store_reads: int
    store_writes: int
    #: The guard documents' reads and writes (creates, replaces, deletes), apart from the records'.
    guard_reads: int = 0
    guard_writes: int = 0


class _Clock:
    def __init__(self) -> None:
        self.current = 1_790_000_000.0

    def now(self) -> float:
        return self.current

    def sleep(self, seconds: float) -> None:
        self.current += seconds


class _CountingStore(SqliteStore):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reads = 0
        self.writes = 0

    def _load(self, key):
        self.reads += 1
        return super()._load(key)

    def _create(self, record):
        self.writes += 1
        return super()._create(record)

    def _replace(self, record, expected_version):
        self.writes += 1
        return super()._replace(record, expected_version)

    def _delete_if_version(self, key, expected_version):
        self.writes += 1
        return super()._delete_if_version(key, expected_version)

    guard_reads = 0
    guard_writes = 0

    def _load_document(self, key):
        self.guard_reads += 1
        return super()._load_document(key)

    def _create_document(self, document):
        self.guard_writes += 1
        return super()._create_document(document)

    def _replace_document(self, document, expected_version):
        self.guard_writes += 1
        return super()._replace_document(document, expected_version)

    def _delete_document(self, key, expected_version):
        self.guard_writes += 1
        return super()._delete_document(key, expected_version)

    def reset(self) -> None:
        self.reads = self.writes = self.guard_reads = self.guard_writes = 0


class _CountingPublisher:
    def __init__(self) -> None:
        self.calls = 0
        self.messages: collections.Counter = collections.Counter()
        self.pending_checks: list[tuple[bytes, dict[str, str]]] = []

    def publish_all(self, topic, messages):
        self.calls += 1
        self.messages[topic] += len(messages)
        if topic == CHECKS_TOPIC:
            self.pending_checks += messages
        return [str(self.calls)] * len(messages)


def measure(workdir: pathlib.Path) -> list[Cost]:
    return [
        _scenario(workdir / f"cost-{index}.sqlite3", title, bodies) for index, (title, bodies) in enumerate(SCENARIOS)
    ]


def measure_guard(workdir: pathlib.Path) -> list[Cost]:
    return [
        _scenario(workdir / f"guard-cost-{index}.sqlite3", title, bodies, budget=budget, before=before)
        for index, (title, budget, before, bodies) in enumerate(GUARD_SCENARIOS)
    ]


def replay(path: pathlib.Path, name: str) -> Cost:
    """One request for ``name``, and its checks, counted as a scenario is (``bench/lag.py`` counts chains so)."""
    return _scenario(path, name, [name])


def _scenario(
    path: pathlib.Path,
    title: str,
    bodies: list[str],
    *,
    budget: CancelBudget | None = None,
    before: list[str] | tuple[str, ...] = (),
) -> Cost:
    """Deliver ``before`` uncounted, then ``bodies``, each with its checks, counting what ``bodies`` cost."""
    simulator, clock = Simulator(), _Clock()
    settings = Settings(project=_PROJECT, store="sqlite", sqlite_path=str(path), cancel_budget=budget)
    store = _CountingStore(str(path), lease_s=settings.lease_s, ttl_s=settings.record_ttl_s)
    publisher = _CountingPublisher()
    log = Logger(io.StringIO())
    api = OperationsClient(
        auth=AnonymousAuth(), clock=clock, log=log, endpoint="http://simulator.test",
        transport=httpx.WSGITransport(app=simulator),
    )  # fmt: skip
    service = Pipeline(settings=settings, api=api, publisher=publisher, store=store, clock=clock, log=log)
    for number, body in enumerate(before):
        _deliver_with_checks(service, publisher, clock, body, f"before-{number}")
    store.reset()
    publisher.calls, publisher.messages = 0, collections.Counter()
    counted_from = len(simulator.calls)
    for number, body in enumerate(bodies):
        _deliver_with_checks(service, publisher, clock, body, f"m-{number}")
    made = simulator.calls[counted_from:]
    calls = collections.Counter("cancel" if call.path.endswith(":cancel") else "get" for call in made)
    operations = len({call.path.removesuffix(":cancel") for call in made}) or 1
    return Cost(
        title,
        operations,
        calls,
        publisher.calls,
        publisher.messages,
        store.reads,
        store.writes,
        store.guard_reads,
        store.guard_writes,
    )


def _deliver_with_checks(
    service: Pipeline, publisher: _CountingPublisher, clock: _Clock, body: str, message_id: str
) -> None:
    _deliver(service, InboundMessage(data=body.encode(), message_id=message_id, kind=SourceKind.PUBSUB))
    while publisher.pending_checks:
        data, attributes = publisher.pending_checks.pop(0)
        clock.current = max(clock.current, parse_time(json.loads(data)["due_at"]))
        check = InboundMessage(
            data=data, attributes=attributes, message_id="check", kind=SourceKind.PUBSUB, event_source=CHECKS_SOURCE
        )
        assert service.is_check(check)
        _deliver(service, check)


def _deliver(service: Pipeline, message: InboundMessage) -> None:
    report = service.handle(message)
    if report.must_retry:
        raise RuntimeError(f"a cost scenario needed a redelivery: {report}")
