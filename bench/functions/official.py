"""What a user would write instead of opcancel: Google's own Security Command Center client (REST
transport, so it can reach the simulator) and Pub/Sub client, created once, with their defaults."""

import base64
import json
import os

import functions_framework
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, securitycenter_v1
from google.protobuf import json_format

client = securitycenter_v1.SecurityCenterClient(
    transport="rest",
    # Application Default Credentials when the bench sets up a metadata server, as on Cloud.
    credentials=None if os.environ.get("BENCH_CREDENTIALS") == "adc" else AnonymousCredentials(),
    client_options=ClientOptions(api_endpoint=os.environ["OPCANCEL_API_ENDPOINT"]),
)
publisher = pubsub_v1.PublisherClient()
topic = publisher.topic_path(os.environ["GOOGLE_CLOUD_PROJECT"], os.environ["OPCANCEL_RESULTS_TOPIC"])


@functions_framework.cloud_event
def on_event(cloud_event):
    name = base64.b64decode(cloud_event.data["message"]["data"]).decode().strip()
    client.cancel_operation(request={"name": name})
    operation = client.get_operation(request={"name": name})
    result = {"operation": name, "final_operation": json_format.MessageToDict(operation)}
    publisher.publish(topic, json.dumps(result).encode()).result(timeout=20)
