"""Test doubles for the ports that have no real local counterpart here, a service rig, and store factories."""

from __future__ import annotations

import base64
import io
import json
import pathlib
import re
import threading
from typing import Any

import httpx

from devkit.cloudtasks import CloudTasks
from devkit.discovery import LEDGER, Contract, Violation, split_host
from devkit.simulator import Simulator
from function import (
    AnonymousAuth,
    CloudTasksScheduler,
    FirestoreStore,
    IdempotencyStore,
    InboundMessage,
    Logger,
    MemoryStore,
    OperationsClient,
    Pipeline,
    PollingPolicy,
    Settings,
    SourceKind,
    SqliteStore,
    parse_time,
)
from function.errors import PublishFailed

#: Hosts of Google's credential flows: not Operations, Pub/Sub, Cloud Tasks or Firestore methods.
_AUTH_HOSTS = frozenset({"oauth2.googleapis.com", "sts.googleapis.com", "iamcredentials.googleapis.com"})
_VERSION_SEGMENT = re.compile(r"/v[1-9][0-9a-z]*/")


def check_contract(request: httpx.Request) -> None:
    """Hold a request an adapter built to Google's discovery documents, or fail naming it and the rule.

    A request for a Google host (in the URL or, behind ``OPCANCEL_API_ENDPOINT=.../{host}``, the first
    path segment) is checked; so is a host-less one whose path starts with an API version (an endpoint
    override, an emulator). Metadata-server and token requests are neither."""
    host, path = split_host(request.url.host, request.url.path)
    if (host is not None and host not in _AUTH_HOSTS) or (host is None and _VERSION_SEGMENT.match(path) is not None):
        body = request.read()
        try:
            Contract.load().check_url(request.method, str(request.url), body, request.headers.get("content-type", ""))
        except Violation as violation:
            LEDGER.record(violation)
            raise AssertionError(f"request outside Google's published contract: {violation}") from None


class ConformingTransport(httpx.BaseTransport):
    """A real transport that first holds each request to Google's documents: the Firestore emulator speaks
    Firestore's REST API, so the store's requests are checked on their way to it."""

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        check_contract(request)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def checks_source(project: str = "test-project", topic: str = "opcancel-checks") -> str:
    """The CloudEvent source of the checks topic: what makes a message a check."""
    return f"//pubsub.googleapis.com/projects/{project}/topics/{topic}"


