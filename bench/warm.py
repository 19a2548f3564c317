"""Warm load: requests per second and p50/p99 latency at several concurrencies, and the peak memory of
one instance, through functions-framework with the simulator answering at once.

Each client thread keeps one connection open, as Pub/Sub's push does, and sends push bodies naming a
fresh operation each time, so every request is a real cancel: claim, cancel, get (done at once),
publish the result to the Pub/Sub emulator, finish. All functions run side by side and are loaded in
turn, round after round, so drift on the machine spreads over all of them.
"""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import pathlib
import statistics
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass

from bench._harness import (
    ORG,
    PUSH_HEADERS,
    RunningFunction,
    Services,
    cpu_s,
    group_cpu_s,
    median,
    peak_rss_kib,
    percentile,
    private_kib,
    push_body,
)

MEASURED = ("bare", "floor", "opcancel", "opcancel-budget", "opcancel-tripped")
#: opcancel's variants under the guard, by their settings. Below the budget: one so large it never trips,
#: over a window of one second, so the budget document holds the last second's cancels (about as many as
#: req/s; a full budget of the deploy default, 100/1h, holds 100). At the budget: a budget of one, spent by
#: the warm-up's first request, so every later request is held by the open breaker and reported HELD.
VARIANTS = {
    "opcancel-budget": {"OPCANCEL_CANCEL_BUDGET": "10000/1s"},
    "opcancel-tripped": {"OPCANCEL_CANCEL_BUDGET": "1/1h"},
}
#: Length of one function's turn in the warm-up.
WARMUP_SPELL_S = 5.0


@dataclass(frozen=True)
class Load:
    requests: int
    errors: int
    seconds: float
    latencies_s: list[float]
    #: CPU time the function's worker and the Pub/Sub emulator used during the load.
    worker_cpu_s: float = 0.0
    emulator_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def worker_ms_per_request(self) -> float:
        return 1000 * self.worker_cpu_s / max(self.requests, 1)

    @property
    def emulator_ms_per_request(self) -> float:
        return 1000 * self.emulator_cpu_s / max(self.requests, 1)

    def p(self, fraction: float) -> float:
        return percentile(self.latencies_s, fraction)


@dataclass(frozen=True)
class WarmResults:
    #: function -> concurrency -> one Load per round.
    loads: dict[str, dict[int, list[Load]]]
    #: function -> (worker's peak RSS, master's private memory) in KiB, after every round.
    memory_kib: dict[str, tuple[int, int]]
    warmup_s: float
    #: The unrecorded warm-up's loads, each with its function's name, in the order they ran.
    warmup: list[tuple[str, Load]]

    def median_rps(self, name: str, concurrency: int) -> float:
        return median([load.rps for load in self.loads[name][concurrency]])

    def median_ratio(self, name: str, baseline: str, concurrency: int, fraction: float | None = None) -> float:
        """The median over rounds of each round's ratio, of requests/s or (with ``fraction``) of that
        latency percentile: within a round the two ran one after the other, under the same conditions."""
        return median(self._round_ratios(name, baseline, concurrency, fraction))

    def ratio_spread(self, name: str, baseline: str, concurrency: int) -> tuple[float, float]:
        """The middle half of the rounds' requests/s ratios (first and third quartiles): how far one
        round's figure can be trusted on this machine."""
        ratios = self._round_ratios(name, baseline, concurrency)
        if len(ratios) < 2:
            return ratios[0], ratios[0]
        first, _, third = statistics.quantiles(ratios, n=4)
        return first, third

    def _round_ratios(self, name: str, baseline: str, concurrency: int, fraction: float | None = None) -> list[float]:
        pairs = zip(self.loads[name][concurrency], self.loads[baseline][concurrency], strict=True)
        if fraction is None:
            return [ours.rps / theirs.rps for ours, theirs in pairs]
        return [ours.p(fraction) / theirs.p(fraction) for ours, theirs in pairs]

    def median_p(self, name: str, concurrency: int, fraction: float) -> float:
        return median([load.p(fraction) for load in self.loads[name][concurrency]])

    def median_worker_ms(self, name: str, concurrency: int) -> float:
        return median([load.worker_ms_per_request for load in self.loads[name][concurrency]])

    def median_emulator_ms(self, name: str, concurrency: int) -> float:
        return median([load.emulator_ms_per_request for load in self.loads[name][concurrency]])

    def errors(self, name: str) -> int:
        return sum(load.errors for by_concurrency in self.loads[name].values() for load in by_concurrency)


