"""End to end: main.py under functions-framework, Google's Pub/Sub emulator pushing requests and checks
to it, the Operations API simulator answering, and result events pulled back from the results topic; in
both scheduling modes: checks as tasks of the Cloud Tasks stand-in (what deploy.sh deploys), and checks
refused until due and redelivered.

One stack per mode serves the module; every test uses operation names of its own, and messages read from the
shared pull subscriptions are kept in ``stack.seen`` so a test never loses another's.
"""

from __future__ import annotations

import base64
import json
import time

import pytest

from devkit.emulators import EmulatorUnavailable
from devkit.local_stack import LocalStack
from function._messages import RESULT_EVENT_TYPE, event_id

pytestmark = pytest.mark.emulator

ORG = "organizations/123456789"
# Checks fall due before the emulator's one-second redelivery, so each early check is refused once.
POLLING = {
    "OPCANCEL_CHECK_INITIAL_DELAY_S": "0.5",
    "OPCANCEL_CHECK_MULTIPLIER": "2",
    "OPCANCEL_CHECK_MAX_DELAY_S": "1",
    "OPCANCEL_CHECK_DEADLINE_S": "20",
}


@pytest.fixture(scope="module", params=["tasks", "redelivery"])
def stack(request, tmp_path_factory):
    try:
        running = LocalStack(
            polling=POLLING, workdir=str(tmp_path_factory.mktemp("stack")), mode=request.param
        ).__enter__()
    except EmulatorUnavailable as reason:
        pytest.skip(str(reason))
    running.seen = {"results": [], "checks": []}
    try:
        yield running
    finally:
        running.stop()


def messages_for(
    stack: LocalStack, operation: str, *, kind: str = "results", count: int = 1, settle_s: float = 1.5
) -> list[dict]:
    """The ``kind`` messages for ``operation``, once ``count`` arrived and no more came for ``settle_s``."""

    def matching() -> list[dict]:
        return [message for message in stack.seen[kind] if message["data"]["operation"] == operation]

    deadline = time.monotonic() + 30
    while len(matching()) < count and time.monotonic() < deadline:
        stack.seen[kind].extend(stack.pull(kind, 1, timeout_s=deadline - time.monotonic()))
    stack.seen[kind].extend(stack.pull(kind, 10**6, timeout_s=settle_s))
    return matching()


def log_lines(stack: LocalStack, operation: str, event: str | None = None) -> list[dict]:
    return [
        line
        for line in stack.function_logs()
        if line.get("operation") == operation and (event is None or line.get("event") == event)
    ]


def test_a_bare_name_published_as_gcloud_does_gives_one_cancelled_result(stack):
    name = f"{ORG}/operations/e2e-plain"
    message_id = stack.publish(name)
    (result,) = messages_for(stack, name)
    key = f"securitycenter.googleapis.com/{name}"
    attributes, data = result["attributes"], result["data"]
    assert attributes["ce-specversion"] == "1.0"
    assert attributes["ce-id"] == event_id(key, name, "CANCELLED")
    assert attributes["ce-source"] == "//opcancel/projects/opcancel-local"
    assert attributes["ce-type"] == RESULT_EVENT_TYPE
    assert attributes["ce-time"] == data["finished_at"]
    assert attributes["content-type"] == "application/json"
    assert (attributes["outcome"], attributes["operation"]) == ("CANCELLED", name)
    assert data["operation"] == name
    assert (data["location"], data["api_version"]) == ("global", "v2")
    assert data["outcome"] == "CANCELLED"
    assert data["idempotency_key"] == key
    assert data["requested_at"] <= data["finished_at"]
    assert data["checks"] == 1
    assert data["error"] is None
    assert data["source"] == {"kind": "pubsub", "message_id": message_id}
    assert data["final_operation"]["error"]["code"] == 1
    assert len(stack.simulator.cancel_calls(name)) == 1


def test_delayed_checks_travel_the_checks_topic_once_each_as_tasks_or_after_refusals_without(stack):
    name = f"{ORG}/operations/slow-2-e2e"
    stack.publish(name)
    (result,) = messages_for(stack, name)
    assert result["data"]["outcome"] == "CANCELLED"
    assert result["data"]["checks"] == 3

    checks = messages_for(stack, name, kind="checks", count=2, settle_s=0)
    assert [check["attributes"]["attempt"] for check in checks] == ["1", "2"]
    # Self-contained: everything a check needs travels with it.
    first = checks[0]["data"]
    assert first["idempotency_key"] == f"securitycenter.googleapis.com/{name}"
    assert first["requested_at"] < first["due_at"] < first["deadline_at"]
    assert first["source"]["kind"] == "pubsub"

    assert [line["attempt"] for line in log_lines(stack, name, "check_scheduled")] == [1, 2]
    deferred = [line for line in log_lines(stack, name, "retry_later") if line["reason"] == "check_not_due"]
    if stack.mode == "tasks":
        # Each check a task, created once, dispatched once at its time, and never refused as early.
        assert deferred == []
        tasks = [
            task
            for task in stack.cloudtasks.tasks.values()
            if json.loads(base64.b64decode(task.http_request["body"]))["messages"][0]["attributes"]["operation"] == name
        ]
        assert len(tasks) == 2
        assert all(len(task.attempts) == 1 and task.attempts[0][1] == 200 for task in tasks)
        assert all(task.attempts[0][0] >= task.schedule_time for task in tasks)
    else:
        assert deferred, "no check arrived early, so redelivery was not exercised"
    assert len(stack.simulator.cancel_calls(name)) == 1


