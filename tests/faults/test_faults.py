"""Faults through the entry point: crashes after each step, concurrent deliveries, zombies, a store outage.

Every test runs against every store (``store_kind``: memory, sqlite, and
Firestore on Google's emulator where gcloud is installed). A crash is a
``BaseException`` raised by a port after its work is done: it escapes every
handler, as a killed process would, leaving leases held and nothing released.
"""

from __future__ import annotations

import base64
import io
import json
import multiprocessing
import threading
from typing import Any

import httpx
import pytest
from cloudevents.http import CloudEvent

from devkit.simulator import Simulator, serve
from function import (
    AnonymousAuth,
    Logger,
    OperationsClient,
    RedeliveryRequested,
    Runtime,
    Settings,
    State,
    SystemClock,
    errors,
    parse_time,
)
from function import (
    Pipeline as FunctionPipeline,
)
from function._store import IdempotencyStore
from tests.support import DelegatingStore, FakeClock, MemoryPublisher, Rig, checks_source, open_store

NAME = "organizations/123456789/operations/slow-1-fault"


class Crash(BaseException):
    """The process dies here."""


class CrashingStore(DelegatingStore):
    """Delegates to a real store; dies just before or just after the write that moves a record into a state."""

    def __init__(self, inner: IdempotencyStore, crash: tuple[str, State | str] | None) -> None:
        super().__init__(inner)
        self._inner = inner
        self.crash = crash

    def _die_if(self, when: str, state: State | str | None) -> None:
        if self.crash is not None and self.crash == (when, state):
            self.crash = None
            raise Crash(f"{when} {state}")

    def claim_request(self, key, payload_hash, *, now):
        claim = self._inner.claim_request(key, payload_hash, now=now)
        if claim.record is not None and claim.record.state is State.CLAIMED:
            self._die_if("after", "claim")
        return claim

    def claim_check(self, key, payload_hash, check, *, now):
        return self._inner.claim_check(key, payload_hash, check, now=now)

    def chains(self, now):
        return self._inner.chains(now)

    def _advance(self, held, changed, *, now):
        # Every transition's write comes here; only one that moves the record into another state can die.
        moves_to = changed.state if changed.state is not held.state else None
        self._die_if("before", moves_to)
        record = self._inner._advance(held, changed, now=now)
        self._die_if("after", moves_to)
        return record


REQUESTS_SOURCE = "//pubsub.googleapis.com/projects/test-project/topics/opcancel-requests"


def pubsub_event(
    data: bytes, attributes: dict[str, str] | None = None, message_id: str = "1", source: str = REQUESTS_SOURCE
) -> CloudEvent:
    return CloudEvent(
        {"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": source},
        {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes or {}, "messageId": message_id}},
    )


def deliver(runtime: Runtime, event: CloudEvent) -> str:
    """Deliver once as Pub/Sub would; returns ack, retry or crash."""
    try:
        runtime.on_event(event)
    except RedeliveryRequested:
        return "retry"
    except Crash:
        return "crash"
    return "ack"


class Pipeline:
    """A rig behind a Runtime, with Pub/Sub's delivery loop: redeliver until acknowledged."""

    def __init__(self, store: IdempotencyStore, crash: tuple[str, State | str] | None = None) -> None:
        self.crashing = CrashingStore(store, crash)
        self.rig = Rig(store=self.crashing)
        self.runtime = Runtime(self.rig.service, log=self.rig.log)

    def until_acknowledged(self, event: CloudEvent, *, rounds: int = 10) -> list[str]:
        fates = []
        for _ in range(rounds):
            fate = deliver(self.runtime, event)
            fates.append(fate)
            if fate == "ack":
                return fates
            # Redelivery comes after the dead worker's lease has run out.
            self.rig.clock.advance(self.crashing.lease_s + 1)
        raise AssertionError(f"never acknowledged: {fates}")

    def drain_checks(self) -> None:
        while checks := self.rig.publisher.take_checks():
            for check in checks:
                self.rig.clock.current = max(self.rig.clock.current, _due(check.data))
                self.until_acknowledged(
                    pubsub_event(check.data, check.attributes, message_id="check", source=checks_source())
                )

    def distinct_results(self) -> set[str]:
        return {attributes["ce-id"] for _, attributes in self.rig.publisher.on("opcancel-results")}


