"""RESULTS.md: every figure with its baseline and goal, the machine, the versions and the command."""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
from typing import Any

from bench._harness import ROOT, Pythons, percentile
from bench.chaos import ChaosReport
from bench.checks import ChecksReport
from bench.coldstart import ColdStart
from bench.cost import Cost
from bench.lag import WARM_UP, LagReport, beyond_reach, planned_checks, policy_lag
from bench.storm import StormReport
from bench.warm import WARMUP_SPELL_S, WarmResults
from function import PollingPolicy

PACKAGES = ("functions-framework", "httpx", "google-auth", "google-cloud-pubsub", "google-cloud-securitycenter")

# What the profiles found and what was changed; the figures were measured with this harness before and after.
CHANGES = """\
## What was changed to meet the goals

Measured with this harness on the machine above while the goals were worked on (medians; each line
names how it was found).

| | before | after | found with | change |
| --- | --- | --- | --- | --- |
| cold start, opcancel ÷ bare | 609 ms ÷ 182 ms = **3.3×**, slower than the official client (469 ms) | see above | `-X importtime`; timing and pyinstrument on the first request in-process | the five below |
| | google-cloud-pubsub: 209 ms of imports, then a gRPC channel, on the first publish | gone from the function | `-X importtime` | results and checks are published with one REST `topics.publish` call over httpx (`function/_gcp/pubsub.py`); google-cloud-pubsub is now only the tests' and the local stack's client |
| | three `httpx.Client`s, each loading certifi's CA bundle: 29–50 ms each | one transport for the process, TLS set up on its first `https` request | timing `httpx.Client()` | `function/_gcp/transport.py`: one `SharedTransport` for the API, Pub/Sub, Firestore and token refreshes (on Cloud: one TLS context instead of three) |
| | httpx's `HTTPTransport` imports httpcore and h11 (13 ms) and opens its first connection through them | 25–45 ms less: 279 → 249 ms and 346 → 300 ms, old and new side by side in two runs of 15 rounds | `-X importtime`; strace of a cold start | a keep-alive pool over the standard library's `http.client`; **undone by the redesign**, because the brief leaves HTTP to httpx's own transport (cold start went from 1.22–1.42× to 1.70×) |
| | httpx's `HTTPTransport` built its verifying TLS context (certifi's bundle, 15–18 ms) on the first request, though every call here is plain `http` | 14 ms less (213 against 227 ms, 10 interleaved starts each): 1.60× instead of 1.72× | cProfile of the first request in-process: `load_verify_locations` | `SharedTransport` keeps one httpx transport per scheme; the `http` one has a context that trusts nothing, so the bundle loads on the first `https` call, which on Cloud is the first call to the API |
| | each gunicorn worker built httpx's transport on its first request, importing httpcore and h11 there | built at start-up in gunicorn's master, before it forks, for the schemes the API and Pub/Sub calls use: 5 ms less (237 → 232 ms, 20 interleaved starts, timed inside the start: the import grows by 12 ms, the first request shrinks by 18 ms) | timestamps at `main.py`'s import and around the first request, inside a real start | `SharedTransport(prepare=...)`, called by `build_pipeline` |
| the harness | the functions ran in the tests' venv, with `PYTHONDONTWRITEBYTECODE` from the shell: opcancel's modules were compiled on every start, and pygments (a test tool) was imported by httpx | each function runs in a venv holding only what it deploys, with bytecode caches written | strace showing no `__pycache__` reads | `bench/run` builds the venvs; `Services.environment` drops `PYTHONDONTWRITEBYTECODE` |
| | the garbage collector ran during `main.py`'s imports | ~10 ms less (243 vs 253 ms, 15 interleaved starts each) | timing the import with the collector off | `main.py`: the gc module's recipe for servers that fork after loading (`gc.disable()`, then `gc.freeze()`), which also keeps the workers' collections off the pages they share with the master |
| | on Cloud, google-auth's Application Default Credentials took 90–120 ms to the first token: its `compute_engine` module imports `requests` | 2–3 ms | timing the first token in-process against `bench/_metadata.py` | `MetadataServerAuth` (`function/_gcp/auth.py`) asks the metadata server itself; a key file in `GOOGLE_APPLICATION_CREDENTIALS` still goes through google-auth |
| | the Firestore store was imported by every function | imported only when `OPCANCEL_STORE=firestore` | `-X importtime` (1.4 ms) | `function/__init__.py` |
| warm, c=8, opcancel ÷ floor | 112 ÷ 162 req/s = **69%** | see above | py-spy on the worker: 41% of samples in `SqliteStore._execute`, waiting for the lock while another thread's commit did an fsync | SQLite `synchronous=NORMAL` under WAL: a commit survives a crash of the process, only a power loss can drop the last ones (README) |
| warm, c=8, opcancel ÷ floor | 75–80% in three full runs once the shared transport had made the floor cheaper | 88% (see above) | cProfile of the request path in-process, against the simulator and the emulator: `dataclasses.asdict` took a fifth of the CPU | `Record.to_json` copies the record shallowly; `asdict` deep-copied the stored result on each of the four writes of a request |
| | the warm rounds always ran bare, floor, opcancel in that order | every other round in reverse | per-round ratios ranged 0.50–1.11 | `bench/warm.py`; the report shows the middle half of the rounds' ratios |
| | 5 s of warm-up per function: the emulator's CPU per publish was still falling through the rounds (6.8 ms at first, ~2 ms after some 70 s of load), and the rounds' ratios rose with it, from ~75% to 91–97% within one run | 30 s per function in 5 s turns, 21 rounds instead of 13; the emulator's cost per publish is reported above. The first full run so changed still gave 76% | the CPU of every process per load, from `/proc` | `bench/warm.py` |
| | the floor handler published two fields and no attributes; opcancel publishes the result event, 11 fields and 9 attributes (2.0 against 2.3 ms of emulator CPU per publish) | the floor publishes the same fields, attributes and size, with fixed values where opcancel computes them | the emulator's CPU per publish, per function | `bench/functions/floor.py`, tested against opcancel's own result message |
| | a request read its key, then created it: five SQLite statements, and one Firestore round trip more than needed | the record is created at once and read only when the create is refused: four statements, and a new key costs no read | strace of the worker under load: 26 `fcntl` and 17 `pwrite` calls per request, all SQLite's | `IdempotencyStore.claim_request`; the cost table above shows the reads gone |
| correctness | a key taken over before any cancel was recorded was cancelled again at once | the new holder calls `get` first; a done operation is not cancelled again | a fault test crashing between the cancel's answer and its record; the chaos run counts what is left | `Pipeline._get_before_cancel` |
| correctness | the SQLite connection was opened in gunicorn's master and used across `fork()` in the workers, which SQLite forbids | opened per process on first use | reading functions-framework's start-up while giving the chaos run three workers | `SqliteStore._execute` |

### Where a warm request's CPU goes

The worker's CPU per request is in the warm table. The floor handler's ~4 ms is functions-framework,
three httpx calls (~0.09 ms of httpx's own Python each, timed over `MockTransport`), their sockets
and the kernel; opcancel has added 1.3–1.4 ms in the full runs so far. Measured apart: on one thread and in-process, opcancel's own work costs
~0.07 ms with the memory store and ~0.18 ms with SQLite; under 8 threads the same work costs
0.4–0.6 ms. perf shows a quarter of the worker's CPU in the kernel switching threads, in the floor
handler and in opcancel alike: every blocking call lets go of the GIL, and with threads waiting each
release hands it over. opcancel adds such calls: each SQLite statement releases the GIL twice (its
step and its reset), each log line once. py-spy at concurrency 1 puts ~0.7 ms of samples per request
in opcancel's own code, ~0.4 ms of it in the store. Tried and dropped: an SQLite connection per
thread, without the store's lock (more CPU: 0.65–0.92 against 0.61–0.72 ms in-process). Left as
they are: the four writes, each of which keeps a crash harmless (the claim; the cancel recorded
before the `get`; the result stored before it is published, so a republish is identical; the key
finished), and the two log lines, which are the cancel's audit trail in Cloud Logging. With the
memory store opcancel reached ~90% of the floor handler in a side-by-side run of seven rounds.

### Where the cold start goes, and why it sits at the 1.5× budget

Timed inside a real cold start (functions-framework's gunicorn, the deployed venv, 20 interleaved
starts): the interpreter and functions-framework take ~125 ms before `main.py` is imported, for the
bare function and opcancel alike, and gunicorn ~25 ms more before the first request reaches the
worker. opcancel adds two things. **Importing `main.py`, ~54 ms**: httpx, httpcore and h11 ~26 ms
with the transport built at start-up (the HTTP stack the brief fixes); opcancel's own modules
~19 ms, of which ~10 ms is `dataclasses` making its 22 frozen value classes (almost all of it
compiling the methods it writes as source: 8.7 ms of `compile` for the 28 dataclasses in the
process, h11's six included) and ~2 ms compiling the name and setting patterns; building the
runtime (settings read, clients made, the store opened and probed), ~2.5 ms. **The first request,
~27 ms**: the cancel and get on the simulator and the
result's publish on the Pub/Sub emulator, ~22 ms of waiting (the emulator takes 10–20 ms a publish
on a new connection), which the bare function never does; parsing, the store's writes and the log
lines, the other ~5 ms. Against the bare function's ~150 ms, 1.5× leaves ~75 ms for all of that;
httpx's stack and the waits alone take ~48 ms of it. The four full runs since the transport was
prepared at start-up gave 1.506×, 1.501×, 1.518× and 1.492× without credentials, and 1.502×, 1.479×,
1.500× and 1.471× with them; each of the last three runs' 95% intervals for the median without
credentials (1.494–1.530, 1.494–1.554, 1.477–1.536) holds 1.5. On the line, not inside it.

Tried and left: the Python runtime. Python 3.11, 3.12 and 3.13 (pyenv builds, 8–20 interleaved
starts each) gave ratios of 1.53–1.62 in every order, within the noise of one another, and the
bare function starts ~15 ms later on 3.13 than on 3.11 here; deploy.sh deploys python313 for its
longer support, and `bench/run` runs the functions on that version. Google's runtime table also
lists python314 (the google-24 stack); no 3.14 interpreter could be had on this machine (Debian
bookworm ships 3.11, pyenv here stops at 3.13, and no source for it was reachable), so it is
untried. Also tried and left: `msgspec.Struct` for the value classes, which builds a class in C
(~0.01 ms against ~0.4 ms) but costs ~4 ms to import, so it would save ~6 ms net for a compiled
dependency, with the exception class and the field left out of comparison still needing
`dataclasses`. Not done, because the brief rules it out: writing our own HTTP client again, or
replacing `dataclasses` with hand-written classes. On Cloud, opcancel and the official client alike
also pay for TLS on the first `https` connection, which no loopback run shows; opcancel loads its
CA bundle at start-up there.
"""


