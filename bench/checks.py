"""Delayed checks measured, Cloud Tasks mode beside redelivery mode, on the local stack.

``run`` starts ``devkit.local_stack`` in one mode (main.py under functions-framework, Google's Pub/Sub
emulator pushing requests and checks, and in tasks mode the devkit's Cloud Tasks stand-in), publishes
``chains`` requests for operations that need two delayed checks each, all at once, and waits for every
result. It counts, from the function's own log lines (stamped as they are written) and the stand-in:

- deliveries per check: every delivery of a check message to the function (run, refused as early, or
  dropped as stale) over the checks scheduled; the goal is exactly 1;
- refused deliveries per cancellation (``check_not_due``); the goal is 0;
- lateness: for each check, when it ran (the log line its run wrote) less its due time, p50 and p99;
- Cloud Tasks operations: creates answered and dispatch attempts (each a billable operation,
  cloud.google.com/tasks/pricing).

What the figures are not: the emulator's push is not Pub/Sub's (it redelivers a refused message after
about a second, with no per-subscription backoff, see ``devkit/local_stack.py``), and the stand-in's
dispatch is not Cloud Tasks'. The counts (deliveries, refusals, operations) carry over to Google's
services; the lateness figures show this machine and these stand-ins, not the cloud.
"""

from __future__ import annotations

import collections
import json
import pathlib
import threading
import time
from dataclasses import dataclass, field

from bench._harness import percentile
from devkit.local_stack import LocalStack
from function import parse_time

ORG = "organizations/123456789"
#: Short delays, so a run takes seconds: a check 1 s after the cancel, the next 2 s later.
POLLING = {
    "OPCANCEL_CHECK_INITIAL_DELAY_S": "1",
    "OPCANCEL_CHECK_MULTIPLIER": "2",
    "OPCANCEL_CHECK_MAX_DELAY_S": "2",
    "OPCANCEL_CHECK_DEADLINE_S": "600",
}


@dataclass
class ChecksReport:
    mode: str
    chains: int
    results: int
    drained: bool
    drain_s: float
    checks_scheduled: int
    checks_run: int
    refused: int
    stale: int
    lateness_s: list[float] = field(default_factory=list)
    task_creates: collections.Counter = field(default_factory=collections.Counter)
    task_dispatches: int = 0
    #: Tasks mode: first dispatch attempt less the task's schedule time (the stand-in's part of the lateness).
    dispatch_lateness_s: list[float] = field(default_factory=list)

    @property
    def deliveries_per_check(self) -> float:
        return (self.checks_run + self.refused + self.stale) / max(self.checks_scheduled, 1)

    @property
    def refused_per_cancellation(self) -> float:
        return self.refused / max(self.chains, 1)

    def lateness(self, fraction: float) -> float:
        return percentile(sorted(self.lateness_s), fraction) if self.lateness_s else float("nan")

    @property
    def task_operations_per_cancellation(self) -> float:
        return (sum(self.task_creates.values()) + self.task_dispatches) / max(self.chains, 1)


class _StampedLog(threading.Thread):
    """Reads the function's log as it grows and stamps each structured line with the time it was read."""

    def __init__(self, path: pathlib.Path) -> None:
        super().__init__(daemon=True)
        self._path = path
        self._stopped = threading.Event()
        self.lines: list[tuple[float, dict]] = []

    def run(self) -> None:
        buffered = b""
        offset = 0
        while not self._stopped.is_set():
            with open(self._path, "rb") as log:
                log.seek(offset)
                chunk = log.read()
            offset += len(chunk)
            now = time.time()
            buffered += chunk
            *complete, buffered = buffered.split(b"\n")
            for raw in complete:
                if raw.startswith(b"{"):
                    try:
                        self.lines.append((now, json.loads(raw)))
                    except ValueError:
                        continue
            self._stopped.wait(0.02)

    def stop(self) -> None:
        self._stopped.set()
        self.join()


def run(workdir: pathlib.Path, *, mode: str, chains: int, timeout_s: float = 600.0) -> ChecksReport:
    names = [f"{ORG}/operations/slow-2-checks-{mode}-{index}" for index in range(chains)]
    with LocalStack(polling=POLLING, workdir=str(workdir), mode=mode) as stack:
        stamped = _StampedLog(stack.function_log_path)
        stamped.start()
        try:
            started = time.monotonic()
            topic = stack.publisher.topic_path("opcancel-local", "opcancel-requests")
            futures = [stack.publisher.publish(topic, name.encode()) for name in names]
            for future in futures:
                future.result(timeout=120)
            results = []
            deadline = started + timeout_s
            while len(results) < chains and time.monotonic() < deadline:
                results += stack.pull_results(chains - len(results), timeout_s=min(5.0, deadline - time.monotonic()))
            drain_s = time.monotonic() - started
            time.sleep(0.5)
        finally:
            stamped.stop()
        tasks = list(stack.cloudtasks.tasks.values()) if stack.cloudtasks is not None else []
        creates = collections.Counter(status for status, _ in stack.cloudtasks.creates) if stack.cloudtasks else None
    report = _account(mode, chains, stamped.lines, len(results), len(results) >= chains, drain_s)
    if creates is not None:
        report.task_creates = creates
        report.task_dispatches = sum(len(task.attempts) for task in tasks)
        report.dispatch_lateness_s = [task.attempts[0][0] - task.schedule_time for task in tasks if task.attempts]
    return report


def _account(
    mode: str, chains: int, lines: list[tuple[float, dict]], results: int, drained: bool, drain_s: float
) -> ChecksReport:
    scheduled: dict[str, dict[int, float]] = collections.defaultdict(dict)
    ran: dict[str, dict[int, float]] = collections.defaultdict(dict)
    refused = stale = 0
    for stamp, line in lines:
        event, key = line.get("event"), line.get("idempotency_key")
        if event == "check_scheduled":
            attempt = int(line["attempt"])
            scheduled[key][attempt] = parse_time(line["due_at"])
            # Scheduling check n is what running check n-1 (or the request, for check 1) ends with.
            if attempt > 1:
                ran[key][attempt - 1] = stamp
        elif event == "result_published" and key in scheduled:
            ran[key][max(scheduled[key])] = stamp
        elif event == "retry_later" and line.get("reason") == "check_not_due":
            refused += 1
        elif event == "stale_check":
            stale += 1
    lateness = [
        ran[key][attempt] - due
        for key, checks in scheduled.items()
        for attempt, due in checks.items()
        if attempt in ran[key]
    ]
    return ChecksReport(
        mode=mode,
        chains=chains,
        results=results,
        drained=drained,
        drain_s=drain_s,
        checks_scheduled=sum(len(checks) for checks in scheduled.values()),
        checks_run=sum(len(done) for done in ran.values()),
        refused=refused,
        stale=stale,
        lateness_s=lateness,
    )
