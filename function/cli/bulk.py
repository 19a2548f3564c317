"""``cancel --all PARENT``: every running operation under a parent, each handed to the deployed function as its
own request, so each is cancelled with its own key and reported with its own result."""

from __future__ import annotations

from typing import Any

import click

from .._names import OperationParent, OperationRef, allows, escape_text
from ..errors import PublishFailed
from ._clients import CliClients
from ._common import pages, parent_of, parse, pubsub_host, request_body, require_credentials
from ._exits import CliFailure, Exit, failure, safe

#: Requests per publish call, well inside Pub/Sub's limits on one publish request.
_PUBLISH_CHUNK = 100


def cancel_all(
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
    parent = parent_of(clients, text, location, api_version)
    topic = clients.settings.requests_topic
    project = clients.settings.project
    if not dry_run and (clients.publisher is None or project is None):
        raise CliFailure("GOOGLE_CLOUD_PROJECT: is required to publish to the requests topic", Exit.BAD_CONFIGURATION)
    require_credentials(clients)
    requests: list[tuple[OperationRef, bytes]] = []
    done = 0
    for operations in pages(clients, parent, filter_):
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
                matches = "operation under {} matches" if max_count == 1 else "operations under {} match"
                raise CliFailure(
                    f"more than {max_count} running {matches.format(escape_text(text))}; nothing published "
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
            f"{problem} ({pubsub_host(clients.settings)}); {published} of {len(requests)} requests were published first. Running the command again is "
            "safe: each request's key is derived from its operation, so those already handled are not cancelled twice"
        )
        raise failure(problem, message) from None
    click.echo(f"published {published} cancel request(s) to projects/{project}/topics/{topic}", err=True)


def _bulk_request(clients: CliClients, parent: OperationParent, name: Any) -> tuple[OperationRef, bytes] | None:
    """A listed operation as a request body, validated by the function's own parser and held to PARENT; or None,
    said on stderr, for a name the API returned that opcancel would not accept."""
    if not isinstance(name, str):
        click.echo(f"skipped an operation without a name: {safe(repr(name))}", err=True)
        return None
    service = parent.service
    if service.is_scc:
        body = request_body((name,), parent.location, parent.api_version)
    else:
        body = request_body((f"//{service.service_name}/{name}",), None, parent.api_version)
    parsed = parse(clients, body)
    if parsed.requests:
        (request,) = parsed.requests
        if allows((parent.full_name,), request.ref.service, request.ref.name):
            return request.ref, body
        problem = f"not under {parent.path}"
    else:
        problem = parsed.rejections[0].error if parsed.rejections else str(parsed.ignored)
    click.echo(f"skipped {escape_text(name)}: {problem}", err=True)
    return None