def write_report(
    path: pathlib.Path,
    found: dict[str, Any],
    *,
    pythons: Pythons,
    plan: dict[str, Any],
    quick: bool,
    command: str,
    elapsed_s: float,
    load_at_start: tuple[float, float, float] | None = None,
) -> None:
    # A run of some parts keeps the other parts' sections from the file it replaces, each marked with the
    # run it came from, so one part can be measured again without the hour the others take.
    earlier = _sections(path.read_text()) if path.exists() and not quick else {}
    setting = _setting(command, elapsed_s, plan, pythons, load_at_start)
    origin = _origin(earlier.get("Setting", ""))
    written = {
        "Cold start": "\n".join(_coldstart(cold) for cold in found.get("coldstart", ())),
        "Warm load": _warm(found["warm"]) if "warm" in found else "",
        "Cost per cancellation": _cost(found["cost"]) if "cost" in found else "",
        "The guard's cost per request": _guard_cost(found["guard_cost"], found.get("warm"))
        if "guard_cost" in found
        else "",
        "Delayed checks: Cloud Tasks beside redelivery": _checks(found["checks"]) if "checks" in found else "",
        "Result lag": _lag(found["lag"]) if "lag" in found else "",
        "Chaos run": _chaos(found["chaos"]) if "chaos" in found else "",
        "Alert storm against a cancel budget": _storm(found["storm"]) if "storm" in found else "",
    }
    parts = [
        "# opcancel benchmarks\n",
        "Written by `bench/run`; do not edit by hand. "
        + ("**A `--quick` run: brief checks of the harness, not measurements.**\n" if quick else "\n"),
        setting,
    ]
    for title, section in written.items():
        if section:
            parts.append(section)
        elif title in earlier:
            parts.append(_kept(earlier[title], origin))
    parts.append(CHANGES)
    path.write_text("\n".join(parts))


