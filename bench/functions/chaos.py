"""opcancel for the chaos run: the real pipeline with faulty adapters injected around the real ones.

``CHAOS_STORE_FAILURES`` and ``CHAOS_PUBLISH_FAILURES`` are the share of store writes (to the store
``OPCANCEL_STORE`` chooses) and of publishes that fail, half of them before taking effect and half
after (the write lands or the message goes out, but the answer is lost). ``CHAOS_CRASH_RATE`` is the chance that the worker process dies on the spot
after any API answer, store write or publish. ``CHAOS_LOST_CHECKS`` is the share of check messages
published (without a queue) that are silently lost, as a dead-lettered or dropped message would be,
chosen by operation, attempt and seed, so one seed loses the same checks in every run;
with a queue, checks go through the scheduler the settings choose (the Cloud Tasks stand-in, which
loses tasks and fails creates and dispatches by itself). Each write of a key's record (a create, a
takeover raising the fence, an update or a release) is logged as ``chaos_lease`` with the time, pid,
fence and lease, so the run can measure how long
a key held by a killed worker waited for its next holder. Every fault is logged as ``chaos_fault``, every
delivery the function acknowledges as ``chaos_acked``, and each cancel sent, refused and recorded in
the store as ``chaos_cancel_sending``, ``chaos_cancel_failed`` and ``chaos_cancel_recorded``, so the
run can account for each message and tell a second cancel caused by a worker's death between sending
one and recording it from any other.
"""

import os
import random
import threading
import time

import functions_framework

from function import (
    IdempotencyStore,
    Logger,
    OperationsClient,
    Pipeline,
    PubSubPublisher,
    Runtime,
    Settings,
    SharedTransport,
    State,
    SystemClock,
    build_auth,
    build_scheduler,
    build_store,
)
from function.errors import PublishFailed

log = Logger()
settings = Settings.from_env(os.environ)
STORE_FAILURES = float(os.environ["CHAOS_STORE_FAILURES"])
PUBLISH_FAILURES = float(os.environ["CHAOS_PUBLISH_FAILURES"])
CRASH_RATE = float(os.environ["CHAOS_CRASH_RATE"])
LOST_CHECKS = float(os.environ.get("CHAOS_LOST_CHECKS", "0"))
SEED = int(os.environ["CHAOS_SEED"])


class Dice:
    """Seeded per worker process: gunicorn forks the workers from one master, which would share a sequence."""

    def __init__(self) -> None:
        self._random: random.Random | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def roll(self) -> float:
        with self._lock:
            if self._pid != os.getpid():
                self._random = random.Random(f"{SEED}-{os.getpid()}")
                self._pid = os.getpid()
            return self._random.random()

    def fault(self, where: str, rate: float) -> str | None:
        """None, or whether the fault strikes ``before`` or ``after`` the real work."""
        if self.roll() >= rate:
            return None
        when = "before" if self.roll() < 0.5 else "after"
        log.warning("injected fault", event="chaos_fault", where=where, when=when)
        return when

    def maybe_crash(self, where: str, operation: str | None = None) -> None:
        if self.roll() < CRASH_RATE:
            log.warning(
                "worker dies here", event="chaos_fault", where=where, when="crash", operation=operation,
                pid=os.getpid(), at=time.time(),
            )  # fmt: skip
            os._exit(70)


dice = Dice()


