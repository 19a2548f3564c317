"""opcancel running locally for real: main.py under functions-framework, the Operations API simulator,
and Google's Pub/Sub emulator with push subscriptions delivering requests and checks to the function.

Used by ``./demo.sh`` and by the emulator test tier, so both exercise the same wiring a deployment has.
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
from typing import Any

from devkit.emulators import Emulator, EmulatorUnavailable, free_port
from devkit.simulator import Simulator, serve

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = "opcancel-local"
TOPICS = {"requests": "opcancel-requests", "checks": "opcancel-checks", "results": "opcancel-results"}
RESULTS_SUBSCRIPTION = "opcancel-results-pull"


class LocalStack:
    """Bring everything up with ``with LocalStack() as stack:``; everything started is stopped on exit."""

    def __init__(self, *, polling: dict[str, str] | None = None, workdir: str | None = None) -> None:
        self.simulator = Simulator()
        self._polling = polling or {
            "OPCANCEL_CHECK_INITIAL_DELAY_S": "1",
            "OPCANCEL_CHECK_MULTIPLIER": "2",
            "OPCANCEL_CHECK_MAX_DELAY_S": "4",
            "OPCANCEL_CHECK_DEADLINE_S": "30",
        }
        self._workdir = workdir
        self._started: list[Any] = []
        self._saved_emulator_host: str | None = None

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
        self._started.append(server)
        self.api_endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        self.pubsub = Emulator("pubsub", project=PROJECT)
        self._started.append(self.pubsub)
        # The Google clients in this process (topic admin, publish, pull) find the emulator this way.
        self._saved_emulator_host = os.environ.get("PUBSUB_EMULATOR_HOST")
        os.environ["PUBSUB_EMULATOR_HOST"] = self.pubsub.host
        from google.cloud import pubsub_v1

        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()
        self._start_function()
        self._wire_topics()

    def _start_function(self) -> None:
        directory = self._workdir or tempfile.mkdtemp(prefix="opcancel-")
        self.function_log_path = pathlib.Path(directory) / "function.log"
        self._function_log = open(self.function_log_path, "wb")  # noqa: SIM115 - closed in stop()
        port = free_port()
        self.function_url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "PUBSUB_EMULATOR_HOST": self.pubsub.host,
            "OPCANCEL_API_ENDPOINT": self.api_endpoint,
            "OPCANCEL_AUTH": "anonymous",
            "OPCANCEL_STORE": "sqlite",
            "OPCANCEL_SQLITE_PATH": str(pathlib.Path(directory) / "idempotency.sqlite3"),
            "OPCANCEL_RESULTS_TOPIC": TOPICS["results"],
            "OPCANCEL_CHECKS_TOPIC": TOPICS["checks"],
            "PYTHONUNBUFFERED": "1",
            **self._polling,
        }
        command = [
            sys.executable, "-m", "functions_framework",
            "--source", str(ROOT / "main.py"), "--target", "on_event", "--signature-type", "cloudevent",
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        self._function = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._function_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self._started.append(self._function)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._function.poll() is not None:
                raise EmulatorUnavailable(f"the function exited at start-up:\n{self.function_output()}")
            try:
                urllib.request.urlopen(self.function_url, timeout=1)
                return
            except urllib.error.HTTPError:
                return  # it answered, so it is serving
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise EmulatorUnavailable("the function did not start within 30 s")

    def _wire_topics(self) -> None:
        from google.cloud.pubsub_v1 import types
        from google.protobuf import duration_pb2

        for topic in TOPICS.values():
            self.publisher.create_topic(name=self.publisher.topic_path(PROJECT, topic))
        for kind in ("requests", "checks"):
            self.subscriber.create_subscription(
                request={
                    "name": self.subscriber.subscription_path(PROJECT, f"{TOPICS[kind]}-push"),
                    "topic": self.publisher.topic_path(PROJECT, TOPICS[kind]),
                    "push_config": types.PushConfig(push_endpoint=f"{self.function_url}/"),
                    "ack_deadline_seconds": 30,
                    "retry_policy": types.RetryPolicy(
                        minimum_backoff=duration_pb2.Duration(seconds=1),
                        maximum_backoff=duration_pb2.Duration(seconds=2),
                    ),
                }
            )
        self.subscriber.create_subscription(
            name=self.subscriber.subscription_path(PROJECT, RESULTS_SUBSCRIPTION),
            topic=self.publisher.topic_path(PROJECT, TOPICS["results"]),
        )

    def publish(self, data: str | bytes, **attributes: str) -> str:
        payload = data.encode() if isinstance(data, str) else data
        topic = self.publisher.topic_path(PROJECT, TOPICS["requests"])
        return self.publisher.publish(topic, payload, **attributes).result(timeout=30)

    def pull_results(self, count: int, *, timeout_s: float = 60.0, settle_s: float = 0.0) -> list[dict[str, Any]]:
        """Wait for ``count`` result events (and ``settle_s`` more for any extra); each as attributes and data."""
        subscription = self.subscriber.subscription_path(PROJECT, RESULTS_SUBSCRIPTION)
        results: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline and (settle_until is None or time.monotonic() < settle_until):
            answer = self.subscriber.pull(
                request={"subscription": subscription, "max_messages": 100, "return_immediately": True}, timeout=10
            )
            if answer.received_messages:
                self.subscriber.acknowledge(
                    request={"subscription": subscription, "ack_ids": [m.ack_id for m in answer.received_messages]}
                )
            for received in answer.received_messages:
                results.append(
                    {"attributes": dict(received.message.attributes), "data": json.loads(received.message.data)}
                )
            if len(results) >= count and settle_until is None:
                settle_until = time.monotonic() + settle_s
            if not answer.received_messages:
                time.sleep(0.2)
        return results

    def function_output(self) -> str:
        self._function_log.flush()
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

    def stop(self) -> None:
        for thing in reversed(self._started):
            if isinstance(thing, subprocess.Popen):
                thing.terminate()
                try:
                    thing.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    thing.kill()
                    thing.wait(timeout=10)
            elif isinstance(thing, Emulator):
                thing.stop()
            else:
                thing.shutdown()
                thing.server_close()
        self._started.clear()
        if hasattr(self, "_function_log"):
            self._function_log.close()
        if self._saved_emulator_host is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = self._saved_emulator_host
