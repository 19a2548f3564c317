"""``cancel --all PARENT``: list every page, show, confirm, publish one request per running operation."""

from __future__ import annotations

import dataclasses
import json

import httpx
import pytest

from function import InboundMessage, OperationRef, PollingPolicy, Settings
from function._names import REGISTRY
from function.cli import Exit
from function.errors import PublishFailed
from tests.cli.test_cli import Rig
from tests.support import MemoryPublisher
from tests.support import Rig as ServiceRig

POLICY = PollingPolicy(initial_delay_s=5.0, multiplier=2.0, max_delay_s=60.0, deadline_s=120.0)
VERTEX_PARENT = "projects/my-proj/locations/us-central1"
VERTEX = f"//aiplatform.googleapis.com/{VERTEX_PARENT}"
DATAPROC_PARENT = "projects/my-proj/regions/us-east1"


def touch(rig: Rig, service: str, parent: str, *operation_ids: str, location: str) -> list[str]:
    """Operations that exist in the simulator, as the API would list them; those calls are then forgotten."""
    names = []
    for operation_id in operation_ids:
        name = f"{parent}/operations/{operation_id}"
        rig.clients.api.get(OperationRef(name, location, "v1", REGISTRY.require(service)))
        names.append(name)
    rig.simulator.calls.clear()
    return names


def published(rig: Rig) -> list[dict]:
    return [json.loads(data) for data, _ in rig.publisher.on("opcancel-requests")]


@pytest.fixture
def rig() -> Rig:
    rig = Rig()
    rig.simulator.default_page_size = 2
    return rig