def _sections(text: str) -> dict[str, str]:
    """A report's ``## `` sections by title, each with its heading."""
    found = {}
    for chunk in re.split(r"^(?=## )", text, flags=re.MULTILINE):
        if chunk.startswith("## "):
            found[chunk.split("\n", 1)[0][3:].strip()] = chunk.rstrip("\n") + "\n"
    return found


_KEPT = re.compile(r"^_Kept from an earlier run: .*_$", re.MULTILINE)


def _origin(setting: str) -> str:
    """The run a Setting section describes, as a kept section names it."""
    command = re.search(r"^- Command: (.*)\.$", setting, flags=re.MULTILINE)
    return command.group(1) if command else "a run whose setting is not recorded"


def _kept(section: str, origin: str) -> str:
    """An earlier run's section, marked with the run it came from (once: a mark already there stays)."""
    if _KEPT.search(section):
        return section
    heading, _, body = section.partition("\n")
    return f"{heading}\n\n_Kept from an earlier run: {origin}._\n{body}"


def _setting(
    command: str,
    elapsed_s: float,
    plan: dict[str, Any],
    pythons: Pythons,
    load_at_start: tuple[float, float, float] | None = None,
) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in pythons.versions(PACKAGES).items())
    # Only bench/run makes the venvs with deploy.sh's runtime; a run as a module uses the harness's Python.
    deployed = ", as deploy.sh deploys them" if pythons.deployed != sys.executable else " (the harness's)"
    return f"""## Setting

- Command: `{command}` ({elapsed_s / 60:.1f} minutes), on {datetime.date.today().isoformat()}.
- Machine: {_cpu()}, {os.cpu_count()} cores, {_memory_gib():.0f} GiB; {platform.system()} {platform.release()}.
- Load: {_load_average(load_at_start)}.
- Python {pythons.python_version("opcancel")} for opcancel and the functions built on it{deployed}; {pythons.python_version("official")} for the official client; the harness on
  {platform.python_version()}. {versions}.
- Google Cloud SDK: {_gcloud_versions()}.
- The Operations API is `devkit/simulator.py` in a process of its own, answering at once; results go
  to Google's Pub/Sub emulator; opcancel uses its embedded SQLite store. Every function runs under
  functions-framework's gunicorn server as the Python runtime starts it, one worker, its default threads,
  with bytecode caches written by an unrecorded first start, as a deployment's build leaves them.
- Interpreters: opcancel and the functions built on it under `{_shown(pythons.deployed)}`, the official
  client under `{_shown(pythons.official)}`. `bench/run` makes these venvs with only what each deploys:
  requirements.txt, and bench/requirements.txt for the official client.
- Plan: {plan}.
"""


def _load_average(at_start: tuple[float, float, float] | None) -> str:
    """The machine's load average (1, 5 and 15 minutes) at the start and the end: work beside the run's
    shares the cores, and ratios measured side by side hold up better than absolute figures then."""
    now = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    start = f"{', '.join(f'{value:.1f}' for value in at_start)} at the start, " if at_start else ""
    return f"load average (1, 5, 15 min) {start}{now} at the end"


def _coldstart(cold: ColdStart) -> str:
    ours, official = (cold.median_ms(name) for name in ("opcancel", "official"))
    ratio = cold.median_ratio("opcancel")
    low, high = cold.ratio_interval("opcancel")
    runs = len(cold.runs["bare"])
    rows = "\n".join(
        f"| {label} | {cold.median_ms(name):.0f} ms | {min(cold.runs[name]) * 1000:.0f}–{max(cold.runs[name]) * 1000:.0f} ms | {cold.median_ratio(name):.2f}× |"
        for name, label in (
            ("bare", "bare functions-framework function (floor)"),
            ("opcancel", "**opcancel** (`main.py`)"),
            ("official", "google-cloud-securitycenter + google-cloud-pubsub (`bench/functions/official.py`)"),
        )
    )
    if cold.cloud_credentials:
        title = "### With credentials from a metadata server, as in a Cloud Function"
        how = (
            "The same, with `K_SERVICE` set and a stand-in metadata server on loopback (`bench/_metadata.py`):\n"
            "opcancel asks it for its token, the official client goes through google-auth's Application Default\n"
            "Credentials, and both send the token with every API call. The bare function authenticates nothing."
        )
    else:
        title = "## Cold start"
        how = f"""From spawning the process to the answer to its first request: a push body naming a fresh operation,
sent the moment the port accepts. opcancel and the official-client function answer only after the
cancel and the get were answered and the result's publish was confirmed. No credentials, as the goal
is set. {runs} rounds, each starting every function once, back to back, after one unrecorded round
that writes the bytecode caches; "÷ floor" is the median of each round's ratio to the bare function,
and the goal's interval a 95% confidence interval for that median (distribution-free: from the
rounds' ratios in order, `bench/_harness.py`, `median_interval`)."""
    return f"""{title}

{how}

| function | median | range | ÷ floor (median of rounds) |
| --- | --- | --- | --- |
{rows}

| goal | result |
| --- | --- |
| at most 1.3× the floor (done: at most 1.5×) | {ratio:.3f}× (95% interval {low:.3f}–{high:.3f}) — {_verdict(ratio <= 1.3, ratio <= 1.5)} |
| faster than the official-client implementation | {ours:.0f} ms vs {official:.0f} ms ({official / ours:.1f}× faster) — {_verdict(ours < official)} |
"""


