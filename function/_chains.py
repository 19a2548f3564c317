"""Check chains: after a cancel, one ``get`` per check until the operation is done or past its deadline, each
next check recorded before it is scheduled; checks arriving from the checks topic; overdue chains resumed.

Apart from ``Pipeline`` so that it stays the path of a request (house.md: no class past ~300 lines).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from ._clock import Clock, format_time
from ._gcp.operations import OperationsApi, settle
from ._log import Logger, current_trace, traced
from ._messages import check_body, check_from_body, read_check_body
from ._model import CheckRequest, InboundMessage, Source
from ._names import OperationRef, allows
from ._parsing import payload_hash
from ._rejections import Rejections
from ._reports import ItemReport, ItemStatus, Report, or_retry_later, shown
from ._results import Results
from ._scheduler import Scheduler
from ._settings import Settings
from ._store import ClaimStatus, IdempotencyStore, Record, State
from .errors import ApiRejected, CheckNotDue, InvalidRequest, StaleFence, TransientError


class Chains:
    def __init__(
        self,
        *,
        settings: Settings,
        api: OperationsApi,
        store: IdempotencyStore,
        scheduler: Scheduler,
        clock: Clock,
        log: Logger,
        results: Results,
        rejections: Rejections,
    ) -> None:
        self._settings = settings
        self._api = api
        self._store = store
        self._scheduler = scheduler
        self._clock = clock
        self._log = log
        self._results = results
        self._rejections = rejections

    def check(self, record: Record, ref: OperationRef, source: Source) -> ItemReport:
        """One ``get``: finish when done or past the deadline, else schedule the next check."""
        checks = record.checks + 1
        try:
            with self._results.released_on_trouble(record):
                operation = self._api.get(ref)
        except ApiRejected as refusal:
            return self._results.conclude(record, self._results.refused(record, ref, source, refusal, checks=checks))
        now = self._clock.now()
        deadline_at = record.deadline_at if record.deadline_at is not None else now
        settled = settle(operation, now=now, deadline_at=deadline_at)
        if settled is not None:
            outcome, error = settled
            result = self._results.result(
                ref, record.key, source, outcome, error, operation, checks=checks, requested_at=record.requested_at
            )
            return self._results.conclude(record, result)
        attempt = record.attempt + 1
        # The chain's plan, from the record: when the check that just ran was due, or the cancel was accepted.
        previous_due_at = record.due_at if record.due_at is not None else record.cancel_accepted_at
        due_at = self._settings.polling.due(
            attempt,
            previous_due_at=previous_due_at if previous_due_at is not None else now,
            now=now,
            deadline_at=deadline_at,
        )
        check = CheckRequest(
            ref=ref,
            idempotency_key=record.key,
            attempt=attempt,
            due_at=due_at,
            deadline_at=deadline_at,
            requested_at=record.requested_at,
            source=source,
            trace=current_trace(),
        )
        self._schedule(record, check, now=now, checks=checks)
        self._log.info(
            "operation still running; next check scheduled",
            event="check_scheduled",
            operation=ref.name,
            idempotency_key=record.key,
            attempt=attempt,
            due_at=format_time(check.due_at),
            deadline_at=format_time(deadline_at),
        )
        return ItemReport(
            ref.name, ItemStatus.ACCEPTED, shown(record.key), detail=f"check {attempt} due {format_time(check.due_at)}"
        )

    def handle(self, message: InboundMessage) -> ItemReport:
        """A check from the checks topic: run it if it is the one its chain waits for and it is due."""
        try:
            # As it arrived: the record recognises its check by this body, not by a re-encoding of it.
            body = read_check_body(message)
            check = check_from_body(body, self._settings.services)
        except InvalidRequest as problem:
            self._log.warning(
                f"malformed check message dropped: {problem}",
                event="check_malformed",
                reason=str(problem),
                message_id=message.message_id,
            )
            return ItemReport("", ItemStatus.REJECTED, detail=str(problem))
        with traced(check.trace or current_trace()):
            return or_retry_later(
                self._log, check.ref.name, check.idempotency_key, lambda: self._run_check(check, body)
            )

    def _run_check(self, check: CheckRequest, body: dict[str, Any]) -> ItemReport:
        ref, key = check.ref, check.idempotency_key
        now = self._clock.now()
        if now < check.due_at - self._scheduler.early_tolerance_s:
            raise CheckNotDue(
                f"check {check.attempt} is due at {format_time(check.due_at)}", retry_after=check.due_at - now
            )
        claim = self._store.claim_check(key, payload_hash(ref.identity), body, now=now)
        if claim.status is not ClaimStatus.ACQUIRED:
            return self._results.duplicate(ref.name, key, claim, attempt=check.attempt)
        record = claim.record
        assert record is not None
        if record.state is State.RESULT_READY:
            return self._results.finish_stored(record)
        if not allows(self._settings.allowed_parents, ref.service, ref.name):
            return self._rejections.stop_chain(record, ref, check.source)
        if record.deadline_at is None:
            record = self._store.deadline_set(record, now=now, deadline_at=check.deadline_at)
        return self.check(record, ref, check.source)

    def _schedule(self, record: Record, check: CheckRequest, *, now: float, checks: int) -> Record:
        """Record the check the chain now waits for, then schedule it; if scheduling fails, put the record back.

        Recording first means every check that can arrive is one the record already expects, and a
        new attempt number is never one a task was created under. A worker that dies between the two
        leaves a chain whose check never comes: it becomes overdue, and ``resume_chain`` sends another.
        """
        scheduled = self._store.check_scheduled(
            record, now=now, attempt=check.attempt, check=check_body(check), due_at=check.due_at, checks=checks
        )
        try:
            self._scheduler.schedule(check)
        except TransientError as trouble:
            retry_at = now + trouble.retry_after if trouble.retry_after else 0.0
            # If putting it back fails too, the chain is overdue later and is resumed then.
            with contextlib.suppress(TransientError, StaleFence):
                self._store.scheduling_failed(scheduled, now=self._clock.now(), back_to=record, not_before=retry_at)
            raise
        return scheduled

    # Overdue chains

    def overdue(self, record: Record, now: float) -> bool:
        """The chain's check is past due by more than the longest polling delay, and no worker is running it."""
        return (
            record.state is State.CHECKING
            and record.check is not None
            and record.due_at is not None
            and record.lease_until <= now
            and now > record.due_at + self._settings.polling.max_delay_s
        )

    def resume_chain(self, record: Record, now: float) -> ItemReport:
        """Schedule a new check, due now, for a chain whose check never ran (lost, dead-lettered, never sent)."""
        assert record.check is not None and record.due_at is not None
        waited_for = check_from_body(record.check, self._settings.services)
        check = dataclasses.replace(waited_for, attempt=record.attempt + 1, due_at=now)
        self._schedule(record, check, now=now, checks=record.checks)
        self._log.notice(
            "overdue check chain resumed with a new check",
            event="chain_resumed",
            operation=check.ref.name,
            idempotency_key=record.key,
            attempt=check.attempt,
            overdue_check=record.attempt,
            was_due_at=format_time(record.due_at),
        )
        return ItemReport(
            check.ref.name,
            ItemStatus.ACCEPTED,
            shown(record.key),
            detail=f"overdue chain resumed: check {check.attempt}",
        )

    def overdue_chains(self) -> list[Record]:
        """Every running chain whose check is overdue, as ``resume`` would find it."""
        now = self._clock.now()
        return [record for record in self._store.chains(now) if self.overdue(record, now)]

    def resume(self, records: list[Record]) -> Report:
        """Resume each overdue chain of ``records`` (from ``overdue_chains``); one item each, in order."""
        reports = []
        for record in records:
            operation = str((record.check or {}).get("operation", ""))

            def work(record: Record = record, operation: str = operation) -> ItemReport:
                now = self._clock.now()
                if not self.overdue(record, now):
                    return ItemReport(operation, ItemStatus.SKIPPED, shown(record.key), detail="no longer overdue")
                try:
                    return self.resume_chain(record, now)
                except StaleFence:
                    # The record moved on since it was listed: another resume, a delivery, or the check itself.
                    detail = "resumed or moved on elsewhere"
                    return ItemReport(operation, ItemStatus.SKIPPED, shown(record.key), detail=detail)

            reports.append(or_retry_later(self._log, operation, record.key, work))
        return Report(tuple(reports))
