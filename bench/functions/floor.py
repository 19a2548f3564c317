"""The floor for warm load: the Operations API calls and the result publish opcancel makes for one
request, with the same clients built the same way, and nothing else (no validation, no idempotency
store, no logging)."""

import base64
import json
import os

import functions_framework

from function import (
    Logger,
    OperationRef,
    Settings,
    SharedTransport,
    SystemClock,
    build_api,
    build_auth,
    build_publisher,
)

settings = Settings.from_env(os.environ)
transport = SharedTransport()
clock = SystemClock()
auth = build_auth(settings, clock=clock, transport=transport)
api = build_api(settings, auth=auth, clock=clock, log=Logger(), transport=transport)
publisher = build_publisher(settings, auth=auth, clock=clock, transport=transport)

# Fixed values where opcancel computes them (times, the event id): the floor publishes what opcancel
# publishes, but does not do the work of building it.
_TIME = "2026-01-01T00:00:00.000Z"
_ATTRIBUTES = {
    "ce-specversion": "1.0",
    "ce-id": "0" * 32,
    "ce-source": f"//opcancel/projects/{settings.project}",
    "ce-type": "dev.opcancel.operation.result.v1",
    "ce-time": _TIME,
    "content-type": "application/json",
    "outcome": "CANCELLED",
}


def result_message(name: str, operation: dict, message_id: str) -> tuple[bytes, dict[str, str]]:
    """A message of the fields, attributes and size of opcancel's result for this request."""
    result = {
        "operation": name,
        "location": "global",
        "api_version": "v2",
        "service": "securitycenter.googleapis.com",
        "outcome": "CANCELLED",
        "idempotency_key": f"securitycenter.googleapis.com/{name}",
        "dry_run": False,
        "requested_at": _TIME,
        "finished_at": _TIME,
        "checks": 1,
        "final_operation": operation,
        "error": None,
        "source": {"kind": "pubsub", "message_id": message_id},
    }
    data = json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode()
    return data, {**_ATTRIBUTES, "ce-subject": name, "operation": name}


@functions_framework.cloud_event
def on_event(cloud_event):
    message = cloud_event.data["message"]
    name = base64.b64decode(message["data"]).decode()
    ref = OperationRef(name)
    api.cancel(ref)
    operation = api.get(ref)
    publisher.publish_all(settings.results_topic, [result_message(name, operation, message["messageId"])])