def _warm(results: WarmResults) -> str:
    concurrencies = sorted(next(iter(results.loads.values())))
    lines = []
    for concurrency in concurrencies:
        for name, label in WARM_ROWS:
            if name not in results.loads:
                continue
            ratio = ""
            if name.startswith("opcancel"):
                low, high = results.ratio_spread(name, "floor", concurrency)
                ratio = f"{results.median_ratio(name, 'floor', concurrency):.0%} ({low:.0%}–{high:.0%})"
            lines.append(
                f"| {concurrency} | {label} | {results.median_rps(name, concurrency):.0f} "
                f"| {results.median_p(name, concurrency, 0.5) * 1000:.1f} ms "
                f"| {results.median_p(name, concurrency, 0.99) * 1000:.1f} ms "
                f"| {results.median_worker_ms(name, concurrency):.2f} ms | {ratio} |"
            )
    rounds = len(results.loads["opcancel"][concurrencies[0]])
    goal_c = 8 if 8 in concurrencies else concurrencies[-1]
    share = results.median_ratio("opcancel", "floor", goal_c)
    p99 = results.median_ratio("opcancel", "floor", goal_c, 0.99)
    budget_goal = ""
    if "opcancel-budget" in results.loads:
        budgeted = results.median_ratio("opcancel-budget", "floor", goal_c)
        budget_goal = (
            f"| with a cancel budget set, below it: at least 80% of the floor handler's requests/s "
            f"| {budgeted:.1%} — {_verdict(budgeted >= 0.8)} |\n"
        )
    worker, master = results.memory_kib["opcancel"]
    instance_mib = (worker + master) / 1024
    errors = {name: results.errors(name) for name in results.loads}
    floor_cpu_ms, ours_cpu_ms = (results.median_worker_ms(name, goal_c) for name in ("floor", "opcancel"))
    warming = {
        name: [load.emulator_ms_per_request for turn_of, load in results.warmup if turn_of == name]
        for name in ("floor", "opcancel")
    }
    emulator_rounds = [results.median_emulator_ms(name, goal_c) for name in ("floor", "opcancel")]
    memory_rows = "\n".join(
        f"| {name} | {w / 1024:.1f} MiB | {m / 1024:.1f} MiB | {(w + m) / 1024:.1f} MiB |"
        for name, (w, m) in results.memory_kib.items()
    )
    variants = ""
    if "opcancel-budget" in results.loads:
        variants = """
opcancel runs three times: without a budget (**opcancel**), with a budget it stays below (`opcancel,
budget set`: `OPCANCEL_CANCEL_BUDGET=10000/1s`, so the budget document holds the last second's cancels,
about as many as the requests per second; the deploy default, 100/1h, holds at most 100), and with its
breaker open (`opcancel, breaker open`: a budget of one, spent in the warm-up, so every request is held
and reported `HELD`). The guard's share is in [The guard's cost per request](#the-guards-cost-per-request).
"""
    return f"""## Warm load

Requests per second and latency through functions-framework, each client thread on one kept-alive
connection as Pub/Sub's push uses, every request naming a fresh operation (claim, cancel, get, result
published, key finished). The floor handler (`bench/functions/floor.py`) makes the same two API calls
and the same publish with the same clients and does nothing else; the bare function is the framework
alone. {rounds} rounds, each loading every function at every concurrency in turn (every other round
in reverse order, so neither follows the other always), after {results.warmup_s:g} s of unrecorded load
on each, in turns of at most {WARMUP_SPELL_S:g} s; figures are medians over rounds, and "opcancel ÷ floor" (and the goals) the median of each
round's ratio, since within a round the two ran one after the other; in parentheses, the middle half
of the rounds' ratios. On this two-core machine the function, the simulator, Google's Pub/Sub
emulator and the load share the cores, so one round's ratio can be far from the median. "Worker CPU"
is what the function's worker process used (user and system, `/proc`), per request. Failed
requests: {errors}.
{variants}
The warm-up is long because of the emulator: its Java JIT makes each publish cheaper for minutes, and
while it is costly every function's share of the cores is smaller. Its CPU per publish under the floor
handler went from {warming["floor"][0]:.1f} ms in the warm-up's first turn to {warming["floor"][-1]:.1f} ms
in its last, and under opcancel from {warming["opcancel"][0]:.1f} to {warming["opcancel"][-1]:.1f} ms; in the
rounds at concurrency {goal_c}, {emulator_rounds[0]:.1f} and {emulator_rounds[1]:.1f} ms.

| concurrency | function | req/s | p50 | p99 | worker CPU | opcancel ÷ floor |
| --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(lines)}

| goal (concurrency {goal_c}) | result |
| --- | --- |
| at least 80% of the floor handler's requests/s | {share:.1%} — {_verdict(share >= 0.8)} |
| p99 no worse than 1.5× the floor handler's | {p99:.2f}× — {_verdict(p99 <= 1.5)} |
{budget_goal}
On Cloud Run an instance has its CPU to itself, and the API and Pub/Sub run elsewhere, so there the
worker's CPU per request bounds what an instance serves. At concurrency {goal_c} opcancel's worker used
{ours_cpu_ms:.2f} ms per request and the floor handler's
{floor_cpu_ms:.2f} ms: per CPU-second, opcancel serves {floor_cpu_ms / ours_cpu_ms:.0%} of
the floor handler's requests. This is context; the goal is set on requests/s as measured above.

### Peak memory of one instance

An instance is gunicorn's master, which imported `main.py` and forked the worker, and the worker,
which serves. Its peak is taken as the worker's peak resident set (VmHWM, after every round above)
plus the memory only the master maps (its pages shared with the worker are already in the worker's).

| function | worker peak RSS | master's private memory | instance |
| --- | --- | --- | --- |
{memory_rows}

| goal | result |
| --- | --- |
| at most 80 MiB (done: at most 100 MiB) | {instance_mib:.1f} MiB — {_verdict(instance_mib <= 80, instance_mib <= 100)} |
"""


