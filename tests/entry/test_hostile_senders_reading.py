"""Hostile senders, round 2 (issue 20): reading in linear time, bounded outputs and hostile API answers,
each case through the entry points.

Work per message is bounded by CPU time, not wall-clock time: ``cpu_bounded`` arms a profiling timer
(``ITIMER_PROF``, which counts only this process's CPU, so other work on the machine does not make it
fire) and stops the request when it runs out. The bound is generous, 5 s for a 1 MiB body that reads in
a few tenths of a second, so it never flakes, and it still tells linear from quadratic: the quadratic
reader this replaces spent about 37 minutes on the same body. Python's regex engine checks for signals
as it runs, so even a regex that never ends is stopped.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sqlite3
import sys
import unicodedata
from collections.abc import Callable, Iterator

import httpx
import pytest
from cloudevents.http import CloudEvent

from devkit.simulator import Simulator
from function import Runtime, Settings, SqliteStore
from function._parsing import MAX_BODY_BYTES
from tests.entry.test_entrypoints import load_wired, post_event, pubsub_event
from tests.support import TEST_POLICY, Rig, checks_source

#: CPU seconds one message may take: over ten times what the slowest 1 MiB shape needs.
CPU_BOUND_S = 5.0


class WorkUnbounded(BaseException):
    """Raised by the CPU timer; not an ``Exception``, so no handler on the way to the test swallows it."""


@contextlib.contextmanager
def cpu_bounded(seconds: float = CPU_BOUND_S) -> Iterator[None]:
    """Stop the work inside once it has used ``seconds`` of this process's CPU."""

    def stop(signum: int, frame: object) -> None:
        raise WorkUnbounded(f"more than {seconds} s of CPU for one message")

    previous = signal.signal(signal.SIGPROF, stop)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def filled(head: str, unit: str, tail: str = "", size: int = MAX_BODY_BYTES) -> bytes:
    """``head``, then ``unit`` repeated, then ``tail``: a body of at most ``size`` bytes."""
    return (head + unit * ((size - len(head) - len(tail)) // len(unit)) + tail).encode()


#: Bodies of the 1 MiB limit that cost the old reader quadratic time, or that any reader might stumble on.
CRAFTED = {
    "escaped-quotes-unterminated": filled('{"', '\\"'),
    "escaped-quotes-in-an-operation": filled('{"operation": "', '\\"'),
    "escape-run-unterminated": filled('{"operation": "', "\\\\"),
    "escaped-quotes-terminated": filled('{"operation": "', '\\"', '"}'),
    "quotes": filled("{", '"'),
    "brackets-in-an-unterminated-string": filled('{"', "["),
    "quote-bracket-backslash": filled("", '["\\'),
    "deep-nesting": filled("", "["),
}
SHAPE = CRAFTED["escaped-quotes-unterminated"]


# 1. Reading is linear: every crafted body, however framed, is answered within the CPU bound.


@pytest.mark.parametrize("body", CRAFTED.values(), ids=CRAFTED.keys())
def test_a_crafted_1mib_json_body_is_answered_in_bounded_work(body):
    client, rig = load_wired("on_http", "http")
    with cpu_bounded():
        response = client.post("/", data=body, content_type="application/json")
    assert response.status_code in (202, 400)
    assert rig.simulator.calls == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/cloudevents+json"},
        {"Content-Type": "application/json", "ce-specversion": "1.0", "ce-type": "t", "ce-source": "//s", "ce-id": "1"},
        {"Content-Type": "application/json", "ce-specversion": "1.0"},
        {"Content-Type": "application/cloudevents+jsonx", "ce-specversion": "1.0", "ce-type": "t"},
    ],
    ids=["text", "structured-cloudevent", "binary-cloudevent", "partial-ce-headers", "odd-type-partial-headers"],
)
def test_a_crafted_1mib_body_is_answered_in_bounded_work_however_it_is_framed(headers):
    client, rig = load_wired("on_http", "http")
    with cpu_bounded():
        response = client.post("/", data=SHAPE, headers=headers)
    assert response.status_code in (202, 400)
    assert rig.simulator.calls == [] and rig.publisher.messages == []