def _due(data: bytes) -> float:
    return parse_time(json.loads(data)["due_at"])


def resume_if_never_scheduled(pipeline: Pipeline, crash, request: CloudEvent) -> None:
    """After a crash between recording a check and scheduling it, the check the record waits for never comes:
    the chain is overdue once its due time is more than the longest polling delay past, and the request
    delivered again then resumes it."""
    if crash != ("after", State.CHECKING):
        return
    assert pipeline.rig.publisher.results() == []
    pipeline.rig.clock.advance(pipeline.rig.settings.polling.max_delay_s + 10)
    assert deliver(pipeline.runtime, request) == "ack"
    (resumed,) = [line for line in pipeline.rig.logs() if line.get("event") == "chain_resumed"]
    assert resumed["attempt"] == 2
    pipeline.drain_checks()


STEPS = {
    "after the claim": ("after", "claim"),
    "after the cancel is recorded": ("after", State.CANCEL_SENT),
    "after a check is recorded, before it is scheduled": ("after", State.CHECKING),
    "after the result is stored": ("after", State.RESULT_READY),
    "after the result is published": ("before", State.FINISHED),
    "after the key is finished": ("after", State.FINISHED),
}


@pytest.mark.parametrize("crash", STEPS.values(), ids=STEPS.keys())
def test_a_crash_after_each_step_then_redelivery_gives_one_cancel_and_one_result(make_store, crash):
    pipeline = Pipeline(make_store(), crash)
    request = pubsub_event(NAME.encode())
    pipeline.until_acknowledged(request)
    pipeline.drain_checks()
    resume_if_never_scheduled(pipeline, crash, request)
    # Pub/Sub may redeliver the request even after it was acknowledged.
    assert deliver(pipeline.runtime, request) == "ack"
    assert pipeline.crashing.crash is None, "the crash was never injected"
    assert len(pipeline.rig.simulator.cancel_calls()) == 1
    published = pipeline.rig.publisher.on("opcancel-results")
    # A result whose publish was unconfirmed goes out again byte for byte, so it has the same ce-id.
    assert len({data for data, _ in published}) == 1
    assert len(pipeline.distinct_results()) == 1
    assert json.loads(published[0][0])["outcome"] == "CANCELLED"
    assert len(published) == (2 if crash == ("before", State.FINISHED) else 1)


def test_a_crash_between_the_cancel_answer_and_its_record_gets_no_second_cancel_once_the_operation_is_done(
    make_store,
):
    pipeline = Pipeline(make_store(), ("before", State.CANCEL_SENT))
    name = "organizations/123456789/operations/quick-fault"
    assert pipeline.until_acknowledged(pubsub_event(name.encode())) == ["crash", "ack"]
    # The taker-over looks before it cancels: the first cancel has done its work.
    assert [c.method for c in pipeline.rig.simulator.calls] == ["POST", "GET"]
    (result,) = pipeline.rig.publisher.results()
    assert (result["outcome"], result["checks"]) == ("CANCELLED", 1)


def test_a_crash_between_the_cancel_answer_and_its_record_cancels_again_while_the_operation_runs(make_store):
    """At least once, not at most once: nothing says whether the dead worker's cancel got through, and a
    cancel never sent would leave the operation running; a second cancel of a cancelling operation is harmless."""
    pipeline = Pipeline(make_store(), ("before", State.CANCEL_SENT))
    pipeline.until_acknowledged(pubsub_event(NAME.encode()))
    pipeline.drain_checks()
    assert [c.method for c in pipeline.rig.simulator.calls][:4] == ["POST", "GET", "POST", "GET"]
    (result,) = pipeline.rig.publisher.results()
    assert result["outcome"] == "CANCELLED"
    assert result["checks"] == sum(1 for c in pipeline.rig.simulator.calls if c.method == "GET")


