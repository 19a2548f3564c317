"""The scheduler adapters, and the devkit's Cloud Tasks stand-in they are tested against.

``CloudTasksScheduler`` over ``httpx.MockTransport`` for what each answer means, and over the stand-in
(in-process, ``httpx.WSGITransport``, a fake clock) for what a task does once created; the stand-in itself
against the v2 REST reference's rules for ``tasks.create``.
"""

from __future__ import annotations

import base64
import hashlib
import json

import httpx
import pytest

from devkit.cloudtasks import CloudTasks
from function import CloudTasksScheduler, OperationRef, RedeliveryScheduler, format_time, parse_time, task_id
from function._gcp.auth import Authenticator
from function._messages import check_message
from function._model import CheckRequest, Source, SourceKind
from function.errors import ScheduleFailed
from tests.support import FakeClock, MemoryPublisher, Scripted

QUEUE = "projects/sec-ops-prod/locations/europe-west1/queues/opcancel-checks"
ACCOUNT = "opcancel-tasks@sec-ops-prod.iam.gserviceaccount.com"
CREATE_URL = f"https://cloudtasks.googleapis.com/v2/{QUEUE}/tasks"
NOW = 1_790_000_000.0


def a_check(attempt: int = 1, due_in: float = 5.0) -> CheckRequest:
    return CheckRequest(
        ref=OperationRef("organizations/123/operations/abc", "global", "v2"),
        idempotency_key="securitycenter.googleapis.com/organizations/123/operations/abc",
        attempt=attempt,
        due_at=NOW + due_in,
        deadline_at=NOW + 3600,
        requested_at=NOW,
        source=Source(SourceKind.PUBSUB, message_id="m-1"),
    )


class Auth(Authenticator):
    def __init__(self) -> None:
        self.refreshes = 0

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer token-{self.refreshes}"}

    def refresh(self) -> bool:
        self.refreshes += 1
        return True


def scheduler(transport: httpx.BaseTransport, clock: FakeClock | None = None, **overrides) -> CloudTasksScheduler:
    options = {
        "queue": QUEUE,
        "project": "sec-ops-prod",
        "checks_topic": "opcancel-checks",
        "auth": Auth(),
        "clock": clock or FakeClock(NOW),
        "service_account": ACCOUNT,
        "transport": transport,
        "jitter": lambda: 0.5,
        **overrides,
    }
    return CloudTasksScheduler(**options)


def answer(status: int, rpc: str | None = None) -> httpx.Response:
    if rpc is None:
        return httpx.Response(status, json={"name": f"{QUEUE}/tasks/x"})
    return httpx.Response(status, json={"error": {"code": status, "message": rpc.lower(), "status": rpc}})


# --- the create request -------------------------------------------------------------------------


@pytest.mark.parametrize(("due_in", "milliseconds"), [(1.0, ".000Z"), (2.5, ".500Z"), (3.375, ".375Z")])
def test_a_task_is_scheduled_to_the_millisecond_of_its_checks_due_time_never_rounded_to_the_second(
    due_in, milliseconds
):
    """The polling policy's delays (1 s, then 1.5 s, 2.25 s...) reach Cloud Tasks as they are."""
    script = Scripted(answer(200))
    scheduler(httpx.MockTransport(script)).schedule(a_check(due_in=due_in))
    schedule_time = json.loads(script.requests[0].content)["task"]["scheduleTime"]
    assert parse_time(schedule_time) - NOW == due_in
    assert schedule_time.endswith(milliseconds)


