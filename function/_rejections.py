"""Rejections: a request refused (by validation, by the API before any cancel, by a key bound to another
operation, by the allow-list while its chain ran), reported once under a key of the rejected namespace.

A rejection never binds the key a valid request would use (SPEC): its result goes under a key made from
what sets it apart, so its redeliveries and repeats report once, and the request's own key is freed.
"""

from __future__ import annotations

import json

from ._clock import format_time
from ._log import Logger
from ._model import CancelRequest, Outcome, Rejection, Source
from ._names import OperationRef
from ._parsing import rejected_key
from ._reports import ItemReport, ItemStatus, shown
from ._results import Results
from ._store import IdempotencyStore, Record
from .errors import ApiRejected


class Rejections:
    def __init__(self, *, results: Results, store: IdempotencyStore, log: Logger) -> None:
        self._results = results
        self._store = store
        self._log = log

    def reject(self, rejection: Rejection) -> ItemReport:
        """A request refused before any call: REJECTED under the key the parser made for it."""
        self._log.warning(
            f"request rejected: {rejection.error}",
            event="request_rejected",
            operation=rejection.offending,
            idempotency_key=rejection.idempotency_key,
            outcome=Outcome.REJECTED.value,
            error=rejection.error,
            source=rejection.source.to_json(),
        )
        self._results.report_once(
            rejection.idempotency_key,
            "rejected\n" + rejection.offending,
            lambda requested_at: self._results.rejected(rejection, requested_at=requested_at),
        )
        return ItemReport(
            rejection.offending, ItemStatus.REJECTED, rejection.reported_key, Outcome.REJECTED.value, rejection.error
        )

    def key_reused(self, request: CancelRequest) -> ItemReport:
        """A key bound to another operation: the request is REJECTED under a key of the rejected namespace,
        made from the key and this operation, so its redeliveries and repeats report once (SPEC), and the
        binding is left alone."""
        ref = request.ref
        error = "idempotency_key is already bound to a different operation"
        reused = json.dumps(["key_mismatch", request.idempotency_key, ref.identity])
        self._results.report_once(
            rejected_key(reused),
            reused,
            lambda requested_at: self._results.result(
                ref, request.idempotency_key, request.source, Outcome.REJECTED, error, requested_at=requested_at
            ),
        )
        return ItemReport(ref.name, ItemStatus.REJECTED, shown(request.idempotency_key), Outcome.REJECTED.value, error)

    def refused_before_cancel(
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
        result = self._results.refused(record, ref, request.source, refusal, checks=checks)
        self._results.report_once(rejected_key(refused), refused, lambda _: result)
        self._store.forgotten(record)
        status = ItemStatus.REJECTED if result.outcome is Outcome.REJECTED else ItemStatus.ACCEPTED
        return ItemReport(ref.name, status, result.idempotency_key, refusal.outcome, result.error)

    def stop_chain(self, record: Record, ref: OperationRef, source: Source) -> ItemReport:
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
        self._results.report_once(
            rejected_key(stopped),
            stopped,
            lambda _: self._results.result(
                ref, record.key, source, Outcome.REJECTED, error, checks=record.checks, requested_at=record.requested_at
            ),
        )
        self._store.forgotten(record)
        return ItemReport(ref.name, ItemStatus.REJECTED, shown(record.key), Outcome.REJECTED.value, error)
