"""The operator command line, ``python -m function``: cancel (one, or every operation under a parent), get,
list, publish, resume.

It follows the function's rules: every name goes through the request parser
(the same accepted forms, the same rejections, the same allow-list) before
anything reaches the network, outcomes come from ``settle`` as the function's do, and the API
client is the function's own, retries included. ``cancel`` calls the API
directly, with no idempotency store and no checks topic; ``publish`` and
``cancel --all`` hand requests to the deployed function instead; ``resume``
works on the function's own store and scheduler, to restart check chains whose
check was lost.

``main`` is the only place that reads the environment. Commands take their
clients from click's context object, so tests pass their own as ``obj``.
"""

from __future__ import annotations

import enum
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import click

from ._clock import Clock, SystemClock, format_time
from ._gcp.auth import Authenticator
from ._gcp.operations import OperationsClient, operation_error, outcome_of, settle
from ._gcp.pubsub import Publisher
from ._gcp.transport import SharedTransport
from ._log import Logger
from ._model import CancelRequest, InboundMessage, Outcome, Rejection, Result, SourceKind
from ._names import (
    GLOBAL,
    LOCATION_ALIASES,
    LOCATIONS,
    REGISTRY,
    SERVICE,
    OperationParent,
    OperationRef,
    allows,
    escape_text,
    parse_parent,
    validate_location,
    version_for,
)
from ._parsing import Parsed, parse_message
from ._pipeline import ItemStatus, Pipeline, Report
from ._settings import MAX_DEADLINE_S, PollingPolicy, Settings
from ._wiring import build_api, build_auth, build_pipeline, build_publisher
from .errors import (
    ApiRejected,
    ApiUnavailable,
    ConfigError,
    InvalidRequest,
    ListingIncomplete,
    NoCredentials,
    PublishFailed,
    TransientError,
)

_NO_CREDENTIALS = (
    "no Google credentials: run `gcloud auth application-default login`, "
    "or set OPCANCEL_AUTH=anonymous to use the local simulator"
)
_NO_PUBSUB_CREDENTIALS = (
    "no Google credentials for Pub/Sub: run `gcloud auth application-default login`, "
    "or set PUBSUB_EMULATOR_HOST to use the Pub/Sub emulator"
)
# API text echoed to a terminal is escaped like request text, but may run longer than a name.
_ECHO_LIMIT = 1024
#: Requests per publish call of ``cancel --all``, well inside Pub/Sub's limits on one publish request.
_PUBLISH_CHUNK = 100


class Exit(enum.IntEnum):
    """Exit statuses. 1 is left to crashes and Ctrl-C, 2 to click's usage errors."""

    OK = 0
    COMPLETED = 3
    FAILED = 4
    TIMED_OUT = 5
    NOT_FOUND = 6
    PERMISSION_DENIED = 7
    UNSUPPORTED = 8
    REJECTED = 9
    API_UNAVAILABLE = 10
    NO_CREDENTIALS = 11
    BAD_CONFIGURATION = 12
    PUBLISH_FAILED = 13
    UNAVAILABLE = 14


def exit_for(outcome: Outcome) -> Exit:
    return Exit.OK if outcome is Outcome.CANCELLED else Exit[outcome.name]


class CliFailure(click.ClickException):
    """Shown by click as one ``Error: ...`` line on stderr, then exits with ``status``."""

    def __init__(self, message: str, status: Exit) -> None:
        super().__init__(message)
        self.exit_code = status


@dataclass(frozen=True)
class CliClients:
    """What the commands work with: ``main`` builds the real ones; tests pass theirs as click's ``obj``."""

    settings: Settings
    auth: Authenticator
    api: OperationsClient
    clock: Clock
    #: None without GOOGLE_CLOUD_PROJECT; only ``publish`` and ``cancel --all`` need it.
    publisher: Publisher | None = None
    #: Whether a person can answer a confirmation prompt; tests say so rather than own a terminal.
    is_terminal: Callable[[], bool] = lambda: sys.stdin.isatty()
    #: Builds the function's own pipeline (store, scheduler); only ``resume`` needs it, so it is built on demand.
    pipeline: Callable[[], Pipeline] | None = None


