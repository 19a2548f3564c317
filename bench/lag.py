"""Result lag: how long after an operation ends its result is published, under a polling policy, and what the
checks that found it cost.

``run`` starts one ``devkit.local_stack`` per policy, at the same time, in the Cloud Tasks mode (main.py under
functions-framework, Google's Pub/Sub emulator pushing requests and checks, the devkit's Cloud Tasks stand-in
dispatching each check's task at its schedule time), and publishes the same requests to each: operations of
the simulator that end a given number of seconds after their first accepted cancel (``lasts-N-``), every
duration interleaved and the requests spread over ``spread_s``, so no second sees a burst the stand-ins
could not dispatch on time. For each operation:

- lag: the result's publish time (Pub/Sub's, on the results topic) less the operation's end (the simulator's
  cancel time plus its duration);
- checks: the ``get`` calls after the immediate one (the result's ``checks`` less one);
- invocations: the request's delivery, each check's, and any delivery answered with a retry;
- task operations: the task creates answered and the dispatch attempts, each billable
  (cloud.google.com/tasks/pricing);
- store writes: counted by replaying a chain of the same number of checks through the real pipeline and a
  counting SQLite store (``bench/cost.py``), since the function writes in a process of its own.

What carries over to Google's services is the counts and the policy's part of the lag (when the checks fall);
the rest of the lag is this machine, the emulator and the stand-in, reported beside it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pathlib
import statistics
import threading
import time
from dataclasses import dataclass, field

from bench import cost
from bench._harness import percentile
from devkit.local_stack import LocalStack
from function import PollingPolicy
from function._gcp.tasks import task_id

ORG = "organizations/123456789"
DURATIONS_S = (1, 10, 60, 300)
#: (label, the OPCANCEL_CHECK_* settings; none: the function's own defaults).
POLICIES = (
    ("defaults", {}),
    (
        "old defaults",
        {
            "OPCANCEL_CHECK_INITIAL_DELAY_S": "5",
            "OPCANCEL_CHECK_MULTIPLIER": "2",
            "OPCANCEL_CHECK_MAX_DELAY_S": "300",
        },
    ),
)
#: More attempts than a chain here reaches (300 s at 1 s, ×1.5, ≤ 20 s is 21 checks).
_MAX_ATTEMPTS = 60
#: Operations run, and not measured, before the measured ones.
WARM_UP = 10


def policy_of(settings: dict[str, str]) -> PollingPolicy:
    """The policy the function runs with under ``settings`` (``Settings`` reads them the same way)."""
    default = PollingPolicy()
    return PollingPolicy(
        initial_delay_s=float(settings.get("OPCANCEL_CHECK_INITIAL_DELAY_S", default.initial_delay_s)),
        multiplier=float(settings.get("OPCANCEL_CHECK_MULTIPLIER", default.multiplier)),
        max_delay_s=float(settings.get("OPCANCEL_CHECK_MAX_DELAY_S", default.max_delay_s)),
        deadline_s=float(settings.get("OPCANCEL_CHECK_DEADLINE_S", default.deadline_s)),
    )


def planned_checks(policy: PollingPolicy, until_s: float) -> list[float]:
    """When the policy's checks fall after the cancel, the immediate ``get`` at 0, up to the first at or after
    ``until_s``: each its delay after the one before was due, as the function plans them."""
    times, attempt = [0.0], 0
    while times[-1] < until_s:
        attempt += 1
        times.append(times[-1] + policy.delay_before(attempt))
    return times


def policy_lag(policy: PollingPolicy, duration_s: float) -> float:
    """The lag the policy alone gives an operation ending ``duration_s`` after its cancel: the first check at or
    after the end, less the end, with every check taking no time."""
    return planned_checks(policy, duration_s)[-1] - duration_s


def beyond_reach(policy: PollingPolicy, *, within_s: float, goal_s: float) -> list[tuple[float, float]]:
    """The checks (one, the next) around each span of end times up to ``within_s`` that the policy alone sees
    more than ``goal_s`` late: an operation ending just after one is seen at the next, whatever the platform."""
    times = planned_checks(policy, within_s)
    return [(one, following) for one, following in zip(times, times[1:], strict=False) if following - one > goal_s]


@dataclass(frozen=True)
class Ended:
    """One operation, from its request to its result."""

    duration_s: int
    lag_s: float
    #: When the operation ended, from the first measured request's publish.
    ended_s: float
    checks: int
    invocations: int
    task_operations: int


@dataclass
class LagReport:
    policy: str
    settings: dict[str, str]
    requested: collections.Counter = field(default_factory=collections.Counter)
    ended: list[Ended] = field(default_factory=list)
    #: First dispatch attempt less the task's schedule time: the stand-in's part of the lag.
    dispatch_lateness_s: list[float] = field(default_factory=list)
    #: For each check that scheduled another: from its task's schedule time to the next task's create, that is
    #: the stand-in, the emulator's push and the function's run. Each check's due time is reckoned from the one
    #: before it, so this does not add up along a chain; on Google it is Cloud Tasks', Pub/Sub's and the
    #: function's instead.
    check_turnaround_s: list[float] = field(default_factory=list)
    #: Store writes of a chain of n delayed checks, by n, counted by replaying one (``bench/cost.py``).
    store_writes: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    #: Over how long the requests were published, evenly.
    spread_s: float = 0.0
    #: The machine's one-minute load average, sampled through the run: the other work it was doing.
    load: list[float] = field(default_factory=list)

    @property
    def polling(self) -> PollingPolicy:
        return policy_of(self.settings)

    def of(self, duration_s: int) -> list[Ended]:
        return [ended for ended in self.ended if ended.duration_s == duration_s]

    def lag(self, duration_s: int, fraction: float) -> float:
        lags = sorted(ended.lag_s for ended in self.of(duration_s))
        return percentile(lags, fraction) if lags else float("nan")

    def per_operation(self, duration_s: int, what: str) -> float:
        values = [getattr(ended, what) for ended in self.of(duration_s)]
        return statistics.mean(values) if values else float("nan")

    def writes_per_operation(self, duration_s: int) -> float:
        writes = [self.store_writes[ended.checks] for ended in self.of(duration_s) if ended.checks in self.store_writes]
        return statistics.mean(writes) if writes else float("nan")


def run(
    workdir: pathlib.Path,
    *,
    per_duration: int,
    durations: tuple[int, ...] = DURATIONS_S,
    spread_s: float = 90.0,
    policies: tuple[tuple[str, dict[str, str]], ...] = POLICIES,
) -> list[LagReport]:
    """Every policy at once, each on a stack of its own; one report per policy."""
    reports = [LagReport(label, settings) for label, settings in policies]
    failures: list[BaseException] = []
    timeout_s = spread_s + max(durations) + 180.0
    with contextlib.ExitStack() as stacks:
        started = []
        for index, report in enumerate(reports):
            directory = workdir / f"lag-{index}"
            directory.mkdir()
            started.append(stacks.enter_context(LocalStack(polling=report.settings, workdir=str(directory))))

        def drive(index: int, stack: LocalStack, report: LagReport) -> None:
            try:
                _drive(stack, report, index, per_duration, durations, spread_s, timeout_s)
            except BaseException as failure:
                failures.append(failure)

        threads = [
            threading.Thread(target=drive, args=(index, stack, report), daemon=True)
            for index, (stack, report) in enumerate(zip(started, reports, strict=True))
        ]
        done = threading.Event()
        sampler = threading.Thread(target=_sample_load, args=(reports, done), daemon=True)
        sampler.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done.set()
        sampler.join()
    if failures:
        raise failures[0]
    for index, report in enumerate(reports):
        report.store_writes = _store_writes(workdir / f"lag-{index}", {ended.checks for ended in report.ended})
    return reports


def _sample_load(reports: list[LagReport], done: threading.Event) -> None:
    while not done.wait(5.0):
        for report in reports:
            report.load.append(os.getloadavg()[0])


def _drive(
    stack: LocalStack,
    report: LagReport,
    index: int,
    per_duration: int,
    durations: tuple[int, ...],
    spread_s: float,
    timeout_s: float,
) -> None:
    """Warm the stack up, publish the requests on their schedule, wait for every result, and account for each."""
    topic = stack.publisher.topic_path("opcancel-local", "opcancel-requests")
    # A stack's first checks take seconds (connections made, the emulator's JIT cold): not what is measured.
    warm_up = [f"{ORG}/operations/lasts-1-warm-up-{index}-{n}" for n in range(WARM_UP)]
    for name in warm_up:
        stack.publisher.publish(topic, name.encode()).result(timeout=60)
    warmed: list[dict] = []
    while len(warmed) < len(warm_up):
        pulled = stack.pull_results(len(warm_up) - len(warmed), timeout_s=60)
        if not pulled:
            raise RuntimeError("the warm-up's results did not come within a minute")
        warmed += pulled
    names = [
        f"{ORG}/operations/lasts-{duration}-lag-{index}-{n}" for n in range(per_duration) for duration in durations
    ]
    report.requested = collections.Counter(_duration(name) for name in names)
    report.spread_s = spread_s
    started = time.monotonic()
    for offset, name in schedule(names, spread_s):
        # Pub/Sub stamps each result as it takes it, so the results can wait on their subscription meanwhile.
        time.sleep(max(0.0, started + offset - time.monotonic()))
        stack.publisher.publish(topic, name.encode()).result(timeout=60)
    results: list[dict] = []
    deadline = started + timeout_s
    while len(results) < len(names) and time.monotonic() < deadline:
        results += stack.pull_results(len(names) - len(results), timeout_s=min(5.0, deadline - time.monotonic()))
    report.elapsed_s = time.monotonic() - started
    _account(report, stack, names, results, started_at=time.time() - (time.monotonic() - started))


def schedule(names: list[str], spread_s: float) -> list[tuple[float, str]]:
    """When to publish each request, from the first: each duration's requests evenly over ``spread_s`` plus
    the longest duration less its own, so every operation ends within that time and the early checks of a
    chain, its densest, are spread over the whole run rather than bunched at its start."""
    by_duration = collections.defaultdict(list)
    for name in names:
        by_duration[_duration(name)].append(name)
    window = spread_s + max(by_duration)
    return sorted(
        ((window - duration) * number / len(same), name)
        for duration, same in by_duration.items()
        for number, name in enumerate(same)
    )


def _duration(name: str) -> int:
    return int(name.rsplit("/", 1)[1].split("-")[1])


def _account(report: LagReport, stack: LocalStack, names: list[str], results: list[dict], *, started_at: float) -> None:
    assert stack.cloudtasks is not None
    published = {result["data"]["operation"]: result for result in results}
    keys = {f"securitycenter.googleapis.com/{name}": name for name in names}
    # Each check's task is named by key and attempt, so a task tells whose check it was.
    checks = {
        task_id(key, attempt): (name, attempt) for key, name in keys.items() for attempt in range(1, _MAX_ATTEMPTS + 1)
    }
    tasks = {}
    task_operations: collections.Counter = collections.Counter()
    dispatched: collections.Counter = collections.Counter()
    for _, task_name in stack.cloudtasks.creates:
        if task_name is not None and task_name.rsplit("/", 1)[1] in checks:
            task_operations[checks[task_name.rsplit("/", 1)[1]][0]] += 1
    for task in stack.cloudtasks.tasks.values():
        check = checks.get(task.name.rsplit("/", 1)[1])
        if check is None:
            continue
        tasks[check] = task
        task_operations[check[0]] += len(task.attempts)
        dispatched[check[0]] += sum(1 for _, status in task.attempts if status is not None and 200 <= status < 300)
    report.dispatch_lateness_s = [task.attempts[0][0] - task.schedule_time for task in tasks.values() if task.attempts]
    report.check_turnaround_s = [
        tasks[(name, attempt + 1)].create_time - task.schedule_time
        for (name, attempt), task in tasks.items()
        if (name, attempt + 1) in tasks
    ]
    retries = collections.Counter(
        keys.get(line.get("idempotency_key")) for line in stack.function_logs() if line.get("event") == "retry_later"
    )
    for name in names:
        operation = stack.simulator.operations.get(name)
        result = published.get(name)
        if result is None or operation is None or operation.ends_at is None:
            continue
        report.ended.append(
            Ended(
                duration_s=_duration(name),
                lag_s=result["published_at"] - operation.ends_at,
                ended_s=operation.ends_at - started_at,
                checks=int(result["data"]["checks"]) - 1,
                # The request's delivery, each check delivered, and every delivery answered with a retry.
                invocations=1 + dispatched[name] + retries[name],
                task_operations=task_operations[name],
            )
        )


def _store_writes(workdir: pathlib.Path, checks: set[int]) -> dict[int, int]:
    """Writes of a chain with each number of delayed checks, through the real pipeline and a counting store."""
    writes = {}
    for count in sorted(checks):
        name = f"{ORG}/operations/slow-{count}-replay" if count else f"{ORG}/operations/replay"
        counted = cost.replay(workdir / f"lag-writes-{count}.sqlite3", name)
        writes[count] = counted.store_writes
    return writes
