"""End to end: main.py under functions-framework, Google's Pub/Sub emulator pushing requests and checks
to it, the Operations API simulator answering, and result events pulled back from the results topic."""

from __future__ import annotations

import json
import time

import pytest

from devkit.emulators import EmulatorUnavailable
from devkit.local_stack import LocalStack
from function._core import RESULT_EVENT_TYPE, event_id

pytestmark = pytest.mark.emulator

ORG = "organizations/123456789"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    try:
        with LocalStack(workdir=str(tmp_path_factory.mktemp("stack"))) as running:
            running.seen = []
            yield running
    except EmulatorUnavailable as reason:
        pytest.skip(str(reason))


def results_for(stack: LocalStack, operation: str, *, count: int = 1, settle_s: float = 1.5) -> list[dict]:
    """Results for ``operation``, once ``count`` arrived and no more came for ``settle_s``.

    Results of other operations can arrive meanwhile; they stay in ``stack.seen`` for their own tests.
    """

    def matching() -> list[dict]:
        return [result for result in stack.seen if result["data"]["operation"] == operation]

    deadline = time.monotonic() + 60
    while len(matching()) < count and time.monotonic() < deadline:
        stack.seen.extend(stack.pull_results(1, timeout_s=deadline - time.monotonic()))
    stack.seen.extend(stack.pull_results(10**6, timeout_s=settle_s))
    return matching()


def test_a_bare_name_published_with_gcloud_semantics_gives_one_cancelled_result(stack):
    name = f"{ORG}/operations/e2e-plain"
    message_id = stack.publish(name)
    (result,) = results_for(stack, name)
    key = f"securitycenter.googleapis.com/{name}"
    attributes, data = result["attributes"], result["data"]
    assert attributes["ce-specversion"] == "1.0"
    assert attributes["ce-id"] == event_id(key, name)
    assert attributes["ce-source"] == "//opcancel/projects/opcancel-local"
    assert attributes["ce-type"] == RESULT_EVENT_TYPE
    assert attributes["ce-time"] == data["finished_at"]
    assert attributes["content-type"] == "application/json"
    assert (attributes["outcome"], attributes["operation"]) == ("CANCELLED", name)
    assert data["outcome"] == "CANCELLED"
    assert data["idempotency_key"] == key
    assert data["checks"] == 1
    assert data["error"] is None
    assert data["source"] == {"kind": "pubsub", "message_id": message_id}
    assert data["final_operation"]["error"]["code"] == 1


def test_delayed_checks_are_deferred_by_redelivery_until_the_operation_is_cancelled(stack):
    name = f"{ORG}/operations/slow-2-e2e"
    stack.publish(name)
    (result,) = results_for(stack, name)
    assert result["data"]["outcome"] == "CANCELLED"
    assert result["data"]["checks"] == 3
    events = [line for line in stack.function_logs() if line.get("operation") == name]
    scheduled = [line["attempt"] for line in events if line.get("event") == "check_scheduled"]
    assert scheduled == [1, 2]
    assert any(line.get("reason") == "check_not_due" for line in events)


def test_duplicate_publishes_cancel_once_and_report_once(stack):
    name = f"{ORG}/operations/slow-1-dup"
    for _ in range(5):
        stack.publish(name)
    results = results_for(stack, name, settle_s=4)
    assert len(results) == 1
    assert len(stack.simulator.cancel_calls(name)) == 1


def test_an_invalid_name_gives_one_rejected_result_and_no_api_call(stack):
    calls_before = len(stack.simulator.calls)
    text = f"{ORG}/operations/../../x"
    stack.publish(text)
    (result,) = results_for(stack, text)
    assert result["attributes"]["outcome"] == "REJECTED"
    assert result["data"]["error"] == "operation names must be organizations/ORG/operations/ID"
    assert len(stack.simulator.calls) == calls_before


def test_a_json_batch_with_attributes_reports_each_item(stack):
    names = [f"{ORG}/operations/batch-a", f"{ORG}/operations/missing-b"]
    body = json.dumps({"operations": [names[0], {"operation": names[1], "location": "eu"}]})
    stack.publish(body, idempotency_key="batch-e2e")
    outcomes = {}
    for name in names:
        (result,) = results_for(stack, name)
        outcomes[name] = (result["data"]["outcome"], result["data"]["idempotency_key"], result["data"]["location"])
    assert outcomes == {
        names[0]: ("CANCELLED", f"batch-e2e/securitycenter.googleapis.com/{names[0]}", "global"),
        names[1]: ("NOT_FOUND", f"batch-e2e/securitycenter.eu.rep.googleapis.com/{names[1]}", "eu"),
    }


def test_a_poison_message_is_acknowledged_not_redelivered(stack):
    stack.publish(b"\xff\xfe not text")
    stack.publish(b'{"operation": ')
    stack.seen.extend(stack.pull_results(10**6, timeout_s=3))
    ignored = [line for line in stack.function_logs() if line.get("event") == "message_ignored"]
    reasons = [line["reason"] for line in ignored]
    # Each was handled exactly once: acknowledged, so Pub/Sub did not push it again.
    assert reasons.count("body is not UTF-8 text") == 1
    assert sum(reason.startswith("body is not valid JSON") for reason in reasons) == 1