def main() -> None:
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as problem:
        click.echo(f"Error: {problem}", err=True)
        sys.exit(Exit.BAD_CONFIGURATION)
    clock = SystemClock()
    transport = SharedTransport()
    auth = build_auth(settings, clock=clock, transport=transport)
    clients = CliClients(
        settings=settings,
        auth=auth,
        # stdout carries the command's output, so the client's retry logs go to stderr.
        api=build_api(settings, auth=auth, clock=clock, log=Logger(sys.stderr), transport=transport),
        clock=clock,
        publisher=build_publisher(settings, auth=auth, clock=clock, transport=transport) if settings.project else None,
        pipeline=lambda: build_pipeline(settings, log=Logger(sys.stderr)),
    )
    cli.main(prog_name="python -m function", obj=clients)


_EPILOG = """\b
Exit status:
   0  CANCELLED; for cancel without --wait, also: cancel accepted, not done yet;
      for get, list, publish and cancel --all: success
   2  usage error; cancel --all without --yes where no terminal can confirm
   3  COMPLETED
   4  FAILED
   5  TIMED_OUT
   6  NOT_FOUND
   7  PERMISSION_DENIED
   8  UNSUPPORTED
   9  REJECTED: a bad name, a parent outside OPCANCEL_ALLOWED_PARENTS,
      or another 4xx from the API
  10  the API stayed unavailable (429, 5xx, timeouts) after retries
  11  no usable Google credentials
  12  bad configuration (an environment variable)
  13  the publish to Pub/Sub was not confirmed
  14  resume: the store or the scheduler was unavailable (run it again)
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EPILOG)
def cli() -> None:
    """Cancel and inspect long-running operations of Security Command Center and other Google APIs.

    Configured by the function's environment: OPCANCEL_API_ENDPOINT,
    OPCANCEL_AUTH, OPCANCEL_API_VERSION, OPCANCEL_ALLOWED_PARENTS,
    OPCANCEL_SERVICES, the OPCANCEL_CHECK_* polling policy,
    GOOGLE_CLOUD_PROJECT and OPCANCEL_REQUESTS_TOPIC.
    """


class _Seconds(click.ParamType):
    """A finite number of seconds in (0, 7 days]; click's FloatRange lets nan and inf through."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or not 0 < seconds <= MAX_DEADLINE_S:
            self.fail(f"{value!r} is not more than 0 and at most {MAX_DEADLINE_S} seconds (7 days)", param, ctx)
        return seconds


_SECONDS = _Seconds()
_location = click.option(
    "--location",
    type=click.Choice((*LOCATIONS, *LOCATION_ALIASES)),
    help="Security Command Center location [default: global, or the one a URL names]; other services' names "
    "carry their own",
)
_api_version = click.option(
    "--api-version",
    type=click.Choice(REGISTRY.known_versions()),
    help="API version [default: OPCANCEL_API_VERSION for Security Command Center, the registry's for other "
    "services, or the one a URL names]",
)
_as_json = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@cli.command()
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
@_location
@_api_version
@click.option("--wait", is_flag=True, help="Follow the operation with get until it is done or --timeout passes.")
@click.option(
    "--interval",
    type=_SECONDS,
    help="Seconds between gets while waiting [default: the OPCANCEL_CHECK_* backoff]",
)
@click.option(
    "--timeout",
    type=_SECONDS,
    help="Seconds from the cancel to TIMED_OUT while waiting [default: OPCANCEL_CHECK_DEADLINE_S]",
)
@_as_json
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
        _cancel_all(clients, parent, location, api_version, filter_, max_count, dry_run=dry_run, yes=yes)
        return
    if name is None:
        raise click.UsageError("give NAME, or --all PARENT")
    if filter_ is not None or max_count is not None or dry_run or yes:
        raise click.UsageError("--filter, --max, --dry-run and --yes apply only with --all")
    if not wait and (interval is not None or timeout is not None):
        raise click.UsageError("--interval and --timeout apply only with --wait")
    requested_at = clients.clock.now()
    parsed = _single(clients, name, location, api_version)
    if isinstance(parsed, Rejection):
        result = Result.of_rejection(parsed, requested_at=requested_at, finished_at=requested_at)
    else:
        _require_credentials(clients)
        policy = _waiting_policy(clients.settings.polling, interval, timeout) if wait else None
        result = _cancel(clients, parsed, requested_at, policy)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(_describe(result))
    sys.exit(exit_for(result.outcome) if result.outcome is not None else Exit.OK)


