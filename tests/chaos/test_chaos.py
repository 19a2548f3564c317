"""The chaos run in a short form, and the benchmark harness briefly, both against Google's Pub/Sub
emulator; the full runs are ``bench/run`` (figures in bench/RESULTS.md)."""

from __future__ import annotations

import pytest

from bench import chaos, coldstart, warm
from bench._harness import ORG, Services
from devkit.emulators import EmulatorUnavailable

pytestmark = pytest.mark.emulator


@pytest.mark.parametrize(("store", "mode"), [("sqlite", "tasks"), ("firestore", "tasks"), ("sqlite", "redelivery")])
def test_a_short_chaos_run_cancels_once_reports_once_and_loses_nothing(tmp_path, store, mode):
    try:
        report = chaos.run(
            tmp_path,
            operations=10,
            duplicates=10,
            seed=7,
            store=store,
            timeout_s=240,
            mode=mode,
            lost_rate=0.5,
            tasks_failure_rate=0.3,
        )
    except EmulatorUnavailable as reason:
        pytest.skip(str(reason))
    assert report.drained, report
    assert report.requests == 100
    assert report.lost == 0, report
    assert report.without_one_result == 0, report
    assert report.wrong_outcome == 0, report
    assert report.cancelled_more_than_once == report.cancelled_again_after_a_crash_in_the_window, report
    assert sum(report.outcomes.values()) == report.distinct_results == 10
    # The chaos did happen: the API failed, writes and publishes failed, workers died.
    assert report.api_faults > 0 and report.kills > 0, report
    assert any(where.startswith(("store", "publish")) for where in report.faults), report
    # Killed workers' keys were taken over, each within the lease (10 s here) and a redelivery's wait.
    assert all(wait < 60 for wait in report.takeovers_s), report
    # Checks were lost (tasks the stand-in dropped, or check messages), and each such chain was resumed.
    lost_checks = report.tasks_lost + report.faults["check message (lost)"]
    assert lost_checks > 0 and report.resumed >= lost_checks, report
    if mode == "tasks":
        # The stand-in failed creates and dispatches too; nothing was lost for good.
        assert report.task_creates[503] + report.task_dispatch_failures > 0, report


@pytest.mark.parametrize("store", ["sqlite", "firestore"])
def test_a_chaos_run_under_a_cancel_budget_never_cancels_more_operations_than_the_budget(tmp_path, store):
    try:
        report = chaos.run(
            tmp_path, operations=10, duplicates=5, seed=11, store=store, timeout_s=240, mode="tasks", budget=4
        )
    except EmulatorUnavailable as reason:
        pytest.skip(str(reason))
    assert report.drained and report.lost == 0, report
    # Workers died, writes (the guard's included) and calls failed: still never more than the budget.
    assert report.kills > 0 and report.api_faults > 0, report
    assert report.operations_cancelled == 4, report
    assert report.without_one_result == 0 and report.wrong_outcome == 0, report
    assert report.outcomes["HELD"] == 6, report
    assert report.clean, report


def test_the_benchmark_harness_measures_opcancel_handling_real_requests(tmp_path):
    try:
        services = Services().__enter__()
    except EmulatorUnavailable as reason:
        pytest.skip(str(reason))
    try:
        cold = coldstart.measure(services, tmp_path, runs=1, names=("bare", "opcancel"))
        load = warm.measure(
            services,
            tmp_path,
            concurrencies=(4,),
            rounds=1,
            seconds=0.5,
            warmup_s=0.5,
            functions_measured=("opcancel",),
        )
        cancels = [c["path"] for c in services.simulator("GET", "calls")["calls"] if c["path"].endswith(":cancel")]
    finally:
        services.__exit__()
    assert cold.median_ms("opcancel") > 0 and cold.median_ms("bare") > 0
    # Each cold start's first request was really handled: its operation was cancelled.
    assert sum(f"{ORG}/operations/cold-opcancel-" in path for path in cancels) == 2
    assert load.errors("opcancel") == 0
    measured = load.loads["opcancel"][4][0]
    served = measured.requests
    assert served > 0
    # The worker's CPU and the emulator's (every request publishes its result) were metered.
    assert measured.worker_cpu_s > 0 and measured.emulator_cpu_s > 0
    assert load.warmup and all(name == "opcancel" and spell.emulator_cpu_s > 0 for name, spell in load.warmup)
    # Every request of the warm load (and of its warm-up) made its own cancel.
    assert sum("/operations/warm-opcancel-" in path for path in cancels) >= served
    worker_peak, _ = load.memory_kib["opcancel"]
    assert worker_peak > 10 * 1024


