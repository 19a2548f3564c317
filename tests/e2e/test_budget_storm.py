"""The cancel budget is exact on Google's Firestore emulator: 500 distinct requests at once, spread over
several instances (each its own pipeline, store client and guard cache, one shared collection), against a
budget of 20, send exactly 20 cancels; every other request is HELD, reported once; one request trips the
breaker."""

from __future__ import annotations

import collections
import dataclasses
import json
import threading

import pytest

from devkit.simulator import Simulator
from function._settings import CancelBudget
from tests.support import TEST_POLICY, Rig, open_store

pytestmark = pytest.mark.emulator

REQUESTS = 500
BUDGET = 20
INSTANCES = 5


def test_a_budget_of_20_under_500_simultaneous_distinct_requests_sends_exactly_20_cancels(firestore_spec):
    simulator = Simulator()
    base = Rig().settings
    settings = dataclasses.replace(base, polling=TEST_POLICY, cancel_budget=CancelBudget(BUDGET, 3600.0))
    instances = [
        Rig(store=open_store(firestore_spec), settings=settings, simulator=simulator) for _ in range(INSTANCES)
    ]
    barrier = threading.Barrier(REQUESTS)
    statuses: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def request(i: int) -> None:
        rig = instances[i % INSTANCES]
        barrier.wait()
        # Transient trouble (a race lost too often) is redelivered, as Pub/Sub would.
        for _ in range(20):
            (item,) = rig.send(f"organizations/1/operations/storm-{i}", message_id=f"m-{i}").items
            if item.status.value != "retry":
                break
        with lock:
            statuses[item.outcome or item.status.value] += 1

    threads = [threading.Thread(target=request, args=(i,)) for i in range(REQUESTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(simulator.cancel_calls()) == BUDGET
    # A store write lost after a publish (500 threads on one emulator) may publish a result again, as the SPEC
    # allows, under the same ce-id, which consumers drop: each request has exactly one result as consumed.
    published = [
        (json.loads(data), attributes["ce-id"])
        for rig in instances
        for data, attributes in rig.publisher.on("opcancel-results")
    ]
    ids_by_operation = collections.defaultdict(set)
    for result, event_id in published:
        ids_by_operation[result["operation"]].add(event_id)
    assert len(ids_by_operation) == REQUESTS
    assert all(len(ids) == 1 for ids in ids_by_operation.values())
    results = list({event_id: result for result, event_id in published}.values())
    outcomes = collections.Counter(result["outcome"] for result in results)
    # A cancelled operation is done at the first get: each request ends in one result, here and now.
    assert outcomes == {"CANCELLED": BUDGET, "HELD": REQUESTS - BUDGET}, statuses
    tripped = [line for rig in instances for line in rig.logs() if line.get("event") == "breaker_tripped"]
    assert len(tripped) == 1
    assert len(instances[0].store.held_requests(now=instances[0].clock.now())) == REQUESTS - BUDGET
