"""``guard status|pause|unpause|reset``: the guard rails' state, as the function reads it from its store."""

from __future__ import annotations

import getpass
import json
import sys

import click

from .._clock import format_time
from .._guard import Guard
from .._log import Logger
from ..errors import TransientError
from ._clients import CliClients, open_store, store_option
from ._common import json_option
from ._exits import failure, safe


def open_guard(clients: CliClients, store_choice: str | None) -> Guard:
    """The function's guard over the store the operator means (said on stderr), with its settings."""
    store = open_store(clients, store_choice)
    return Guard.from_settings(clients.settings, store=store, clock=clients.clock, log=Logger(sys.stderr))


def operator() -> str:
    """Who runs the command, as the pause and releases record it: the login name of this session."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


by_option = click.option("--by", default=None, help="Who to record as doing it [default: your login name].")


@click.group()
def guard() -> None:
    """The guard rails: mode, cancel budget and breaker, pause (see docs/guard-rails.md)."""


@guard.command()
@store_option
@json_option
@click.pass_obj
def status(clients: CliClients, store_choice: str | None, as_json: bool) -> None:
    """Print the mode, the budget's use in its sliding window, the breaker and the pause."""
    rails = open_guard(clients, store_choice)
    try:
        state = rails.status()
    except TransientError as problem:
        raise failure(problem) from None
    if as_json:
        click.echo(json.dumps(state.to_json(), indent=2))
        return
    click.echo(f"mode:    {state.mode}")
    if state.budget is None:
        click.echo("budget:  none (OPCANCEL_CANCEL_BUDGET unset here)")
    else:
        window = str(state.budget).split("/", 1)[1]
        click.echo(f"budget:  {state.used} of {state.budget.count} cancels used in the last {window}")
    if state.tripped is None:
        click.echo("breaker: closed")
    else:
        click.echo(
            safe(
                f"breaker: OPEN since {format_time(state.tripped.at)}, tripped by {state.tripped.by} with "
                f"{state.tripped.used} cancels in the window; every request is held until `guard reset`"
            )
        )
    if state.pause is not None:
        why = f": {state.pause.reason}" if state.pause.reason else ""
        click.echo(safe(f"pause:   PAUSED by {state.pause.by} since {format_time(state.pause.since)}{why}"))
    elif state.pinned:
        click.echo("pause:   PAUSED by OPCANCEL_PAUSED=true (pinned at deploy)")
    else:
        click.echo("pause:   not paused")
    click.echo(f"held:    {state.held} request(s) (`python -m function held`)")


@guard.command()
@store_option
@click.option("--reason", default=None, help="Why, for whoever finds it paused.")
@by_option
@click.pass_obj
def pause(clients: CliClients, store_choice: str | None, reason: str | None, by: str | None) -> None:
    """Stop all cancelling at once: every instance holds new requests within 10 seconds."""
    rails = open_guard(clients, store_choice)
    try:
        before = rails.pause(by=by or operator(), reason=reason)
    except TransientError as problem:
        raise failure(problem) from None
    was = f" (was paused by {before.by} since {format_time(before.since)})" if before is not None else ""
    click.echo(safe(f"paused by {by or operator()}{': ' + reason if reason else ''}{was}"))


@guard.command()
@store_option
@click.pass_obj
def unpause(clients: CliClients, store_choice: str | None) -> None:
    """End the pause `guard pause` stored (OPCANCEL_PAUSED=true, where set, still pins it)."""
    rails = open_guard(clients, store_choice)
    try:
        before = rails.unpause()
    except TransientError as problem:
        raise failure(problem) from None
    if before is None:
        click.echo("not paused; nothing changed")
    else:
        click.echo(safe(f"unpaused (was paused by {before.by} since {format_time(before.since)})"))
    if clients.settings.paused:
        click.echo("OPCANCEL_PAUSED=true still pins the pause where it is set", err=True)


@guard.command()
@store_option
@click.pass_obj
def reset(clients: CliClients, store_choice: str | None) -> None:
    """Close the breaker and start a fresh budget window: the cancels before now no longer count."""
    rails = open_guard(clients, store_choice)
    try:
        before = rails.reset()
    except TransientError as problem:
        raise failure(problem) from None
    if before.tripped is not None:
        click.echo(
            safe(
                f"breaker closed (tripped at {format_time(before.tripped.at)} by {before.tripped.by}); "
                f"a fresh window starts now ({len(before.counted)} earlier cancels no longer count)"
            )
        )
    else:
        click.echo(
            f"breaker was closed; a fresh window starts now ({len(before.counted)} earlier cancels no longer count)"
        )


COMMANDS = (guard,)