def test_the_same_request_published_five_times_cancels_once_and_reports_once(stack):
    name = f"{ORG}/operations/slow-1-dup"
    for _ in range(5):
        stack.publish(name)
    messages_for(stack, name, settle_s=0)
    # Every copy after the first is acknowledged as a duplicate (some after a redelivery, when they
    # arrived while the first held the key); only then can no further result come.
    deadline = time.monotonic() + 20
    duplicates: list[dict] = []
    while len(duplicates) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
        duplicates = [line for line in log_lines(stack, name) if line.get("event") in ("chain_running", "finished")]
    assert len(duplicates) == 4
    assert len(messages_for(stack, name, settle_s=0.5)) == 1
    assert len(stack.simulator.cancel_calls(name)) == 1


def test_an_invalid_name_gives_one_rejected_result_and_no_api_call(stack):
    calls_before = len(stack.simulator.calls)
    text = f"{ORG}/operations/../../x"
    stack.publish(text)
    (result,) = messages_for(stack, text)
    assert result["attributes"]["outcome"] == "REJECTED"
    assert result["data"]["outcome"] == "REJECTED"
    assert result["data"]["error"] == "operation names must be organizations/ORG/operations/ID"
    assert len(stack.simulator.calls) == calls_before


def test_a_json_batch_with_a_message_key_reports_each_item(stack):
    names = [f"{ORG}/operations/batch-a", f"{ORG}/operations/missing-b"]
    body = json.dumps({"operations": [names[0], {"operation": names[1], "location": "eu"}]})
    stack.publish(body, idempotency_key="batch-e2e")
    outcomes = {}
    for name, settle_s in zip(names, (0, 1.5), strict=True):
        (result,) = messages_for(stack, name, settle_s=settle_s)
        outcomes[name] = (result["data"]["outcome"], result["data"]["idempotency_key"], result["data"]["location"])
    assert outcomes == {
        names[0]: ("CANCELLED", f"batch-e2e/securitycenter.googleapis.com/{names[0]}", "global"),
        names[1]: ("NOT_FOUND", f"batch-e2e/securitycenter.eu.rep.googleapis.com/{names[1]}", "eu"),
    }


def test_a_poison_message_is_acknowledged_not_redelivered(stack):
    stack.publish(b"\xff\xfe not text")
    stack.publish(b'{"operation": ')
    # Long enough for the emulator's one-second redelivery to have shown itself twice.
    time.sleep(2.5)
    reasons = [line["reason"] for line in stack.function_logs() if line.get("event") == "message_ignored"]
    assert reasons.count("body is not UTF-8 text") == 1
    assert sum(reason.startswith("body is not valid JSON") for reason in reasons) == 1


# Other Google APIs


def calls_for(stack: LocalStack, name: str) -> list[tuple[str, str]]:
    return [(call.method, call.path) for call in stack.simulator.calls if call.path.split(":")[0].endswith(name)]


def test_a_vertex_ai_regional_operation_is_cancelled_through_its_regional_host_with_a_check(stack):
    name = "projects/my-proj/locations/us-central1/operations/slow-1-vertex"
    full = f"//aiplatform.googleapis.com/{name}"
    message_id = stack.publish(full)
    (result,) = messages_for(stack, name)
    attributes, data = result["attributes"], result["data"]
    assert (attributes["outcome"], attributes["operation"]) == ("CANCELLED", name)
    assert attributes["ce-id"] == event_id(full, name, "CANCELLED")
    assert data["service"] == "aiplatform.googleapis.com"
    assert (data["location"], data["api_version"]) == ("us-central1", "v1")
    assert data["idempotency_key"] == full
    assert data["checks"] == 2
    assert data["source"] == {"kind": "pubsub", "message_id": message_id}
    host = "/us-central1-aiplatform.googleapis.com/v1/"
    assert calls_for(stack, name) == [
        ("POST", f"{host}{name}:cancel"),
        ("GET", f"{host}{name}"),
        ("GET", f"{host}{name}"),
    ]
    # The follow-up check carried the service across the checks topic.
    (check,) = messages_for(stack, name, kind="checks", settle_s=0)
    assert check["data"]["service"] == "aiplatform.googleapis.com"
    assert check["data"]["location"] == "us-central1"