def test_every_page_is_read_and_one_request_per_running_operation_is_published(rig):
    names = touch(rig, "aiplatform", VERTEX_PARENT, "1", "2", "3", "4", "5", location="us-central1")
    result = rig.run("cancel", "--all", VERTEX, "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout == "".join(f"cancel //aiplatform.googleapis.com/{name}\n" for name in names)
    assert "5 running operation(s) under" in result.stderr
    assert "published 5 cancel request(s) to projects/test-project/topics/opcancel-requests" in result.stderr
    # Three pages of two, each asked for with the token the one before gave.
    assert [call.path for call in rig.simulator.calls] == [f"/v1/{VERTEX_PARENT}/operations"] * 3
    assert [call.query for call in rig.simulator.calls] == ["", "pageToken=page-2", "pageToken=page-4"]
    assert published(rig) == [
        {"operation": f"//aiplatform.googleapis.com/{name}", "api_version": "v1"} for name in names
    ]
    # One message each, so the function gives each its own key and result.
    assert len(rig.publisher.on("opcancel-requests")) == 5


def test_the_published_requests_are_what_the_function_cancels_each_with_its_own_key_and_result(rig):
    names = touch(rig, "dataproc", DATAPROC_PARENT, "a", "b", "c", location="us-east1")
    assert rig.run("cancel", "--all", f"//dataproc.googleapis.com/{DATAPROC_PARENT}", "--yes").exit_code == 0
    function = ServiceRig()
    for index, (data, attributes) in enumerate(rig.publisher.on("opcancel-requests")):
        function.service.handle(InboundMessage(data=data, attributes=attributes, message_id=f"p-{index}"))
    results = function.publisher.results()
    assert sorted((r["operation"], r["outcome"], r["idempotency_key"], r["service"]) for r in results) == [
        (name, "CANCELLED", f"//dataproc.googleapis.com/{name}", "dataproc.googleapis.com") for name in names
    ]


def test_dry_run_prints_what_it_would_cancel_and_publishes_nothing(rig):
    names = touch(rig, "aiplatform", VERTEX_PARENT, "1", "2", "3", location="us-central1")
    result = rig.run("cancel", "--all", VERTEX, "--dry-run")
    assert result.exit_code == 0
    assert result.stdout == "".join(f"cancel //aiplatform.googleapis.com/{name}\n" for name in names)
    assert rig.publisher.messages == []
    assert [call.method for call in rig.simulator.calls] == ["GET", "GET"]


def test_dry_run_needs_no_project_to_publish_to():
    rig = Rig(settings=Settings(polling=POLICY))
    rig.clients = dataclasses.replace(rig.clients, publisher=None)
    touch(rig, "aiplatform", VERTEX_PARENT, "1", location="us-central1")
    assert rig.run("cancel", "--all", VERTEX, "--dry-run").exit_code == 0
    result = rig.run("cancel", "--all", VERTEX, "--yes")
    assert result.exit_code == Exit.BAD_CONFIGURATION
    assert rig.simulator.calls[-1].path.endswith("/operations") and len(rig.simulator.calls) == 1


def test_operations_already_done_are_left_alone_and_the_filter_goes_to_the_api(rig):
    touch(rig, "aiplatform", VERTEX_PARENT, "done-1", "run-2", location="us-central1")
    result = rig.run("cancel", "--all", VERTEX, "--yes")
    assert result.stdout == f"cancel {VERTEX}/operations/run-2\n"
    assert "1 running operation(s)" in result.stderr and "1 already done, left alone" in result.stderr
    rig.simulator.calls.clear()
    rig.run("cancel", "--all", VERTEX, "--filter", "done=false", "--dry-run")
    assert rig.simulator.calls[0].query == "filter=done%3Dfalse"


def test_without_yes_and_without_a_terminal_it_refuses_with_exit_2(rig):
    touch(rig, "aiplatform", VERTEX_PARENT, "1", location="us-central1")
    result = rig.run("cancel", "--all", VERTEX)
    assert result.exit_code == 2
    assert "no terminal to confirm on: pass --yes" in result.stderr
    assert rig.publisher.messages == []


def test_on_a_terminal_it_asks_and_publishes_only_on_yes():
    rig = Rig(terminal=True)
    touch(rig, "aiplatform", VERTEX_PARENT, "1", "2", location="us-central1")
    declined = rig.run("cancel", "--all", VERTEX, input="n\n")
    assert declined.exit_code == 1
    assert "Publish 2 cancel request(s) to opcancel-requests?" in declined.stderr
    assert rig.publisher.messages == []
    accepted = rig.run("cancel", "--all", VERTEX, input="y\n")
    assert accepted.exit_code == 0
    assert len(published(rig)) == 2


def test_more_matches_than_max_publish_nothing_and_stop_listing(rig):
    touch(rig, "aiplatform", VERTEX_PARENT, "1", "2", "3", "4", "5", location="us-central1")
    result = rig.run("cancel", "--all", VERTEX, "--max", "2", "--yes")
    assert result.exit_code == Exit.REJECTED
    assert "more than 2 running operations under" in result.stderr and "nothing published" in result.stderr
    assert rig.publisher.messages == []
    # The third match is on the second page: the third page is never asked for.
    assert len(rig.simulator.calls) == 2
    assert rig.run("cancel", "--all", VERTEX, "--max", "5", "--yes").exit_code == 0
    assert len(published(rig)) == 5


def test_security_command_center_parents_keep_their_location_and_version(rig):
    rig.touch("a", "b", "c")
    result = rig.run("cancel", "--all", "organizations/1", "--location", "eu", "--yes")
    assert result.exit_code == 0
    assert result.stdout == "".join(f"cancel organizations/1/operations/{op}\n" for op in "abc")
    assert rig.simulator.calls[0].path == "/v2/organizations/1/operations"
    assert published(rig)[0] == {"operation": "organizations/1/operations/a", "location": "eu", "api_version": "v2"}


def test_a_listed_name_opcancel_would_not_accept_is_skipped_and_said():
    page = {
        "operations": [
            {"name": f"{VERTEX_PARENT}/operations/ok"},
            {"name": f"{VERTEX_PARENT}/datasets/d/operations/nested"},
            {"name": "projects/other-proj/locations/us-central1/operations/elsewhere"},
            {"name": f"{VERTEX_PARENT}/operations/\x1b[31m"},
            {"done": False},
        ]
    }
    rig = Rig(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=page)))
    result = rig.run("cancel", "--all", VERTEX, "--yes")
    assert result.exit_code == 0
    assert result.stdout == f"cancel {VERTEX}/operations/ok\n"
    assert "skipped projects/my-proj/locations/us-central1/datasets/d/operations/nested" in result.stderr
    assert f"skipped projects/other-proj/locations/us-central1/operations/elsewhere: not under {VERTEX_PARENT}" in (
        result.stderr
    )
    assert "\x1b" not in result.stderr and "\\x1b[31m" in result.stderr
    assert "skipped an operation without a name" in result.stderr
    assert published(rig) == [{"operation": f"{VERTEX}/operations/ok", "api_version": "v1"}]


