"""The pipeline's steps where the guard does not say go: a dry run looks once and never cancels, and a held
request is kept for an operator and reported ``HELD`` once.

Apart from ``Pipeline`` so that it stays the path of a cancel (house.md: no class past ~300 lines). The steps
make and publish their results through ``Results``, so a result still leaves in one place.
"""

from __future__ import annotations

import dataclasses

from ._gcp.operations import OperationsApi
from ._guard import Decision, Guard
from ._log import Logger
from ._model import CancelRequest, Outcome, Result
from ._results import Results
from ._store import IdempotencyStore, Record
from .errors import ApiRejected


class GuardSteps:
    def __init__(self, *, api: OperationsApi, guard: Guard, store: IdempotencyStore, log: Logger, results: Results):
        self._api = api
        self._guard = guard
        self._store = store
        self._log = log
        self._results = results

    def dry_run(self, record: Record, request: CancelRequest) -> Result:
        """Look (one ``get``), never cancel: DRY_RUN with what the API showed, or what it refused. The caller
        concludes the record with it."""
        ref, checks = request.ref, record.checks + 1
        try:
            with self._results.released_on_trouble(record):
                operation = self._api.get(ref)
        except ApiRejected as refusal:
            refused = self._results.refused(record, ref, request.source, refusal, checks=checks)
            return dataclasses.replace(refused, dry_run=True)
        result = self._results.result(
            ref,
            request.idempotency_key,
            request.source,
            Outcome.DRY_RUN,
            None,
            operation,
            checks=checks,
            requested_at=record.requested_at,
        )
        return dataclasses.replace(result, dry_run=True)

    def hold(self, record: Record, request: CancelRequest, decision: Decision) -> bool:
        """Keep the request for an operator and report HELD once; then free its key, which holding never binds.
        True where it was held and reported already (a redelivery of it adds nothing)."""
        ref = request.ref
        assert decision.because is not None
        result = self._results.result(
            ref, request.idempotency_key, request.source, Outcome.HELD, decision.error, requested_at=record.requested_at
        )
        with self._results.released_on_trouble(record):
            held = self._guard.hold(request, result, decision.because)
            if not held.reported:
                # Once per holding, as its result: a redelivery of a request held and reported adds nothing.
                self._log.warning(
                    decision.error or "request held",
                    event="request_held",
                    held_because=decision.because.value,
                    operation=ref.name,
                    idempotency_key=request.idempotency_key,
                    budget_used=decision.budget_used,
                    budget_limit=decision.budget_limit,
                    source=request.source.to_json(),
                )
                self._results.finish(Result.from_json(held.result), key=record.key)
                self._guard.reported(held)
        self._store.forgotten(record)
        return held.reported
