"""The pipeline: a request's path, from its claim to its cancel; the rest is its collaborators'.

``Pipeline.handle`` never decides acknowledge-or-retry: it returns a report in which each item says what
happened, transient trouble included (``_reports``), and the runtime decides. Every result leaves through
``Results.finish``: store it, publish it, mark the key finished. After the cancel, a check chain
(``_chains``) follows the operation to its end; a request refused is reported by ``_rejections``. The
guard (``_guard``) is asked once, just before a request's first cancel: go, dry run (a ``get`` and a
DRY_RUN result, under a key of its own) or hold (a HELD result, and the request's key freed); the last two
are ``_guard_steps``'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

from ._chains import Chains
from ._clock import Clock
from ._gcp.operations import CancelAnswer, OperationsApi, settle
from ._gcp.pubsub import Publisher
from ._guard import Decision, Guard, Verdict
from ._guard_steps import GuardSteps
from ._log import Logger
from ._model import CancelRequest, InboundMessage, Outcome, Source, SourceKind
from ._names import escape_text
from ._parsing import Parsed, dry_run_key, parse_message, payload_hash
from ._rejections import Rejections
from ._reports import ItemReport, ItemStatus, Report, or_retry_later, shown
from ._results import Results
from ._scheduler import RedeliveryScheduler, Scheduler
from ._settings import Settings
from ._store import ClaimStatus, IdempotencyStore, Record, State
from ._store.guard import HeldRequest
from .errors import ApiRejected, TransientError


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
        self._store = store
        self._clock = clock
        self._log = log
        self._results = Results(settings=settings, publisher=publisher, store=store, clock=clock, log=log)
        self._rejections = Rejections(results=self._results, store=store, log=log)
        self._chains = Chains(
            settings=settings,
            api=api,
            store=store,
            scheduler=scheduler or RedeliveryScheduler(publisher, settings.checks_topic),
            clock=clock,
            log=log,
            results=self._results,
            rejections=self._rejections,
        )
        self._steps = GuardSteps(api=api, guard=self._guard, store=store, log=log, results=self._results)
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
        return Report((self._chains.handle(message),))

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
            or_retry_later(self._log, r.offending, r.idempotency_key, lambda r=r: self._rejections.reject(r))
            for r in parsed.rejections
        ]
        items += [
            or_retry_later(self._log, r.ref.name, r.idempotency_key, lambda r=r: self._run_request(r))
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
                return ItemReport(held.operation, ItemStatus.REJECTED, shown(held.key), detail=parsed.ignored)
            if parsed.requests:
                # Answered there (cancelled, refused, found done), its held record is forgotten there too.
                request = dataclasses.replace(parsed.requests[0], idempotency_key=held.key, source=source)
                return self._run_request(request)
            rejection = dataclasses.replace(parsed.rejections[0], source=source, reported_key=shown(held.key))
            item = self._rejections.reject(rejection)
            with contextlib.suppress(TransientError):
                self._guard.answered(released)
            return item

        return or_retry_later(self._log, held.operation, held.key, work)

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
            return self._rejections.key_reused(request)
        if claim.status is ClaimStatus.CHAIN_RUNNING and claim.record is not None:
            now = self._clock.now()
            if self._chains.overdue(claim.record, now):
                return self._chains.resume_chain(claim.record, now)
        if claim.status is not ClaimStatus.ACQUIRED:
            return self._results.duplicate(ref.name, key, claim)
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
            return self._results.finish_stored(record)
        if record.state is State.CLAIMED:
            with self._results.released_on_trouble(record):
                decision = self._guard.decide(request)
            if decision.verdict is Verdict.DRY_RUN:
                return self._results.conclude(record, self._steps.dry_run(record, request))
            if decision.verdict is Verdict.HOLD:
                again = self._steps.hold(record, request, decision)
                status = ItemStatus.DUPLICATE if again else ItemStatus.ACCEPTED
                return ItemReport(ref.name, status, shown(request.idempotency_key), Outcome.HELD.value, decision.error)
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
        return self._chains.check(record, ref, request.source)

    def _get_before_cancel(self, record: Record, request: CancelRequest) -> Record | ItemReport:
        """On a key taken back before any cancel was recorded, look first: the earlier holder may have
        died after the API accepted its cancel, and if the operation is done a second cancel is not needed.
        Returns the finished item when it is done, else the record with this ``get`` counted, to go on to cancel."""
        ref, checks = request.ref, record.checks + 1
        try:
            with self._results.released_on_trouble(record):
                operation = self._api.get(ref)
        except ApiRejected as refusal:
            return self._rejections.refused_before_cancel(record, request, refusal, checks=checks)
        # No deadline yet: the cancel has not been sent.
        settled = settle(operation, now=self._clock.now(), deadline_at=math.inf)
        if settled is None:
            return dataclasses.replace(record, checks=checks)
        outcome, error = settled
        result = self._results.result(
            ref, record.key, request.source, outcome, error, operation, checks=checks, requested_at=record.requested_at
        )
        return self._results.conclude(record, result)

    def _cancel(self, record: Record, request: CancelRequest, decision: Decision) -> Record | ItemReport:
        """Send the cancel; returns the record waiting for checks, or the finished item when the API refused.
        Its log entry is the audit trail: one NOTICE per cancel sent, with what triggered it."""
        ref = request.ref
        try:
            with self._results.released_on_trouble(record):
                answer = self._api.cancel(ref)
        except ApiRejected as refusal:
            return self._rejections.refused_before_cancel(record, request, refusal, checks=record.checks)
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

    # Overdue chains

    def overdue_chains(self) -> list[Record]:
        """Every running chain whose check is overdue, as ``resume`` would find it."""
        return self._chains.overdue_chains()

    def resume(self, records: list[Record]) -> Report:
        """Resume each overdue chain of ``records`` (from ``overdue_chains``); one item each, in order."""
        return self._chains.resume(records)
