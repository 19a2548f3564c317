"""The commands on single operations: cancel (and its --all form, in ``bulk``), get, list, publish.

Every name goes through the request parser (the same accepted forms, the same rejections, the same
allow-list) before anything reaches the network, outcomes come from ``settle`` as the function's do, and
the API client is the function's own, retries included. ``cancel`` calls the API directly, with no
idempotency store and no checks topic; ``publish`` hands requests to the deployed function instead.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import click

from .._clock import Clock
from .._gcp.operations import settle
from .._model import CancelRequest, Outcome, Rejection, Result
from .._names import SERVICE, escape_text
from .._parsing import reported_key
from .._settings import PollingPolicy
from ..errors import ApiRejected, ApiUnavailable, PublishFailed
from ._clients import CliClients
from ._common import (
    SECONDS,
    api_version_option,
    json_option,
    location_option,
    pages,
    parent_of,
    parse,
    pubsub_host,
    request_body,
    require_credentials,
    seconds,
    single,
    state_line,
)
from ._exits import CliFailure, Exit, exit_for, failure, safe
from .bulk import cancel_all

_NO_PUBSUB_CREDENTIALS = (
    "no Google credentials for Pub/Sub: run `gcloud auth application-default login`, "
    "or set PUBSUB_EMULATOR_HOST to use the Pub/Sub emulator"
)


@click.command()
@click.argument("name", required=False)
@click.option(
    "--all",
    "parent",
    metavar="PARENT",
    help="Instead of NAME: every operation under PARENT, each handed to the deployed function as its own request.",
)
@click.option("--filter", "filter_", help="With --all: the API's filter expression, e.g. done=false.")
@click.option(
    "--max",
    "max_count",
    type=click.IntRange(1, 1_000_000),
    metavar="N",
    help="With --all: when more than N operations match, publish none.",
)
@click.option("--dry-run", is_flag=True, help="With --all: print what would be cancelled, publish nothing.")
@click.option("--yes", is_flag=True, help="With --all: publish without asking for confirmation.")
@location_option
@api_version_option
@click.option("--wait", is_flag=True, help="Follow the operation with get until it is done or --timeout passes.")
@click.option(
    "--interval",
    type=SECONDS,
    help="Seconds between gets while waiting [default: the OPCANCEL_CHECK_* backoff]",
)
@click.option(
    "--timeout",
    type=SECONDS,
    help="Seconds from the cancel to TIMED_OUT while waiting [default: OPCANCEL_CHECK_DEADLINE_S]",
)
@json_option
@click.pass_obj
def cancel(
    clients: CliClients,
    name: str | None,
    parent: str | None,
    filter_: str | None,
    max_count: int | None,
    dry_run: bool,
    yes: bool,
    location: str | None,
    api_version: str | None,
    wait: bool,
    interval: float | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Cancel operation NAME, then report what get shows; or, with --all PARENT, every operation under PARENT.

    NAME is organizations/ORG/operations/ID, a full resource name
    (//aiplatform.googleapis.com/projects/P/locations/L/operations/ID), or an
    https:// URL. With --wait, exits 0 only once the operation is CANCELLED.

    --all PARENT (organizations/ORG, or a full resource prefix such as
    //aiplatform.googleapis.com/projects/P/locations/L) lists PARENT's running
    operations, following every page, prints them, asks for confirmation (or
    takes --yes), then publishes one request per operation to the requests
    topic, so the deployed function cancels each with its own key and result.
    """
    if parent is not None:
        if name is not None or wait or interval is not None or timeout is not None or as_json:
            raise click.UsageError("--all PARENT takes no NAME and no --wait, --interval, --timeout or --json")
        cancel_all(clients, parent, location, api_version, filter_, max_count, dry_run=dry_run, yes=yes)
        return
    if name is None:
        raise click.UsageError("give NAME, or --all PARENT")
    if filter_ is not None or max_count is not None or dry_run or yes:
        raise click.UsageError("--filter, --max, --dry-run and --yes apply only with --all")
    if not wait and (interval is not None or timeout is not None):
        raise click.UsageError("--interval and --timeout apply only with --wait")
    requested_at = clients.clock.now()
    parsed = single(clients, name, location, api_version)
    if isinstance(parsed, Rejection):
        result = Result.of_rejection(parsed, requested_at=requested_at, finished_at=requested_at)
    else:
        require_credentials(clients)
        policy = _waiting_policy(clients.settings.polling, interval, timeout) if wait else None
        result = _cancel(clients, parsed, requested_at, policy)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(_describe(result))
    sys.exit(exit_for(result.outcome) if result.outcome is not None else Exit.OK)


