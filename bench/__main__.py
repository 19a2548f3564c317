"""``bench/run``: every benchmark and the chaos run, side by side with their baselines; writes RESULTS.md.

Usage: ``bench/run [--quick] [--only coldstart,warm,cost,checks,lag,chaos,storm] [--output PATH]``. ``--quick`` runs
each part briefly, to check the harness, not to measure. A run of some parts keeps the other parts' sections
of the report it replaces, each marked with the run it came from. ``bench/run`` also names the interpreters the
functions run under (``$BENCH_DEPLOYED_PYTHON``, ``$BENCH_OFFICIAL_PYTHON``, or ``--deployed-python``,
``--official-python``): venvs holding only what each deploys.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys
import tempfile
import time

from bench import chaos, checks, coldstart, cost, lag, storm, warm
from bench._harness import ROOT, Pythons, Services
from bench.report import write_report

PARTS = ("coldstart", "warm", "cost", "checks", "lag", "chaos", "storm")
FULL = {
    "cold_runs": 31,
    "warm_rounds": 21,
    "warm_seconds": 3.0,
    "warm_warmup_s": 30.0,
    "concurrencies": (1, 8, 32),
    "chaos_runs": (
        ("sqlite", 1, "tasks"),
        ("sqlite", 2, "tasks"),
        ("sqlite", 3, "tasks"),
        ("firestore", 1, "tasks"),
        ("firestore", 2, "tasks"),
        ("sqlite", 1, "redelivery"),
    ),
    "chaos_operations": 100,
    "check_chains": 1000,
    # 100 of each duration (a p99 from each); all end within 90 s + 300 s, so the part takes ~7 minutes.
    "lag_durations": (1, 10, 60, 300),
    "lag_per_duration": 100,
    "lag_spread_s": 90.0,
    # (store, requests, budget): 1,000 requests at once against a budget, as the issue asks.
    "storms": (("firestore", 1000, 100), ("sqlite", 1000, 100)),
}
QUICK = {
    "cold_runs": 1,
    "warm_rounds": 1,
    "warm_seconds": 0.5,
    "warm_warmup_s": 0.5,
    "concurrencies": (1, 8),
    "chaos_runs": (("sqlite", 1, "tasks"), ("firestore", 1, "tasks"), ("sqlite", 1, "redelivery")),
    "chaos_operations": 10,
    "check_chains": 20,
    "lag_durations": (1, 3),
    "lag_per_duration": 3,
    "lag_spread_s": 2.0,
    "storms": (("sqlite", 50, 5),),
}


def main(argv: list[str]) -> int:
    # Stopped with SIGTERM (kill, a CI timeout), the run still stops the processes it started: they
    # live in process groups of their own, so nothing else would.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="brief runs that check the harness")
    parser.add_argument("--only", default=",".join(PARTS), help="comma list of parts to run")
    parser.add_argument("--output", type=pathlib.Path, default=ROOT / "bench" / "RESULTS.md")
    # bench/run names its venvs in the environment, so the command as typed is the one reported.
    parser.add_argument(
        "--deployed-python",
        default=os.environ.get("BENCH_DEPLOYED_PYTHON", sys.executable),
        help="runs opcancel and the functions on it (default: $BENCH_DEPLOYED_PYTHON, else this Python)",
    )
    parser.add_argument(
        "--official-python",
        default=os.environ.get("BENCH_OFFICIAL_PYTHON", sys.executable),
        help="runs the official-client baseline (default: $BENCH_OFFICIAL_PYTHON, else this Python)",
    )
    args = parser.parse_args(argv)
    pythons = Pythons(deployed=args.deployed_python, official=args.official_python)
    parts = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    plan = QUICK if args.quick else FULL
    found: dict[str, object] = {}
    load_at_start = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="opcancel-bench-") as scratch:
        workdir = pathlib.Path(scratch)
        if "coldstart" in parts or "warm" in parts:
            with Services(pythons) as services:
                if "coldstart" in parts:
                    found["coldstart"] = []
                    for cloud_credentials in (False, True):
                        _say("cold start" + (", credentials from a metadata server" if cloud_credentials else ""))
                        found["coldstart"].append(
                            coldstart.measure(
                                services, workdir, runs=plan["cold_runs"], cloud_credentials=cloud_credentials
                            )
                        )
                if "warm" in parts:
                    _say("warm load")
                    found["warm"] = warm.measure(
                        services,
                        workdir,
                        concurrencies=plan["concurrencies"],
                        rounds=plan["warm_rounds"],
                        seconds=plan["warm_seconds"],
                        warmup_s=plan["warm_warmup_s"],
                    )
        if "cost" in parts:
            _say("cost per cancellation")
            found["cost"] = cost.measure(workdir)
            found["guard_cost"] = cost.measure_guard(workdir)
        if "checks" in parts:
            found["checks"] = []
            for mode in ("tasks", "redelivery"):
                _say(f"delayed checks, {mode} mode, {plan['check_chains']} chains")
                run_dir = workdir / f"checks-{mode}"
                run_dir.mkdir()
                found["checks"].append(checks.run(run_dir, mode=mode, chains=plan["check_chains"]))
        if "lag" in parts:
            _say(f"result lag, {plan['lag_per_duration']} operations of each of {plan['lag_durations']} s, per policy")
            found["lag"] = lag.run(
                workdir,
                per_duration=plan["lag_per_duration"],
                durations=plan["lag_durations"],
                spread_s=plan["lag_spread_s"],
            )
        if "chaos" in parts:
            found["chaos"] = []
            for store, seed, mode in plan["chaos_runs"]:
                _say(f"chaos on {store}, seed {seed}, {mode} mode")
                run_dir = workdir / f"chaos-{store}-{seed}-{mode}"
                run_dir.mkdir()
                report = chaos.run(
                    run_dir,
                    operations=plan["chaos_operations"],
                    duplicates=10,
                    seed=seed,
                    store=store,
                    pythons=pythons,
                    mode=mode,
                )
                found["chaos"].append((seed, report))
        if "storm" in parts:
            found["storm"] = []
            for store, requests, budget in plan["storms"]:
                _say(f"storm: {requests} requests at once against a budget of {budget}, {store}")
                found["storm"].append(storm.run(workdir, requests=requests, budget=budget, store=store))
    write_report(
        args.output,
        found,
        pythons=pythons,
        plan=plan,
        quick=args.quick,
        # bench/run names its venvs in the environment; without them this was started as a module.
        command=" ".join(["bench/run" if "BENCH_DEPLOYED_PYTHON" in os.environ else "python -m bench", *argv]),
        elapsed_s=time.monotonic() - started,
        load_at_start=load_at_start,
    )
    _say(f"wrote {args.output}")
    return 0


def _say(what: str) -> None:
    print(f"bench: {what}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
