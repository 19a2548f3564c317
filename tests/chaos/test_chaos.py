"""The chaos run in a short form, and the benchmark harness briefly, both against Google's Pub/Sub
emulator; the full runs are ``bench/run`` (figures in bench/RESULTS.md)."""

from __future__ import annotations

import pytest

from bench import chaos, coldstart, warm
from bench._harness import ORG, Services
from devkit.emulators import EmulatorUnavailable

pytestmark = pytest.mark.emulator


@pytest.mark.parametrize("store", ["sqlite", "firestore"])
def test_a_short_chaos_run_cancels_once_reports_once_and_loses_nothing(tmp_path, store):
    try:
        report = chaos.run(tmp_path, operations=10, duplicates=10, seed=7, store=store, timeout_s=240)
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
    served = load.loads["opcancel"][4][0].requests
    assert served > 0
    # Every request of the warm load (and of its warm-up) made its own cancel.
    assert sum("/operations/warm-opcancel-" in path for path in cancels) >= served
    worker_peak, _ = load.memory_kib["opcancel"]
    assert worker_peak > 10 * 1024
