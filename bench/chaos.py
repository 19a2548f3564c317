"""The chaos run: many duplicate requests through Google's Pub/Sub emulator into a function whose every
dependency misbehaves, and whose workers die, then an account of every request.

- Requests: ``operations`` operations, each published ``duplicates`` times, shuffled, to the requests
  topic; a push subscription delivers them (and the checks) to functions-framework running
  ``bench/functions/chaos.py`` with several gunicorn workers sharing one store: an SQLite file, or
  Google's Firestore emulator.
- Faults: the simulator answers ``api_fault_rate`` of all calls with 503 or 429 (before they take
  effect); ``failure_rate`` of store writes and publishes fail (half after taking effect); any API
  answer, write or publish kills the worker with probability ``crash_rate``; and a killer SIGKILLs a
  random worker every one to three seconds. gunicorn starts a new one each time, as Cloud Run would.
- Checks: with ``mode="tasks"`` (the default, what deploy.sh deploys) each check is a task of the devkit's
  Cloud Tasks stand-in, which fails ``tasks_failure_rate`` of creates and of dispatches and loses
  ``lost_rate`` of the tasks it accepted; with ``mode="redelivery"`` checks are published at once and
  ``lost_rate`` of them are lost. Lost checks are what ``python -m function resume`` is for: a resumer
  runs it every few seconds, as Cloud Scheduler would.
- Budget: with ``budget`` set (``OPCANCEL_CANCEL_BUDGET=N/1h``), at most N operations may see a cancel
  call, however the workers die; every other request ends HELD (reported once), and the account counts
  the operations that saw one.
- Account: operations cancelled more than once (the simulator counts cancels it accepted while the
  operation ran), requests without exactly one distinct result (by ``ce-id``, with the outcome the
  operation's kind calls for, or HELD under a budget), request messages never acknowledged, and the time
  until all is done.

One window cannot be closed: a worker that dies after sending its cancel and before the store recorded
it leaves nothing that says the cancel got through. The next worker looks first (no second
cancel if the operation is done), but an operation still running is cancelled again: at least once,
since a cancel never sent would leave it running. Such second cancels are counted apart, attributed to
the crash that caused them; every other one is a defect.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from bench._harness import (
    CHECKS_TOPIC,
    ORG,
    PROJECT,
    RESULTS_TOPIC,
    THIS_PYTHON,
    Pythons,
    Services,
)
from devkit.cloudtasks import CloudTasks
from devkit.cloudtasks import serve as serve_tasks
from devkit.emulators import Emulator

REQUESTS_TOPIC = "opcancel-requests"
ROOT = pathlib.Path(__file__).resolve().parents[1]
TASKS_QUEUE = f"projects/{PROJECT}/locations/local/queues/opcancel-checks"
#: Operation kinds, their share of the operations, and the outcome each must end in.
KINDS = (
    ("chaos", 0.5, "CANCELLED"),
    ("slow-2-chaos", 0.3, "CANCELLED"),
    ("completes-chaos", 0.1, "COMPLETED"),
    ("fails-chaos", 0.1, "FAILED"),
)


@dataclass
class ChaosReport:
    store: str
    operations: int
    requests: int
    #: The operations the simulator accepted a cancel for twice while they ran.
    cancelled_twice: tuple[str, ...]
    #: Of those, the ones with a cancel sent and never refused or recorded: its worker died in between.
    cancelled_twice_after_a_crash_in_the_window: tuple[str, ...]
    mode: str
    without_one_result: int
    wrong_outcome: int
    lost: int
    drain_s: float
    drained: bool
    results_published: int
    distinct_results: int
    kills: int
    api_calls: int
    api_faults: int
    #: Overdue chains resumed, by the resume command or by a delivery of their request.
    resumed: int = 0
    #: Seconds from a worker's death to the next claim of each key it held (a takeover).
    takeovers_s: tuple[float, ...] = ()
    #: Cloud Tasks: creates answered per status, dispatch attempts that failed, tasks lost.
    task_creates: collections.Counter = field(default_factory=collections.Counter)
    task_dispatch_failures: int = 0
    tasks_lost: int = 0
    faults: collections.Counter = field(default_factory=collections.Counter)
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    #: The cancel budget's N, when one was set.
    budget: int | None = None
    #: Operations the simulator saw any cancel call for (failed ones included): at most the budget.
    operations_cancelled: int = 0

    @property
    def cancelled_more_than_once(self) -> int:
        return len(self.cancelled_twice)

    @property
    def cancelled_again_after_a_crash_in_the_window(self) -> int:
        return len(self.cancelled_twice_after_a_crash_in_the_window)

    @property
    def cancelled_twice_otherwise(self) -> int:
        """Second cancels no crash in the window explains: each one a defect."""
        return self.cancelled_more_than_once - self.cancelled_again_after_a_crash_in_the_window

    @property
    def over_budget(self) -> int:
        return max(0, self.operations_cancelled - self.budget) if self.budget is not None else 0

    @property
    def clean(self) -> bool:
        return (
            self.drained
            and not (self.cancelled_twice_otherwise or self.without_one_result or self.wrong_outcome or self.lost)
            and not self.over_budget
        )


#: Checks 0.5 s after the cancel, then 1 s and 2 s apart; a lost one overdue 2 s after its due time.
FAST_POLLING = {
    "OPCANCEL_CHECK_INITIAL_DELAY_S": "0.5",
    "OPCANCEL_CHECK_MULTIPLIER": "2",
    "OPCANCEL_CHECK_MAX_DELAY_S": "2",
    "OPCANCEL_CHECK_DEADLINE_S": "300",
}


def run(
    workdir: pathlib.Path,
    *,
    operations: int = 100,
    duplicates: int = 10,
    api_fault_rate: float = 0.2,
    failure_rate: float = 0.1,
    crash_rate: float = 0.01,
    workers: int = 3,
    seed: int = 1,
    store: str = "sqlite",
    timeout_s: float = 600.0,
    pythons: Pythons = THIS_PYTHON,
    mode: str = "tasks",
    tasks_failure_rate: float = 0.1,
    lost_rate: float = 0.05,
    lease_s: float = 10.0,
    budget: int | None = None,
    polling: dict[str, str] | None = None,
) -> ChaosReport:
    """``store`` is ``sqlite`` (one file the workers share) or ``firestore`` (Google's emulator); ``mode`` is
    ``tasks`` (checks as tasks of the Cloud Tasks stand-in) or ``redelivery``. ``polling``: the
    ``OPCANCEL_CHECK_*`` settings, by default a fast policy (a lost check is overdue 2 s after its due
    time, so a run takes a minute); ``{}`` runs the function's own defaults."""
    rng = random.Random(seed)
    names = _operation_names(operations)
    with Services(pythons) as services, contextlib.ExitStack() as stack:
        tasks_settings: dict[str, str] = {}
        cloudtasks = None
        if mode == "tasks":
            cloudtasks = CloudTasks(
                queues=[TASKS_QUEUE],
                create_failure_rate=tasks_failure_rate,
                dispatch_failure_rate=tasks_failure_rate,
                lose_rate=lost_rate,
                seed=seed,
            )
            served = serve_tasks(cloudtasks)
            stack.callback(served.stop)
            tasks_settings = {"OPCANCEL_TASKS_QUEUE": TASKS_QUEUE, "OPCANCEL_TASKS_ENDPOINT": served.endpoint}
        if store == "firestore":
            firestore = stack.enter_context(Emulator("firestore", project=PROJECT))
            store_settings = {
                "OPCANCEL_STORE": "firestore",
                "FIRESTORE_EMULATOR_HOST": firestore.host,
                "OPCANCEL_FIRESTORE_COLLECTION": f"chaos-{seed}",
            }
        else:
            store_settings = {"OPCANCEL_STORE": "sqlite"}
        services.simulator(
            "POST", "fault-rate", {"rate": api_fault_rate, "statuses": [503, 429], "retry_delay": "1s", "seed": seed}
        )
        env = services.environment(
            workdir,
            WORKERS=str(workers),
            OPCANCEL_LEASE_S=str(lease_s),
            **(FAST_POLLING if polling is None else polling),
            CHAOS_STORE_FAILURES=str(failure_rate),
            CHAOS_PUBLISH_FAILURES=str(failure_rate),
            CHAOS_CRASH_RATE=str(crash_rate),
            CHAOS_SEED=str(seed),
            CHAOS_LOST_CHECKS=str(lost_rate if mode == "redelivery" else 0.0),
            **({"OPCANCEL_CANCEL_BUDGET": f"{budget}/1h"} if budget is not None else {}),
            **store_settings,
            **tasks_settings,
        )
        log = workdir / "function.log"
        with services.running_function("chaos", env, log=log) as function:
            pubsub = _PubSub(services.pubsub.host, f"http://127.0.0.1:{function.port}")
            killer = _Killer(function, rng)
            resumer = _Resumer(env, workdir / "resume.log")
            try:
                messages = [name for name in names for _ in range(duplicates)]
                rng.shuffle(messages)
                started = time.monotonic()
                killer.start()
                resumer.start()
                sent = pubsub.publish_requests(messages)
                results, acked, drained = _drain(pubsub, log, names, set(sent), started + timeout_s)
                drain_s = time.monotonic() - started
                killer.stop()
                resumer.stop()
                # Anything still in flight (a duplicate result) has a moment to show up.
                results += pubsub.pull_results(settle_s=3.0)
            finally:
                killer.stop()
                resumer.stop()
                pubsub.close()
        operations_seen = services.simulator("GET", "operations")["operations"]
        calls = services.simulator("GET", "calls")["calls"]
    report = _account(
        store, names, sent, results, acked, operations_seen, calls, log, killer.kills, drain_s, drained, budget
    )
    report.mode = mode
    # Resumed by the resume command, or by a delivery of the request once its chain was overdue.
    report.resumed = resumer.resumed + sum(1 for line in _log_lines(log) if line.get("event") == "chain_resumed")
    lines = _log_lines(log)
    # Workers killed from outside, and those that died on the spot in the middle of a request.
    deaths = killer.killed + [
        (line["at"], line["pid"]) for line in lines if line.get("event") == "chaos_fault" and "pid" in line
    ]
    report.takeovers_s = _takeovers(lines, deaths)
    if cloudtasks is not None:
        report.task_creates = collections.Counter(status for status, _ in cloudtasks.creates)
        report.task_dispatch_failures = sum(
            1 for task in cloudtasks.tasks.values() for _, status in task.attempts if status is None or status >= 300
        )
        report.tasks_lost = sum(task.lost for task in cloudtasks.tasks.values())
    return report


def _operation_names(count: int) -> list[str]:
    """``count`` names, their kinds in the shares ``KINDS`` gives."""
    prefixes = []
    for prefix, share, _ in KINDS:
        prefixes += [prefix] * round(share * count)
    prefixes = (prefixes + [KINDS[0][0]] * count)[:count]
    return [f"{ORG}/operations/{prefix}-{index}" for index, prefix in enumerate(prefixes)]


def _expected_outcome(name: str) -> str:
    operation_id = name.rsplit("/", 1)[1]
    return next(
        outcome
        for prefix, _, outcome in KINDS
        if operation_id.startswith(prefix + "-") and operation_id[len(prefix) + 1 :].isdigit()
    )


class _PubSub:
    """Topics, push subscriptions to the function, and a pull subscription on the results, with Google's client."""

    def __init__(self, host: str, push_endpoint: str) -> None:
        # Google's clients find the emulator only this way; the previous value comes back in close().
        self._saved_host = os.environ.get("PUBSUB_EMULATOR_HOST")
        os.environ["PUBSUB_EMULATOR_HOST"] = host
        from google.cloud import pubsub_v1

        self._publisher = pubsub_v1.PublisherClient()
        self._subscriber = pubsub_v1.SubscriberClient()
        self._publisher.create_topic(name=self._topic(REQUESTS_TOPIC))
        for topic in (REQUESTS_TOPIC, CHECKS_TOPIC):
            self._subscriber.create_subscription(
                request={
                    "name": self._subscription(f"{topic}-push"),
                    "topic": self._topic(topic),
                    # The topic in the path becomes the CloudEvent's source: only the checks topic's is a check.
                    "push_config": pubsub_v1.types.PushConfig(push_endpoint=f"{push_endpoint}/{self._topic(topic)}"),
                    "ack_deadline_seconds": 30,
                }
            )
        self._results = self._subscription("results-pull")
        self._subscriber.create_subscription(name=self._results, topic=self._topic(RESULTS_TOPIC))

    def _topic(self, topic: str) -> str:
        return f"projects/{PROJECT}/topics/{topic}"

    def _subscription(self, name: str) -> str:
        return f"projects/{PROJECT}/subscriptions/{name}"

    def publish_requests(self, names: list[str]) -> dict[str, str]:
        """Publish every name as one message, as ``gcloud pubsub topics publish`` does; message id -> name."""
        futures = [(self._publisher.publish(self._topic(REQUESTS_TOPIC), name.encode()), name) for name in names]
        return {future.result(timeout=60): name for future, name in futures}

    def pull_results(self, *, settle_s: float = 0.0) -> list[dict]:
        results = []
        until = time.monotonic() + settle_s
        while True:
            answer = self._subscriber.pull(
                request={"subscription": self._results, "max_messages": 500, "return_immediately": True}, timeout=30
            )
            received = answer.received_messages
            if received:
                self._subscriber.acknowledge(
                    request={"subscription": self._results, "ack_ids": [m.ack_id for m in received]}
                )
            results += [
                {"attributes": dict(m.message.attributes), "data": json.loads(m.message.data)} for m in received
            ]
            if not received:
                if time.monotonic() >= until:
                    return results
                time.sleep(0.2)

    def close(self) -> None:
        self._publisher.stop()
        self._subscriber.close()
        if self._saved_host is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = self._saved_host


class _Killer(threading.Thread):
    """SIGKILLs a random gunicorn worker every one to three seconds until stopped."""

    def __init__(self, function, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self._function = function
        self._rng = rng
        self._stopped = threading.Event()
        self.kills = 0
        #: (time, pid) of each kill.
        self.killed: list[tuple[float, int]] = []

    def run(self) -> None:
        while not self._stopped.wait(self._rng.uniform(1.0, 3.0)):
            workers = self._function.worker_pids()
            if workers:
                victim = self._rng.choice(workers)
                try:
                    os.kill(victim, signal.SIGKILL)
                    self.kills += 1
                    self.killed.append((time.time(), victim))
                except ProcessLookupError:
                    pass

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive():
            self.join()


class _Resumer(threading.Thread):
    """Runs ``python -m function resume`` with the function's settings every few seconds, as Cloud Scheduler would."""

    def __init__(self, env: dict[str, str], log: pathlib.Path, every_s: float = 3.0) -> None:
        super().__init__(daemon=True)
        self._env = env
        self._log = log
        self._every_s = every_s
        self._stopped = threading.Event()
        self.resumed = 0

    def run(self) -> None:
        while not self._stopped.wait(self._every_s):
            run = subprocess.run(
                [sys.executable, "-m", "function", "resume", "--json"],
                cwd=ROOT, env=self._env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            with open(self._log, "a") as log:
                log.write(run.stdout + run.stderr)
            with contextlib.suppress(ValueError):
                self.resumed += sum(1 for row in json.loads(run.stdout)["overdue"] if row.get("resumed"))

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive():
            self.join()


def _takeovers(lines: list[dict], killed: list[tuple[float, int]]) -> tuple[float, ...]:
    """For each key a dead worker held (its lease still running at its death), the seconds until the next claim."""
    leases: dict[str, list[dict]] = collections.defaultdict(list)
    for line in lines:
        if line.get("event") == "chaos_lease":
            leases[line["key"]].append(line)
    waits = []
    for history in leases.values():
        history.sort(key=lambda lease: lease["at"])
    for killed_at, pid in killed:
        for history in leases.values():
            held = [lease for lease in history if lease["at"] <= killed_at]
            if not held or held[-1]["pid"] != pid or held[-1]["lease_until"] <= killed_at:
                continue
            later = [lease for lease in history if lease["at"] > killed_at and lease["fence"] > held[-1]["fence"]]
            if later:
                waits.append(later[0]["at"] - killed_at)
    return tuple(sorted(waits))


def _drain(
    pubsub: _PubSub, log: pathlib.Path, names: list[str], sent: set[str], deadline: float
) -> tuple[list[dict], set[str], bool]:
    """Until every operation has a result and every request message was acknowledged, or the deadline."""
    results: list[dict] = []
    while time.monotonic() < deadline:
        results += pubsub.pull_results()
        acked = _acknowledged(log)
        finished = {result["data"]["operation"] for result in results}
        if sent <= acked and finished >= set(names):
            return results, acked, True
        time.sleep(0.5)
    return results, _acknowledged(log), False


def _log_lines(log: pathlib.Path) -> list[dict]:
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a killed worker
    return lines


def _acknowledged(log: pathlib.Path) -> set[str]:
    return {
        line["message_id"] for line in _log_lines(log) if line.get("event") == "chaos_acked" and "message_id" in line
    }


def _cancels_sent_and_never_settled(lines: list[dict]) -> set[str]:
    """Operations with a cancel that a worker sent and then neither saw refused nor recorded: it died in
    between (killed, or crashed on purpose), or the store failed past its retries."""
    open_sends: collections.Counter = collections.Counter()
    for line in lines:
        event = line.get("event")
        if event == "chaos_cancel_sending":
            open_sends[(line["pid"], line["operation"])] += 1
        elif event in ("chaos_cancel_failed", "chaos_cancel_recorded"):
            # The default key is the API host and the name.
            operation = line.get("operation") or line["key"].split("/", 1)[1]
            if open_sends[(line["pid"], operation)]:
                open_sends[(line["pid"], operation)] -= 1
    return {operation for (_, operation), count in open_sends.items() if count}


def _account(
    store, names, sent, results, acked, operations_seen, calls, log, kills, drain_s, drained, budget=None
) -> ChaosReport:
    by_operation: dict[str, set[str]] = collections.defaultdict(set)
    outcomes: dict[str, set[str]] = collections.defaultdict(set)
    for result in results:
        operation = result["data"]["operation"]
        by_operation[operation].add(result["attributes"]["ce-id"])
        outcomes[operation].add(result["data"]["outcome"])
    requests_per_name = collections.Counter(sent.values())
    without_one = sum(count for name, count in requests_per_name.items() if len(by_operation[name]) != 1)
    # Under a budget a request may be held instead; whichever it is, it is one outcome.
    allowed = (
        (lambda name: {_expected_outcome(name)}) if budget is None else (lambda name: {_expected_outcome(name), "HELD"})
    )
    wrong = sum(
        1 for name in names if outcomes[name] and (len(outcomes[name]) != 1 or not outcomes[name] <= allowed(name))
    )
    cancelled = {
        call["path"].rsplit("/operations/", 1)[1].removesuffix(":cancel")
        for call in calls
        if call["path"].endswith(":cancel")
    }
    lines = _log_lines(log)
    faults = collections.Counter(
        f"{line['where']} ({line['when']})" for line in lines if line.get("event") == "chaos_fault"
    )
    crashed_in_window = _cancels_sent_and_never_settled(lines)
    cancelled_twice = {op["name"] for op in operations_seen if op["accepted_cancels"] > 1}
    injected = sum(1 for call in calls if call.get("injected"))
    return ChaosReport(
        store=store,
        mode="",
        operations=len(names),
        requests=len(sent),
        cancelled_twice=tuple(sorted(cancelled_twice)),
        cancelled_twice_after_a_crash_in_the_window=tuple(sorted(cancelled_twice & crashed_in_window)),
        without_one_result=without_one,
        wrong_outcome=wrong,
        lost=len(set(sent) - acked),
        drain_s=drain_s,
        drained=drained,
        results_published=len(results),
        distinct_results=len({result["attributes"]["ce-id"] for result in results}),
        kills=kills,
        api_calls=len(calls),
        api_faults=injected,
        faults=faults,
        outcomes=collections.Counter(
            result["data"]["outcome"] for result in {r["attributes"]["ce-id"]: r for r in results}.values()
        ),
        budget=budget,
        operations_cancelled=len(cancelled),
    )