@cli.command()
@click.argument("name")
@_location
@_api_version
@_as_json
@click.pass_obj
def get(clients: CliClients, name: str, location: str | None, api_version: str | None, as_json: bool) -> None:
    """Show operation NAME: still running, or how it ended."""
    parsed = _single(clients, name, location, api_version)
    if isinstance(parsed, Rejection):
        raise CliFailure(f"{parsed.offending}: {parsed.error}", Exit.REJECTED)
    _require_credentials(clients)
    try:
        operation = clients.api.get(parsed.ref)
    except ApiRejected as refusal:
        raise CliFailure(_echo(f"{parsed.ref.name}: {refusal}"), exit_for(Outcome(refusal.outcome))) from None
    except ApiUnavailable as trouble:
        raise CliFailure(_echo(f"Operations API unavailable: {trouble}"), Exit.API_UNAVAILABLE) from None
    click.echo(json.dumps(operation, indent=2) if as_json else _state_line(operation))


@cli.command(name="list")
@click.argument("parent")
@_location
@_api_version
@click.option("--filter", "filter_", help="The API's filter expression, e.g. done=false.")
@click.option("--page-size", type=click.IntRange(1, 1000), help="Operations per API call; every page is read anyway.")
@_as_json
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
    where = _parent(clients, parent, location, api_version)
    _require_credentials(clients)
    found: list[dict[str, Any]] = []
    count = 0
    for operations in _pages(clients, where, filter_, page_size):
        count += len(operations)
        if as_json:
            found.extend(operations)
        else:
            # Printed page by page, so a long listing shows up as it arrives.
            for operation in operations:
                click.echo(_state_line(operation))
    if as_json:
        click.echo(json.dumps({"operations": found}, indent=2))
    elif count == 0:
        click.echo(f"no operations under {escape_text(parent)}", err=True)


@cli.command()
@click.argument("names", nargs=-1, required=True)
@_location
@_api_version
@click.option("--idempotency-key", help="Key for the request; with several names, each gets KEY/its identity.")
@_as_json
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
    body = _request_body(names, location, api_version, idempotency_key)
    # The bytes published are the bytes validated, so the function parses exactly what passed here.
    parsed = _parse(clients, body)
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
        _require_credentials(clients, hint=_NO_PUBSUB_CREDENTIALS)
    try:
        (message_id,) = clients.publisher.publish_all(topic, [(body, {})])
    except PublishFailed as problem:
        raise CliFailure(_echo(str(problem)), Exit.PUBLISH_FAILED) from None
    path = f"projects/{project}/topics/{topic}"
    if as_json:
        click.echo(json.dumps({"topic": path, "message_id": message_id, "data": json.loads(body)}, indent=2))
    else:
        operations = ", ".join(request.ref.name for request in parsed.requests)
        click.echo(f"published message {message_id} to {path}: {operations}")