def test_the_allow_list_and_the_registry_apply_to_the_parent_before_any_call():
    rig = Rig(settings=Settings(project="p", polling=POLICY, allowed_parents=("projects/other-proj",)))
    result = rig.run("cancel", "--all", VERTEX, "--yes")
    assert result.exit_code == Exit.REJECTED
    assert f"{VERTEX} is not in OPCANCEL_ALLOWED_PARENTS" in result.stderr
    unknown = rig.run("cancel", "--all", "//compute.googleapis.com/projects/my-proj", "--yes")
    assert unknown.exit_code == Exit.REJECTED and "is not in the registry" in unknown.stderr
    bare = rig.run("cancel", "--all", "projects/my-proj", "--yes")
    assert bare.exit_code == Exit.REJECTED and "use its full resource name" in bare.stderr
    assert rig.simulator.calls == []


class FailingSecondPublish(MemoryPublisher):
    """Confirms the first publish call and fails every later one, as an outage mid-way would."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def publish_all(self, topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> list[str]:
        self.sizes.append(len(messages))
        if len(self.sizes) > 1:
            raise PublishFailed(f"publish to {topic} failed: injected")
        return super().publish_all(topic, messages)


def test_a_publish_that_fails_part_way_says_how_many_went_and_that_repeating_is_safe():
    rig = Rig(publisher=FailingSecondPublish())
    rig.simulator.default_page_size = 1000
    touch(rig, "aiplatform", VERTEX_PARENT, *(f"op-{i}" for i in range(150)), location="us-central1")
    result = rig.run("cancel", "--all", VERTEX, "--yes")
    assert result.exit_code == Exit.PUBLISH_FAILED
    assert "100 of 150 requests were published first" in result.stderr and "safe" in result.stderr
    assert rig.publisher.sizes == [100, 50]
    assert len(published(rig)) == 100


@pytest.mark.parametrize(
    "args",
    [
        ["cancel"],
        ["cancel", "organizations/1/operations/a", "--all", "organizations/1"],
        ["cancel", "--all", "organizations/1", "--wait"],
        ["cancel", "--all", "organizations/1", "--json"],
        ["cancel", "organizations/1/operations/a", "--dry-run"],
        ["cancel", "organizations/1/operations/a", "--max", "3"],
        ["cancel", "--all", "organizations/1", "--max", "0"],
    ],
)
def test_misused_options_are_usage_errors(rig, args):
    assert rig.run(*args).exit_code == 2
    assert rig.simulator.calls == []


def test_list_reads_another_services_parent_at_its_regional_host():
    rig = Rig()
    names = touch(rig, "dataproc", DATAPROC_PARENT, "x", location="us-east1")
    result = rig.run("list", f"//dataproc.googleapis.com/{DATAPROC_PARENT}")
    assert result.stdout == f"RUNNING   {names[0]}\n"
    assert rig.simulator.calls[0].path == f"/v1/{DATAPROC_PARENT}/operations"
    located = rig.run("list", f"//dataproc.googleapis.com/{DATAPROC_PARENT}", "--location", "eu")
    assert located.exit_code == Exit.REJECTED and "--location applies to organizations/ORG parents" in located.stderr


def test_cancel_and_get_take_another_services_name_and_show_it_whole(rig):
    name = "projects/my-proj/regions/europe-west1/operations/x"
    result = rig.run("cancel", f"https://europe-west1-dataproc.googleapis.com/v1/{name}")
    assert (result.exit_code, result.stdout) == (0, f"CANCELLED //dataproc.googleapis.com/{name}\n")
    report = json.loads(rig.run("cancel", f"//dataproc.googleapis.com/{name}", "--json").stdout)
    assert (report["operation"], report["service"], report["location"]) == (
        name,
        "dataproc.googleapis.com",
        "europe-west1",
    )
    assert rig.run("get", f"//dataproc.googleapis.com/{name}").stdout == f"CANCELLED {name}\n"
    assert [call.path for call in rig.simulator.calls][:2] == [f"/v1/{name}:cancel", f"/v1/{name}"]


def test_one_match_past_a_max_of_one_reads_as_english(rig):
    touch(rig, "aiplatform", VERTEX_PARENT, "1", "2", location="us-central1")
    result = rig.run("cancel", "--all", VERTEX, "--max", "1", "--yes")
    assert result.exit_code == Exit.REJECTED
    assert f"more than 1 running operation under {VERTEX} matches; nothing published" in result.stderr


def test_a_bare_projects_parent_is_shown_a_parent_to_use():
    result = Rig().run("cancel", "--all", "projects/my-proj", "--dry-run")
    assert result.exit_code == Exit.REJECTED
    assert "a projects/... parent does not say which API" in result.stderr
    assert result.stderr.rstrip().endswith("e.g. //aiplatform.googleapis.com/projects/P/locations/L")
