"""The pipeline: claim, cancel, check, publish one result. Adapters come in through the constructor.

``Pipeline.handle`` never decides acknowledge-or-retry: it returns a report in
which each item says what happened, transient trouble included, and the
runtime decides. Every result leaves through ``_finish``: store it, publish it,
mark the key finished. The guard (``_guard``) is asked once, just before a
request's first cancel: go, dry run (a ``get`` and a DRY_RUN result, under a
key of its own) or hold (a HELD result, and the request's key freed); the last two are
``_guard_steps``'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ._clock import Clock, format_time
from ._gcp.operations import CancelAnswer, OperationsApi, settle
from ._gcp.pubsub import Publisher
from ._guard import Decision, Guard, Verdict
from ._guard_steps import GuardSteps, Outlet
from ._log import Logger, current_trace, traced
from ._messages import check_body, check_from_body, read_check_body, result_message
from ._model import CancelRequest, CheckRequest, InboundMessage, Outcome, Rejection, Result, Source, SourceKind
from ._names import OperationRef, allows, escape_text
from ._parsing import Parsed, dry_run_key, parse_message, rejected_key, reported_key
from ._scheduler import RedeliveryScheduler, Scheduler
from ._settings import Settings
from ._store import Claim, ClaimStatus, IdempotencyStore, Record, State
from ._store.guard import HeldRequest
from .errors import ApiRejected, CheckNotDue, InvalidRequest, StaleFence, TransientError


def payload_hash(identity: str) -> str:
    """What a key is bound to: a request naming another operation under the same key is told apart by it."""
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()


class ItemStatus(enum.Enum):
    #: Cancel sent, or a check run; ``outcome`` is set once the result is out.
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    #: Already finished, or already being followed by a check chain.
    DUPLICATE = "duplicate"
    #: Nothing to do: a stale or unknown check.
    SKIPPED = "skipped"
    #: Transient trouble: the message must come again.
    RETRY = "retry"


@dataclass(frozen=True)
class ItemReport:
    """What became of one operation of a message, for the log, the CLI and on_http's answer."""

    operation: str
    status: ItemStatus
    #: As results report it (``reported_key``): the sender's own, or the default derived from the operation.
    idempotency_key: str | None = None
    outcome: str | None = None
    detail: str | None = None
    retry_after: float | None = None

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"operation": self.operation, "status": self.status.value}
        for name in ("idempotency_key", "outcome", "detail"):
            value = getattr(self, name)
            if value is not None:
                data["error" if name == "detail" and self.status is ItemStatus.REJECTED else name] = value
        return data


@dataclass(frozen=True)
class Report:
    """What became of a whole message; the runtime acknowledges or retries it by ``must_retry``."""

    items: tuple[ItemReport, ...] = ()
    #: Set when the message as a whole was set aside; see ``Parsed``.
    ignored: str | None = None
    unreadable: bool = False

    @property
    def must_retry(self) -> bool:
        return any(item.status is ItemStatus.RETRY for item in self.items)