WARM_ROWS = (
    ("bare", "bare"),
    ("floor", "floor handler"),
    ("opcancel", "**opcancel**"),
    ("opcancel-budget", "**opcancel, budget set**"),
    ("opcancel-tripped", "opcancel, breaker open (held)"),
)


def _guard_cost(costs: list[Cost], warm: WarmResults | None) -> str:
    rows = "\n".join(
        f"| {c.scenario} | {c.api_calls['cancel']} | {c.publish_calls} | {c.store_reads} / {c.store_writes} "
        f"| {c.guard_reads} / {c.guard_writes} |"
        for c in costs
    )
    latency = ""
    if warm is not None and "opcancel-budget" in warm.loads:
        lines = []
        for concurrency in sorted(warm.loads["opcancel"]):
            for name, label in (("opcancel-budget", "budget set, below it"), ("opcancel-tripped", "breaker open")):
                added = [
                    (warm.median_p(name, concurrency, f) - warm.median_p("opcancel", concurrency, f)) * 1000
                    for f in (0.5, 0.99)
                ]
                cpu = warm.median_worker_ms(name, concurrency) - warm.median_worker_ms("opcancel", concurrency)
                low, high = warm.ratio_spread(name, "opcancel", concurrency)
                lines.append(
                    f"| {concurrency} | {label} | {warm.median_ratio(name, 'opcancel', concurrency):.0%} "
                    f"({low:.0%}–{high:.0%}) | {added[0]:+.1f} ms | {added[1]:+.1f} ms | {cpu:+.2f} ms |"
                )
        latency = f"""
What the guard adds to a warm request, from the warm load above (the same rounds; each figure the
variant's median less opcancel's without a budget, and the requests/s ratio the median of the rounds'
ratios, with the middle half in parentheses). With the breaker open a request makes no API call and is
held: it is cheaper than a cancel, so its figures are what holding costs against cancelling.

| concurrency | opcancel | req/s ÷ without a budget | p50 added | p99 added | worker CPU added |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(lines)}
"""
    return f"""## The guard's cost per request

Counted through the real pipeline, as the cost table above is (`bench/cost.py`, `GUARD_SCENARIOS`), on a
warm instance: each scenario's instance served one request first, uncounted, because an instance reads
the pause (and, with a budget, the budget document) on its first request and then at most every 10 s.
Guard reads and writes are the guard documents' (the budget, the pause, `held/{{key}}`), apart from the
idempotency records'; each is one Firestore request. Below the budget a request reads its held record
(absent) and reads and conditionally writes the budget document (one request at a time here; an
instance's simultaneous requests share one read and one write); held, it writes its held record and
frees its claim; the same request again only reads. Across instances a conditional write of the budget
document can lose a race and is tried again: [the storm](#alert-storm-against-a-cancel-budget) counts
those.

| request | cancel calls | publish calls | record reads / writes | guard reads / writes |
| --- | --- | --- | --- | --- |
{rows}
{latency}"""


def _cost(costs: list[Cost]) -> str:
    rows = "\n".join(
        f"| {c.scenario} | {c.api_calls['cancel']} | {c.api_calls['get']} | {c.publish_calls} "
        f"| {', '.join(f'{n} to {t}' for t, n in sorted(c.messages.items())) or '—'} | {c.store_reads} | {c.store_writes} "
        f"| {2 * c.messages.get('opcancel-checks', 0)} |"
        for c in costs
    )
    return f"""## Cost per cancellation

Counted through the real pipeline (`bench/cost.py`: the simulator in-process, the SQLite store, each
delayed check delivered when due). Store reads and writes are the backend's primitives: on Firestore
each is one request (a write is one `:commit` or create; a replace whose version this process has not
seen costs one more read).

| request | cancel calls | get calls | publish calls | messages | store reads | store writes | Cloud Tasks operations (tasks mode) |
| --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

Cloud Tasks operations are counted from the checks: in tasks mode each check is one task create and
one dispatch, each a billable operation (cloud.google.com/tasks/pricing), and the task's own publish
replaces the function's (the publish calls above then exclude the checks). In redelivery mode each
check instead costs at least one refused delivery: an invocation answered 503 (see the next section).
"""