@click.command()
@click.argument("name")
@location_option
@api_version_option
@json_option
@click.pass_obj
def get(clients: CliClients, name: str, location: str | None, api_version: str | None, as_json: bool) -> None:
    """Show operation NAME: still running, or how it ended."""
    parsed = single(clients, name, location, api_version, cancelling=False)
    if isinstance(parsed, Rejection):
        raise CliFailure(f"{parsed.offending}: {parsed.error}", Exit.REJECTED)
    require_credentials(clients)
    try:
        operation = clients.api.get(parsed.ref)
    except ApiRejected as refusal:
        # What the operation is (NOT_FOUND, PERMISSION_DENIED) goes to stdout, as cancel reports it.
        outcome = Outcome(refusal.outcome)
        if as_json:
            click.echo(json.dumps({"name": parsed.ref.name, "outcome": outcome.value, "error": str(refusal)}, indent=2))
        else:
            click.echo(safe(f"{outcome.value:<9} {parsed.ref.name}  ({refusal})"))
        sys.exit(exit_for(outcome))
    except ApiUnavailable as trouble:
        raise failure(trouble, f"Operations API unavailable: {trouble}") from None
    click.echo(json.dumps(operation, indent=2) if as_json else state_line(operation))


@click.command(name="list")
@click.argument("parent")
@location_option
@api_version_option
@click.option("--filter", "filter_", help="The API's filter expression, e.g. done=false.")
@click.option("--page-size", type=click.IntRange(1, 1000), help="Operations per API call; every page is read anyway.")
@json_option
@click.pass_obj
def list_operations(
    clients: CliClients,
    parent: str,
    location: str | None,
    api_version: str | None,
    filter_: str | None,
    page_size: int | None,
    as_json: bool,
) -> None:
    """List the operations under PARENT, following every page.

    PARENT is organizations/ORG, or a full resource prefix such as
    //aiplatform.googleapis.com/projects/P/locations/L. Each line shows
    RUNNING or the outcome, then the name.
    """
    where = parent_of(clients, parent, location, api_version)
    require_credentials(clients)
    found: list[dict[str, Any]] = []
    count = 0
    for operations in pages(clients, where, filter_, page_size):
        count += len(operations)
        if as_json:
            found.extend(operations)
        else:
            # Printed page by page, so a long listing shows up as it arrives.
            for operation in operations:
                click.echo(state_line(operation))
    if as_json:
        click.echo(json.dumps({"operations": found}, indent=2))
    elif count == 0:
        click.echo(f"no operations under {escape_text(parent)}", err=True)