def measure(
    services: Services,
    workdir: pathlib.Path,
    *,
    concurrencies: tuple[int, ...],
    rounds: int,
    seconds: float,
    warmup_s: float = 5.0,
    functions_measured: tuple[str, ...] = MEASURED,
) -> WarmResults:
    names = itertools.count()
    loads: dict[str, dict[int, list[Load]]] = {name: {c: [] for c in concurrencies} for name in functions_measured}
    warmup: list[tuple[str, Load]] = []
    with ExitStack() as stack:
        functions = {}
        for name in functions_measured:
            directory = workdir / f"warm-{name}"
            directory.mkdir()
            functions[name] = stack.enter_context(
                services.running_function(
                    name, services.environment(directory, **VARIANTS.get(name, {})), log=directory / "function.log"
                )
            )

        def load(name: str, function: RunningFunction, concurrency: int, seconds: float) -> Load:
            return _metered_load(services, function, concurrency=concurrency, seconds=seconds, names=names, prefix=name)

        # Unrecorded, taking turns in short spells: connections and caches warm up, and above all the Java
        # emulator's JIT, whose CPU per publish falls about threefold over its first ~15,000 publishes;
        # measured before then, every function would share the cores with a costlier emulator than the
        # steady state has (the report shows its cost per publish over the warm-up and the rounds).
        spell_s = min(warmup_s, WARMUP_SPELL_S)
        for _ in range(max(1, round(warmup_s / spell_s))):
            for name, function in functions.items():
                warmup.append((name, load(name, function, 8, spell_s)))
        for round_number in range(rounds):
            # Every other round in reverse, so no function always follows the same one: the load just
            # before leaves the emulator and the simulator busy (a collection, a queue) for the next.
            order = list(functions.items())
            if round_number % 2:
                order.reverse()
            for concurrency in concurrencies:
                for name, function in order:
                    loads[name][concurrency].append(load(name, function, concurrency, seconds))
        peaks = {}
        for name, function in functions.items():
            (worker,) = function.worker_pids()
            peaks[name] = (peak_rss_kib(worker), private_kib(function.process.pid))
    return WarmResults(loads, peaks, warmup_s, warmup)


def _metered_load(
    services: Services,
    function: RunningFunction,
    *,
    concurrency: int,
    seconds: float,
    names: itertools.count,
    prefix: str,
) -> Load:
    """``_load``, with the CPU the function's worker and the emulator used meanwhile."""
    (worker,) = function.worker_pids()
    worker_before, emulator_before = cpu_s(worker), group_cpu_s(services.pubsub.pid)
    load = _load(function.port, concurrency=concurrency, seconds=seconds, names=names, prefix=prefix)
    return dataclasses.replace(
        load,
        worker_cpu_s=cpu_s(worker) - worker_before,
        emulator_cpu_s=group_cpu_s(services.pubsub.pid) - emulator_before,
    )


def _load(port: int, *, concurrency: int, seconds: float, names: itertools.count, prefix: str) -> Load:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine: list[float] = []
        failed = 0
        start.wait()
        while time.perf_counter() < stop_at[0]:
            operation_id = f"warm-{prefix}-{next(names)}"
            body = push_body(f"{ORG}/operations/{operation_id}", message_id=operation_id)
            began = time.perf_counter()
            try:
                connection.request("POST", "/", body, PUSH_HEADERS)
                response = connection.getresponse()
                response.read()
                ok = 200 <= response.status < 300
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                ok = False
            if ok:
                mine.append(time.perf_counter() - began)
            else:
                failed += 1
        connection.close()
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return Load(len(latencies), errors[0], elapsed, sorted(latencies))