@cli.command()
@click.option("--dry-run", is_flag=True, help="List the overdue chains and resume none.")
@_as_json
@click.pass_obj
def resume(clients: CliClients, dry_run: bool, as_json: bool) -> None:
    """Find check chains whose check is overdue and schedule a new one for each.

    A chain is overdue when its check's due time passed more than
    OPCANCEL_CHECK_MAX_DELAY_S ago and no worker is running it: the check was
    lost (dead-lettered, dropped, never scheduled). Each gets a new check, due
    now, so its request still ends in one result. Safe to run at any time and
    from several places (Cloud Scheduler, by hand): a chain resumed by one run
    is no longer overdue for the next.
    """
    if clients.pipeline is None:
        raise CliFailure("resume needs the function's configuration", Exit.BAD_CONFIGURATION)
    try:
        pipeline = clients.pipeline()
        overdue = pipeline.overdue_chains()
    except ConfigError as problem:
        raise CliFailure(str(problem), Exit.BAD_CONFIGURATION) from None
    except TransientError as problem:
        raise CliFailure(_echo(str(problem)), Exit.UNAVAILABLE) from None
    now = clients.clock.now()
    rows = []
    for record in overdue:
        check = record.check or {}
        rows.append(
            {
                "operation": check.get("operation"),
                "idempotency_key": record.key,
                "attempt": record.attempt,
                "due_at": format_time(record.due_at or 0.0),
                "overdue_s": round(now - (record.due_at or 0.0), 1),
            }
        )
    report = Report() if dry_run else pipeline.resume(overdue)
    for row, item in zip(rows, report.items, strict=False):
        row["resumed"] = item.status is ItemStatus.ACCEPTED
        row["detail"] = item.detail
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "overdue": rows}, indent=2))
    else:
        for row in rows:
            fate = (
                "would resume" if dry_run else ("resumed: " if row["resumed"] else "not resumed: ") + str(row["detail"])
            )
            click.echo(
                f"{_echo(str(row['operation']))}  check {row['attempt']} due {row['due_at']} "
                f"({_seconds(row['overdue_s'])} ago)  {fate}"
            )
        click.echo(
            f"{len(rows)} overdue chain(s)" + ("" if dry_run else f", {sum(r['resumed'] for r in rows)} resumed")
        )
    if report.must_retry:
        raise CliFailure("some chains could not be resumed; run resume again", Exit.UNAVAILABLE)


def _describe(result: Result) -> str:
    """What ``cancel`` found, as one line for a person."""
    # A projects/... name says which API only with its service in front.
    shown = result.operation
    if result.service not in (None, SERVICE) and shown.startswith("projects/"):
        shown = f"//{result.service}/{shown}"
    if result.outcome is None:
        return f"cancel accepted for {shown}; still running (follow it with --wait, or get)"
    line = f"{result.outcome.value} {shown}"
    return _echo(f"{line}: {result.error}") if result.error else line