@pytest.mark.parametrize("target", ["on_event", "on_request", "on_check"])
def test_crafted_pubsub_data_is_acknowledged_in_bounded_work(target):
    client, rig = load_wired(target, "cloudevent")
    source = checks_source() if target == "on_check" else "//pubsub.googleapis.com/projects/p/topics/t"
    with cpu_bounded():
        response = post_event(client, pubsub_event(SHAPE, source=source))
    assert response.status_code == 200
    assert rig.simulator.calls == [] and rig.publisher.messages == []
    reasons = [line.get("reason", "") for line in rig.logs()]
    assert any("not valid JSON" in reason for reason in reasons), reasons


def test_crafted_cloudevent_data_to_on_event_is_acknowledged_in_bounded_work():
    client, rig = load_wired("on_event", "cloudevent")
    event = CloudEvent({"type": "com.example.cancel", "source": "//example", "id": "1"}, SHAPE)
    with cpu_bounded():
        response = post_event(client, event)
    assert response.status_code == 200
    assert rig.simulator.calls == [] and rig.publisher.messages == []


def test_the_cpu_bound_stops_a_regex_that_backtracks_for_ever():
    # The guard itself: a pattern that takes exponential time is stopped, so the tests above can fail.
    with pytest.raises(WorkUnbounded), cpu_bounded(0.2):
        re.fullmatch(r"(a|aa)+b", "a" * 200)


# 8. Partial ce- header sets: the body is still read by opcancel's reader, never by the cloudevents library's.

DEEP = b"[" * 200_000
CE_HEADERS = {"ce-specversion": "1.0", "ce-type": "t", "ce-source": "//s", "ce-id": "1"}
#: Each set the cloudevents library takes for a structured event, reading the body itself.
PARTIAL_CE_HEADERS = [
    *(
        {name: value for name, value in CE_HEADERS.items() if name != left_out}
        for left_out in ("ce-type", "ce-source", "ce-id")
    ),
    {"ce-specversion": "1.0"},
]


@pytest.mark.parametrize(
    "headers",
    [
        *({"Content-Type": "application/json", **partial} for partial in PARTIAL_CE_HEADERS),
        {"Content-Type": "text/plain", "ce-specversion": "1.0"},
        {"Content-Type": "application/cloudevents+json; charset=utf-8", "ce-specversion": "1.0"},
        # All four headers, and a media type the library takes for a structured event while opcancel does not.
        {"Content-Type": "application/cloudevents+jsonx", **CE_HEADERS},
    ],
    ids=["no-type", "no-source", "no-id", "specversion-only", "text", "structured-type", "odd-structured-type"],
)
def test_deep_nesting_with_partial_ce_headers_is_a_clear_400(headers):
    client, rig = load_wired("on_http", "http")
    response = client.post("/", data=DEEP, headers=headers)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "nested" in response.get_json()["error"]
    assert rig.simulator.calls == [] and rig.publisher.messages == []


def test_a_request_with_partial_ce_headers_is_a_400_naming_what_is_missing():
    client, rig = load_wired("on_http", "http")
    response = client.post("/", json={"operation": "organizations/1/operations/a"}, headers={"ce-specversion": "1.0"})
    assert response.status_code == 400
    assert "malformed CloudEvent" in response.get_json()["error"]
    assert rig.simulator.calls == []


def test_a_binary_cloudevent_keeps_its_data_and_attributes():
    client, rig = load_wired("on_http", "http")
    headers = {**CE_HEADERS, "ce-id": "event-7", "Content-Type": "text/plain"}
    response = client.post("/", data=b"organizations/1/operations/binary-7", headers=headers)
    assert response.status_code == 202
    (result,) = rig.publisher.results()
    assert (result["outcome"], result["source"]["message_id"]) == ("CANCELLED", "event-7")


# Hostile API answers: a stand-in that answers some calls itself and passes the rest to the simulator.

NAME = "organizations/1/operations/hostile-answers"


