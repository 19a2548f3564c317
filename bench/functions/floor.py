"""The floor for warm load: the Operations API calls and the result publish opcancel makes for one
request, with the same clients, and nothing else (no validation, no idempotency, no logging)."""

import base64
import json
import os

import functions_framework

from function import AnonymousAuth, Logger, OperationRef, OperationsClient, PubSubPublisher, SystemClock

api = OperationsClient(
    auth=AnonymousAuth(), clock=SystemClock(), log=Logger(), endpoint=os.environ["OPCANCEL_API_ENDPOINT"]
)
publisher = PubSubPublisher(os.environ["GOOGLE_CLOUD_PROJECT"])
RESULTS_TOPIC = os.environ["OPCANCEL_RESULTS_TOPIC"]


@functions_framework.cloud_event
def on_event(cloud_event):
    name = base64.b64decode(cloud_event.data["message"]["data"]).decode()
    _, organization, _, operation_id = name.split("/")
    ref = OperationRef(organization, operation_id)
    api.cancel(ref)
    operation = api.get(ref)
    publisher.publish_all(RESULTS_TOPIC, [(json.dumps({"operation": name, "final_operation": operation}).encode(), {})])
