"""The command line's exit statuses, and the one mapping from the function's errors to them.

A command raises ``CliFailure`` for what it decides itself (a rejected name, a missing setting) and
``failure(problem, ...)`` for an error from the function's code, so each error means the same status
in every command.
"""

from __future__ import annotations

import enum

import click

from .._model import Outcome
from .._names import escape_text
from ..errors import (
    ApiRejected,
    ApiUnavailable,
    ConfigError,
    InvalidRequest,
    NoCredentials,
    OpcancelError,
    PublishFailed,
    TransientError,
)

# API text echoed to a terminal is escaped like request text, but may run longer than a name.
_ECHO_LIMIT = 1024


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


#: The table under ``--help``; tests/cli holds it to ``Exit`` and docs/cli.md.
EPILOG = """\b
Exit status:
   0  CANCELLED; for cancel without --wait, also: cancel accepted, not done yet;
      for get, list, publish and cancel --all: success
   1  a crash, or Ctrl-C
   2  usage error; cancel --all without --yes where no terminal can confirm
   3  COMPLETED
   4  FAILED
   5  TIMED_OUT
   6  NOT_FOUND; held release/drop: no held request has that KEY
   7  PERMISSION_DENIED
   8  UNSUPPORTED
   9  REJECTED: a bad name, a parent outside OPCANCEL_ALLOWED_PARENTS,
      another 4xx from the API, or cancel --all matching more than --max;
      held release of a request no message can carry (drop it instead)
  10  the API stayed unavailable (429, 5xx, timeouts) after retries
  11  no usable Google credentials
  12  bad configuration (an environment variable, --store); or no store
      configured for a command that reads the function's state; held
      release without GOOGLE_CLOUD_PROJECT
  13  the publish to Pub/Sub was not confirmed
  14  resume, guard, held: the store or the scheduler was unavailable, or a
      held request changed meanwhile (run it again)
"""


def exit_for(outcome: Outcome) -> Exit:
    return Exit.OK if outcome is Outcome.CANCELLED else Exit[outcome.name]


class CliFailure(click.ClickException):
    """Shown by click as one ``Error: ...`` line on stderr, then exits with ``status``."""

    def __init__(self, message: str, status: Exit) -> None:
        super().__init__(message)
        self.exit_code = status


def status_of(problem: OpcancelError) -> Exit:
    """The exit status an error of the function's code means, in every command."""
    if isinstance(problem, NoCredentials):
        return Exit.NO_CREDENTIALS
    if isinstance(problem, ApiRejected):
        return exit_for(Outcome(problem.outcome))
    if isinstance(problem, InvalidRequest):
        return Exit.REJECTED
    if isinstance(problem, ConfigError):
        return Exit.BAD_CONFIGURATION
    if isinstance(problem, ApiUnavailable):
        return Exit.API_UNAVAILABLE
    if isinstance(problem, PublishFailed):
        return Exit.PUBLISH_FAILED
    if isinstance(problem, TransientError):
        return Exit.UNAVAILABLE
    raise problem


def failure(problem: OpcancelError, message: str | None = None) -> CliFailure:
    """``problem`` as the command's last line (``message``, or the error's own text, made safe to echo)."""
    return CliFailure(safe(str(problem) if message is None else message), status_of(problem))


def safe(text: str) -> str:
    """Text from the API or the operator, made safe for a terminal: control characters escaped."""
    return escape_text(text, _ECHO_LIMIT)