class Answering(httpx.BaseTransport):
    """The simulator, except for the calls ``answer`` answers itself (it returns None to pass one on)."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response | None]) -> None:
        self.answer = answer
        self.simulator = Simulator()
        self._simulator = httpx.WSGITransport(app=self.simulator)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.answer(request) or self._simulator.handle_request(request)


def once(response: httpx.Response, method: str = "POST") -> Callable[[httpx.Request], httpx.Response | None]:
    """Answer the first ``method`` call with ``response``; everything after goes to the simulator."""
    left = [response]

    def answer(request: httpx.Request) -> httpx.Response | None:
        return left.pop() if left and request.method == method else None

    return answer


def serve(target: str, signature: str, rig: Rig):
    """The wired function serving ``rig``."""
    client, _ = load_wired(target, signature)
    module = sys.modules["wired"]
    module.rig, module.runtime = rig, Runtime(rig.service, log=rig.log, project=rig.settings.project)
    return client


def rate_limited(retry_delay: object = None, retry_after: str | None = None) -> httpx.Response:
    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}]
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow down", "details": details}}
    # Bytes, as a server may send them: httpx takes only ASCII text for a header value.
    headers = {"retry-after": retry_after.encode()} if retry_after is not None else {}
    return httpx.Response(429, content=json.dumps(body).encode(), headers=headers)


# 4. Retry hints: honoured up to ten minutes, malformed ones ignored.

MALFORMED_HINTS = {
    "superscript-two": rate_limited(retry_after="\u00b2"),
    "arabic-indic-digits": rate_limited(retry_after="\u0661\u0662"),
    "hundreds-of-digits": rate_limited(retry_delay="9" * 400 + "s"),
    "infinity": rate_limited(retry_delay="Infinitys"),
    "exponent": rate_limited(retry_delay="1e999s"),
    "negative": rate_limited(retry_delay="-30s"),
    "not-a-string": rate_limited(retry_delay={"seconds": 30}),
}


@pytest.mark.parametrize("answer", MALFORMED_HINTS.values(), ids=MALFORMED_HINTS.keys())
def test_a_malformed_retry_hint_is_ignored_and_the_key_is_free_for_the_retry(answer):
    transport = Answering(once(answer))
    rig = Rig(simulator=transport.simulator, transport=transport)
    client = serve("on_http", "http", rig)
    response = client.post("/", json={"operation": NAME})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "10"  # opcancel's own default, as with no hint
    assert response.get_json()["retry"][0]["detail"] == "api_unavailable"
    rig.clock.advance(10)
    (item,) = client.post("/", json={"operation": NAME}).get_json()["accepted"]
    assert (item["status"], item["outcome"]) == ("accepted", "CANCELLED")


@pytest.mark.parametrize(
    "answer",
    [rate_limited(retry_delay="99999999999s"), rate_limited(retry_after="99999999999")],
    ids=["retry-info", "retry-after"],
)
def test_a_long_retry_hint_keeps_the_key_at_most_ten_minutes(answer):
    transport = Answering(once(answer))
    rig = Rig(simulator=transport.simulator, transport=transport)
    client = serve("on_http", "http", rig)
    response = client.post("/", json={"operation": NAME})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "600"
    rig.clock.advance(300)
    busy = client.post("/", json={"operation": NAME})
    assert (busy.status_code, busy.get_json()["retry"][0]["detail"]) == (503, "key_busy")
    rig.clock.advance(300)
    (item,) = client.post("/", json={"operation": NAME}).get_json()["accepted"]
    assert (item["status"], item["outcome"]) == ("accepted", "CANCELLED")


def sqlite_rig(tmp_path, transport: Answering) -> Rig:
    settings = Settings(project="test-project", polling=TEST_POLICY, store="memory")
    store = SqliteStore(str(tmp_path / "records.db"), lease_s=settings.lease_s, ttl_s=settings.record_ttl_s)
    return Rig(settings=settings, store=store, simulator=transport.simulator, transport=transport)


def stored_bodies(tmp_path) -> list[str]:
    with contextlib.closing(sqlite3.connect(tmp_path / "records.db")) as connection:
        return [row[0] for row in connection.execute("SELECT body FROM records")]


def strict_json(text: str | bytes) -> object:
    """JSON as a strict reader takes it: no NaN or Infinity."""

    def refuse(constant: str) -> object:
        raise AssertionError(f"{constant} in {text[:200]!r}")

    return json.loads(text, parse_constant=refuse)


def test_a_retry_hint_of_hundreds_of_digits_leaves_the_sqlite_store_readable(tmp_path):
    transport = Answering(once(rate_limited(retry_delay="9" * 400 + "s")))
    rig = sqlite_rig(tmp_path, transport)
    client = serve("on_http", "http", rig)
    assert client.post("/", json={"operation": NAME}).status_code == 503
    for body in stored_bodies(tmp_path):
        strict_json(body)
    resume = serve("on_resume", "http", rig)
    response = resume.post("/")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["overdue"] == []


# 5. Numbers JSON cannot hold: never in a record or an event.

INFINITE_OPERATION = (
    b'{"name": "organizations/1/operations/hostile-answers", "done": true,'
    b' "metadata": {"@type": "type.googleapis.com/x", "progress": 1e999, "low": -1e999, "ok": 0.5},'
    b' "error": {"code": 1, "message": "cancelled"}}'
)


def test_an_operation_with_1e999_reaches_the_result_and_the_store_as_strict_json(tmp_path):
    transport = Answering(once(httpx.Response(200, content=INFINITE_OPERATION), method="GET"))
    rig = sqlite_rig(tmp_path, transport)
    client = serve("on_http", "http", rig)
    (item,) = client.post("/", json={"operation": NAME}).get_json()["accepted"]
    assert item["outcome"] == "CANCELLED"
    ((data, _),) = rig.publisher.on("opcancel-results")
    result = strict_json(data)
    assert result["final_operation"]["metadata"] == {
        "@type": "type.googleapis.com/x",
        "progress": "Infinity",
        "low": "-Infinity",
        "ok": 0.5,
    }
    for body in stored_bodies(tmp_path):
        strict_json(body)
    assert serve("on_resume", "http", rig).post("/").status_code == 200


def test_a_request_deadline_of_1e999_is_rejected_not_stored():
    client, rig = load_wired("on_http", "http")
    response = client.post(
        "/", data=f'{{"operation": "{NAME}", "deadline_seconds": 1e999}}', content_type="application/json"
    )
    (item,) = response.get_json()["rejected"]
    assert "deadline_seconds" in item["error"]
    for data, _ in rig.publisher.on("opcancel-results"):
        strict_json(data)


# 3. A huge Operation: the result and the record keep at most 64 KiB of it.

FINAL_OPERATION_LIMIT = 64 * 1024
HUGE_METADATA = {"@type": "type.googleapis.com/google.cloud.Huge", "rows": ["x" * 1000] * 6400}


def operation_answer(**fields: object) -> httpx.Response:
    return httpx.Response(200, content=json.dumps({"name": NAME, "done": True, **fields}).encode())


@pytest.mark.parametrize(
    ("fields", "kept"),
    [
        (
            {"metadata": HUGE_METADATA, "error": {"code": 1, "message": "cancelled"}},
            {"error": {"code": 1, "message": "cancelled"}, "metadata": {"@type": HUGE_METADATA["@type"]}},
        ),
        (
            {"metadata": {"@type": "t"}, "error": {"code": 1, "message": "m" * 2_000_000, "details": [{"a": "b"}]}},
            {"error": {"code": 1, "message": "m" * 1024}, "metadata": {"@type": "t"}},
        ),
        ({"response": {"rows": ["y" * 1000] * 100}}, {}),
    ],
    ids=["huge-metadata", "huge-error", "huge-response"],
)
def test_a_huge_final_operation_is_cut_to_what_tells_how_it_ended(tmp_path, fields, kept):
    transport = Answering(once(operation_answer(**fields), method="GET"))
    rig = sqlite_rig(tmp_path, transport)
    client = serve("on_http", "http", rig)
    (item,) = client.post("/", json={"operation": NAME}).get_json()["accepted"]
    ((data, _),) = rig.publisher.on("opcancel-results")
    result = strict_json(data)
    assert result["final_operation"] == {"name": NAME, "done": True, **kept, "truncated": True}
    assert len(json.dumps(result["final_operation"], separators=(",", ":"))) <= FINAL_OPERATION_LIMIT
    assert len(data) < FINAL_OPERATION_LIMIT + 4096
    assert all(len(body) < FINAL_OPERATION_LIMIT + 4096 for body in stored_bodies(tmp_path))
    # The stored (cut) result reads back: a duplicate reports its outcome.
    (duplicate,) = client.post("/", json={"operation": NAME}).get_json()["accepted"]
    assert (duplicate["status"], duplicate["outcome"]) == ("duplicate", item["outcome"])


def test_a_final_operation_within_64_kib_is_relayed_whole(tmp_path):
    metadata = {"@type": "t", "rows": ["z" * 1000] * 60}
    transport = Answering(once(operation_answer(metadata=metadata, error={"code": 1}), method="GET"))
    rig = sqlite_rig(tmp_path, transport)
    client = serve("on_http", "http", rig)
    client.post("/", json={"operation": NAME})
    (result,) = rig.publisher.results()
    assert result["final_operation"] == {"name": NAME, "done": True, "metadata": metadata, "error": {"code": 1}}


# 9. on_check: every field it echoes into a log line, the event's source included, bounded and escaped.

ECHO_LIMIT = 256
HOSTILE_TEXT = "a\ud800b\u2028c\u2029d\u202ee\x1b[31mf\x00g\\h"


def assert_echo_safe(text: str) -> None:
    assert len(text) <= ECHO_LIMIT, len(text)
    assert not [ch for ch in text if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")], ascii(text[:300])


@pytest.mark.parametrize(
    "source",
    ["//pubsub.googleapis.com/projects/p/topics/t" + "x" * 300_000 + "\u202e", HOSTILE_TEXT, checks_source()],
    ids=["long-source", "hostile-source", "checks-topic"],
)
def test_on_check_logs_every_echoed_field_bounded_and_escaped(source):
    client, rig = load_wired("on_check", "cloudevent")
    check = {"operation": "organizations/1/operations/" + HOSTILE_TEXT * 50, "attempt": HOSTILE_TEXT}
    response = post_event(client, pubsub_event(json.dumps(check).encode(), source=source, message_id=HOSTILE_TEXT * 50))
    assert response.status_code == 200
    assert rig.simulator.calls == [] and rig.publisher.messages == []
    lines = rig.logs()
    assert lines
    for line in lines:
        for field in ("event_source", "reason", "message_id", "operation", "error"):
            if field in line:
                assert_echo_safe(line[field])
        assert len(json.dumps(line)) < 4096


# 10. Listing stops: a repeated page token ends it, and 1,000 pages is as far as `list` and `cancel --all` read.


class EndlessPages:
    """An API whose every page is empty and names a next page: t1, t2, … (or, from ``repeat_at``, t1 again)."""

    def __init__(self, repeat_at: int | None = None) -> None:
        self.requests = 0
        self.repeat_at = repeat_at

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        token = 1 if self.repeat_at is not None and self.requests >= self.repeat_at else self.requests
        return httpx.Response(200, json={"operations": [], "nextPageToken": f"t{token}"})


@pytest.mark.parametrize(
    "command",
    [["list", "organizations/1"], ["cancel", "--dry-run", "--all", "organizations/1"]],
    ids=["list", "cancel-all"],
)
def test_a_listing_with_endless_page_tokens_gives_up_after_1000_pages(command):
    from function.cli import Exit
    from tests.cli.test_cli import Rig as CliRig

    api = EndlessPages()
    with cpu_bounded(60.0):
        result = CliRig(transport=httpx.MockTransport(api)).run(*command)
    assert result.exit_code == Exit.API_UNAVAILABLE
    assert "gave up after 1000 pages" in result.stderr and "the listing is incomplete" in result.stderr
    assert api.requests == 1000


def test_a_page_token_handed_back_again_ends_the_listing():
    from function.cli import Exit
    from tests.cli.test_cli import Rig as CliRig

    api = EndlessPages(repeat_at=5)
    result = CliRig(transport=httpx.MockTransport(api)).run("list", "organizations/1")
    assert result.exit_code == Exit.API_UNAVAILABLE
    assert "repeated a page token" in result.stderr
    assert api.requests == 5
