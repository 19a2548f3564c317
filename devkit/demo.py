"""./demo.sh: opcancel running locally, no Google account needed.

Starts the Operations API simulator, Google's Pub/Sub emulator and main.py under
functions-framework, publishes one cancel request per name given (a sample by
default) to the requests topic, prints the function's log lines as they come,
then the result events pulled from the results topic, and stops everything.
"""

from __future__ import annotations

import json
import sys
import time

from devkit.emulators import EmulatorUnavailable
from devkit.local_stack import TOPICS, LocalStack

SAMPLE = "organizations/123456789/operations/slow-1-demo"
INSTALL_HINT = (
    "The demo needs Google's Pub/Sub emulator and Java: `gcloud components install pubsub-emulator`, "
    "or the Debian package google-cloud-cli-pubsub-emulator, plus a JRE (e.g. openjdk-17-jre-headless)."
)


def main(names: list[str]) -> int:
    names = names or [SAMPLE]
    print("Starting the Operations API simulator, the Pub/Sub emulator and the function...", flush=True)
    try:
        with LocalStack() as stack:
            return _run(stack, names)
    except EmulatorUnavailable as reason:
        print(f"Cannot start: {reason}\n{INSTALL_HINT}", file=sys.stderr)
        return 1


def _run(stack: LocalStack, names: list[str]) -> int:
    print(f"  simulator  {stack.api_endpoint}\n  function   {stack.function_url}\n  pubsub     {stack.pubsub.host}\n")
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
