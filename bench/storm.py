"""An alert storm against a cancel budget: ``requests`` distinct requests at once, over ``instances``
pipelines (each its own store client and guard cache, like Cloud Run instances) sharing one store, and
what came of them: cancels sent (the goal: exactly the budget), held, results, the time to the last
result, and the guard's store operations per request below the budget and once the breaker is open.

In-process: the Operations API simulator over ``httpx.WSGITransport``, results kept in memory, the store
Google's Firestore emulator (``store="firestore"``) or an SQLite file. Each request is one thread, all
released at once by a barrier; a request that meets transient trouble (a race for the budget document
lost too often) is sent again at once, as Pub/Sub would redeliver it. What the times are not: the
emulator is not Firestore (its latency and contention differ), and every thread shares this machine's
cores; the counts carry over.

``python -m bench.storm [--requests 1000] [--budget 100] [--store firestore|sqlite]`` prints the report.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import io
import json
import pathlib
import tempfile
import threading
import time
from dataclasses import dataclass, field

import httpx

from devkit.emulators import Emulator
from devkit.simulator import Simulator
from function import AnonymousAuth, InboundMessage, Logger, OperationsClient, Pipeline, Settings, SystemClock
from function._settings import CancelBudget
from function._store.firestore import FirestoreStore
from function._store.sqlite import SqliteStore

ORG = "organizations/123456789"
PROJECT = "bench-project"


@dataclass
class StormReport:
    requests: int
    budget: int
    instances: int
    store: str
    cancels_sent: int
    #: Outcomes and results as a consumer counts them: one per event id (``ce-id``).
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    results: int = 0
    #: Results published again under an event id already out (the SPEC allows such repeats; consumers drop
    #: them by ``ce-id``): a store write lost after the publish, and the request redelivered.
    repeats: int = 0
    #: Deliveries sent again after transient trouble (a race lost too often, the store busy).
    redeliveries: int = 0
    breaker_trips: int = 0
    #: Seconds from the barrier to the last result.
    to_last_result_s: float = 0.0
    #: Guard document operations (reads, writes) per request, for requests that cancelled and that were held.
    guard_ops_cancelled: tuple[float, float] = (0.0, 0.0)
    guard_ops_held: tuple[float, float] = (0.0, 0.0)

    @property
    def exact(self) -> bool:
        return self.cancels_sent == min(self.budget, self.requests) and self.results == self.requests


class _Results:
    """The publisher port, keeping each result and when it came."""

    def __init__(self) -> None:
        #: (when, event id, result) for each publish.
        self.results: list[tuple[float, str, dict]] = []
        self._lock = threading.Lock()

    def publish_all(self, topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> list[str]:
        with self._lock:
            for data, attributes in messages:
                if topic == "opcancel-results":
                    self.results.append((time.monotonic(), attributes["ce-id"], json.loads(data)))
            return [str(len(self.results))] * len(messages)

    def first_of_each_event(self) -> list[tuple[float, dict]]:
        seen: dict[str, tuple[float, dict]] = {}
        for at, event_id, result in self.results:
            seen.setdefault(event_id, (at, result))
        return list(seen.values())


_OPS: threading.local = threading.local()


def _counting(store_class: type) -> type:
    """``store_class`` counting its guard document reads and writes per thread (each thread one request)."""

    class Counting(store_class):  # type: ignore[misc, valid-type]
        def _load_document(self, key):
            _OPS.reads = getattr(_OPS, "reads", 0) + 1
            return super()._load_document(key)

        def _create_document(self, document):
            _OPS.writes = getattr(_OPS, "writes", 0) + 1
            return super()._create_document(document)

        def _replace_document(self, document, expected_version):
            _OPS.writes = getattr(_OPS, "writes", 0) + 1
            return super()._replace_document(document, expected_version)

    return Counting


def run(
    workdir: pathlib.Path, *, requests: int = 1000, budget: int = 100, instances: int = 5, store: str = "firestore"
) -> StormReport:
    simulator = Simulator()
    results = _Results()
    log = io.StringIO()
    settings = Settings(project=PROJECT, store=store, cancel_budget=CancelBudget(budget, 3600.0))
    with contextlib.ExitStack() as stack:
        if store == "firestore":
            emulator = stack.enter_context(Emulator("firestore", project=PROJECT))
            stores = [
                _counting(FirestoreStore)(
                    project=PROJECT,
                    lease_s=60,
                    ttl_s=settings.record_ttl_s,
                    auth=AnonymousAuth(),
                    collection="storm",
                    emulator_host=emulator.host,
                )
                for _ in range(instances)
            ]
        else:
            path = str(workdir / "storm.sqlite3")
            stores = [_counting(SqliteStore)(path, lease_s=60, ttl_s=settings.record_ttl_s) for _ in range(instances)]
        pipelines = [
            Pipeline(
                settings=settings,
                api=OperationsClient(
                    auth=AnonymousAuth(),
                    clock=SystemClock(),
                    log=Logger(log),
                    endpoint="http://simulator.test",
                    transport=httpx.WSGITransport(app=simulator),
                ),
                publisher=results,
                store=instance_store,
                clock=SystemClock(),
                log=Logger(log),
            )
            for instance_store in stores
        ]
        barrier = threading.Barrier(requests + 1)
        redeliveries = 0
        ops: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
        lock = threading.Lock()

        def request(index: int) -> None:
            nonlocal redeliveries
            pipeline = pipelines[index % instances]
            message = InboundMessage(data=f"{ORG}/operations/storm-{index}".encode(), message_id=f"m-{index}")
            barrier.wait()
            for _ in range(50):
                (item,) = pipeline.handle_request(message).items
                if item.status.value != "retry":
                    break
                with lock:
                    redeliveries += 1
            with lock:
                ops[item.outcome or item.status.value].append((getattr(_OPS, "reads", 0), getattr(_OPS, "writes", 0)))

        threads = [threading.Thread(target=request, args=(index,)) for index in range(requests)]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.monotonic()
        for thread in threads:
            thread.join()
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    distinct = results.first_of_each_event()
    published = [result for _, result in distinct]
    return StormReport(
        requests=requests,
        budget=budget,
        instances=instances,
        store=store,
        cancels_sent=len(simulator.cancel_calls()),
        outcomes=collections.Counter(result["outcome"] for result in published),
        results=len(published),
        repeats=len(results.results) - len(distinct),
        redeliveries=redeliveries,
        breaker_trips=sum(1 for line in lines if line.get("event") == "breaker_tripped"),
        to_last_result_s=max((at for at, _ in distinct), default=started) - started,
        guard_ops_cancelled=_mean(ops.get("CANCELLED", [])),
        guard_ops_held=_mean(ops.get("HELD", [])),
    )


def _mean(counts: list[tuple[int, int]]) -> tuple[float, float]:
    if not counts:
        return (0.0, 0.0)
    return (
        round(sum(reads for reads, _ in counts) / len(counts), 2),
        round(sum(writes for _, writes in counts) / len(counts), 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--instances", type=int, default=5)
    parser.add_argument("--store", choices=("firestore", "sqlite"), default="firestore")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        report = run(
            pathlib.Path(workdir),
            requests=arguments.requests,
            budget=arguments.budget,
            instances=arguments.instances,
            store=arguments.store,
        )
    shown = {item.name: getattr(report, item.name) for item in dataclasses.fields(report)}
    print(json.dumps({**shown, "outcomes": dict(report.outcomes), "exact": report.exact}, indent=2))


if __name__ == "__main__":
    main()
