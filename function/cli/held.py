"""``held``, ``held release`` and ``held drop``: the requests the guard held, kept in the function's store."""

from __future__ import annotations

import json

import click

from .._clock import format_time
from .._guard import Guard, describe_held
from .._pipeline import Pipeline
from .._reports import ItemStatus
from .._store.guard import HeldRequest
from ..errors import PublishFailed, StaleFence, TransientError
from ._clients import CliClients, open_pipeline, store_option
from ._common import json_option, pubsub_host
from ._exits import CliFailure, Exit, failure, safe
from .guard import by_option, open_guard, operator


@click.group(invoke_without_command=True)
@store_option
@json_option
@click.pass_context
def held(context: click.Context, store_choice: str | None, as_json: bool) -> None:
    """List the held requests (oldest first); `held release` sends them again, `held drop` forgets them."""
    context.meta["store_choice"] = store_choice
    if context.invoked_subcommand is not None:
        return
    clients: CliClients = context.obj
    rails = open_guard(clients, store_choice)
    try:
        requests = rails.held()
    except TransientError as problem:
        raise failure(problem) from None
    if as_json:
        click.echo(json.dumps([describe_held(request) for request in requests], indent=2))
        return
    for request in requests:
        released = f"  released by {request.released_by}" if request.released else ""
        click.echo(
            safe(
                f"{request.key}  {request.operation}  held ({request.because}) at {format_time(request.held_at)}"
                f"{released}"
            )
        )
    click.echo(f"{len(requests)} held request(s)")


keys_argument = click.argument("keys", nargs=-1)
all_option = click.option("--all", "every", is_flag=True, help="Every held request.")


def _chosen(rails: Guard, keys: tuple[str, ...], every: bool) -> list[HeldRequest]:
    if every == bool(keys):
        raise click.UsageError("name held requests by their KEY, or give --all (not both)")
    try:
        requests = rails.held()
    except TransientError as problem:
        raise failure(problem) from None
    if every:
        return requests
    by_key = {request.key: request for request in requests}
    # The key as the HELD result reported it (the sender's), or as `held` printed it (escaped), names a
    # request too, where only one has it.
    other_names: dict[str, list[HeldRequest]] = {}
    for request in requests:
        for name in {str(request.result.get("idempotency_key")), safe(request.key)}:
            other_names.setdefault(name, []).append(request)
    for key, named in other_names.items():
        if len(named) == 1:
            by_key.setdefault(key, named[0])
    missing = [key for key in keys if key not in by_key]
    if missing:
        raise CliFailure(safe(f"not held: {', '.join(missing)}"), Exit.NOT_FOUND)
    return list({by_key[key].key: by_key[key] for key in keys}.values())


@held.command()
@keys_argument
@all_option
@by_option
@click.pass_context
def release(context: click.Context, keys: tuple[str, ...], every: bool, by: str | None) -> None:
    """Send held requests through again (each with its key and source): the breaker lets them pass
    uncounted; the pause, validation, the allow-list and deduplication still apply. Each is published to the
    requests topic; one no message can carry (an incident id escaped or cut in its key) is run here, through
    the function's pipeline on its store, as `resume` runs chains."""
    clients: CliClients = context.obj
    store_choice = context.meta.get("store_choice")
    rails = open_guard(clients, store_choice)
    chosen = _chosen(rails, keys, every)
    if clients.publisher is None and any(request.replay is not None for request in chosen):
        raise CliFailure(
            "held release publishes to the requests topic: set GOOGLE_CLOUD_PROJECT", Exit.BAD_CONFIGURATION
        )
    pipeline: Pipeline | None = None
    unfinished = []
    for request in chosen:
        if request.released:
            click.echo(safe(f"{request.key}: released already by {request.released_by}; sent again"))
        if request.replay is None and request.request is not None:
            pipeline = pipeline or open_pipeline(clients, store_choice)
            item = pipeline.release(request, by=by or operator())
            fate = item.outcome or item.status.value
            detail = f": {item.detail}" if item.detail and item.outcome != "HELD" else ""
            click.echo(safe(f"released {request.key} ({request.operation}): run here, {fate}{detail}"))
            if item.status is ItemStatus.RETRY:
                unfinished.append(request.key)
            continue
        assert clients.publisher is not None
        try:
            rails.release(
                request, by=by or operator(), publisher=clients.publisher, topic=clients.settings.requests_topic
            )
        except ValueError as refusal:
            raise CliFailure(safe(f"{refusal}; drop it instead"), Exit.REJECTED) from None
        except StaleFence:
            raise CliFailure(
                safe(f"{request.key} changed while being released; run it again"), Exit.UNAVAILABLE
            ) from None
        except PublishFailed as problem:
            raise failure(problem, f"{problem} ({pubsub_host(clients.settings)})") from None
        except TransientError as problem:
            raise failure(problem) from None
        click.echo(
            safe(f"released {request.key} ({request.operation}): published to {clients.settings.requests_topic}")
        )
    if unfinished:
        raise CliFailure(
            safe(f"not finished (see the log): {', '.join(unfinished)}; run held release again"), Exit.UNAVAILABLE
        )


@held.command()
@keys_argument
@all_option
@click.pass_context
def drop(context: click.Context, keys: tuple[str, ...], every: bool) -> None:
    """Forget held requests without cancelling them."""
    rails = open_guard(context.obj, context.meta.get("store_choice"))
    for request in _chosen(rails, keys, every):
        try:
            dropped = rails.drop(request)
        except TransientError as problem:
            raise failure(problem) from None
        if not dropped:
            raise CliFailure(safe(f"{request.key} changed since it was listed; run it again"), Exit.UNAVAILABLE)
        click.echo(safe(f"dropped {request.key} ({request.operation})"))


COMMANDS = (held,)
