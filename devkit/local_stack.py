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
import shutil
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
MODES = ("tasks", "redelivery")
#: The demo's: the function's default delays between checks, and a deadline short enough that a demo of an
#: operation that never finishes (stuck-) ends TIMED_OUT while one watches; the demo says both.
DEMO_POLLING = {"OPCANCEL_CHECK_DEADLINE_S": "30"}


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
        project: str = PROJECT,
        http: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.simulator = Simulator()
        self.mode = mode
        self.project = project
        self.tasks_queue = f"projects/{project}/locations/local/queues/opcancel-checks"
        #: Whether ``on_http`` is served too (at ``http_url``), beside ``on_event`` behind the push subscriptions.
        self._http = http
        self.http_url: str | None = None
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
        self.pubsub = Emulator("pubsub", project=self.project)
        self._stops.append(self.pubsub.stop)
        self.tasks_endpoint: str | None = None
        if self.mode == "tasks":
            self.cloudtasks = cloudtasks.CloudTasks(queues=[self.tasks_queue])
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
        if self._workdir is None:
            # Made here, so removed after everything that writes into it has stopped.
            self._workdir = tempfile.mkdtemp(prefix="opcancel-")
            made = self._workdir
            self._stops.append(lambda: shutil.rmtree(made, ignore_errors=True))
        self.workdir = pathlib.Path(self._workdir)
        self.function_log_path = self.workdir / "function.log"
        self.function_url = self._start_function("on_event", "cloudevent", self.function_log_path)
        if self._http:
            self.http_log_path = self.workdir / "function-http.log"
            self.http_url = self._start_function("on_http", "http", self.http_log_path)
        self._wire_topics()

    def function_env(self) -> dict[str, str]:
        """The function's settings here; the operator CLI takes the same ones to work on this stack."""
        env = {
            "GOOGLE_CLOUD_PROJECT": self.project,
            "PUBSUB_EMULATOR_HOST": self.pubsub.host,
            # {host} keeps the host each call was meant for in the simulator's paths, so tests see it derived.
            "OPCANCEL_API_ENDPOINT": f"{self.api_endpoint}/{{host}}",
            "OPCANCEL_AUTH": "anonymous",
            "OPCANCEL_STORE": "sqlite",
            "OPCANCEL_SQLITE_PATH": str(self.workdir / "idempotency.sqlite3"),
            "OPCANCEL_RESULTS_TOPIC": TOPICS["results"],
            "OPCANCEL_CHECKS_TOPIC": TOPICS["checks"],
            **self._polling,
            **self._extra_env,
        }
        if self.mode == "tasks":
            # Against the Pub/Sub emulator the tasks' publish carries no token, so no service account is needed.
            env |= {"OPCANCEL_TASKS_QUEUE": self.tasks_queue, "OPCANCEL_TASKS_ENDPOINT": str(self.tasks_endpoint)}
        return env

    def _start_function(self, target: str, signature: str, log_path: pathlib.Path) -> str:
        """main.py's ``target`` under functions-framework, logging to ``log_path``; the URL it serves."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        # Only the settings below: an OPCANCEL_* variable left in the developer's shell must not change the run.
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("OPCANCEL_")}
        env = {
            **inherited,
            **self.function_env(),
            "PYTHONUNBUFFERED": "1",
            # The strictest stdout a UTF-8 locale gives: a log line no UTF-8 encoder takes fails here too.
            "PYTHONIOENCODING": "utf-8:strict",
        }
        command = [
            sys.executable, "-m", "functions_framework",
            "--source", str(ROOT / "main.py"), "--target", target, "--signature-type", signature,
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            # Its own group: functions-framework runs gunicorn, a master and a worker, stopped together;
            # and a Ctrl-C meant for the demo reaches only the demo, which then stops everything in order.
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self._stops.append(lambda: stop_group(process, grace_s=10))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise StackFailed(f"the function ({target}) exited at start-up:\n{_read(log_path)}")
            try:
                # Any answer means it serves; a cloudevent target answers a GET with 405 without running.
                with urllib.request.urlopen(url, timeout=1):
                    return url
            except urllib.error.HTTPError:
                return url
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise StackFailed(f"the function ({target}) did not start within 30 s:\n{_read(log_path)}")

    def _wire_topics(self) -> None:
        from google.cloud.pubsub_v1 import types

        for topic in TOPICS.values():
            self.publisher.create_topic(name=self.publisher.topic_path(self.project, topic))
        for kind in ("requests", "checks"):
            self.subscriber.create_subscription(
                request={
                    "name": self.subscriber.subscription_path(self.project, f"{TOPICS[kind]}-push"),
                    "topic": self.publisher.topic_path(self.project, TOPICS[kind]),
                    "push_config": types.PushConfig(
                        push_endpoint=f"{self.function_url}/projects/{self.project}/topics/{TOPICS[kind]}"
                    ),
                    "ack_deadline_seconds": 30,
                }
            )
        for kind, subscription in PULL_SUBSCRIPTIONS.items():
            self.subscriber.create_subscription(
                name=self.subscriber.subscription_path(self.project, subscription),
                topic=self.publisher.topic_path(self.project, TOPICS[kind]),
            )

    def publish(self, data: str | bytes, **attributes: str) -> str:
        """One message on the requests topic, as ``gcloud pubsub topics publish`` sends it; its message id."""
        payload = data.encode() if isinstance(data, str) else data
        topic = self.publisher.topic_path(self.project, TOPICS["requests"])
        return self.publisher.publish(topic, payload, **attributes).result(timeout=30)

    def pull_results(self, count: int, *, timeout_s: float = 60.0, settle_s: float = 0.0) -> list[dict[str, Any]]:
        return self.pull("results", count, timeout_s=timeout_s, settle_s=settle_s)

    def pull(self, kind: str, count: int, *, timeout_s: float = 60.0, settle_s: float = 0.0) -> list[dict[str, Any]]:
        """Wait for ``count`` messages on the ``kind`` topic (and ``settle_s`` more for any extra), acknowledged;
        each as its attributes, JSON data and ``published_at`` (when Pub/Sub took it, seconds since the epoch)."""
        subscription = self.subscriber.subscription_path(self.project, PULL_SUBSCRIPTIONS[kind])
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
        return _read(self.function_log_path)

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


def _read(path: pathlib.Path) -> str:
    return path.read_text(errors="replace")


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


# python -m devkit.local_stack (./demo.sh --serve): the stack kept up for the docs' examples, by hand.

#: The project the docs' examples name (docs/deploy.md, docs/alerting.md); the emulator takes any.
SERVE_PROJECT = "my-project"
SERVE_WORKDIR = ROOT / ".opcancel" / "local-stack"
ENV_FILE = "env"
#: The exit status when the Pub/Sub emulator cannot run here (the tests skip on it, naming the reason).
EMULATOR_UNAVAILABLE = 3
INSTALL_HINT = (
    "The local stack needs Google's Pub/Sub emulator, which comes with the Google Cloud CLI "
    "(https://cloud.google.com/sdk/docs/install), and a Java runtime. Add the emulator with "
    "`gcloud components install pubsub-emulator`, or, where the CLI came from apt, "
    "`sudo apt-get install google-cloud-cli-pubsub-emulator default-jre-headless`."
)
_PID_FILE = "pid"
#: What gcloud sends as its token: the emulator checks none, but gcloud wants one before any call.
_GCLOUD_TOKEN = "local-stack-token-the-emulator-ignores\n"


def shell_environment(stack: LocalStack) -> dict[str, str]:
    """What to export so that ``python -m function``, gcloud and curl reach this stack, as the docs' examples
    run: the function's own settings for the CLI, and gcloud's Pub/Sub endpoint, token and project."""
    token = stack.workdir / "gcloud-access-token"
    token.write_text(_GCLOUD_TOKEN)
    return {
        **stack.function_env(),
        # gcloud's api_endpoint_overrides/pubsub and auth/access_token_file properties, as variables.
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB": f"http://{stack.pubsub.host}/",
        "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(token),
        "CLOUDSDK_CORE_PROJECT": stack.project,
        "PROJECT_ID": stack.project,
        "URL": str(stack.http_url),
    }


def keep_up(arguments: list[str] | None = None) -> int:
    import argparse
    import shlex
    import signal

    from devkit.emulators import EmulatorUnavailable

    parser = argparse.ArgumentParser(
        prog="python -m devkit.local_stack",
        description="Keep opcancel's local stack up (the simulator, the Pub/Sub emulator, the Cloud Tasks "
        "stand-in, on_event and on_http) and print the environment that points the CLI, gcloud and curl at it.",
    )
    parser.add_argument("--mode", choices=MODES, default="tasks", help="how checks are scheduled [default: tasks]")
    parser.add_argument(
        "--workdir",
        type=pathlib.Path,
        default=SERVE_WORKDIR,
        help="a folder this command creates for the stack (store, logs, env) and removes on exit "
        "[default: .opcancel/local-stack]",
    )
    options = parser.parse_args(arguments)
    workdir: pathlib.Path = options.workdir.resolve()
    problem = _claim_workdir(workdir)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    # The emulator and the functions run in process groups of their own; turning these signals into an
    # exception lets the stack stop them on the way out.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    print("Starting the Operations API simulator, the Pub/Sub emulator, Cloud Tasks and the function...", flush=True)
    try:
        # The function's own polling defaults, as deployed: nothing here overrides them.
        with LocalStack(polling={}, workdir=str(workdir), mode=options.mode, project=SERVE_PROJECT, http=True) as stack:
            environment = shell_environment(stack)
            exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in environment.items())
            (workdir / ENV_FILE).write_text(exports)
            print(
                f"\nThe local stack is up (project {stack.project}, checks {stack.mode}). In another shell, from "
                f"{ROOT}:\n\n  . {_shown(workdir / ENV_FILE)}\n\nwhich exports:\n\n{exports}\n"
                f"Function logs: {_shown(stack.function_log_path)}, {_shown(stack.http_log_path)}.\n"
                "Result events are printed below as they are published. Ctrl-C stops everything.\n",
                flush=True,
            )
            while True:
                for result in stack.pull_results(1, timeout_s=1.0):
                    data = result["data"]
                    print(f"result: {data['outcome']} {data['operation']}  ({data['idempotency_key']})", flush=True)
    except EmulatorUnavailable as reason:
        print(f"Cannot start: {reason}\n{INSTALL_HINT}", file=sys.stderr)
        return EMULATOR_UNAVAILABLE
    except StackFailed as failure:
        print(f"Cannot start: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopped; everything the local stack started is stopped.", file=sys.stderr)
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _claim_workdir(workdir: pathlib.Path) -> str | None:
    """Make ``workdir`` for this stack, or say why not: another live stack's, or a folder this command did not
    make (it removes its folder on exit, so it never takes one it could not remove)."""
    pid_file = workdir / _PID_FILE
    if workdir.exists():
        try:
            os.kill(int(pid_file.read_text()), 0)
        except (OSError, ValueError):
            if not pid_file.exists():
                return f"{workdir} exists and is not a local stack's folder: pass --workdir with a new one"
            shutil.rmtree(workdir)  # a stack that was killed left it
        else:
            return f"a local stack is already running in {workdir} (pid {pid_file.read_text().strip()})"
    workdir.mkdir(parents=True)
    pid_file.write_text(str(os.getpid()))
    return None


def _shown(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(keep_up())
