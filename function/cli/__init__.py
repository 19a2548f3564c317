"""The operator command line, ``python -m function``: one module per group of commands.

``operations`` (cancel, get, list, publish), ``bulk`` (cancel --all), ``chains`` (resume), ``guard``
(status, pause, unpause, reset) and ``held`` (list, release, drop) each list
their commands in ``COMMANDS``; a new group adds its module to ``_GROUPS``. What they share lives in one
place each: ``_clients`` builds the clients and opens the function's store, ``_exits`` maps errors to exit
statuses, ``_common`` holds the options and the parsing of names and parents.
"""

from __future__ import annotations

import os
import sys

import click

from ..errors import ConfigError
from . import chains, guard, held, operations
from ._clients import CliClients, build_clients
from ._exits import EPILOG, CliFailure, Exit, exit_for, status_of

_GROUPS = (operations, chains, guard, held)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
def cli() -> None:
    """Cancel and inspect long-running operations of Security Command Center and other Google APIs.

    Configured by the function's environment: OPCANCEL_API_ENDPOINT,
    OPCANCEL_AUTH, OPCANCEL_API_VERSION, OPCANCEL_ALLOWED_PARENTS,
    OPCANCEL_SERVICES, the OPCANCEL_CHECK_* polling policy,
    GOOGLE_CLOUD_PROJECT and OPCANCEL_REQUESTS_TOPIC; resume by the
    function's store (OPCANCEL_STORE and its settings, or --store).
    """


for _group in _GROUPS:
    for _command in _group.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    try:
        clients = build_clients(os.environ)
    except ConfigError as problem:
        click.echo(f"Error: {problem}", err=True)
        sys.exit(status_of(problem))
    cli.main(prog_name="python -m function", obj=clients)


__all__ = ["CliClients", "CliFailure", "Exit", "build_clients", "cli", "exit_for", "main"]