def test_a_zombie_whose_lease_was_taken_over_has_its_writes_refused(make_store):
    """Two workers share the store, the API and the clock; the first hangs on its cancel past its lease."""
    store, simulator, clock = make_store(), Simulator(), FakeClock()
    passthrough = httpx.WSGITransport(app=simulator)
    request = pubsub_event(b"organizations/1/operations/plain")
    takeover: list[str] = []

    def stalled_cancel(call: httpx.Request) -> httpx.Response:
        if call.url.path.endswith(":cancel") and not takeover:
            takeover.append("stalled")
            clock.advance(store.lease_s + 1)
            takeover.append(deliver(second, request))  # Pub/Sub redelivers to another instance
        return passthrough.handle_request(call)

    zombie_rig = Rig(store=store, simulator=simulator, clock=clock, transport=httpx.MockTransport(stalled_cancel))
    second_rig = Rig(store=store, simulator=simulator, clock=clock, transport=passthrough)
    zombie, second = Runtime(zombie_rig.service, log=zombie_rig.log), Runtime(second_rig.service, log=second_rig.log)

    assert deliver(zombie, request) == "retry"
    assert takeover == ["stalled", "ack"]
    (fenced,) = [line for line in zombie_rig.logs() if line.get("event") == "fenced_off"]
    assert fenced["idempotency_key"] == "securitycenter.googleapis.com/organizations/1/operations/plain"
    assert zombie_rig.publisher.messages == []
    assert [r["outcome"] for r in second_rig.publisher.results()] == ["CANCELLED"]
    # The zombie's own redelivery then finds the key finished and adds nothing.
    assert deliver(zombie, request) == "ack"
    assert zombie_rig.publisher.messages == []


def test_concurrent_deliveries_in_threads_cancel_once(make_store):
    pipeline = Pipeline(make_store())
    barrier = threading.Barrier(8)
    fates: list[str] = []

    def worker(index: int) -> None:
        barrier.wait()
        fates.append(
            deliver(pipeline.runtime, pubsub_event(b"organizations/1/operations/plain", message_id=str(index)))
        )

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The losers were told to retry (key busy) or saw the finished key.
    assert set(fates) <= {"ack", "retry"}
    for _ in range(fates.count("retry")):
        assert deliver(pipeline.runtime, pubsub_event(b"organizations/1/operations/plain")) == "ack"
    assert len(pipeline.rig.simulator.cancel_calls()) == 1
    assert len(pipeline.distinct_results()) == 1


def test_a_store_outage_is_retried_and_nothing_is_acknowledged():
    class DownStore(IdempotencyStore):
        def _load(self, key):
            raise ConnectionError("store is down")

        def _create(self, record):
            raise ConnectionError("store is down")

        def _replace(self, record, expected_version):
            raise ConnectionError("store is down")

        def _delete_if_version(self, key, expected_version):
            raise ConnectionError("store is down")

        def _checking(self):
            raise ConnectionError("store is down")

    rig = Rig(store=DownStore(lease_s=60, ttl_s=3600))
    runtime = Runtime(rig.service, log=rig.log)
    assert deliver(runtime, pubsub_event(NAME.encode())) == "retry"
    assert deliver(runtime, pubsub_event(b"not a valid name")) == "retry"
    assert rig.simulator.calls == []
    assert rig.publisher.messages == []
    reasons = {line.get("reason") for line in rig.logs() if line.get("event") == "retry_later"}
    assert reasons == {"store_unavailable"}


def _deliver_in_process(store_spec: dict[str, Any], endpoint: str, message_id: str, results) -> None:
    """One worker process: its own service, the shared store and simulator, its own publisher."""
    settings = Settings(project="p", store=store_spec["kind"])
    publisher = MemoryPublisher()
    log = Logger(io.StringIO())
    clock = SystemClock()
    service = FunctionPipeline(
        settings=settings,
        api=OperationsClient(
            auth=AnonymousAuth(), clock=clock, log=log, endpoint=endpoint, transport=httpx.HTTPTransport()
        ),
        publisher=publisher,
        store=open_store(store_spec),
        clock=clock,
        log=log,
    )
    fate = deliver(Runtime(service, log=log), pubsub_event(b"organizations/1/operations/plain", message_id=message_id))
    results.put((fate, [attributes["ce-id"] for _, attributes in publisher.on("opcancel-results")]))