def _checks(reports: list[ChecksReport]) -> str:
    rows = "\n".join(
        f"| {r.mode} | {r.chains} | {r.results}{'' if r.drained else ' (timed out)'} | {r.checks_scheduled} "
        f"| **{r.deliveries_per_check:.2f}** | **{r.refused_per_cancellation:.2f}** | {r.stale} "
        f"| {r.lateness(0.5):.2f} s | {r.lateness(0.99):.2f} s "
        f"| {_dispatch_lateness(r)} | {r.task_operations_per_cancellation:.1f} | {r.drain_s:.1f} s |"
        for r in reports
    )
    return f"""## Delayed checks: Cloud Tasks beside redelivery

`bench/checks.py`: the local stack (`devkit/local_stack.py`: main.py under functions-framework,
Google's Pub/Sub emulator pushing requests and checks, and in tasks mode the devkit's Cloud Tasks
stand-in) in each mode; every request is published at once, for an operation needing two delayed
checks (due 1 s and 3 s after its cancel). Deliveries per check count every delivery of a check to the
function (run, refused as early, dropped as stale) over the checks scheduled; lateness is when a check
ran (its log line, stamped as written) less its due time.

| mode | chains | results | checks | deliveries per check (goal 1) | refused deliveries per cancellation (goal 0) | stale | lateness p50 | lateness p99 | stand-in dispatch lateness p50 / p99 | task operations per cancellation | time to drain |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

The counts carry over to Google's services: a check as a task is delivered once and never refused;
without a queue every check is refused at least once (the emulator redelivers about every second, so
more often here). The lateness does not. In tasks mode the stand-in publishes on time (its column),
so the rest lies between that publish and the emulator's push of the new message, and in the
function's work; in redelivery mode the emulator's one-second redelivery of a message it already
holds happens to land a check soon after its due time. Neither is how Google's services behave: the emulator pushes a couple of messages at a time and has no
per-subscription push backoff, Pub/Sub does (cloud.google.com/pubsub/docs/push, "Push backoff"), and
the stand-in is not Cloud Tasks. Here the simulator and the stand-in share the benchmark's process.
"""


def _lag(reports: list[LagReport]) -> str:
    durations = sorted({duration for report in reports for duration in report.requested})
    rows = []
    for duration in durations:
        for report in reports:
            ended = report.of(duration)
            if not ended:
                rows.append(
                    f"| {duration} s | {report.policy} | 0 of {report.requested[duration]} | — | — | — | — | — | — | — | — |"
                )
                continue
            rows.append(
                f"| {duration} s | {report.policy} | {len(ended)} of {report.requested[duration]} "
                f"| {report.lag(duration, 0.5):.2f} s | **{report.lag(duration, 0.99):.2f} s** | {report.lag(duration, 1.0):.2f} s "
                f"| {policy_lag(report.polling, duration):.2f} s | {report.per_operation(duration, 'checks'):.1f} "
                f"| {report.per_operation(duration, 'invocations'):.1f} | {report.per_operation(duration, 'task_operations'):.1f} "
                f"| {report.writes_per_operation(duration):.1f} |"
            )
    runs = "\n".join(
        f"| {report.policy} | {_policy_text(report)} | {report.elapsed_s / 60:.1f} min "
        f"| {_spread(report.dispatch_lateness_s)} | {_spread(report.check_turnaround_s)} | {_worst(report)} |"
        for report in reports
    )
    goals = []
    ours = reports[0]
    early = [d for d in durations if d <= 10 and ours.of(d)]
    if early:
        worst = max(ours.lag(d, 0.99) for d in early)
        shown = "; ".join(
            f"{d} s: {ours.lag(d, 0.99):.2f} s, "
            + ("within it" if ours.lag(d, 0.99) <= 3.0 else "over it")
            + f" (median {ours.lag(d, 0.5):.2f} s; {sum(e.lag_s <= 3.0 for e in ours.of(d))} of {len(ours.of(d))} within 3 s)"
            for d in early
        )
        # Where the policy alone overshoots the goal, no platform meets it: say so beside the verdict.
        beyond = "".join(
            f"; out of the policy's reach at {d} s, where it alone gives {policy_lag(ours.polling, d):.2f} s"
            for d in early
            if policy_lag(ours.polling, d) > 3.0
        )
        goals.append(
            f"| lag at most 3 s (p99) for operations that end within 10 s | {shown} — {_verdict(worst <= 3.0)}{beyond} |"
        )
    measured = [d for d in durations if ours.of(d)]
    if measured:
        worst = max(ours.lag(d, 0.99) for d in measured)
        goals.append(f"| lag at most 30 s (p99) for any operation | worst {worst:.2f} s — {_verdict(worst <= 30.0)} |")
    missing = sum(report.requested[d] - len(report.of(d)) for report in reports for d in durations)
    goals.append(f"| every operation ends in its result | {missing} without one — {_verdict(missing == 0)} |")
    goal_rows = "\n".join(goals)
    return f"""## Result lag

`bench/lag.py`: how long after an operation ends its result is published, and what finding out costs. One
local stack per polling policy, both at once (`devkit/local_stack.py` in the Cloud Tasks mode: main.py under
functions-framework on the harness's Python, Google's Pub/Sub emulator pushing requests and checks, the
devkit's Cloud Tasks stand-in dispatching each check's task at its schedule time, the simulator in the
benchmark's process), each sent the same requests: operations of the simulator that end a given time after
their first accepted cancel (`lasts-N-`), after {WARM_UP} unrecorded ones that warm the stack up (a stack's
first checks take seconds). Each duration's requests are published evenly over {reports[0].spread_s:g} s plus
the longest duration less its own (`bench/lag.py`, `schedule`), so every operation ends within that time and
the first seconds of the chains, when their checks are densest, are spread over the whole run. The lag is the result's publish time on the results topic
(Pub/Sub's) less the operation's end (the simulator's cancel time plus its duration). "The policy's own lag"
is what the policy alone gives: the first check at or after the end, with every check taking no time.
Checks are the `get` calls after the immediate one; invocations count the request's delivery, each check's
and any delivery answered with a retry; task operations the creates and dispatch attempts, each billable
(cloud.google.com/tasks/pricing); store writes are counted by replaying a chain with the same number of
checks through the real pipeline and a counting SQLite store (`bench/cost.py`), one write being one
Firestore write. Prices for these counts: [docs/performance.md](../docs/performance.md#polling-cost-and-result-lag).

| operation ends after the cancel | policy | results | lag p50 | lag p99 | lag max | the policy's own lag | checks | invocations | task operations | store writes |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

| goal (the defaults) | result |
| --- | --- |
{goal_rows}

{_reach(ours.polling)}

| policy | settings | run | stand-in dispatch lateness p50 / p99 | a check's turnaround p50 / p99 | the five longest lags less the policy's own (when the operation ended) |
| --- | --- | --- | --- | --- | --- |
{runs}

A check's turnaround is the time from its task's schedule time to the create of the next check's task:
the stand-in's dispatch, the emulator's push, the function's `get`, its store writes and the next create.
Each due time is reckoned from the one before it, not from when that check ran (docs/design.md, "Checks:
scheduling and liveness"), so the turnarounds do not add up along a chain: each check runs later than the
policy's own time by its own delivery only, and an operation's lag is the policy's own plus about one
turnaround (the check that sees the end, and the result's publish), unless the machine stalled. On Google
the turnaround is Cloud Tasks', Pub/Sub's and the function's; it is not measured here. The counts (checks,
invocations, task operations, store writes) carry over, and so does the policy's part of the lag; the
turnaround is this machine's.

**This machine was shared.** Other sessions ran their own tests on the same two cores throughout: the
one-minute load average, sampled every 5 s, was {_load(reports)} during the run. When the machine stalls,
both stacks do: long lags of operations that ended at the same moment under both policies (the last column
above) are the machine's, not the policy's; the medians show the policy and the local stack. Nothing was
retried or left out: every operation's lag is in its row.
"""