def test_a_dataproc_operation_named_by_its_url_is_cancelled_through_its_regional_host(stack):
    name = "projects/my-proj/regions/europe-west1/operations/dataproc-e2e"
    stack.publish(f"https://europe-west1-dataproc.googleapis.com/v1/{name}")
    (result,) = messages_for(stack, name)
    data = result["data"]
    assert data["outcome"] == "CANCELLED"
    assert data["service"] == "dataproc.googleapis.com"
    assert (data["location"], data["api_version"]) == ("europe-west1", "v1")
    assert data["idempotency_key"] == f"//dataproc.googleapis.com/{name}"
    host = "/europe-west1-dataproc.googleapis.com/v1/"
    assert calls_for(stack, name) == [("POST", f"{host}{name}:cancel"), ("GET", f"{host}{name}")]


def test_an_unregistered_service_is_rejected_with_no_call(stack):
    calls_before = len(stack.simulator.calls)
    text = "//compute.googleapis.com/projects/my-proj/operations/operation-123"
    stack.publish(text)
    (result,) = messages_for(stack, text)
    assert result["data"]["outcome"] == "REJECTED"
    assert "service compute.googleapis.com is not in the registry" in result["data"]["error"]
    assert result["data"]["service"] is None
    assert len(stack.simulator.calls) == calls_before


# Hostile senders (issue 13), through the emulator and a strict UTF-8 stdout.


def test_a_lone_surrogate_in_a_reason_is_escaped_and_the_request_gets_its_one_result(stack):
    name = f"{ORG}/operations/e2e-hostile-reason"
    # Valid JSON, ASCII on the wire: json.dumps escapes the lone surrogate and the separators.
    stack.publish(json.dumps({"operation": name, "reason": "why\ud800\u2028\u202e"}))
    (result,) = messages_for(stack, name)
    assert result["data"]["outcome"] == "CANCELLED"
    (sent,) = log_lines(stack, name, "cancel_sent")
    assert sent["reason"] == "why\\ud800\\u2028\\u202e"
    assert "Traceback" not in stack.function_output()
    assert len(stack.simulator.cancel_calls(name)) == 1


def test_an_explicit_key_equal_to_a_derived_key_does_not_block_that_operation(stack):
    victim = f"{ORG}/operations/e2e-victim"
    squatter = json.dumps({"operation": "not a name", "idempotency_key": f"securitycenter.googleapis.com/{victim}"})
    stack.publish(squatter)
    (rejected,) = messages_for(stack, "not a name")
    # Reported as the squatter gave it, which reads like the victim's key; stored apart, so it blocks nothing.
    assert rejected["data"]["idempotency_key"] == f"securitycenter.googleapis.com/{victim}"
    stack.publish(victim)
    (result,) = messages_for(stack, victim)
    assert result["data"]["outcome"] == "CANCELLED"
    assert result["data"]["idempotency_key"] == f"securitycenter.googleapis.com/{victim}"
    assert result["attributes"]["ce-id"] != rejected["attributes"]["ce-id"]


def test_deeply_nested_json_is_acknowledged_once_with_a_clear_reason(stack):
    stack.publish(b'{"operation": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    # Long enough for the emulator's one-second redelivery to have shown itself twice.
    time.sleep(2.5)
    reasons = [line["reason"] for line in stack.function_logs() if line.get("event") == "message_ignored"]
    assert reasons.count("body is JSON nested deeper than 64 levels") == 1
    assert "Traceback" not in stack.function_output()


def test_a_check_published_to_the_requests_topic_is_rejected_as_a_request(stack):
    name = f"{ORG}/operations/e2e-forged"
    body = {
        "operation": name,
        "location": "global",
        "api_version": "v1beta1",
        "idempotency_key": f"securitycenter.googleapis.com/{name}",
        "attempt": 1,
        "due_at": "2020-01-01T00:00:00.000Z",
        "deadline_at": "2099-01-01T00:00:00.000Z",
        "requested_at": "2020-01-01T00:00:00.000Z",
        "source": {"kind": "pubsub"},
    }
    stack.publish(json.dumps(body), opcancel_kind="check", operation=name, attempt="1")
    (result,) = messages_for(stack, name)
    assert result["data"]["outcome"] == "REJECTED"
    assert "attempt" in result["data"]["error"]
    assert not [call for call in stack.simulator.calls if call.path.endswith(name)]
