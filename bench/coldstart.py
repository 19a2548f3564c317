"""Cold start: from spawning the function's process until its first request is fully handled.

The request is a push body naming a fresh operation, sent as soon as the port accepts a connection, as
Cloud Run holds the first request until the instance listens. For opcancel and the official-client
implementation "handled" means the cancel and get were answered and the result publish confirmed by
the Pub/Sub emulator: both return only then. Runs are interleaved, so drift on the machine spreads
over every function alike.
"""

from __future__ import annotations

import http.client
import pathlib
import time
from dataclasses import dataclass

from bench._harness import (
    ORG,
    PUSH_HEADERS,
    RunningFunction,
    Services,
    median,
    median_interval,
    push_body,
)

MEASURED = ("bare", "opcancel", "official")


@dataclass(frozen=True)
class ColdStart:
    runs: dict[str, list[float]]
    #: Credentials from a metadata server, as in a Cloud Function, rather than none.
    cloud_credentials: bool = False

    def median_ms(self, name: str) -> float:
        return median(self.runs[name]) * 1000

    def median_ratio(self, name: str, baseline: str = "bare") -> float:
        """The median over rounds of each round's ratio: the starts of one round run back to back, so
        what the machine was doing then weighs on both alike."""
        return median(self._round_ratios(name, baseline))

    def ratio_interval(self, name: str, baseline: str = "bare") -> tuple[float, float]:
        """A 95% confidence interval for that median: how far this run's figure can be trusted."""
        return median_interval(self._round_ratios(name, baseline))

    def _round_ratios(self, name: str, baseline: str) -> list[float]:
        return [ours / floor for ours, floor in zip(self.runs[name], self.runs[baseline], strict=True)]


def measure(
    services: Services,
    workdir: pathlib.Path,
    *,
    runs: int,
    names: tuple[str, ...] = MEASURED,
    cloud_credentials: bool = False,
) -> ColdStart:
    times: dict[str, list[float]] = {name: [] for name in names}
    tag = "cloud" if cloud_credentials else "cold"
    # A first, unrecorded start of each writes its bytecode caches, as a deployment's build does.
    for round_number in range(runs + 1):
        for name in names:
            elapsed = _one(services, workdir, name, f"{tag}-{name}-{round_number}", cloud_credentials)
            if round_number:
                times[name].append(elapsed)
    return ColdStart(times, cloud_credentials)


def _one(services: Services, workdir: pathlib.Path, name: str, operation_id: str, cloud_credentials: bool) -> float:
    run_dir = workdir / operation_id
    run_dir.mkdir()
    env = services.environment(run_dir, **(services.cloud_credentials(run_dir) if cloud_credentials else {}))
    body = push_body(f"{ORG}/operations/{operation_id}", message_id=operation_id)
    log = run_dir / "function.log"
    started = time.perf_counter()
    function = services.start_function(name, env, log=log)
    try:
        status = _first_request(function, body)
        elapsed = time.perf_counter() - started
    finally:
        function.stop()
    if not 200 <= status < 300:
        raise RuntimeError(f"{name} answered its first request with {status}:\n{log.read_text()[-2000:]}")
    return elapsed


def _first_request(function: RunningFunction, body: bytes) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        function.check_alive()
        connection = http.client.HTTPConnection("127.0.0.1", function.port, timeout=60)
        try:
            connection.request("POST", "/", body, PUSH_HEADERS)
        except ConnectionRefusedError:
            connection.close()
            # Short, so the first moment it listens is caught; a connect attempt costs microseconds.
            time.sleep(0.002)
            continue
        status = connection.getresponse().status
        connection.close()
        return status
    raise RuntimeError("the function did not answer within 60 s")