def test_a_check_becomes_a_named_task_at_its_due_time_publishing_the_check_message_with_an_oauth_token():
    script = Scripted(answer(200))
    scheduler(httpx.MockTransport(script)).schedule(a_check(attempt=3))
    (request,) = script.requests
    assert (request.method, str(request.url)) == ("POST", CREATE_URL)
    assert request.headers["authorization"] == "Bearer token-0"
    task = json.loads(request.content)["task"]
    assert set(task) == {"name", "scheduleTime", "httpRequest"}
    key = a_check().idempotency_key
    digest = hashlib.sha256((key + "\n3").encode()).hexdigest()
    assert task["name"] == f"{QUEUE}/tasks/{digest}"
    assert task["name"].endswith(task_id(key, 3))
    assert task["scheduleTime"] == format_time(NOW + 5)
    http = task["httpRequest"]
    assert http["url"] == "https://pubsub.googleapis.com/v1/projects/sec-ops-prod/topics/opcancel-checks:publish"
    assert http["httpMethod"] == "POST"
    assert http["headers"] == {"Content-Type": "application/json"}
    assert http["oauthToken"] == {
        "serviceAccountEmail": ACCOUNT,
        "scope": "https://www.googleapis.com/auth/cloud-platform",
    }
    (message,) = json.loads(base64.b64decode(http["body"]))["messages"]
    data, attributes = check_message(a_check(attempt=3))
    assert base64.b64decode(message["data"]) == data
    assert message["attributes"] == attributes


def test_task_names_differ_per_key_and_attempt_and_are_not_sequential():
    names = {task_id("k", attempt) for attempt in range(1, 50)} | {task_id("k2", 1)}
    assert len(names) == 50
    assert all(len(name) == 64 and set(name) <= set("0123456789abcdef") for name in names)


def test_against_the_pubsub_emulator_the_task_publishes_there_without_a_token():
    script = Scripted(answer(200))
    scheduler(
        httpx.MockTransport(script), pubsub_emulator_host="127.0.0.1:8085", endpoint="http://127.0.0.1:8123"
    ).schedule(a_check())
    (request,) = script.requests
    assert str(request.url) == f"http://127.0.0.1:8123/v2/{QUEUE}/tasks"
    http = json.loads(request.content)["task"]["httpRequest"]
    assert http["url"] == "http://127.0.0.1:8085/v1/projects/sec-ops-prod/topics/opcancel-checks:publish"
    assert "oauthToken" not in http


# --- what each answer means ---------------------------------------------------------------------


def test_already_exists_counts_as_scheduled():
    script = Scripted(answer(409, "ALREADY_EXISTS"))
    scheduler(httpx.MockTransport(script)).schedule(a_check())
    assert len(script.requests) == 1


def test_an_unavailable_create_is_retried_then_succeeds():
    clock = FakeClock(NOW)
    script = Scripted(answer(503, "UNAVAILABLE"), httpx.ConnectError("refused"), answer(200))
    scheduler(httpx.MockTransport(script), clock).schedule(a_check())
    assert len(script.requests) == 3
    assert len(clock.slept) == 2


def test_a_create_that_stays_unavailable_is_a_schedule_failure():
    script = Scripted(answer(503, "UNAVAILABLE"))
    with pytest.raises(ScheduleFailed, match="HTTP 503"):
        scheduler(httpx.MockTransport(script)).schedule(a_check(attempt=2))
    assert len(script.requests) == 3


@pytest.mark.parametrize(("status", "rpc"), [(400, "INVALID_ARGUMENT"), (403, "PERMISSION_DENIED"), (404, "NOT_FOUND")])
def test_a_refused_create_is_a_schedule_failure_at_once(status, rpc):
    script = Scripted(answer(status, rpc))
    with pytest.raises(ScheduleFailed, match=rpc):
        scheduler(httpx.MockTransport(script)).schedule(a_check())
    assert len(script.requests) == 1


def test_a_401_refreshes_the_token_once():
    script = Scripted(answer(401, "UNAUTHENTICATED"), answer(200))
    auth = Auth()
    scheduler(httpx.MockTransport(script), auth=auth).schedule(a_check())
    assert auth.refreshes == 1
    assert script.requests[1].headers["authorization"] == "Bearer token-1"


