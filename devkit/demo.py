"""./demo.sh: opcancel running locally, no Google account needed.

Starts the Operations API simulator, Google's Pub/Sub emulator, the Cloud Tasks stand-in and main.py
under functions-framework, publishes one cancel request per name given (a sample by
default) to the requests topic, prints the function's log lines as they come,
then the result events pulled from the results topic, and stops everything.
"""

from __future__ import annotations

import json
import signal
import sys
import time

from devkit.emulators import EmulatorUnavailable
from devkit.local_stack import INSTALL_HINT, TOPICS, LocalStack, StackFailed

SAMPLE = "organizations/123456789/operations/slow-1-demo"


def main(names: list[str]) -> int:
    names = names or [SAMPLE]
    # The emulator and the function run in process groups of their own, out of reach of a Ctrl-C or a
    # closed terminal; turning those into an exception lets the stack stop them on the way out.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    print("Starting the Operations API simulator, the Pub/Sub emulator, Cloud Tasks and the function...", flush=True)
    try:
        with LocalStack() as stack:
            return _run(stack, names)
    except EmulatorUnavailable as reason:
        print(f"Cannot start: {reason}\n{INSTALL_HINT}", file=sys.stderr)
        return 1
    except StackFailed as failure:
        print(f"Cannot start: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted; everything the demo started is stopped.", file=sys.stderr)
        return 130


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(stack: LocalStack, names: list[str]) -> int:
    print(f"  simulator  {stack.api_endpoint}\n  function   {stack.function_url}\n  pubsub     {stack.pubsub.host}")
    print(f"  tasks      {stack.tasks_endpoint} (the Cloud Tasks stand-in: each check is a task)\n")
    for name in names:
        message_id = stack.publish(name)
        print(f"published to {TOPICS['requests']}: {name!r} (message {message_id})", flush=True)
    results = _follow(stack, len(names), timeout_s=90)
    print(f"\n{len(results)} result event(s) on {TOPICS['results']}:")
    for result in results:
        print(json.dumps(result["attributes"], indent=2, sort_keys=True))
        print(json.dumps(result["data"], indent=2))
    return 0 if len(results) == len(names) else 1


def _follow(stack: LocalStack, expected: int, *, timeout_s: float) -> list[dict]:
    """Print the function's structured log lines while waiting for ``expected`` results."""
    printed = 0
    results: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while len(results) < expected and time.monotonic() < deadline:
        results.extend(stack.pull_results(1, timeout_s=0.5))
        lines = stack.function_logs()
        for line in lines[printed:]:
            details = {
                k: v for k, v in line.items() if k not in ("severity", "message", "logging.googleapis.com/labels")
            }
            print(f"  function | {line['severity']:7} {line['message']}  {json.dumps(details)}", flush=True)
        printed = len(lines)
    return results


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
