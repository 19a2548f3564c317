"""./demo.sh: opcancel running locally, no Google account needed.

Starts the Operations API simulator, Google's Pub/Sub emulator, the Cloud Tasks stand-in and main.py
under functions-framework, publishes one message per argument (an operation name, several names one per
line, or a JSON request or batch; a sample by default) to the requests topic, prints the function's log
lines as they come, then every result event those messages earn, and stops everything. It waits for each
request's result, up to the check deadline it says it uses, and exits 0 only when every one came.
"""

from __future__ import annotations

import json
import signal
import sys
import time

from devkit.emulators import EmulatorUnavailable
from devkit.local_stack import INSTALL_HINT, TOPICS, LocalStack, StackFailed
from function import InboundMessage, Settings
from function._parsing import parse_message

SAMPLE = "organizations/123456789/operations/slow-1-demo"
#: Past the check deadline, the time a last check and its result take to arrive.
_MARGIN_S = 30.0


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


def _run(stack: LocalStack, messages: list[str]) -> int:
    settings = Settings.from_env(stack.function_env())
    policy = settings.polling
    print(f"  simulator  {stack.api_endpoint}\n  function   {stack.function_url}\n  pubsub     {stack.pubsub.host}")
    print(f"  tasks      {stack.tasks_endpoint} (the Cloud Tasks stand-in: each check is a task)")
    print(
        f"  checks     first {policy.initial_delay_s:g} s after the cancel, then x{policy.multiplier:g}, at most "
        f"{policy.max_delay_s:g} s apart (the function's defaults); TIMED_OUT after {policy.deadline_s:g} s "
        "(the demo's: the function's default is in docs/configuration.md)\n"
    )
    expected = _expected_results(settings, messages)
    for text in messages:
        message_id = stack.publish(text)
        print(f"published to {TOPICS['requests']}: {text!r} (message {message_id})", flush=True)
    timeout_s = policy.deadline_s + _MARGIN_S
    results = _follow(stack, expected, timeout_s=timeout_s)
    print(f"\n{len(results)} result event(s) on {TOPICS['results']}:")
    for result in results:
        print(json.dumps(result["attributes"], indent=2, sort_keys=True))
        print(json.dumps(result["data"], indent=2))
    if len(results) < expected:
        print(f"\n{expected - len(results)} of {expected} result(s) did not come within {timeout_s:g} s", flush=True)
        return 1
    return 0


def _expected_results(settings: Settings, messages: list[str]) -> int:
    """One result per distinct key the function's own parser finds in the messages (a batch's every item, a
    rejection too); a message it ignores earns none."""
    keys = set()
    for text in messages:
        parsed = parse_message(
            InboundMessage(text.encode()),
            default_version=settings.api_version,
            allowed_parents=settings.allowed_parents,
            services=settings.services,
        )
        if parsed.ignored is not None:
            print(f"  {text!r} earns no result: {parsed.ignored}")
        keys.update(request.idempotency_key for request in parsed.requests)
        keys.update(rejection.idempotency_key for rejection in parsed.rejections)
    return len(keys)


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