def _reach(policy: PollingPolicy, within_s: float = 10.0, goal_s: float = 3.0) -> str:
    """Which end times within ``within_s`` the policy alone sees more than ``goal_s`` late, with the arithmetic."""
    spans = beyond_reach(policy, within_s=within_s, goal_s=goal_s)
    times = ", ".join(_seconds(at) for at in planned_checks(policy, within_s))
    if not spans:
        return (
            f"**The {goal_s:g} s goal is within the policy's reach.** Its checks fall {times} s after the cancel: "
            f"no gap before {within_s:g} s is longer than {goal_s:g} s, so only delivery time can miss it."
        )
    parts, out = [], 0.0
    for one, following in spans:
        last = min(following - goal_s, within_s)
        out += last - one
        closing = "]" if last == within_s else ")"
        parts.append(
            f"one that ends just after the check at {_seconds(one)} s is next seen at {_seconds(following)} s, "
            f"{_seconds(following - one)} s later ({_seconds(following)} − {_seconds(one)}), so every end in "
            f"({_seconds(one)}, {_seconds(last)}{closing} s is seen more than {goal_s:g} s late"
        )
    return (
        f"**Where the {goal_s:g} s goal is out of the policy's reach.** Under the defaults the checks fall {times} s "
        f"after the cancel (0 is the immediate `get`). With every check taking no time at all, "
        + "; ".join(parts)
        + f": {_seconds(out)} s of the first {within_s:g} s of end times, whatever the platform; delivery only adds to it. "
        f"An operation that ends exactly at {within_s:g} s is seen {_seconds(policy_lag(policy, within_s))} s late by the "
        f"policy alone. Meeting the goal for every end within {within_s:g} s needs a policy with no gap longer than "
        f"{goal_s:g} s before {within_s + goal_s:g} s, and more checks for it."
    )


def _seconds(value: float) -> str:
    # The policy's times are short binary fractions (8.125, 13.1875): three decimals show them as they are.
    return f"{round(value, 3):g}"


def _load(reports: list[LagReport]) -> str:
    samples = sorted(reports[0].load) if reports and reports[0].load else []
    if not samples:
        return "not sampled"
    return f"{samples[0]:.1f}–{samples[-1]:.1f} (median {percentile(samples, 0.5):.1f})"


def _worst(report: LagReport) -> str:
    """Where the delivery time went worst: a stall of the machine shows as several at the same moment."""
    beyond = sorted(
        ((ended.lag_s - policy_lag(report.polling, ended.duration_s), ended.ended_s) for ended in report.ended),
        reverse=True,
    )[:5]
    return ", ".join(f"{extra:.1f} s (at {at:.0f} s)" for extra, at in beyond) or "—"


def _policy_text(report: LagReport) -> str:
    policy = report.polling
    return f"first check {policy.initial_delay_s:g} s, ×{policy.multiplier:g}, at most {policy.max_delay_s:g} s"


def _spread(values: list[float]) -> str:
    if not values:
        return "—"
    ordered = sorted(values)
    return f"{percentile(ordered, 0.5):.3f} s / {percentile(ordered, 0.99):.3f} s"


def _dispatch_lateness(report: ChecksReport) -> str:
    if not report.dispatch_lateness_s:
        return "—"
    waits = sorted(report.dispatch_lateness_s)
    return f"{percentile(waits, 0.5):.3f} s / {percentile(waits, 0.99):.3f} s"


def _storm(runs: list[StormReport]) -> str:
    rows = "\n".join(
        f"| {r.store} | {r.requests} | {r.budget} | {r.instances} | **{r.cancels_sent}** | {r.outcomes.get('HELD', 0)} "
        f"| {r.results} | {r.repeats} | {r.breaker_trips} | {r.redeliveries} | {r.to_last_result_s:.1f} s "
        f"| {r.guard_ops_cancelled[0]} / {r.guard_ops_cancelled[1]} | {r.guard_ops_held[0]} / {r.guard_ops_held[1]} "
        f"| {'exact' if r.exact else '**NOT EXACT**'} |"
        for r in runs
    )
    return f"""## Alert storm against a cancel budget

`bench/storm.py`: every request a thread, all released at once, over several pipelines (each its own
store client and guard cache, as Cloud Run instances) sharing one store: Google's Firestore emulator,
or an SQLite file. The Operations API simulator answers in-process. The goal: exactly the budget's
cancels, every other request `HELD`, one result each, one breaker trip. Guard operations are the guard
documents' reads and writes (conditional writes lost to a race included) per request, averaged over the
requests that cancelled and those held; an instance's simultaneous requests count together, so a
count's read and write fall to the request that ran it and the others waiting on it spend none. A
count that lost 64 races in a row has its requests sent again (redeliveries). Results are counted as a
consumer counts them, one per event id (`ce-id`); "repeated results" are publishes of a result already
out, under its same event id, as the SPEC allows (a store write lost after the publish, and the request
sent again). The figures show contention on one document under a storm of simultaneous requests
on this machine's emulator, not Firestore's latency.

| store | requests | budget | instances | cancels sent | held | results | repeated results | breaker trips | redeliveries | to the last result | guard reads / writes, cancelled | guard reads / writes, held | |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rows}
"""