class FaultyStore(IdempotencyStore):
    """The store the settings choose, built as the function builds it, with writes that fail, or kill the
    worker, as the dice say; the claim rules above the primitives are the real ones."""

    def __init__(self, backend: IdempotencyStore) -> None:
        super().__init__(lease_s=backend.lease_s, ttl_s=backend.ttl_s)
        self._backend = backend

    def _faulty(self, where: str, write):
        fault = dice.fault(f"store {where}", STORE_FAILURES)
        if fault == "before":
            raise OSError("injected: the write never reached the store")
        written = write()
        dice.maybe_crash(f"after store {where}")
        if fault == "after":
            raise TimeoutError("injected: the write landed but its answer was lost")
        return written

    def _load(self, key):
        return self._backend._load(key)

    def _create(self, record):
        return self._faulty("create", lambda: self._leased(record, self._backend._create(record)))

    @staticmethod
    def _leased(record, written):
        if written:
            log.info(
                "lease taken",
                event="chaos_lease",
                key=record.key,
                pid=os.getpid(),
                at=time.time(),
                fence=record.fence,
                lease_until=record.lease_until,
            )
        return written

    def _replace(self, record, expected_version):
        return self._faulty("replace", lambda: self._replace_and_tell(record, expected_version))

    def _replace_and_tell(self, record, expected_version):
        written = self._backend._replace(record, expected_version)
        # Every write, releases included, so the run knows whether a killed worker still held the key.
        self._leased(record, written)
        if written and record.state is State.CANCEL_SENT:
            log.info("cancel recorded", event="chaos_cancel_recorded", key=record.key, pid=os.getpid())
        return written

    def _delete_if_version(self, key, expected_version):
        return self._backend._delete_if_version(key, expected_version)

    def _checking(self):
        return self._backend._checking()

    def _load_document(self, key):
        return self._backend._load_document(key)

    # The guard's writes (the budget's count, a held request) fail and kill the worker like any other.

    def _create_document(self, document):
        return self._faulty("guard create", lambda: self._backend._create_document(document))

    def _replace_document(self, document, expected_version):
        return self._faulty("guard replace", lambda: self._backend._replace_document(document, expected_version))

    def _delete_document(self, key, expected_version):
        return self._backend._delete_document(key, expected_version)

    def _documents_of_kind(self, kind):
        return self._backend._documents_of_kind(kind)


class FaultyPublisher:
    def __init__(self, inner: PubSubPublisher) -> None:
        self._inner = inner

    def publish_all(self, topic, messages):
        if topic == settings.checks_topic and any(_lost(attributes) for _, attributes in messages):
            log.warning("check message lost", event="chaos_fault", where="check message", when="lost")
            return [f"lost-{index}" for index, _ in enumerate(messages)]
        fault = dice.fault(f"publish to {topic}", PUBLISH_FAILURES)
        if fault == "before":
            raise PublishFailed(f"publish to {topic} failed: injected before sending")
        ids = self._inner.publish_all(topic, messages)
        dice.maybe_crash(f"after publish to {topic}")
        if fault == "after":
            raise PublishFailed(f"publish to {topic} failed: injected, sent but unconfirmed")
        return ids


def _lost(attributes: dict[str, str]) -> bool:
    check = f"{SEED}/{attributes.get('operation')}/{attributes.get('attempt')}"
    return random.Random(check).random() < LOST_CHECKS


class CrashingApi:
    def __init__(self, inner: OperationsClient) -> None:
        self._inner = inner

    def cancel(self, ref):
        log.info("cancel sending", event="chaos_cancel_sending", operation=ref.name, pid=os.getpid())
        try:
            answer = self._inner.cancel(ref)
        except Exception:
            log.info("cancel failed", event="chaos_cancel_failed", operation=ref.name, pid=os.getpid())
            raise
        dice.maybe_crash("after the cancel's answer", ref.name)
        return answer

    def get(self, ref):
        operation = self._inner.get(ref)
        dice.maybe_crash("after a get's answer", ref.name)
        return operation


clock = SystemClock()
transport = SharedTransport()
auth = build_auth(settings, clock=clock, transport=transport)
publisher = FaultyPublisher(
    PubSubPublisher(
        settings.project, auth=auth, clock=clock, emulator_host=settings.pubsub_emulator_host, transport=transport,
        budget_s=2.0,
    )
)  # fmt: skip
service = Pipeline(
    settings=settings,
    # Retry budgets kept well inside OPCANCEL_LEASE_S, as the deployment keeps its 540 s timeout inside 600 s:
    # a live worker is never taken over, only a dead one.
    api=CrashingApi(
        OperationsClient(
            auth=auth,
            clock=clock,
            log=log,
            endpoint=settings.api_endpoint,
            transport=transport,
            max_attempts=3,
            retry_budget_s=2.0,
        )
    ),  # fmt: skip
    publisher=publisher,
    store=FaultyStore(build_store(settings, auth=auth, transport=transport)),
    clock=clock,
    log=log,
    scheduler=build_scheduler(settings, publisher=publisher, auth=auth, clock=clock, transport=transport),
)
runtime = Runtime(service, log=log)


@functions_framework.cloud_event
def on_event(cloud_event):
    runtime.on_event(cloud_event)
    message = cloud_event.data["message"]
    log.info("acknowledged", event="chaos_acked", message_id=message.get("messageId"))