@click.command()
@click.argument("names", nargs=-1, required=True)
@location_option
@api_version_option
@click.option("--idempotency-key", help="Key for the request; with several names, each gets KEY/its identity.")
@json_option
@click.pass_obj
def publish(
    clients: CliClients,
    names: tuple[str, ...],
    location: str | None,
    api_version: str | None,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Send a cancel request for NAMES to the requests topic.

    The deployed function then cancels them and publishes the result events.
    Every name is validated first; if any is rejected, nothing is published.
    """
    body = request_body(names, location, api_version, idempotency_key)
    # The bytes published are the bytes validated, so the function parses exactly what passed here.
    parsed = parse(clients, body)
    if parsed.ignored is not None:
        raise CliFailure(f"{parsed.ignored}; nothing published", Exit.REJECTED)
    if parsed.rejections:
        refused = "; ".join(f"{rejection.offending}: {rejection.error}" for rejection in parsed.rejections)
        raise CliFailure(f"{refused}; nothing published", Exit.REJECTED)
    project = clients.settings.project
    if clients.publisher is None or project is None:
        raise CliFailure("GOOGLE_CLOUD_PROJECT: is required to publish to the requests topic", Exit.BAD_CONFIGURATION)
    topic = clients.settings.requests_topic
    if clients.settings.pubsub_emulator_host is None:
        require_credentials(clients, hint=_NO_PUBSUB_CREDENTIALS)
    try:
        (message_id,) = clients.publisher.publish_all(topic, [(body, {})])
    except PublishFailed as problem:
        raise failure(problem, f"{problem} ({pubsub_host(clients.settings)})") from None
    path = f"projects/{project}/topics/{topic}"
    if as_json:
        click.echo(json.dumps({"topic": path, "message_id": message_id, "data": json.loads(body)}, indent=2))
    else:
        operations = ", ".join(request.ref.name for request in parsed.requests)
        click.echo(f"published message {message_id} to {path}: {operations}")


def _describe(result: Result) -> str:
    """What ``cancel`` found, as one line for a person."""
    # A projects/... name says which API only with its service in front.
    shown = result.operation
    if result.service not in (None, SERVICE) and shown.startswith("projects/"):
        shown = f"//{result.service}/{shown}"
    if result.outcome is None:
        return f"cancel accepted for {shown}; still running (follow it with --wait, or get)"
    line = f"{result.outcome.value} {shown}"
    return safe(f"{line}: {result.error}") if result.error else line


def _cancel(clients: CliClients, request: CancelRequest, requested_at: float, policy: PollingPolicy | None) -> Result:
    """Cancel, then get at once; with a ``policy``, keep getting until done or its deadline. The result has no
    outcome when the operation still runs after a cancel without a ``policy``."""
    ref, clock = request.ref, clients.clock
    running = Result(
        operation=ref.name,
        location=ref.location,
        api_version=ref.api_version,
        outcome=None,
        idempotency_key=reported_key(request.idempotency_key),
        requested_at=requested_at,
        finished_at=None,
        checks=0,
        final_operation=None,
        error=None,
        source=request.source,
        service=ref.service_name,
    )

    def finished(outcome: Outcome, error: str | None) -> Result:
        return replace(running, outcome=outcome, finished_at=clock.now(), error=error)

    try:
        clients.api.cancel(ref)
    except ApiRejected as refusal:
        return finished(Outcome(refusal.outcome), str(refusal))
    except ApiUnavailable as trouble:
        message = f"Operations API unavailable: {trouble}; the cancel may not have been sent, and is safe to repeat"
        raise failure(trouble, message) from None
    accepted_at = clock.now()
    progress = _progress(ref.name, accepted_at, clock)
    if policy is not None:
        progress(f"cancel accepted; waiting up to {seconds(policy.deadline_s)}")
    # The immediate get is check 0, due when the cancel was accepted; each wait counts from the last due time.
    attempt, due = 0, accepted_at
    while True:
        try:
            operation = clients.api.get(ref)
        except ApiRejected as refusal:
            running = replace(running, checks=running.checks + 1)
            return finished(Outcome(refusal.outcome), str(refusal))
        except ApiUnavailable as trouble:
            message = f"Operations API unavailable: {trouble}; the cancel was sent: follow it with get {ref.name}"
            raise failure(trouble, message) from None
        running = replace(running, checks=running.checks + 1, final_operation=operation)
        now = clock.now()
        # Without a policy there is no waiting, so no deadline to pass.
        deadline_at = accepted_at + policy.deadline_s if policy is not None else math.inf
        settled = settle(operation, now=now, deadline_at=deadline_at)
        if settled is not None:
            return finished(*settled)
        if policy is None:
            return running
        attempt += 1
        due = policy.due(attempt, previous_due_at=due, now=now, deadline_at=deadline_at)
        progress(f"get {running.checks}: still running; next get in {seconds(due - now)}")
        clock.sleep(due - now)


def _waiting_policy(policy: PollingPolicy, interval: float | None, timeout: float | None) -> PollingPolicy:
    if interval is not None:
        policy = replace(policy, initial_delay_s=interval, multiplier=1.0, max_delay_s=interval)
    if timeout is not None:
        policy = replace(policy, deadline_s=timeout)
    return policy


def _progress(name: str, started: float, clock: Clock) -> Callable[[str], None]:
    # On stderr, so that --json output stays one parseable document.
    return lambda line: click.echo(f"[{clock.now() - started:7.1f}s] {name}: {line}", err=True)


COMMANDS = (cancel, get, list_operations, publish)