class FakeClock:
    """Time moves only when told to, or by the amount a retry sleeps."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.current = start
        self.slept: list[float] = []

    def now(self) -> float:
        return self.current

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.current += seconds

    def advance(self, seconds: float) -> None:
        self.current += seconds


class MemoryPublisher:
    """Keeps what is published. ``fail_next`` makes the next publishes fail like an unconfirmed one."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, dict[str, str]]] = []
        self.fail_next = 0
        self._lock = threading.Lock()

    def publish_all(self, topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> list[str]:
        with self._lock:
            if self.fail_next:
                self.fail_next -= 1
                raise PublishFailed(f"publish to {topic} failed: injected")
            ids = []
            for data, attributes in messages:
                self.messages.append((topic, data, dict(attributes)))
                ids.append(str(len(self.messages)))
            return ids

    def on(self, topic: str) -> list[tuple[bytes, dict[str, str]]]:
        with self._lock:
            return [(data, attributes) for t, data, attributes in self.messages if t == topic]

    def results(self) -> list[dict[str, Any]]:
        return [json.loads(data) for data, _ in self.on("opcancel-results")]

    def take_checks(self, project: str = "test-project") -> list[InboundMessage]:
        """Remove and return the published checks, as the checks subscription would deliver them."""
        with self._lock:
            checks = [m for m in self.messages if m[0] == "opcancel-checks"]
            self.messages = [m for m in self.messages if m[0] != "opcancel-checks"]
        return [
            InboundMessage(
                data=data,
                attributes=attributes,
                message_id=f"check-{i}",
                kind=SourceKind.PUBSUB,
                event_source=checks_source(project),
            )
            for i, (_, data, attributes) in enumerate(checks)
        ]


class Scripted:
    """An ``httpx.MockTransport`` handler answering from ``script`` in turn (the last step repeats),
    recording each request; a step that is an exception is raised, as a transport error would be."""

    def __init__(self, *script: httpx.Response | Exception) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        return step


DATA_DIR = pathlib.Path(__file__).parent / "data"
TEST_POLICY = PollingPolicy(initial_delay_s=5.0, multiplier=2.0, max_delay_s=60.0, deadline_s=600.0)


TASKS_QUEUE = "projects/test-project/locations/europe-west1/queues/opcancel-checks"
TASKS_ACCOUNT = "opcancel-tasks@test-project.iam.gserviceaccount.com"
CHECKS_PUBLISH_URL = "https://pubsub.googleapis.com/v1/projects/test-project/topics/opcancel-checks:publish"


class Rig:
    """One service wired to the simulator (in-process), a memory publisher and store, and a fake clock.

    With ``tasks``, checks are scheduled through the real Cloud Tasks adapter into the devkit stand-in
    (in-process, on the rig's clock), whose dispatch publishes them to the memory publisher's checks topic.
    """

    def __init__(
        self,
        *,
        store: Any = None,
        settings: Settings | None = None,
        simulator: Simulator | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: FakeClock | None = None,
        endpoint: str = "http://simulator.test",
        tasks: bool = False,
    ) -> None:
        self.clock = clock or FakeClock()
        self.simulator = simulator or Simulator()
        self.publisher = MemoryPublisher()
        # A real UTF-8 byte stream, strict as a UTF-8 stdout is: a StringIO would take text no stdout can write.
        self.raw_log = io.BytesIO()
        self.stream = io.TextIOWrapper(self.raw_log, encoding="utf-8", errors="strict", write_through=True)
        self.log = Logger(self.stream)
        self.settings = settings or Settings(project="test-project", polling=TEST_POLICY, store="memory")
        self.store = store or MemoryStore(lease_s=self.settings.lease_s, ttl_s=self.settings.record_ttl_s)
        self.api = OperationsClient(
            auth=AnonymousAuth(),
            clock=self.clock,
            log=self.log,
            endpoint=endpoint,
            transport=transport or httpx.WSGITransport(app=self.simulator),
            jitter=lambda: 0.5,
        )
        self.cloudtasks: CloudTasks | None = None
        scheduler = None
        if tasks:
            self.cloudtasks = CloudTasks(queues=[TASKS_QUEUE], clock=self.clock.now, deliver=self._publish_task)
            scheduler = CloudTasksScheduler(
                queue=TASKS_QUEUE,
                project="test-project",
                checks_topic=self.settings.checks_topic,
                auth=AnonymousAuth(),
                clock=self.clock,
                service_account=TASKS_ACCOUNT,
                endpoint="http://cloudtasks.test",
                transport=httpx.WSGITransport(app=self.cloudtasks),
                jitter=lambda: 0.5,
            )
        self.service = Pipeline(
            settings=self.settings,
            api=self.api,
            publisher=self.publisher,
            store=self.store,
            clock=self.clock,
            log=self.log,
            scheduler=scheduler,
        )

    def _publish_task(self, url: str, method: str, headers: dict[str, str], body: bytes) -> int:
        """A dispatched task's request, as Pub/Sub's publish method takes it."""
        assert (url, method) == (CHECKS_PUBLISH_URL, "POST")
        assert headers["Authorization"].endswith(TASKS_ACCOUNT)
        messages = json.loads(body)["messages"]
        self.publisher.publish_all(
            self.settings.checks_topic,
            [(base64.b64decode(m["data"]), m.get("attributes", {})) for m in messages],
        )
        return 200

    def dispatch_tasks(self) -> int:
        """Move the clock to the next task's time and let the stand-in dispatch what is due then."""
        assert self.cloudtasks is not None
        due = self.cloudtasks.next_due_at()
        if due is None:
            return 0
        self.clock.current = max(self.clock.current, due)
        return self.cloudtasks.dispatch_due()

    def send(self, body: str | bytes, attributes: dict[str, str] | None = None, message_id: str = "m-1"):
        data = body.encode() if isinstance(body, str) else body
        return self.service.handle(
            InboundMessage(
                data=data,
                attributes=attributes or {},
                message_id=message_id,
                event_source="//pubsub.googleapis.com/projects/test-project/topics/opcancel-requests",
            )
        )

    def run_checks(self, max_rounds: int = 50) -> int:
        """Deliver checks as Pub/Sub would, advancing time to each due check; returns how many ran."""
        delivered = 0
        for _ in range(max_rounds):
            if self.cloudtasks is not None:
                self.dispatch_tasks()
            pending = self.publisher.take_checks()
            if not pending:
                return delivered
            for check in pending:
                due = json.loads(check.data)["due_at"]
                self.clock.current = max(self.clock.current, parse_time(due))
                report = self.service.handle(check)
                assert not report.must_retry, report
                delivered += 1
        raise AssertionError("check chain did not end")

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.raw_log.getvalue().decode("utf-8").splitlines()]


def open_store(spec: dict[str, Any], *, lease_s: float = 60.0, ttl_s: float = 8 * 24 * 3600.0):
    """A store from a picklable spec, so worker processes can open the same one."""
    if spec["kind"] == "memory":
        return MemoryStore(lease_s=lease_s, ttl_s=ttl_s)
    if spec["kind"] == "sqlite":
        return SqliteStore(spec["path"], lease_s=lease_s, ttl_s=ttl_s)
    return FirestoreStore(
        project=spec["project"],
        lease_s=lease_s,
        ttl_s=ttl_s,
        auth=AnonymousAuth(),
        collection=spec["collection"],
        emulator_host=spec["emulator_host"],
        transport=ConformingTransport(),
    )


class DelegatingStore(IdempotencyStore):
    """Any backend behind the store's rules: every storage primitive goes to ``backend``, so a test store
    overrides only the primitives it breaks or counts."""

    def __init__(self, backend: IdempotencyStore) -> None:
        super().__init__(lease_s=backend.lease_s, ttl_s=backend.ttl_s)
        self._backend = backend

    def _load(self, key):
        return self._backend._load(key)

    def _create(self, record):
        return self._backend._create(record)

    def _replace(self, record, expected_version):
        return self._backend._replace(record, expected_version)

    def _delete_if_version(self, key, expected_version):
        return self._backend._delete_if_version(key, expected_version)

    def _checking(self):
        return self._backend._checking()

    def _load_document(self, key):
        return self._backend._load_document(key)

    def _create_document(self, document):
        return self._backend._create_document(document)

    def _replace_document(self, document, expected_version):
        return self._backend._replace_document(document, expected_version)

    def _delete_document(self, key, expected_version):
        return self._backend._delete_document(key, expected_version)

    def _documents_of_kind(self, kind):
        return self._backend._documents_of_kind(kind)