def test_concurrent_deliveries_in_processes_cancel_once(shared_store_spec):
    simulator = Simulator()
    server = serve(simulator)
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        workers = [
            context.Process(target=_deliver_in_process, args=(shared_store_spec, endpoint, str(i), results))
            for i in range(4)
        ]
        for worker in workers:
            worker.start()
        outcomes = [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
    finally:
        server.shutdown()
    assert len(simulator.cancel_calls()) == 1
    event_ids = {ce_id for _, ids in outcomes for ce_id in ids}
    assert len(event_ids) == 1
    assert {fate for fate, _ in outcomes} <= {"ack", "retry"}


@pytest.mark.parametrize("crash", STEPS.values(), ids=STEPS.keys())
def test_another_services_operation_survives_a_crash_after_each_step_with_one_cancel_and_one_result(make_store, crash):
    """The same guarantees for a Vertex AI operation, whose key is its full resource name and whose
    check carries its service."""
    name = "projects/my-proj/locations/us-central1/operations/slow-1-fault"
    pipeline = Pipeline(make_store(), crash)
    request = pubsub_event(f"//aiplatform.googleapis.com/{name}".encode())
    pipeline.until_acknowledged(request)
    pipeline.drain_checks()
    resume_if_never_scheduled(pipeline, crash, request)
    assert deliver(pipeline.runtime, request) == "ack"
    assert pipeline.crashing.crash is None, "the crash was never injected"
    assert len(pipeline.rig.simulator.cancel_calls()) == 1
    assert len(pipeline.distinct_results()) == 1
    result = json.loads(pipeline.rig.publisher.on("opcancel-results")[0][0])
    assert (result["operation"], result["service"], result["outcome"]) == (
        name,
        "aiplatform.googleapis.com",
        "CANCELLED",
    )
    assert result["idempotency_key"] == f"//aiplatform.googleapis.com/{name}"


class ClaimedMeanwhile(DelegatingStore):
    """Any backend whose first create fails before landing, while another worker claims the same key in the
    same clock tick: that worker's record is the one this worker's read-back finds."""

    def __init__(self, backend: IdempotencyStore) -> None:
        super().__init__(backend)
        self.other_claim = None

    def _create(self, record):
        if self.other_claim is None:
            self.other_claim = self._backend.claim_request(record.key, record.payload_hash, now=record.requested_at)
            raise ConnectionError("injected: the create never reached the store")
        return self._backend._create(record)


def test_a_create_that_failed_while_another_worker_claimed_the_key_in_the_same_tick_does_not_hold_it(make_store):
    store = ClaimedMeanwhile(make_store())
    with pytest.raises(errors.KeyBusy):
        store.claim_request("k", "h", now=1_790_000_000.0)
    assert store.other_claim.status.value == "acquired"


def test_two_workers_in_the_same_tick_with_one_create_lost_cancel_once(make_store):
    """Through the entry point: the worker whose create failed is told to retry, and the other one's claim
    stands; its redelivery then finds the key finished."""
    backend = make_store()
    store = ClaimedMeanwhile(backend)
    first, second = Rig(store=store), Rig(store=backend)
    second.clock = first.clock
    request = pubsub_event(b"organizations/1/operations/plain")
    assert deliver(Runtime(first.service, log=first.log), request) == "retry"
    assert first.simulator.calls == []
    # The other worker's claim was the store-level one above; its holder goes on after its lease, as a redelivery.
    first.clock.advance(backend.lease_s + 1)
    assert deliver(Runtime(first.service, log=first.log), request) == "ack"
    assert len(first.simulator.cancel_calls()) == 1
    assert [r["outcome"] for r in first.publisher.results()] == ["CANCELLED"]
