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


@functions_framework.cloud_event
def on_event(cloud_event):
    name = base64.b64decode(cloud_event.data["message"]["data"]).decode()
    _, organization, _, operation_id = name.split("/")
    ref = OperationRef(organization, operation_id)
    api.cancel(ref)
    operation = api.get(ref)
    result = json.dumps({"operation": name, "final_operation": operation}).encode()
    publisher.publish_all(settings.results_topic, [(result, {})])