def test_the_floor_handler_publishes_what_opcancel_publishes(monkeypatch):
    import importlib.util
    import json

    from bench._harness import FUNCTIONS
    from function._messages import result_message
    from function._model import Outcome, Result, Source, SourceKind

    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "bench-project")
    monkeypatch.setenv("OPCANCEL_AUTH", "anonymous")
    spec = importlib.util.spec_from_file_location("floor_under_test", FUNCTIONS["floor"])
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)

    name = f"{ORG}/operations/warm-floor-123"
    operation = {"name": name, "done": True, "error": {"code": 1, "message": "Operation was cancelled."}}
    ours_data, ours_attributes = result_message(
        Result(
            operation=name,
            location="global",
            api_version="v2",
            outcome=Outcome.CANCELLED,
            idempotency_key=f"securitycenter.googleapis.com/{name}",
            requested_at=1_790_000_000.123,
            finished_at=1_790_000_000.456,
            checks=1,
            final_operation=operation,
            error=None,
            source=Source(SourceKind.PUBSUB, "123"),
            service="securitycenter.googleapis.com",
        ),
        key=f"securitycenter.googleapis.com/{name}",
        project="bench-project",
    )
    floor_data, floor_attributes = floor.result_message(name, operation, "123")
    assert list(json.loads(floor_data)) == list(json.loads(ours_data))
    assert len(floor_data) == len(ours_data)
    assert floor_attributes.keys() == ours_attributes.keys()
    assert sum(map(len, floor_attributes.values())) == sum(map(len, ours_attributes.values()))


@pytest.mark.parametrize("mode", ["tasks", "redelivery"])
def test_the_checks_benchmark_counts_deliveries_refusals_and_lateness(tmp_path, mode):
    from bench import checks

    try:
        report = checks.run(tmp_path, mode=mode, chains=3, timeout_s=120)
    except EmulatorUnavailable as reason:
        pytest.skip(str(reason))
    assert report.drained and report.results == 3, report
    assert report.checks_scheduled == report.checks_run == 6, report
    assert len(report.lateness_s) == 6 and all(late > -2.5 for late in report.lateness_s), report
    if mode == "tasks":
        # Each check a task, delivered once and never refused: the goal the benchmark measures.
        assert report.deliveries_per_check == 1.0 and report.refused == 0, report
        assert report.task_creates[200] == 6 and report.task_dispatches == 6, report
    else:
        assert report.refused > 0 and report.deliveries_per_check > 1.0, report


def test_the_storm_benchmark_sends_exactly_the_budget_and_counts_the_guard_s_store_operations(tmp_path):
    from bench import storm

    report = storm.run(tmp_path, requests=60, budget=7, instances=3, store="sqlite")
    assert report.exact and report.cancels_sent == 7, report
    assert report.outcomes == {"CANCELLED": 7, "HELD": 53} and report.breaker_trips == 1, report
    # A cancel reads its held record and the budget document; an instance's simultaneous cancels share one
    # write of the budget document, so there is at most one write per cancel, and some; a held request reads.
    assert 0 < report.guard_ops_cancelled[1] <= 1 and report.guard_ops_held[0] >= 1, report
