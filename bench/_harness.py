"""What every benchmark stands on: the simulator and Pub/Sub emulator as separate processes, functions
started under functions-framework exactly as Cloud Functions starts them, and push bodies shaped as the
emulator sends them."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from bench._metadata import MetadataServer
from devkit.emulators import Emulator, free_port, stop_group

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = "opcancel-bench"
RESULTS_TOPIC = "opcancel-results"
CHECKS_TOPIC = "opcancel-checks"
ORG = "organizations/123456789"

#: The functions measured: (source file, target).
FUNCTIONS = {
    "bare": ROOT / "bench" / "functions" / "bare.py",
    "floor": ROOT / "bench" / "functions" / "floor.py",
    "official": ROOT / "bench" / "functions" / "official.py",
    "opcancel": ROOT / "main.py",
    # opcancel under a cancel budget (``bench/warm.py``, ``VARIANTS``): below it, and with its breaker open.
    "opcancel-budget": ROOT / "main.py",
    "opcancel-tripped": ROOT / "main.py",
    "chaos": ROOT / "bench" / "functions" / "chaos.py",
}


@dataclass(frozen=True)
class Pythons:
    """The interpreter each function runs under. ``bench/run`` passes deployment-like ones: a venv with
    only requirements.txt for opcancel and the functions built on it, and one with only what the
    official-client baseline would deploy, so no test or bench tool is there to be imported, as none
    is on Cloud Functions. The defaults, this interpreter, serve the tests' brief runs."""

    deployed: str = sys.executable
    official: str = sys.executable

    def of(self, function: str) -> str:
        return self.official if function == "official" else self.deployed

    def versions(self, packages: Iterable[str]) -> dict[str, str]:
        """Each package's version where the functions run: the first of the interpreters that has it."""
        found: dict[str, str] = {}
        for python in dict.fromkeys((self.deployed, self.official)):
            answer = subprocess.run(
                [python, "-c", _VERSIONS_SCRIPT, *packages], capture_output=True, text=True, timeout=60, check=True
            )
            for package, version in json.loads(answer.stdout).items():
                if version is not None:
                    found.setdefault(package, version)
        return {package: found.get(package, "not installed") for package in packages}

    def python_version(self, function: str) -> str:
        """The Python version ``function`` runs under."""
        answer = subprocess.run(
            [self.of(function), "-c", "import platform; print(platform.python_version())"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return answer.stdout.strip()


#: Every function under this interpreter: the tests' brief runs.
THIS_PYTHON = Pythons()

_VERSIONS_SCRIPT = """
import importlib.metadata, json, sys
def version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
print(json.dumps({package: version(package) for package in sys.argv[1:]}))
"""


class Services:
    """The Operations API simulator (its own process, so it never shares a GIL with what it answers) and
    Google's Pub/Sub emulator with the topics the functions publish to; ``pythons`` run the functions."""

    def __init__(self, pythons: Pythons = THIS_PYTHON) -> None:
        self.pythons = pythons
        self._stops: list[Any] = []

    def __enter__(self) -> Services:
        try:
            port = free_port()
            self.api_endpoint = f"http://127.0.0.1:{port}"
            self._simulator = subprocess.Popen(
                [sys.executable, "-m", "devkit.simulator", "--port", str(port)],
                cwd=ROOT, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            self._stops.append(lambda: stop_group(self._simulator, grace_s=5))
            _wait_for(f"{self.api_endpoint}/_simulator/calls")
            self.metadata = MetadataServer()
            self._stops.append(self.metadata.stop)
            self.pubsub = Emulator("pubsub", project=PROJECT)
            self._stops.append(self.pubsub.stop)
            for topic in (RESULTS_TOPIC, CHECKS_TOPIC):
                request = urllib.request.Request(
                    f"http://{self.pubsub.host}/v1/projects/{PROJECT}/topics/{topic}", method="PUT"
                )
                urllib.request.urlopen(request, timeout=10).close()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        while self._stops:
            with contextlib.suppress(Exception):
                self._stops.pop()()

    def simulator(self, method: str, command: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.api_endpoint}/_simulator/{command}", data=data, method=method)
        request.add_header("content-type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def start_function(self, name: str, env: dict[str, str], *, log: pathlib.Path) -> RunningFunction:
        """Function ``name`` of ``FUNCTIONS``, under the interpreter ``pythons`` gives it."""
        return RunningFunction.start(FUNCTIONS[name], env, log=log, python=self.pythons.of(name))

    @contextlib.contextmanager
    def running_function(self, name: str, env: dict[str, str], *, log: pathlib.Path) -> Iterator[RunningFunction]:
        """As ``start_function``, once it serves; stopped on leaving."""
        function = self.start_function(name, env, log=log)
        try:
            function.wait_until_serving()
            yield function
        finally:
            function.stop()

    def environment(self, workdir: pathlib.Path, **extra: str) -> dict[str, str]:
        """What every function is started with: the local endpoints, anonymous auth, an embedded store."""
        inherited = {
            name: value
            for name, value in os.environ.items()
            # Bytecode caches are written, as a deployment's build leaves them, whatever this shell says.
            if not name.startswith("OPCANCEL_")
            and name not in ("GOOGLE_APPLICATION_CREDENTIALS", "PYTHONDONTWRITEBYTECODE")
        }
        return {
            **inherited,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "PUBSUB_EMULATOR_HOST": self.pubsub.host,
            "OPCANCEL_API_ENDPOINT": self.api_endpoint,
            "OPCANCEL_AUTH": "anonymous",
            "OPCANCEL_STORE": "sqlite",
            "OPCANCEL_SQLITE_PATH": str(workdir / "idempotency.sqlite3"),
            "OPCANCEL_RESULTS_TOPIC": RESULTS_TOPIC,
            "OPCANCEL_CHECKS_TOPIC": CHECKS_TOPIC,
            "OPCANCEL_ALLOWED_PARENTS": ORG,
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    def cloud_credentials(self, workdir: pathlib.Path) -> dict[str, str]:
        """Settings under which credentials come from the metadata server, as in a Cloud Function."""
        home = workdir / "home"
        home.mkdir(exist_ok=True)
        return {
            "K_SERVICE": "opcancel-bench",
            "OPCANCEL_AUTH": "adc",
            "BENCH_CREDENTIALS": "adc",
            "GCE_METADATA_HOST": self.metadata.host,
            "GCE_METADATA_IP": self.metadata.host,
            # No gcloud login on this machine may stand in for the metadata server.
            "HOME": str(home),
            "CLOUDSDK_CONFIG": str(home),
        }


def function_command(source: pathlib.Path, port: int, python: str) -> list[str]:
    """As the Python runtime starts a function: functions-framework's gunicorn server, one worker."""
    return [
        python, "-m", "functions_framework", "--source", str(source), "--target", "on_event",
        "--signature-type", "cloudevent", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


class RunningFunction:
    """A function under functions-framework in a process group of its own, its output in ``log``."""

    def __init__(self, process: subprocess.Popen, port: int, log: pathlib.Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    @classmethod
    def start(cls, source: pathlib.Path, env: dict[str, str], *, log: pathlib.Path, python: str) -> RunningFunction:
        port = free_port()
        with open(log, "ab") as output:
            process = subprocess.Popen(
                function_command(source, port, python), cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        return cls(process, port, log)

    def stop(self) -> None:
        stop_group(self.process, grace_s=5)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the function exited at start-up:\n{self.log.read_text(errors='replace')[-2000:]}")

    def wait_until_serving(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError):
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/")
                connection.getresponse().read()
                connection.close()
                return
            time.sleep(0.05)
        raise RuntimeError(f"the function did not start within {timeout_s:.0f} s")

    def worker_pids(self) -> list[int]:
        """gunicorn's workers: the children of the master that functions-framework runs."""
        children = pathlib.Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]


def push_body(name: str, *, message_id: str, attributes: dict[str, str] | None = None) -> bytes:
    """A request as the Pub/Sub emulator pushes it: the raw push body, which functions-framework converts."""
    return json.dumps(
        {
            "message": {
                "data": base64.b64encode(name.encode()).decode(),
                "messageId": message_id,
                "attributes": attributes or {},
                "publishTime": "2026-12-01T00:00:00.000Z",
            },
            "subscription": f"projects/{PROJECT}/subscriptions/opcancel-requests-push",
        }
    ).encode()


PUSH_HEADERS = {"content-type": "application/json"}


def peak_rss_kib(pid: int) -> int:
    """The process's high-water resident set (VmHWM), in KiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for {pid}")


def private_kib(pid: int) -> int:
    """Memory only this process maps (Private_Clean + Private_Dirty), in KiB: what it adds beside its children."""
    total = 0
    for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total


_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU time (user and system, all threads) the process has used so far."""
    return _cpu_and_group(pathlib.Path(f"/proc/{pid}/stat"))[0]


def group_cpu_s(group: int) -> float:
    """CPU time the live processes of process group ``group`` have used so far: the Pub/Sub emulator is
    gcloud's wrapper and the Java server it starts, in a session of their own."""
    total = 0.0
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            cpu, process_group = _cpu_and_group(stat)
            if process_group == group:
                total += cpu
    return total


def _cpu_and_group(stat: pathlib.Path) -> tuple[float, int]:
    """From a ``/proc/PID/stat``: the process's CPU seconds (utime + stime) and its process group."""
    # After the command name, which may hold spaces and parentheses: state, ppid, pgrp, ... utime, stime.
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S, int(fields[2])


def _wait_for(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=1).close()
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def median(values: list[float]) -> float:
    return statistics.median(values)


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median: the k-th smallest and k-th largest
    values, k as large as keeps the chance that the true median lies outside at most 1 - confidence
    (each value falls either side of it with probability one half). With too few values for that,
    the smallest and the largest."""
    ordered = sorted(values)
    n = len(ordered)
    k = 0
    # Grow k while the interval one narrower still covers the median with the confidence asked.
    while k + 1 <= n - k and 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n <= 1 - confidence:
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    index = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]
