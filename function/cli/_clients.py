"""The one place the command line builds its clients, and the one place it opens the function's state.

``build_clients`` is the only reader of the environment. Commands take their clients from click's context
object, so tests pass their own as ``obj``. Commands that read or change the function's state (``resume``,
and the guard's and held requests' commands) open it through ``open_pipeline`` or ``open_store``, which
say on stderr which store they use, and refuse to read an empty database made up on the spot.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import click

from .._clock import Clock, SystemClock
from .._gcp.auth import Authenticator
from .._gcp.operations import OperationsClient
from .._gcp.pubsub import Publisher
from .._gcp.transport import SharedTransport
from .._log import Logger
from .._pipeline import Pipeline
from .._settings import Settings
from .._store import IdempotencyStore
from .._wiring import build_api, build_auth, build_pipeline, build_publisher, build_store
from ..errors import ConfigError, OpcancelError
from ._exits import CliFailure, Exit, failure, safe

T = TypeVar("T")


@dataclass(frozen=True)
class CliClients:
    """What the commands work with: ``build_clients`` makes the real ones; tests pass theirs as click's ``obj``."""

    settings: Settings
    auth: Authenticator
    api: OperationsClient
    clock: Clock
    #: None without GOOGLE_CLOUD_PROJECT; only ``publish`` and ``cancel --all`` need it.
    publisher: Publisher | None = None
    #: Whether a person can answer a confirmation prompt; tests say so rather than own a terminal.
    is_terminal: Callable[[], bool] = lambda: sys.stdin.isatty()
    #: Builds the function's own pipeline (store, scheduler) on the given settings' store; built on demand,
    #: through ``open_pipeline``, by the commands that work on the function's state.
    pipeline: Callable[[Settings], Pipeline] | None = None
    #: Opens the given settings' store alone, through ``open_store``.
    store: Callable[[Settings], IdempotencyStore] | None = None


def build_clients(environ: Mapping[str, str]) -> CliClients:
    """The real clients, from the function's settings (``ConfigError`` names a bad variable)."""
    settings = Settings.from_env(environ)
    clock = SystemClock()
    transport = SharedTransport()
    auth = build_auth(settings, clock=clock, transport=transport)
    # stdout carries the command's output, so the clients' logs go to stderr.
    log = Logger(sys.stderr)
    return CliClients(
        settings=settings,
        auth=auth,
        api=build_api(settings, auth=auth, clock=clock, log=log, transport=transport),
        clock=clock,
        publisher=build_publisher(settings, auth=auth, clock=clock, transport=transport) if settings.project else None,
        pipeline=lambda chosen: build_pipeline(chosen, log=log),
        store=lambda chosen: build_store(chosen, auth=auth, transport=transport),
    )


#: For every command that reads or changes the function's state.
store_option = click.option(
    "--store",
    "store_choice",
    metavar="sqlite:PATH|firestore[:DATABASE]",
    help="The store to use instead of OPCANCEL_STORE's [default: the function's configuration; outside Cloud, "
    "an existing SQLite file only]",
)


def open_pipeline(clients: CliClients, store_choice: str | None) -> Pipeline:
    """The function's pipeline over the store the operator means (see ``chosen_store``)."""
    return _opened(clients.pipeline, clients.settings, store_choice)


def open_store(clients: CliClients, store_choice: str | None) -> IdempotencyStore:
    """The store the operator means (see ``chosen_store``), alone."""
    return _opened(clients.store, clients.settings, store_choice)


def _opened(build: Callable[[Settings], T] | None, settings: Settings, store_choice: str | None) -> T:
    """What ``build`` makes on the settings of the chosen store, its failures as exit statuses."""
    if build is None:
        raise CliFailure("this command needs the function's configuration", Exit.BAD_CONFIGURATION)
    chosen = chosen_store(settings, store_choice)
    try:
        return build(chosen)
    except OpcancelError as problem:
        raise failure(problem) from None


def chosen_store(settings: Settings, store_choice: str | None) -> Settings:
    """The settings on the store a state command should read, said on stderr; exit 12 where that store could
    only be empty: the memory store, or a default SQLite file that does not exist yet (which would be made up
    on the spot, and show no chains, no pause and nothing held where the function has them)."""
    if store_choice is not None:
        try:
            settings = settings.with_store(store_choice)
        except ConfigError as problem:
            raise failure(problem) from None
    if settings.store == "memory":
        raise CliFailure(
            "OPCANCEL_STORE=memory lives inside one function process; name the function's store with --store",
            Exit.BAD_CONFIGURATION,
        )
    if (
        settings.store == "sqlite"
        and not settings.store_configured
        and not settings.on_cloud
        and not os.path.exists(settings.sqlite_path)
    ):
        raise CliFailure(
            safe(
                f"no store configured, and no {settings.sqlite_path} here: set OPCANCEL_STORE (and "
                "GOOGLE_CLOUD_PROJECT for firestore, OPCANCEL_SQLITE_PATH for sqlite) as the function has them, "
                "or name the store with --store sqlite:PATH or --store firestore[:DATABASE]"
            ),
            Exit.BAD_CONFIGURATION,
        )
    click.echo(f"store: {describe_store(settings)}", err=True)
    return settings


def describe_store(settings: Settings) -> str:
    """The backend and the database or file, as an operator would look for it."""
    if settings.store == "sqlite":
        return safe(f"sqlite {os.path.abspath(settings.sqlite_path)}")
    if settings.store == "memory":
        return "memory"
    where = f"firestore project {settings.project} database {settings.firestore_database} "
    where += f"collection {settings.firestore_collection}"
    if settings.firestore_emulator_host:
        where += f" (emulator at {settings.firestore_emulator_host}, FIRESTORE_EMULATOR_HOST)"
    return safe(where)
