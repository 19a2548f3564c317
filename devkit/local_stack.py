"""opcancel running locally for real: main.py under functions-framework, the Operations API simulator,
Google's Pub/Sub emulator with push subscriptions delivering requests and checks to the function, and
(by default) the devkit's Cloud Tasks stand-in scheduling each check, as deploy.sh deploys it.

Used by ``./demo.sh`` and by the emulator test tier, so both exercise the same wiring a deployment has.
``mode="redelivery"`` runs without a queue: checks are published at once and refused until due.

Each push subscription pushes to ``{function}/projects/P/topics/T``: functions-framework turns a raw
push body into a CloudEvent whose source names the topic in that path, as Eventarc's does, and the
function takes a message for a check only when that source is the checks topic.

On the emulator's redelivery (measured with gcloud 528, Pub/Sub emulator 2025.06): a push answered
with an error is redelivered about 1 s later, every time, when the subscription has no retry
policy. A retry policy is honoured only coarsely: the first retry still comes after 1 s, later
ones after roughly ``minimum_backoff`` + 2 s, never sooner than 3 s, so sub-second backoffs do
nothing. The subscriptions here therefore have no retry policy: an early check is redelivered
about a second later, which is the fastest the emulator offers. Refusals do not slow other
messages on the same subscription, and it pushes about two messages at a time.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from devkit import cloudtasks
from devkit.emulators import Emulator, free_port, stop_group
from devkit.simulator import Simulator, serve

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = "opcancel-local"
TOPICS = {"requests": "opcancel-requests", "checks": "opcancel-checks", "results": "opcancel-results"}
#: Pull subscriptions the stack reads: every result, and a copy of every check message (the push one consumes them).
PULL_SUBSCRIPTIONS = {"results": "opcancel-results-pull", "checks": "opcancel-checks-tap"}
TASKS_QUEUE = f"projects/{PROJECT}/locations/local/queues/opcancel-checks"
MODES = ("tasks", "redelivery")
#: Slow enough that the demo shows a check waiting for its time (a task's schedule, or, without a queue, refusals).
DEMO_POLLING = {
    "OPCANCEL_CHECK_INITIAL_DELAY_S": "1",
    "OPCANCEL_CHECK_MULTIPLIER": "2",
    "OPCANCEL_CHECK_MAX_DELAY_S": "4",
    "OPCANCEL_CHECK_DEADLINE_S": "30",
}


class StackFailed(Exception):
    """The function did not start: a failure of this project, never a reason to skip."""


class LocalStack:
    """Bring everything up with ``with LocalStack() as stack:``; everything started is stopped on exit."""

    def __init__(
        self,
        *,
        polling: dict[str, str] | None = None,
        workdir: str | None = None,
        mode: str = "tasks",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.simulator = Simulator()
        self.mode = mode
        #: The Cloud Tasks stand-in, in tasks mode; its ``tasks`` tell what was scheduled and dispatched.
        self.cloudtasks: cloudtasks.CloudTasks | None = None
        # An empty dict is a choice too: the function's own defaults.
        self._polling = DEMO_POLLING if polling is None else polling
        self._extra_env = extra_env or {}
        self._workdir = workdir
        #: How to stop each thing started, in the order started.
        self._stops: list[Callable[[], None]] = []

    def __enter__(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        server = serve(self.simulator)
        self._stops.append(lambda: (server.shutdown(), server.server_close()))
        self.api_endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        self.pubsub = Emulator("pubsub", project=PROJECT)
        self._stops.append(self.pubsub.stop)
        self.tasks_endpoint: str | None = None
        if self.mode == "tasks":
            self.cloudtasks = cloudtasks.CloudTasks(queues=[TASKS_QUEUE])
            served = cloudtasks.serve(self.cloudtasks)
            self._stops.append(served.stop)
            self.tasks_endpoint = served.endpoint
        # The Google clients in this process (topic admin, publish, pull) find the emulator this way.
        saved = os.environ.get("PUBSUB_EMULATOR_HOST")
        os.environ["PUBSUB_EMULATOR_HOST"] = self.pubsub.host
        self._stops.append(lambda: _restore_env("PUBSUB_EMULATOR_HOST", saved))
        from google.cloud import pubsub_v1

        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()
        self._stops.append(self._close_clients)
        self._start_function()
        self._wire_topics()

    def _start_function(self) -> None:
        directory = self._workdir or tempfile.mkdtemp(prefix="opcancel-")
        self.function_log_path = pathlib.Path(directory) / "function.log"
        port = free_port()
        self.function_url = f"http://127.0.0.1:{port}"
        # Only the settings below: an OPCANCEL_* variable left in the developer's shell must not change the run.
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("OPCANCEL_")}
        env = {
            **inherited,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "PUBSUB_EMULATOR_HOST": self.pubsub.host,
            # {host} keeps the host each call was meant for in the simulator's paths, so tests see it derived.
            "OPCANCEL_API_ENDPOINT": f"{self.api_endpoint}/{{host}}",
            "OPCANCEL_AUTH": "anonymous",
            "OPCANCEL_STORE": "sqlite",
            "OPCANCEL_SQLITE_PATH": str(pathlib.Path(directory) / "idempotency.sqlite3"),
            "OPCANCEL_RESULTS_TOPIC": TOPICS["results"],
            "OPCANCEL_CHECKS_TOPIC": TOPICS["checks"],
            "PYTHONUNBUFFERED": "1",
            # The strictest stdout a UTF-8 locale gives: a log line no UTF-8 encoder takes fails here too.
            "PYTHONIOENCODING": "utf-8:strict",
            **self._polling,
            **self._extra_env,
        }
        if self.mode == "tasks":
            # Against the Pub/Sub emulator the tasks' publish carries no token, so no service account is needed.
            env |= {"OPCANCEL_TASKS_QUEUE": TASKS_QUEUE, "OPCANCEL_TASKS_ENDPOINT": str(self.tasks_endpoint)}
        command = [
            sys.executable, "-m", "functions_framework",
            "--source", str(ROOT / "main.py"), "--target", "on_event", "--signature-type", "cloudevent",
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        with open(self.function_log_path, "wb") as log:
            # Its own group: functions-framework runs gunicorn, a master and a worker, stopped together;
            # and a Ctrl-C meant for the demo reaches only the demo, which then stops everything in order.
            self._function = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self._stops.append(lambda: stop_group(self._function, grace_s=10))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._function.poll() is not None:
                raise StackFailed(f"the function exited at start-up:\n{self.function_output()}")
            try:
                # Any answer means it serves; a cloudevent target answers a GET with 405 without running.
                with urllib.request.urlopen(self.function_url, timeout=1):
                    return
            except urllib.error.HTTPError:
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise StackFailed(f"the function did not start within 30 s:\n{self.function_output()}")

    def _wire_topics(self) -> None:
        from google.cloud.pubsub_v1 import types

        for topic in TOPICS.values():
            self.publisher.create_topic(name=self.publisher.topic_path(PROJECT, topic))
        for kind in ("requests", "checks"):
            self.subscriber.create_subscription(
                request={
                    "name": self.subscriber.subscription_path(PROJECT, f"{TOPICS[kind]}-push"),
                    "topic": self.publisher.topic_path(PROJECT, TOPICS[kind]),
                    "push_config": types.PushConfig(
                        push_endpoint=f"{self.function_url}/projects/{PROJECT}/topics/{TOPICS[kind]}"
                    ),
                    "ack_deadline_seconds": 30,
                }
            )
        for kind, subscription in PULL_SUBSCRIPTIONS.items():
            self.subscriber.create_subscription(
                name=self.subscriber.subscription_path(PROJECT, subscription),
                topic=self.publisher.topic_path(PROJECT, TOPICS[kind]),
            )

    def publish(self, data: str | bytes, **attributes: str) -> str:
        """One message on the requests topic, as ``gcloud pubsub topics publish`` sends it; its message id."""
        payload = data.encode() if isinstance(data, str) else data
        topic = self.publisher.topic_path(PROJECT, TOPICS["requests"])
        return self.publisher.publish(topic, payload, **attributes).result(timeout=30)

    def pull_results(self, count: int, *, timeout_s: float = 60.0, settle_s: float = 0.0) -> list[dict[str, Any]]:
        return self.pull("results", count, timeout_s=timeout_s, settle_s=settle_s)

    def pull(self, kind: str, count: int, *, timeout_s: float = 60.0, settle_s: float = 0.0) -> list[dict[str, Any]]:
        """Wait for ``count`` messages on the ``kind`` topic (and ``settle_s`` more for any extra), acknowledged;
        each as its attributes, JSON data and ``published_at`` (when Pub/Sub took it, seconds since the epoch)."""
        subscription = self.subscriber.subscription_path(PROJECT, PULL_SUBSCRIPTIONS[kind])
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline and (settle_until is None or time.monotonic() < settle_until):
            # return_immediately: the emulator otherwise holds an empty pull open for seconds.
            answer = self.subscriber.pull(
                request={"subscription": subscription, "max_messages": 100, "return_immediately": True}, timeout=10
            )
            if answer.received_messages:
                self.subscriber.acknowledge(
                    request={"subscription": subscription, "ack_ids": [m.ack_id for m in answer.received_messages]}
                )
            for received in answer.received_messages:
                messages.append(
                    {
                        "attributes": dict(received.message.attributes),
                        "data": json.loads(received.message.data),
                        "published_at": received.message.publish_time.timestamp(),
                    }
                )
            if len(messages) >= count and settle_until is None:
                settle_until = time.monotonic() + settle_s
            if not answer.received_messages:
                time.sleep(0.2)
        return messages

    def function_output(self) -> str:
        return self.function_log_path.read_text(errors="replace")

    def function_logs(self) -> list[dict[str, Any]]:
        """The function's structured log lines; the framework's own plain lines are left out."""
        lines = []
        for line in self.function_output().splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue
        return lines

    def _close_clients(self) -> None:
        self.publisher.stop()
        self.publisher.transport.close()
        self.subscriber.close()

    def stop(self) -> None:
        """Stop everything started, newest first; safe to call more than once."""
        # A second Ctrl-C may interrupt one step; the others still run, so nothing is left behind.
        first: BaseException | None = None
        while self._stops:
            try:
                self._stops.pop()()
            except BaseException as problem:
                first = first or problem
        if first is not None:
            raise first


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
