"""Google's Pub/Sub and Firestore emulators, started from the gcloud SDK on free loopback ports.

gcloud starts a Java child, so each emulator runs in its own process group and
is stopped by signalling the whole group: stopping only gcloud's PID would leave
the Java server running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

_COMMANDS = {
    "pubsub": ["beta", "emulators", "pubsub", "start"],
    "firestore": ["emulators", "firestore", "start"],
}


class EmulatorUnavailable(Exception):
    """The emulator cannot run here (no gcloud, or it did not come up); tests skip with this reason."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_group(process: subprocess.Popen, *, grace_s: float = 15.0) -> None:
    """SIGTERM the group ``process`` leads (it must have been started with ``start_new_session``), then SIGKILL."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=grace_s)
    # The leader may exit before its children (gcloud before Java, gunicorn's master before a worker);
    # the group outlives it, and its id cannot be reused while any member is left.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


class Emulator:
    def __init__(self, kind: str, *, project: str = "opcancel-local", timeout_s: float = 90.0) -> None:
        gcloud = shutil.which("gcloud")
        if gcloud is None:
            raise EmulatorUnavailable(f"gcloud is not installed, so the {kind} emulator cannot run")
        self.kind = kind
        self.host = f"127.0.0.1:{free_port()}"
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - kept for the emulator's life, closed in stop()
        command = [gcloud, *_COMMANDS[kind], f"--host-port={self.host}"]
        if kind == "pubsub":
            command.append(f"--project={project}")
        self._process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self._stopped = False
        try:
            self._wait_until_ready(timeout_s)
        except BaseException:
            # Ctrl-C while waiting included: the caller never gets an object to stop.
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self._process.pid

    def _wait_until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmulatorUnavailable(f"the {self.kind} emulator exited early: {self._output()}")
            try:
                # Both answer GET / with 200 "Ok" once they serve; the port opens a moment before that.
                with urllib.request.urlopen(f"http://{self.host}/", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.25)
        raise EmulatorUnavailable(f"the {self.kind} emulator did not answer within {timeout_s:.0f} s: {self._output()}")

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-600:]

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        stop_group(self._process)
        self._log.close()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
