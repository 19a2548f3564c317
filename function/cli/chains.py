"""``resume``: restart check chains whose check was lost, on the function's own store and scheduler."""

from __future__ import annotations

import json

import click

from .._clock import format_time
from .._reports import ItemStatus, Report
from ..errors import TransientError
from ._clients import CliClients, open_pipeline, store_option
from ._common import json_option, seconds
from ._exits import CliFailure, Exit, failure, safe


@click.command()
@store_option
@click.option("--dry-run", is_flag=True, help="List the overdue chains and resume none.")
@json_option
@click.pass_obj
def resume(clients: CliClients, store_choice: str | None, dry_run: bool, as_json: bool) -> None:
    """Find check chains whose check is overdue and schedule a new one for each.

    A chain is overdue when its check's due time passed more than
    OPCANCEL_CHECK_MAX_DELAY_S ago and no worker is running it: the check was
    lost (dead-lettered, dropped, never scheduled). Each gets a new check, due
    now, so its request still ends in one result. Safe to run at any time and
    from several places (Cloud Scheduler, by hand): a chain resumed by one run
    is no longer overdue for the next.
    """
    pipeline = open_pipeline(clients, store_choice)
    try:
        overdue = pipeline.overdue_chains()
    except TransientError as problem:
        raise failure(problem) from None
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
                f"{safe(str(row['operation']))}  check {row['attempt']} due {row['due_at']} "
                f"({seconds(row['overdue_s'])} ago)  {fate}"
            )
        click.echo(
            f"{len(rows)} overdue chain(s)" + ("" if dry_run else f", {sum(r['resumed'] for r in rows)} resumed")
        )
    if report.must_retry:
        raise CliFailure("some chains could not be resumed; run resume again", Exit.UNAVAILABLE)


COMMANDS = (resume,)