class Pipeline:
    def __init__(
        self,
        *,
        settings: Settings,
        api: OperationsApi,
        publisher: Publisher,
        store: IdempotencyStore,
        clock: Clock,
        log: Logger,
        scheduler: Scheduler | None = None,
        guard: Guard | None = None,
    ) -> None:
        self._settings = settings
        self._guard = guard or Guard.from_settings(settings, store=store, clock=clock, log=log)
        self._api = api
        self._publisher = publisher
        self._store = store
        self._clock = clock
        self._log = log
        self._scheduler = scheduler or RedeliveryScheduler(publisher, settings.checks_topic)
        outlet = Outlet(self._result, self._refused, self._finish, self._released_on_trouble)
        self._steps = GuardSteps(api=api, guard=self._guard, store=store, log=log, outlet=outlet)
        #: The CloudEvent source of the checks topic: the only place a check can come from.
        self._checks_source = (
            f"//pubsub.googleapis.com/projects/{settings.project}/topics/{settings.checks_topic}"
            if settings.project
            else None
        )

    def is_check(self, message: InboundMessage) -> bool:
        """A check is recognised by where it came from alone, never by anything its sender controls."""
        return self._checks_source is not None and message.event_source == self._checks_source

    def handle(self, message: InboundMessage) -> Report:
        """A message from any source: a check when it came from the checks topic, else requests."""
        if self.is_check(message):
            return self.handle_check(message)
        return self.handle_request(message)

    def handle_check(self, message: InboundMessage) -> Report:
        if not self.is_check(message):
            reason = "not from the checks topic, so not a check"
            self._log.warning(
                f"event set aside: {reason}",
                event="message_ignored",
                reason=reason,
                message_id=message.message_id,
                # Kept as sent for the comparison with the checks topic; escaped and cut where it is echoed.
                event_source=escape_text(message.event_source) if message.event_source is not None else None,
            )
            return Report(ignored=reason)
        return Report((self._check_message(message),))

    def handle_request(self, message: InboundMessage) -> Report:
        """Requests only: whatever the message looks like, it is never taken as a check."""
        parsed = self._parse(message)
        if parsed.ignored is not None:
            log = self._log.info if parsed.routine else self._log.warning
            log(
                f"message set aside: {parsed.ignored}",
                event="message_ignored",
                reason=parsed.ignored,
                message_id=message.message_id,
            )
            return Report(ignored=parsed.ignored, unreadable=parsed.unreadable)
        items = [
            self._or_retry_later(r.offending, r.idempotency_key, lambda r=r: self._reject(r)) for r in parsed.rejections
        ]
        items += [
            self._or_retry_later(r.ref.name, r.idempotency_key, lambda r=r: self._run_request(r))
            for r in parsed.requests
        ]
        return Report(tuple(items))

    def _parse(self, message: InboundMessage) -> Parsed:
        return parse_message(
            message,
            default_version=self._settings.api_version,
            allowed_parents=self._settings.allowed_parents,
            services=self._settings.services,
            protected_parents=self._settings.protected_parents,
            shadow=self._guard.mode == "shadow",
        )

    def release(self, held: HeldRequest, *, by: str) -> ItemReport:
        """``held release`` of a request no message can carry (its key holds an incident id escaped or cut):
        marked released first, then its kept body parsed as any request is (validated, allow-listed, protected
        parents refused) and run here under its own key and source, on this pipeline's store, scheduler and
        results topic. The breaker lets it pass uncounted; the pause still holds it."""
        if held.request is None:
            raise ValueError(f"{held.key} is carried by a message: publish it again (Guard.release)")
        source = Source.from_json(held.result["source"])

        def work() -> ItemReport:
            released = self._guard.mark_released(held, by=by)
            parsed = self._parse(InboundMessage(data=held.request["data"].encode("utf-8"), kind=SourceKind.CLI))
            if parsed.ignored is not None:
                return ItemReport(held.operation, ItemStatus.REJECTED, _shown(held.key), detail=parsed.ignored)
            if parsed.requests:
                # Answered there (cancelled, refused, found done), its held record is forgotten there too.
                request = dataclasses.replace(parsed.requests[0], idempotency_key=held.key, source=source)
                return self._run_request(request)
            rejection = dataclasses.replace(parsed.rejections[0], source=source, reported_key=_shown(held.key))
            item = self._reject(rejection)
            with contextlib.suppress(TransientError):
                self._guard.answered(released)
            return item

        return self._or_retry_later(held.operation, held.key, work)

    def _or_retry_later(self, operation: str | None, key: str | None, work: Callable[[], ItemReport]) -> ItemReport:
        try:
            return work()
        except TransientError as trouble:
            # A deferred check is the delay working as designed, not trouble worth a warning.
            log = self._log.info if isinstance(trouble, CheckNotDue) else self._log.warning
            log(
                f"will retry: {trouble}",
                event="retry_later",
                reason=trouble.reason,
                operation=operation,
                idempotency_key=key,
                retry_after_s=trouble.retry_after,
            )
            # The caller sees only the kind of trouble; what failed, in detail, is in the log line above.
            return ItemReport(
                operation or "", ItemStatus.RETRY, _shown(key), detail=trouble.reason, retry_after=trouble.retry_after
            )
        except StaleFence as fenced:
            self._log.warning(
                "a newer worker took this key over; leaving the work to it",
                event="fenced_off",
                reason=fenced.reason,
                operation=operation,
                idempotency_key=key,
            )
            return ItemReport(operation or "", ItemStatus.RETRY, _shown(key), detail=fenced.reason)

    # Requests

    def _run_request(self, request: CancelRequest) -> ItemReport:
        ref = request.ref
        key = dry_run_key(request.idempotency_key) if request.dry_run else request.idempotency_key
        claim = self._store.claim_request(key, payload_hash(ref.identity), now=self._clock.now())
        if claim.status is ClaimStatus.MISMATCH:
            self._log.warning(
                "idempotency key reused for a different operation",
                event="key_mismatch",
                reason="key_mismatch",
                operation=ref.name,
                idempotency_key=key,
            )
            return self._key_reused(request)
        if claim.status is ClaimStatus.CHAIN_RUNNING and claim.record is not None:
            now = self._clock.now()
            if self._overdue(claim.record, now):
                return self._resume_chain(claim.record, now)
        if claim.status is not ClaimStatus.ACQUIRED:
            return self._duplicate(ref.name, key, claim)
        record = claim.record
        assert record is not None
        if claim.resumed:
            self._log.notice(
                "resuming work a dead worker left",
                event="takeover",
                operation=ref.name,
                idempotency_key=key,
                state=record.state.value,
                fence=record.fence,
            )
        if record.state is State.RESULT_READY:
            return self._finish_stored(record)
        if record.state is State.CLAIMED:
            with self._released_on_trouble(record):
                decision = self._guard.decide(request)
            if decision.verdict is Verdict.DRY_RUN:
                return self._conclude(record, self._steps.dry_run(record, request))
            if decision.verdict is Verdict.HOLD:
                again = self._steps.hold(record, request, decision)
                status = ItemStatus.DUPLICATE if again else ItemStatus.ACCEPTED
                return ItemReport(ref.name, status, _shown(request.idempotency_key), Outcome.HELD.value, decision.error)
            if decision.trigger is not None:
                request = dataclasses.replace(request, source=decision.trigger)
            sent = self._get_before_cancel(record, request) if claim.resumed else record
            if isinstance(sent, Record):
                sent = self._cancel(sent, request, decision)
            if decision.held is not None:
                # Answered (the cancel recorded, or refused, or found done): the held record has done its
                # work. Best effort: one left behind only stays listed until it expires.
                with contextlib.suppress(TransientError):
                    self._guard.answered(decision.held)
            if isinstance(sent, ItemReport):
                return sent
            record = sent
        return self._check(record, ref, request.source)

    def _key_reused(self, request: CancelRequest) -> ItemReport:
        """A key bound to another operation: the request is REJECTED under a key of the rejected namespace,
        made from the key and this operation, so its redeliveries and repeats report once (SPEC), and the
        binding is left alone."""
        ref = request.ref
        error = "idempotency_key is already bound to a different operation"
        reused = json.dumps(["key_mismatch", request.idempotency_key, ref.identity])
        key = rejected_key(reused)
        self._report_once(
            key,
            reused,
            lambda requested_at: self._result(
                ref, request.idempotency_key, request.source, Outcome.REJECTED, error, requested_at=requested_at
            ),
        )
        return ItemReport(ref.name, ItemStatus.REJECTED, _shown(request.idempotency_key), Outcome.REJECTED.value, error)

    def _get_before_cancel(self, record: Record, request: CancelRequest) -> Record | ItemReport:
        """On a key taken back before any cancel was recorded, look first: the earlier holder may have
        died after the API accepted its cancel, and if the operation is done a second cancel is not needed.
        Returns the finished item when it is done, else the record with this ``get`` counted, to go on to cancel."""
        ref, checks = request.ref, record.checks + 1
        try:
            with self._released_on_trouble(record):
                operation = self._api.get(ref)
        except ApiRejected as refusal:
            return self._refused_before_cancel(record, request, refusal, checks=checks)
        # No deadline yet: the cancel has not been sent.
        settled = settle(operation, now=self._clock.now(), deadline_at=math.inf)
        if settled is None:
            return dataclasses.replace(record, checks=checks)
        outcome, error = settled
        result = self._result(
            ref, record.key, request.source, outcome, error, operation, checks=checks, requested_at=record.requested_at
        )
        return self._conclude(record, result)

    def _cancel(self, record: Record, request: CancelRequest, decision: Decision) -> Record | ItemReport:
        """Send the cancel; returns the record waiting for checks, or the finished item when the API refused.
        Its log entry is the audit trail: one NOTICE per cancel sent, with what triggered it."""
        ref = request.ref
        try:
            with self._released_on_trouble(record):
                answer = self._api.cancel(ref)
        except ApiRejected as refusal:
            return self._refused_before_cancel(record, request, refusal, checks=record.checks)
        now = self._clock.now()
        deadline_s = request.deadline_s or self._settings.polling.deadline_s
        record = self._store.cancel_sent(record, now=now, deadline_at=now + deadline_s)
        self._log.notice(
            "cancel accepted" if answer is CancelAnswer.ACCEPTED else "cancel refused as already done; checking",
            event="cancel_sent",
            operation=ref.name,
            service=ref.service_name,
            location=ref.location,
            api_version=ref.api_version,
            idempotency_key=record.key,
            answer=answer.value,
            reason=request.reason,
            source=request.source.to_json(),
            mode=self._guard.mode,
            budget_used=decision.budget_used,
            budget_limit=decision.budget_limit,
            released_by=decision.released_by,
        )
        return record

    def _refused_before_cancel(
        self, record: Record, request: CancelRequest, refusal: ApiRejected, *, checks: int
    ) -> ItemReport:
        """The API refused before accepting any cancel (not found, permission denied, unsupported, another
        4xx), so nothing was done and the refusal must not bind the request's key: a request under another
        version or location, or this one once the API relents, is acted on (SPEC). The result goes under a
        key of the rejected namespace, made from the request's key, what set this request apart (host,
        version, location) and the answer, so a duplicate refused alike finds it reported; then the request's
        key is freed. A crash in between leaves the claim to be taken over and refused again."""
        ref = request.ref
        refused = json.dumps(["refused", record.key, ref.host, ref.api_version, ref.location, refusal.outcome])
        key = rejected_key(refused)
        result = self._refused(record, ref, request.source, refusal, checks=checks)
        self._report_once(key, refused, lambda _: result)
        self._store.forgotten(record)
        status = ItemStatus.REJECTED if result.outcome is Outcome.REJECTED else ItemStatus.ACCEPTED
        return ItemReport(ref.name, status, result.idempotency_key, refusal.outcome, result.error)

    def _check(self, record: Record, ref: OperationRef, source: Source) -> ItemReport:
        """One ``get``: finish when done or past the deadline, else schedule the next check."""
        checks = record.checks + 1
        try:
            with self._released_on_trouble(record):
                operation = self._api.get(ref)
        except ApiRejected as refusal:
            return self._conclude(record, self._refused(record, ref, source, refusal, checks=checks))
        now = self._clock.now()
        deadline_at = record.deadline_at if record.deadline_at is not None else now
        settled = settle(operation, now=now, deadline_at=deadline_at)
        if settled is not None:
            outcome, error = settled
            result = self._result(
                ref, record.key, source, outcome, error, operation, checks=checks, requested_at=record.requested_at
            )
            return self._conclude(record, result)
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
            ref.name, ItemStatus.ACCEPTED, _shown(record.key), detail=f"check {attempt} due {format_time(check.due_at)}"
        )

    def _schedule(self, record: Record, check: CheckRequest, *, now: float, checks: int) -> Record:
        """Record the check the chain now waits for, then schedule it; if scheduling fails, put the record back.

        Recording first means every check that can arrive is one the record already expects, and a
        new attempt number is never one a task was created under. A worker that dies between the two
        leaves a chain whose check never comes: it becomes overdue, and ``_resume_chain`` sends another.
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

    def _overdue(self, record: Record, now: float) -> bool:
        """The chain's check is past due by more than the longest polling delay, and no worker is running it."""
        return (
            record.state is State.CHECKING
            and record.check is not None
            and record.due_at is not None
            and record.lease_until <= now
            and now > record.due_at + self._settings.polling.max_delay_s
        )

    def _resume_chain(self, record: Record, now: float) -> ItemReport:
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
            _shown(record.key),
            detail=f"overdue chain resumed: check {check.attempt}",
        )

    def overdue_chains(self) -> list[Record]:
        """Every running chain whose check is overdue, as ``resume`` would find it."""
        now = self._clock.now()
        return [record for record in self._store.chains(now) if self._overdue(record, now)]

    def resume(self, records: list[Record]) -> Report:
        """Resume each overdue chain of ``records`` (from ``overdue_chains``); one item each, in order."""
        reports = []
        for record in records:
            operation = str((record.check or {}).get("operation", ""))

            def work(record: Record = record, operation: str = operation) -> ItemReport:
                now = self._clock.now()
                if not self._overdue(record, now):
                    return ItemReport(operation, ItemStatus.SKIPPED, _shown(record.key), detail="no longer overdue")
                try:
                    return self._resume_chain(record, now)
                except StaleFence:
                    # The record moved on since it was listed: another resume, a delivery, or the check itself.
                    detail = "resumed or moved on elsewhere"
                    return ItemReport(operation, ItemStatus.SKIPPED, _shown(record.key), detail=detail)

            reports.append(self._or_retry_later(operation, record.key, work))
        return Report(tuple(reports))

    # Checks

    def _check_message(self, message: InboundMessage) -> ItemReport:
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
            return self._or_retry_later(check.ref.name, check.idempotency_key, lambda: self._run_check(check, body))

    def _run_check(self, check: CheckRequest, body: dict[str, Any]) -> ItemReport:
        ref, key = check.ref, check.idempotency_key
        now = self._clock.now()
        if now < check.due_at - self._scheduler.early_tolerance_s:
            raise CheckNotDue(
                f"check {check.attempt} is due at {format_time(check.due_at)}", retry_after=check.due_at - now
            )
        claim = self._store.claim_check(key, payload_hash(ref.identity), body, now=now)
        if claim.status is not ClaimStatus.ACQUIRED:
            return self._duplicate(ref.name, key, claim, attempt=check.attempt)
        record = claim.record
        assert record is not None
        if record.state is State.RESULT_READY:
            return self._finish_stored(record)
        if not allows(self._settings.allowed_parents, ref.service, ref.name):
            return self._stop_chain(record, ref, check.source)
        if record.deadline_at is None:
            record = self._store.deadline_set(record, now=now, deadline_at=check.deadline_at)
        return self._check(record, ref, check.source)

    def _stop_chain(self, record: Record, ref: OperationRef, source: Source) -> ItemReport:
        """A chain whose parent was taken off the allow-list while it ran: no further call, and the request's
        one result is a rejection, under a key of the rejected namespace. The request's own key is then
        freed: a rejection never binds the key a valid request would use, so putting the parent back on
        the list takes effect at once (SPEC). Until the key is freed its record still waits for this
        check, so a crash in between ends here again, and the result, published once, is not repeated. The
        rejection's key holds the chain's claim time too: a later chain of the same key, stopped alike, is
        another request and gets its own result."""
        self._log.warning(
            "check for a parent outside OPCANCEL_ALLOWED_PARENTS: chain ended as REJECTED",
            event="check_not_allowed",
            operation=ref.name,
            idempotency_key=record.key,
        )
        error = f"{ref.name} is no longer under OPCANCEL_ALLOWED_PARENTS; checks stopped"
        stopped = f"stopped\n{record.key}\n{format_time(record.requested_at)}"
        key = rejected_key(stopped)
        self._report_once(
            key,
            stopped,
            lambda _: self._result(
                ref, record.key, source, Outcome.REJECTED, error, checks=record.checks, requested_at=record.requested_at
            ),
        )
        self._store.forgotten(record)
        return ItemReport(ref.name, ItemStatus.REJECTED, _shown(record.key), Outcome.REJECTED.value, error)

    # Results

    def _reject(self, rejection: Rejection) -> ItemReport:
        self._log.warning(
            f"request rejected: {rejection.error}",
            event="request_rejected",
            operation=rejection.offending,
            idempotency_key=rejection.idempotency_key,
            outcome=Outcome.REJECTED.value,
            error=rejection.error,
            source=rejection.source.to_json(),
        )
        self._report_once(
            rejection.idempotency_key,
            "rejected\n" + rejection.offending,
            lambda requested_at: self._rejected(rejection, requested_at=requested_at),
        )
        return ItemReport(
            rejection.offending, ItemStatus.REJECTED, rejection.reported_key, Outcome.REJECTED.value, rejection.error
        )

    def _report_once(self, key: str, payload: str, result_for: Callable[[float], Result]) -> None:
        """Publish a rejection's result under its own key, once however often it is reported; ``result_for``
        makes it from the time its key was first claimed."""
        claim = self._store.claim_request(key, payload_hash(payload), now=self._clock.now())
        if claim.status is ClaimStatus.ACQUIRED and claim.record is not None:
            if claim.record.state is State.RESULT_READY:
                self._finish_stored(claim.record)
            else:
                self._conclude(claim.record, result_for(claim.record.requested_at))
        elif claim.status is ClaimStatus.MISMATCH:
            self._finish(result_for(self._clock.now()), key=key)

    def _result(
        self,
        ref: OperationRef,
        key: str,  # the request's key as stored; the result reports it as the sender gave it
        source: Source,
        outcome: Outcome,
        error: str | None,
        final: dict[str, Any] | None = None,
        *,
        requested_at: float,
        checks: int = 0,
    ) -> Result:
        return Result(
            operation=ref.name,
            location=ref.location,
            api_version=ref.api_version,
            outcome=outcome,
            idempotency_key=reported_key(key),
            requested_at=requested_at,
            finished_at=self._clock.now(),
            checks=checks,
            final_operation=final,
            error=error,
            source=source,
            service=ref.service_name,
        )

    def _refused(
        self, record: Record, ref: OperationRef, source: Source, refusal: ApiRejected, *, checks: int
    ) -> Result:
        """The API's refusal (not found, permission denied, unsupported) as the request's result."""
        outcome = Outcome(refusal.outcome)
        return self._result(
            ref, record.key, source, outcome, str(refusal), checks=checks, requested_at=record.requested_at
        )

    def _rejected(self, rejection: Rejection, *, requested_at: float) -> Result:
        return Result.of_rejection(rejection, requested_at=requested_at, finished_at=self._clock.now())

    def _conclude(self, record: Record, result: Result) -> ItemReport:
        """Store the result before publishing it, so a republish after a crash is byte-identical; then finish."""
        stored = self._store.result_ready(record, now=self._clock.now(), result=result.to_json(), checks=result.checks)
        return self._finish(result, stored)

    def _finish_stored(self, record: Record) -> ItemReport:
        """Finish with the result an earlier worker stored (it may have died before publishing it)."""
        assert record.result is not None
        return self._finish(Result.from_json(record.result), record)

    def _finish(self, result: Result, record: Record | None = None, *, key: str | None = None) -> ItemReport:
        """The one way out: publish the result, then mark its key finished. Without a ``record`` the result
        owns no key (another operation holds ``key``), and its event id alone lets consumers drop a repeat."""
        stored_key = record.key if record is not None else key
        assert stored_key is not None
        message = result_message(result, key=stored_key, project=self._settings.project)
        if record is None:
            self._publisher.publish_all(self._settings.results_topic, [message])
        else:
            with self._released_on_trouble(record):
                self._publisher.publish_all(self._settings.results_topic, [message])
            self._store.finished(record, now=self._clock.now())
        assert result.outcome is not None
        log = self._log.notice if result.succeeded or result.outcome is Outcome.DRY_RUN else self._log.warning
        log(
            f"result {result.outcome.value} published",
            event="result_published",
            operation=result.operation,
            service=result.service,
            # As stored, like every line of the key's work, so one query finds them all.
            idempotency_key=stored_key,
            outcome=result.outcome.value,
            checks=result.checks,
            error=result.error,
            source=result.source.to_json(),
        )
        status = ItemStatus.REJECTED if result.outcome is Outcome.REJECTED else ItemStatus.ACCEPTED
        return ItemReport(result.operation, status, result.idempotency_key, result.outcome.value, result.error)

    def _duplicate(self, operation: str, key: str, claim: Claim, *, attempt: int | None = None) -> ItemReport:
        record = claim.record
        result = Result.from_json(record.result) if record is not None and record.result else None
        outcome = result.outcome.value if result is not None and result.outcome is not None else None
        status = (
            ItemStatus.DUPLICATE
            if claim.status in (ClaimStatus.FINISHED, ClaimStatus.CHAIN_RUNNING)
            else ItemStatus.SKIPPED
        )
        self._log.info(
            f"nothing to do: {claim.status.value}",
            event=claim.status.value,
            operation=operation,
            idempotency_key=key,
            outcome=outcome,
            attempt=attempt,
        )
        return ItemReport(operation, status, _shown(key), outcome, claim.status.value)

    @contextlib.contextmanager
    def _released_on_trouble(self, record: Record) -> Iterator[None]:
        """On transient trouble, hand the key back at once so the redelivery is not held off until the lease
        runs out; the trouble goes on up."""
        try:
            yield
        except TransientError as trouble:
            now = self._clock.now()
            not_before = now + trouble.retry_after if trouble.retry_after else 0.0
            # If the release fails the lease runs out by itself; the redelivery only waits longer.
            with contextlib.suppress(TransientError, StaleFence):
                self._store.released(record, now=now, not_before=not_before)
            raise


def _shown(key: str | None) -> str | None:
    """A stored key as an item report shows it: the way its result reports it."""
    return reported_key(key) if key is not None else None