def _cancel(clients: CliClients, request: CancelRequest, requested_at: float, policy: PollingPolicy | None) -> Result:
    """Cancel, then get at once; with a ``policy``, keep getting until done or its deadline. The result has no
    outcome when the operation still runs after a cancel without a ``policy``."""
    ref, clock = request.ref, clients.clock
    running = Result(
        operation=ref.name,
        location=ref.location,
        api_version=ref.api_version,
        outcome=None,
        idempotency_key=request.idempotency_key,
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
        raise CliFailure(_echo(message), Exit.API_UNAVAILABLE) from None
    accepted_at = clock.now()
    progress = _progress(ref.name, accepted_at, clock)
    if policy is not None:
        progress(f"cancel accepted; waiting up to {_seconds(policy.deadline_s)}")
    attempt = 0
    while True:
        try:
            operation = clients.api.get(ref)
        except ApiRejected as refusal:
            running = replace(running, checks=running.checks + 1)
            return finished(Outcome(refusal.outcome), str(refusal))
        except ApiUnavailable as trouble:
            message = f"Operations API unavailable: {trouble}; the cancel was sent: follow it with get {ref.name}"
            raise CliFailure(_echo(message), Exit.API_UNAVAILABLE) from None
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
        due = policy.due(attempt, now=now, deadline_at=deadline_at)
        progress(f"get {running.checks}: still running; next get in {_seconds(due - now)}")
        clock.sleep(due - now)


def _waiting_policy(policy: PollingPolicy, interval: float | None, timeout: float | None) -> PollingPolicy:
    if interval is not None:
        policy = replace(policy, initial_delay_s=interval, multiplier=1.0, max_delay_s=interval)
    if timeout is not None:
        policy = replace(policy, deadline_s=timeout)
    return policy


def _seconds(value: float) -> str:
    return f"{round(value, 2):g}s"


def _progress(name: str, started: float, clock: Clock) -> Callable[[str], None]:
    # On stderr, so that --json output stays one parseable document.
    return lambda line: click.echo(f"[{clock.now() - started:7.1f}s] {name}: {line}", err=True)


def _request_body(
    names: tuple[str, ...], location: str | None, api_version: str | None, idempotency_key: str | None = None
) -> bytes:
    """A request in the SPEC's JSON format; a JSON string keeps a newline in a name from splitting it in two."""
    body: dict[str, Any] = {"operation": names[0]} if len(names) == 1 else {"operations": list(names)}
    for field, value in (("location", location), ("api_version", api_version), ("idempotency_key", idempotency_key)):
        if value is not None:
            body[field] = value
    return json.dumps(body).encode("utf-8")


def _parse(clients: CliClients, body: bytes) -> Parsed:
    return parse_message(
        InboundMessage(data=body, kind=SourceKind.CLI),
        default_version=clients.settings.api_version,
        allowed_parents=clients.settings.allowed_parents,
        services=clients.settings.services,
    )


def _parent(clients: CliClients, text: str, location: str | None, api_version: str | None) -> OperationParent:
    """PARENT validated like a name, allow-list included, with the location and version its list call uses."""
    settings = clients.settings
    try:
        parsed = parse_parent(text, settings.services)
        service = parsed.service
        if not allows(settings.allowed_parents, service, parsed.name):
            shown = parsed.name if service.is_scc else f"//{service.service_name}/{parsed.name}"
            raise CliFailure(f"{shown} is not in OPCANCEL_ALLOWED_PARENTS", Exit.REJECTED)
        if service.is_scc:
            place = validate_location(location or GLOBAL)
            version = api_version or version_for(place, settings.api_version)
        else:
            if location is not None:
                raise InvalidRequest("--location applies to organizations/ORG parents; other parents name their own")
            place, version = parsed.location or GLOBAL, api_version or service.version
        return OperationParent(parsed.name, place, service.validate_version(version), service)
    except InvalidRequest as problem:
        raise CliFailure(f"{escape_text(text)}: {problem}", Exit.REJECTED) from None


def _pages(
    clients: CliClients, parent: OperationParent, filter_: str | None, page_size: int | None = None
) -> Iterator[list[dict[str, Any]]]:
    """The client's pager, with its failures turned into the CLI's exit statuses."""
    try:
        yield from clients.api.pages(parent, filter=filter_, page_size=page_size)
    except ApiRejected as refusal:
        raise CliFailure(_echo(f"{parent.path}: {refusal}"), exit_for(Outcome(refusal.outcome))) from None
    except ListingIncomplete as incomplete:
        raise CliFailure(_echo(f"{parent.path}: {incomplete}"), Exit.API_UNAVAILABLE) from None
    except ApiUnavailable as trouble:
        raise CliFailure(_echo(f"Operations API unavailable: {trouble}"), Exit.API_UNAVAILABLE) from None


def _cancel_all(
    clients: CliClients,
    text: str,
    location: str | None,
    api_version: str | None,
    filter_: str | None,
    max_count: int | None,
    *,
    dry_run: bool,
    yes: bool,
) -> None:
    """List PARENT's running operations, show them, confirm, and publish one request each."""
    parent = _parent(clients, text, location, api_version)
    topic = clients.settings.requests_topic
    project = clients.settings.project
    if not dry_run and (clients.publisher is None or project is None):
        raise CliFailure("GOOGLE_CLOUD_PROJECT: is required to publish to the requests topic", Exit.BAD_CONFIGURATION)
    _require_credentials(clients)
    requests: list[tuple[OperationRef, bytes]] = []
    done = 0
    for operations in _pages(clients, parent, filter_):
        for operation in operations:
            if operation.get("done") is True:
                done += 1
                continue
            request = _bulk_request(clients, parent, operation.get("name"))
            if request is None:
                continue
            requests.append(request)
            # Stop reading at the first one past the bound: nothing will be published anyway.
            if max_count is not None and len(requests) > max_count:
                raise CliFailure(
                    f"more than {max_count} running operations under {escape_text(text)} match; nothing published "
                    "(narrow --filter, or raise --max)",
                    Exit.REJECTED,
                )
    for ref, _ in requests:
        click.echo(f"cancel {ref.name if ref.service.is_scc else ref.full_name}")
    summary = f"{len(requests)} running operation(s) under {escape_text(text)}"
    click.echo(f"{summary}; {done} already done, left alone" if done else summary, err=True)
    if not requests or dry_run:
        return
    if not yes:
        if not clients.is_terminal():
            raise click.UsageError("no terminal to confirm on: pass --yes to publish, or --dry-run to only look")
        click.confirm(f"Publish {len(requests)} cancel request(s) to {topic}?", abort=True, err=True)
    assert clients.publisher is not None
    published = 0
    try:
        for start in range(0, len(requests), _PUBLISH_CHUNK):
            chunk = requests[start : start + _PUBLISH_CHUNK]
            clients.publisher.publish_all(topic, [(body, {}) for _, body in chunk])
            published += len(chunk)
    except PublishFailed as problem:
        message = (
            f"{problem}; {published} of {len(requests)} requests were published first. Running the command again is "
            "safe: each request's key is derived from its operation, so those already handled are not cancelled twice"
        )
        raise CliFailure(_echo(message), Exit.PUBLISH_FAILED) from None
    click.echo(f"published {published} cancel request(s) to projects/{project}/topics/{topic}", err=True)


def _bulk_request(clients: CliClients, parent: OperationParent, name: Any) -> tuple[OperationRef, bytes] | None:
    """A listed operation as a request body, validated by the function's own parser and held to PARENT; or None,
    said on stderr, for a name the API returned that opcancel would not accept."""
    if not isinstance(name, str):
        click.echo(f"skipped an operation without a name: {_echo(repr(name))}", err=True)
        return None
    service = parent.service
    if service.is_scc:
        body = _request_body((name,), parent.location, parent.api_version)
    else:
        body = _request_body((f"//{service.service_name}/{name}",), None, parent.api_version)
    parsed = _parse(clients, body)
    if parsed.requests:
        (request,) = parsed.requests
        if allows((parent.full_name,), request.ref.service, request.ref.name):
            return request.ref, body
        problem = f"not under {parent.path}"
    else:
        problem = parsed.rejections[0].error if parsed.rejections else str(parsed.ignored)
    click.echo(f"skipped {escape_text(name)}: {problem}", err=True)
    return None


def _single(clients: CliClients, name: str, location: str | None, api_version: str | None) -> CancelRequest | Rejection:
    parsed = _parse(clients, _request_body((name,), location, api_version))
    if parsed.ignored is not None:
        raise CliFailure(parsed.ignored, Exit.REJECTED)
    return parsed.requests[0] if parsed.requests else parsed.rejections[0]


def _require_credentials(clients: CliClients, *, hint: str = _NO_CREDENTIALS) -> None:
    """Load credentials before the first call, so missing ones read as that and not as an API refusal."""
    try:
        clients.auth.headers()
    except NoCredentials:
        raise CliFailure(hint, Exit.NO_CREDENTIALS) from None
    except ApiUnavailable as trouble:
        message = f"{trouble}: run `gcloud auth application-default login` to renew them"
        raise CliFailure(_echo(message), Exit.NO_CREDENTIALS) from None


def _state_line(operation: dict[str, Any]) -> str:
    outcome = outcome_of(operation)
    line = f"{outcome.value if outcome is not None else 'RUNNING':<9} {operation.get('name')}"
    if outcome is Outcome.FAILED:
        line += f"  ({operation_error(operation)})"
    return _echo(line)


def _echo(text: str) -> str:
    """Text from the API or the operator, made safe for a terminal: control characters escaped."""
    return escape_text(text, _ECHO_LIMIT)
