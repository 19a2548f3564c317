"""What several commands share: their options, and names and parents through the function's own parser."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import click

from .._gcp.operations import operation_error, outcome_of
from .._model import CancelRequest, InboundMessage, Outcome, Rejection, SourceKind
from .._names import (
    GLOBAL,
    LOCATION_ALIASES,
    LOCATIONS,
    REGISTRY,
    OperationParent,
    allows,
    escape_text,
    parse_parent,
    validate_location,
    version_for,
)
from .._parsing import Parsed, parse_message
from .._settings import MAX_DEADLINE_S, Settings
from ..errors import ApiRejected, ApiUnavailable, InvalidRequest, ListingIncomplete, NoCredentials
from ._clients import CliClients
from ._exits import CliFailure, Exit, failure, safe

NO_CREDENTIALS = (
    "no Google credentials: run `gcloud auth application-default login`, "
    "or set OPCANCEL_AUTH=anonymous to use the local simulator"
)


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


SECONDS = _Seconds()
location_option = click.option(
    "--location",
    type=click.Choice((*LOCATIONS, *LOCATION_ALIASES)),
    help="Security Command Center location [default: global, or the one a URL names]; other services' names "
    "carry their own",
)
api_version_option = click.option(
    "--api-version",
    type=click.Choice(REGISTRY.known_versions()),
    help="API version [default: OPCANCEL_API_VERSION for Security Command Center, the registry's for other "
    "services, or the one a URL names]",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def request_body(
    names: tuple[str, ...], location: str | None, api_version: str | None, idempotency_key: str | None = None
) -> bytes:
    """A request in the SPEC's JSON format; a JSON string keeps a newline in a name from splitting it in two."""
    body: dict[str, Any] = {"operation": names[0]} if len(names) == 1 else {"operations": list(names)}
    for field, value in (("location", location), ("api_version", api_version), ("idempotency_key", idempotency_key)):
        if value is not None:
            body[field] = value
    return json.dumps(body).encode("utf-8")


def parse(clients: CliClients, body: bytes, *, cancelling: bool = True) -> Parsed:
    """As the function parses it: a command that cancels (or asks the function to) refuses what
    ``OPCANCEL_PROTECTED_PARENTS`` protects, as the function does; one that only looks does not."""
    return parse_message(
        InboundMessage(data=body, kind=SourceKind.CLI),
        default_version=clients.settings.api_version,
        allowed_parents=clients.settings.allowed_parents,
        services=clients.settings.services,
        protected_parents=clients.settings.protected_parents if cancelling else None,
    )


def single(
    clients: CliClients, name: str, location: str | None, api_version: str | None, *, cancelling: bool = True
) -> CancelRequest | Rejection:
    parsed = parse(clients, request_body((name,), location, api_version), cancelling=cancelling)
    if parsed.ignored is not None:
        raise CliFailure(parsed.ignored, Exit.REJECTED)
    return parsed.requests[0] if parsed.requests else parsed.rejections[0]


def parent_of(clients: CliClients, text: str, location: str | None, api_version: str | None) -> OperationParent:
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


def pages(
    clients: CliClients, parent: OperationParent, filter_: str | None, page_size: int | None = None
) -> Iterator[list[dict[str, Any]]]:
    """The client's pager, with its failures turned into the CLI's exit statuses."""
    try:
        yield from clients.api.pages(parent, filter=filter_, page_size=page_size)
    except (ApiRejected, ListingIncomplete) as refusal:
        raise failure(refusal, f"{parent.path}: {refusal}") from None
    except ApiUnavailable as trouble:
        raise failure(trouble, f"Operations API unavailable: {trouble}") from None


def require_credentials(clients: CliClients, *, hint: str = NO_CREDENTIALS) -> None:
    """Load credentials before the first call, so missing ones read as that and not as an API refusal."""
    try:
        clients.auth.headers()
    except NoCredentials as missing:
        raise failure(missing, hint) from None
    except ApiUnavailable as trouble:
        # Credentials that cannot be refreshed are the operator's to renew, not an outage to wait out.
        message = f"{trouble}: run `gcloud auth application-default login` to renew them"
        raise CliFailure(safe(message), Exit.NO_CREDENTIALS) from None


def pubsub_host(settings: Settings) -> str:
    """Where a publish went and what sets it: a failure that only says ConnectError leaves the operator guessing."""
    if settings.pubsub_emulator_host:
        return f"Pub/Sub at {settings.pubsub_emulator_host}, from PUBSUB_EMULATOR_HOST"
    return "Pub/Sub at pubsub.googleapis.com; PUBSUB_EMULATOR_HOST names an emulator instead"


def state_line(operation: dict[str, Any]) -> str:
    outcome = outcome_of(operation)
    line = f"{outcome.value if outcome is not None else 'RUNNING':<9} {operation.get('name')}"
    if outcome is Outcome.FAILED:
        line += f"  ({operation_error(operation)})"
    return safe(line)


def seconds(value: float) -> str:
    return f"{round(value, 2):g}s"