def _chaos(runs: list[tuple[int, ChaosReport]]) -> str:
    rows = "\n".join(
        f"| {r.store} | {r.mode} | {seed} | {r.requests} over {r.operations} | {r.kills} | {sum(n for k, n in r.faults.items() if k.endswith('(crash)'))} "
        f"| {r.api_faults} of {r.api_calls} | {sum(n for k, n in r.faults.items() if k.startswith('store'))} "
        f"| {sum(n for k, n in r.faults.items() if k.startswith('publish'))} "
        f"| **{r.cancelled_twice_otherwise}** (+{r.cancelled_again_after_a_crash_in_the_window} in the window) "
        f"| **{r.without_one_result}** | **{r.wrong_outcome}** | **{r.lost}** | {r.drain_s:.1f} s{'' if r.drained else ' (timed out)'} "
        f"| {r.results_published} / {r.distinct_results} | {_lost_checks(r)} | {r.resumed} | {_takeover(r)} "
        f"| {'clean' if r.clean else '**NOT CLEAN**'} |"
        for seed, r in runs
    )
    crash_points = sorted({k for _, r in runs for k in r.faults})
    fault_rows = "\n".join(
        f"| {point} | " + " | ".join(str(r.faults.get(point, 0)) for _, r in runs) + " |" for point in crash_points
    )
    seeds = " | ".join(f"{r.store}, seed {seed}" for seed, r in runs)
    return f"""## Chaos run

`bench/chaos.py`: every request published 10 times, shuffled, to the requests topic of Google's
Pub/Sub emulator, whose push subscriptions deliver requests and checks to `bench/functions/chaos.py`
(the real pipeline with faulty adapters injected) under functions-framework with 3 gunicorn workers
sharing one store (an SQLite file, or Google's Firestore emulator), a 10 s lease, and API and
publish retry budgets of 2 s. The simulator answers 20% of all calls with 503 or 429 (RetryInfo 1 s)
before they take effect; 10% of store writes and of publishes fail, half of them after taking effect
(the answer is lost); a worker dies on the spot (`os._exit`) with probability 1% after any API
answer, store write or publish; and a random worker is SIGKILLed every 1–3 s. Operations: 50% cancel
at once, 30% need two delayed checks, 10% complete and 10% fail despite the cancel; each must end in
that outcome. Checks: in tasks mode each is a task of the devkit's Cloud Tasks stand-in, which fails
10% of creates (503) and of dispatch attempts and loses 5% of the tasks it accepted; in redelivery mode
5% of check messages are lost. `python -m function resume` runs every 3 s, as Cloud Scheduler would,
and restarts chains whose check is overdue. A takeover is measured from a worker's death (SIGKILL, or dying on the
spot mid-request) to the next claim of each key it held (the lease here is 10 s; deployed, 60 s).

| store | checks | seed | requests | SIGKILLs | in-process deaths | API faults | store faults | publish faults | cancelled more than once | requests without exactly one distinct result | wrong outcome | messages lost | time to drain | results published / distinct | checks lost (tasks: creates failed / dispatches failed / tasks lost) | chains resumed | takeover after a kill, median / max | |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

"Cancelled more than once" counts operations for which the simulator accepted a cancel twice while
the operation ran. The window in parentheses is the one no design can close: a worker killed after
sending its cancel and before the store recorded it leaves nothing saying the cancel got through
(the chaos function logs each cancel sent, refused and recorded, so the run can tell). The next
holder calls `get` first and sends no second cancel if the operation is done; one still running is
cancelled again, because a cancel that was never sent would leave it running (at least once, not at
most once), and a second cancel of a cancelling operation changes nothing. Those are attributed to
the crash that caused them; any other second cancel would be a defect. Messages lost are request
messages never acknowledged; a result published twice carries the same `ce-id`.

Faults injected, by where they struck:

| where | {seeds} |
| --- | {" | ".join("---" for _ in runs)} |
{fault_rows}
"""


def _lost_checks(report: ChaosReport) -> str:
    lost_messages = report.faults.get("check message (lost)", 0)
    if report.mode != "tasks":
        return f"{lost_messages} messages"
    return f"{report.task_creates.get(503, 0)} / {report.task_dispatch_failures} / {report.tasks_lost}"


def _takeover(report: ChaosReport) -> str:
    if not report.takeovers_s:
        return "none needed"
    waits = sorted(report.takeovers_s)
    return f"{percentile(waits, 0.5):.1f} s / {waits[-1]:.1f} s ({len(waits)})"


def _verdict(goal: bool, done: bool | None = None) -> str:
    if goal:
        return "**met**"
    if done:
        return "done-level met, goal missed"
    return "**missed**"


def _shown(python: str) -> str:
    path = pathlib.Path(python).absolute()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _cpu() -> str:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float:
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def _gcloud_versions() -> str:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return "not installed"
    output = subprocess.run([gcloud, "version"], capture_output=True, text=True, timeout=60).stdout
    wanted = [line.strip() for line in output.splitlines() if line.startswith(("Google Cloud SDK", "pubsub-emulator"))]
    return "; ".join(wanted) or "unknown"
