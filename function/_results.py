"""Results: how one is made, and the one way out (store it, publish it, mark its key finished).

Every result leaves through ``Results.finish``, whoever made it: the pipeline, a check chain, a rejection,
the guard's steps. Stored before published (``conclude``), so a republish after a crash is byte-identical.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ._clock import Clock
from ._gcp.pubsub import Publisher
from ._log import Logger
from ._messages import result_message
from ._model import Outcome, Rejection, Result, Source
from ._names import OperationRef
from ._parsing import payload_hash, reported_key
from ._reports import ItemReport, ItemStatus, shown
from ._settings import Settings
from ._store import Claim, ClaimStatus, IdempotencyStore, Record, State
from .errors import ApiRejected, StaleFence, TransientError


class Results:
    def __init__(
        self, *, settings: Settings, publisher: Publisher, store: IdempotencyStore, clock: Clock, log: Logger
    ) -> None:
        self._settings = settings
        self._publisher = publisher
        self._store = store
        self._clock = clock
        self._log = log

    # Making one

    def result(
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

    def refused(
        self, record: Record, ref: OperationRef, source: Source, refusal: ApiRejected, *, checks: int
    ) -> Result:
        """The API's refusal (not found, permission denied, unsupported) as the request's result."""
        outcome = Outcome(refusal.outcome)
        return self.result(
            ref, record.key, source, outcome, str(refusal), checks=checks, requested_at=record.requested_at
        )

    def rejected(self, rejection: Rejection, *, requested_at: float) -> Result:
        return Result.of_rejection(rejection, requested_at=requested_at, finished_at=self._clock.now())

    # Sending it

    def conclude(self, record: Record, result: Result) -> ItemReport:
        """Store the result before publishing it, so a republish after a crash is byte-identical; then finish."""
        stored = self._store.result_ready(record, now=self._clock.now(), result=result.to_json(), checks=result.checks)
        return self.finish(result, stored)

    def finish_stored(self, record: Record) -> ItemReport:
        """Finish with the result an earlier worker stored (it may have died before publishing it)."""
        assert record.result is not None
        return self.finish(Result.from_json(record.result), record)

    def report_once(self, key: str, payload: str, result_for: Callable[[float], Result]) -> None:
        """Publish a rejection's result under its own key, once however often it is reported; ``result_for``
        makes it from the time its key was first claimed."""
        claim = self._store.claim_request(key, payload_hash(payload), now=self._clock.now())
        if claim.status is ClaimStatus.ACQUIRED and claim.record is not None:
            if claim.record.state is State.RESULT_READY:
                self.finish_stored(claim.record)
            else:
                self.conclude(claim.record, result_for(claim.record.requested_at))
        elif claim.status is ClaimStatus.MISMATCH:
            self.finish(result_for(self._clock.now()), key=key)

    def finish(self, result: Result, record: Record | None = None, *, key: str | None = None) -> ItemReport:
        """The one way out: publish the result, then mark its key finished. Without a ``record`` the result
        owns no key (another operation holds ``key``), and its event id alone lets consumers drop a repeat."""
        stored_key = record.key if record is not None else key
        assert stored_key is not None
        message = result_message(result, key=stored_key, project=self._settings.project)
        if record is None:
            self._publisher.publish_all(self._settings.results_topic, [message])
        else:
            with self.released_on_trouble(record):
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

    def duplicate(self, operation: str, key: str, claim: Claim, *, attempt: int | None = None) -> ItemReport:
        """Nothing to do for a key claimed elsewhere, finished, or waiting for another check: said, not done."""
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
        return ItemReport(operation, status, shown(key), outcome, claim.status.value)

    @contextlib.contextmanager
    def released_on_trouble(self, record: Record) -> Iterator[None]:
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