def test_redelivery_publishes_the_check_at_once():
    publisher = MemoryPublisher()
    RedeliveryScheduler(publisher, "opcancel-checks").schedule(a_check())
    assert publisher.on("opcancel-checks") == [check_message(a_check())]
    assert RedeliveryScheduler.early_tolerance_s == 0.0
    assert CloudTasksScheduler.early_tolerance_s >= 1.0


# --- through the stand-in ------------------------------------------------------------------------


class Dispatched:
    """The stand-in's HTTP side: records each dispatch, answering from ``statuses`` (the last repeats)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses) or [200]
        self.calls: list[tuple[str, str, dict[str, str], bytes]] = []

    def __call__(self, url: str, method: str, headers: dict[str, str], body: bytes) -> int:
        self.calls.append((url, method, headers, body))
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]


def stand_in(clock: FakeClock, dispatched: Dispatched, **options) -> CloudTasks:
    return CloudTasks(queues=[QUEUE], clock=clock.now, deliver=dispatched, **options)


def test_through_the_stand_in_a_task_is_dispatched_once_at_its_time_and_a_second_create_is_harmless():
    clock, dispatched = FakeClock(NOW), Dispatched()
    tasks = stand_in(clock, dispatched)
    adapter = scheduler(httpx.WSGITransport(app=tasks), clock, endpoint="http://cloudtasks.test")
    adapter.schedule(a_check())
    adapter.schedule(a_check())
    assert [status for status, _ in tasks.creates] == [200, 409]
    assert tasks.dispatch_due() == 0
    clock.advance(4.9)
    assert tasks.dispatch_due() == 0
    clock.advance(0.1)
    assert tasks.dispatch_due() == 1
    ((url, method, headers, body),) = dispatched.calls
    assert url == "https://pubsub.googleapis.com/v1/projects/sec-ops-prod/topics/opcancel-checks:publish"
    assert headers["Authorization"] == f"Bearer stand-in-token-for-{ACCOUNT}"
    assert headers["Content-Type"] == "application/json"
    (message,) = json.loads(body)["messages"]
    assert base64.b64decode(message["data"]) == check_message(a_check())[0]
    # A task that ran keeps its name: creating it again is still a duplicate, and nothing runs twice.
    adapter.schedule(a_check())
    clock.advance(100)
    assert tasks.dispatch_due() == 0
    assert len(dispatched.calls) == 1


def test_the_stand_in_retries_a_failed_dispatch_with_growing_backoff():
    clock, dispatched = FakeClock(NOW), Dispatched(503, 500, 200)
    tasks = stand_in(clock, dispatched, min_backoff_s=1.0, max_backoff_s=10.0)
    scheduler(httpx.WSGITransport(app=tasks), clock, endpoint="http://t").schedule(a_check(due_in=0))
    times = []
    while (due := tasks.next_due_at()) is not None:
        clock.current = due
        times.append(due - NOW)
        tasks.dispatch_due()
    assert times == [0, 1, 3]
    (task,) = tasks.tasks.values()
    assert [status for _, status in task.attempts] == [503, 500, 200]
    assert task.succeeded_at == NOW + 3


def post(tasks: CloudTasks, body: object, queue: str = QUEUE) -> httpx.Response:
    with httpx.Client(transport=httpx.WSGITransport(app=tasks), base_url="http://t") as client:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return client.post(f"/v2/{queue}/tasks", content=content, headers={"Content-Type": "application/json"})


def http_task(**changes) -> dict:
    request = {"url": "http://127.0.0.1:1/x", "httpMethod": "POST", "body": base64.b64encode(b"{}").decode()}
    return {
        "task": {"name": f"{QUEUE}/tasks/t1", "scheduleTime": format_time(NOW + 1), "httpRequest": request, **changes}
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "Invalid JSON"),
        ([], "expected an object"),
        ({}, "task is required"),
        ({"task": {}, "extra": 1}, 'Unknown name "extra"'),
        (http_task(unknown=1), 'Unknown name "unknown"'),
        (http_task(name="t1"), "Task name must be"),
        (http_task(name="projects/x/locations/y/queues/other/tasks/t1"), "does not belong"),
        (http_task(name=f"{QUEUE}/tasks/has space"), "Task name must be"),
        (http_task(scheduleTime="tomorrow"), "task.scheduleTime"),
        (http_task(dispatchDeadline="10"), "task.dispatchDeadline"),
        (http_task(scheduleTime=format_time(NOW + 31 * 24 * 3600)), "30 days"),
        (http_task(httpRequest={"httpMethod": "POST"}), "url"),
        (http_task(httpRequest={"url": "ftp://x"}), "url"),
        (http_task(httpRequest={"url": "http://x", "httpMethod": "FETCH"}), "task.httpRequest.httpMethod"),
        (http_task(httpRequest={"url": "http://x", "httpMethod": "GET", "body": "e30="}), "not allowed"),
        (http_task(httpRequest={"url": "http://x", "body": "***"}), "task.httpRequest.body"),
        (http_task(httpRequest={"url": "http://x", "oauthToken": {"serviceAccountEmail": ACCOUNT, "x": 1}}), '"x"'),
        (http_task(httpRequest={"url": "http://x", "headers": {"a": 1}}), "headers"),
        (http_task(httpRequest={"url": "http://x", "oauthToken": {}}), "service_account_email"),
        (
            http_task(httpRequest={"url": "http://x", "oauthToken": {"serviceAccountEmail": ACCOUNT}, "oidcToken": {}}),
            "Only one",
        ),
        ({"task": {"name": f"{QUEUE}/tasks/t1"}}, "http_request is required"),
    ],
)
@pytest.mark.off_contract
def test_the_stand_in_refuses_malformed_creates_with_invalid_argument(body, message):
    tasks = CloudTasks(queues=[QUEUE], clock=FakeClock(NOW).now, deliver=Dispatched())
    response = post(tasks, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert message in error["message"]
    assert tasks.tasks == {}


def test_the_stand_in_answers_google_error_bodies_for_an_unknown_queue_and_a_duplicate_name():
    tasks = CloudTasks(queues=[QUEUE], clock=FakeClock(NOW).now, deliver=Dispatched())
    missing = post(tasks, http_task(name="projects/p/locations/l/queues/q/tasks/t1"), "projects/p/locations/l/queues/q")
    assert (missing.status_code, missing.json()["error"]["status"]) == (404, "NOT_FOUND")
    created = post(tasks, http_task())
    assert created.status_code == 200
    assert created.json()["name"] == f"{QUEUE}/tasks/t1"
    assert created.json()["view"] == "BASIC" and "body" not in created.json()["httpRequest"]
    again = post(tasks, http_task())
    assert again.status_code == 409
    assert again.json() == {
        "error": {"code": 409, "message": "Requested entity already exists", "status": "ALREADY_EXISTS"}
    }


def test_the_stand_in_gives_a_nameless_task_a_name_and_runs_a_past_schedule_at_once():
    clock, dispatched = FakeClock(NOW), Dispatched()
    tasks = stand_in(clock, dispatched)
    body = http_task(scheduleTime=format_time(NOW - 60))
    del body["task"]["name"]
    created = post(tasks, body).json()
    assert created["name"].startswith(f"{QUEUE}/tasks/")
    assert tasks.dispatch_due() == 1


def test_the_stand_in_injects_failed_creates_lost_tasks_and_failed_dispatches():
    clock = FakeClock(NOW)
    failing = stand_in(clock, Dispatched(), create_failure_rate=1.0)
    response = post(failing, http_task())
    assert (response.status_code, response.json()["error"]["status"]) == (503, "UNAVAILABLE")
    assert failing.tasks == {}

    dispatched = Dispatched()
    losing = stand_in(clock, dispatched, lose_rate=1.0)
    assert post(losing, http_task()).status_code == 200
    clock.advance(10)
    assert losing.dispatch_due() == 0 and dispatched.calls == []

    # A lost task is chosen by its name and the seed, so one seed loses the same tasks in any order of creates.
    names = [f"{QUEUE}/tasks/t{index}" for index in range(20)]
    lost = []
    for order in (names, names[::-1]):
        halves = stand_in(clock, Dispatched(), lose_rate=0.5, seed=7)
        for name in order:
            post(halves, http_task(name=name))
        lost.append({task.name for task in halves.tasks.values() if task.lost})
    assert lost[0] == lost[1] and 0 < len(lost[0]) < len(names)

    flaky = stand_in(clock, dispatched, dispatch_failure_rate=1.0, max_attempts=3)
    post(flaky, http_task(scheduleTime=format_time(clock.now())))
    for _ in range(5):
        clock.advance(10)
        flaky.dispatch_due()
    (task,) = flaky.tasks.values()
    assert [status for _, status in task.attempts] == [None, None, None]
    assert dispatched.calls == []


def test_the_stand_in_accepts_what_the_schema_accepts_proto_names_and_fields_it_does_not_act_on():
    clock, dispatched = FakeClock(NOW), Dispatched()
    tasks = stand_in(clock, dispatched)
    body = {
        "task": {
            "name": f"{QUEUE}/tasks/t1",
            "schedule_time": format_time(NOW),
            "createTime": format_time(NOW - 5),
            "dispatchDeadline": "30s",
            "retryConfig": {"maxAttempts": 3, "minBackoff": "0.5s"},
            "http_request": {
                "url": "http://127.0.0.1:1/x",
                "http_method": "HTTP_METHOD_UNSPECIFIED",
                "headers": {"X-Custom_Name": "v"},
                "body": base64.b64encode(b'{"a":1}').decode().rstrip("="),
                "oauth_token": {"service_account_email": ACCOUNT, "scope": "s"},
            },
        },
        "responseView": "FULL",
    }
    assert post(tasks, body).status_code == 200
    assert tasks.dispatch_due() == 1
    ((_, method, headers, sent),) = dispatched.calls
    assert (method, sent, headers["X-Custom_Name"]) == ("POST", b'{"a":1}', "v")
    assert headers["Authorization"] == f"Bearer stand-in-token-for-{ACCOUNT}"


@pytest.mark.parametrize(
    ("status", "status_name", "violations"),
    [
        (409, "ABORTED", None),
        (429, "RESOURCE_EXHAUSTED", None),
        (503, "UNAVAILABLE", None),
        (400, "INVALID_ARGUMENT", [{"field": "task.schedule_time", "description": "too far"}]),
    ],
)
def test_only_already_exists_counts_as_scheduled_among_the_errors_tasks_create_documents(
    status, status_name, violations
):
    # A 409 ABORTED is not "the task exists": treating every 409 as scheduled would wait for a check never created.
    clock = FakeClock(NOW)
    tasks = stand_in(clock, Dispatched())
    tasks.inject(status, status_name=status_name, count=50, field_violations=violations)
    adapter = scheduler(httpx.WSGITransport(app=tasks), clock, endpoint="http://cloudtasks.test")
    with pytest.raises(ScheduleFailed, match=status_name):
        adapter.schedule(a_check())
    assert tasks.tasks == {}
    answered = post(tasks, http_task()).json()["error"]
    assert (answered["code"], answered["status"]) == (status, status_name)
    if violations:
        assert answered["details"][0]["fieldViolations"] == violations


def test_a_reused_task_name_is_already_exists_and_counts_as_scheduled_through_the_stand_in():
    clock = FakeClock(NOW)
    tasks = stand_in(clock, Dispatched())
    adapter = scheduler(httpx.WSGITransport(app=tasks), clock, endpoint="http://cloudtasks.test")
    adapter.schedule(a_check())
    tasks.inject(409, status_name="ALREADY_EXISTS")
    adapter.schedule(a_check())
    assert [status for status, _ in tasks.creates] == [200, 409]
