"""Google's published contract: the registry promises only what the discovery documents define, each cancel
sends the body its method takes, and the one checker refuses what Google's schemas refuse."""

from __future__ import annotations

import io
import json

import httpx
import pytest

from devkit.discovery import CITED_HOSTS, LEDGER, Contract, Violation
from function import AnonymousAuth, Logger, OperationRef, OperationsClient, Settings, parse_name
from function._names import BUILTIN_SERVICES, GLOBAL, SCC_SERVICE, SHAPES, OperationParent, parse_parent
from function.errors import ConfigError, InvalidRequest
from tests.support import FakeClock

CONTRACT = Contract.load()
#: A sample location for each shape: the regional host of a place the documents list, or global.
SAMPLE_PLACE = {"aiplatform": "us-central1", "dataproc": "us-central1", "documentai": "us"}


def sample(shape: str, place: str) -> str:
    return {
        "organizations": "organizations/123",
        "projects": "projects/my-proj",
        "locations": f"projects/my-proj/locations/{place}",
        "regions": f"projects/my-proj/regions/{place}",
    }[shape]


def documented(service, version: str, http_method: str, path: str, host: str) -> str | None:
    """The id of the documented method this call is, or None."""
    document = CONTRACT.document(service.name, version)
    assert document is not None, f"no discovery document for {service.name} {version}"
    found = [m.id for d, m in CONTRACT.methods_for(http_method, path, host) if d is document]
    return found[0] if found else None


# --- the registry walks against the documents ---------------------------------------------------


@pytest.mark.parametrize("service", BUILTIN_SERVICES, ids=lambda service: service.name)
def test_each_registry_entry_takes_exactly_the_shapes_versions_and_hosts_its_documents_define(service):
    place = SAMPLE_PLACE.get(service.name, "us-central1")
    for version in service.versions:
        document = CONTRACT.document(service.name, version)
        assert document is not None, f"{service.name} {version} has no discovery document"
        cancels, lists = set(), set()
        for shape in SHAPES:
            if (shape == "organizations") != service.is_scc:
                continue
            location = GLOBAL if shape in ("organizations", "projects") else place
            host = service.host_for(location if not service.is_scc else GLOBAL)
            name = f"/{version}/{sample(shape, place)}/operations/op"
            if documented(service, version, "POST", name + ":cancel", host) and documented(
                service, version, "GET", name, host
            ):
                cancels.add(shape)
            if documented(service, version, "GET", f"/{version}/{sample(shape, place)}/operations", host):
                lists.add(shape)
        assert cancels == set(service.shapes), f"{service.name} {version}: documented cancel+get {sorted(cancels)}"
        expected_lists = service.shapes if service.list_shapes is None else service.list_shapes
        assert lists == set(expected_lists), f"{service.name} {version}: documented list {sorted(lists)}"
        # The global host is the document's root; a regional host one of its endpoints (or a cited page's).
        assert service.host_for(GLOBAL) in document.hosts
        regional = [e for e in document.hosts if e != service.host_for(GLOBAL)]
        if "{location}" in service.host:
            assert document.serves_host(service.host_for(place))
            if service.name not in CITED_HOSTS:
                assert service.host_for(place) in regional


@pytest.mark.parametrize("service", BUILTIN_SERVICES, ids=lambda service: service.name)
def test_each_cancel_sends_the_body_its_method_defines(service):
    place = SAMPLE_PLACE.get(service.name, "us-central1")
    for version in service.versions:
        shape = service.shapes[0]
        location = GLOBAL if service.is_scc else place
        name = f"{sample(shape, place)}/operations/op"
        requests: list[httpx.Request] = []
        client = OperationsClient(
            auth=AnonymousAuth(),
            clock=FakeClock(),
            log=Logger(io.StringIO()),
            transport=httpx.MockTransport(lambda request, seen=requests: seen.append(request) or httpx.Response(200)),
        )
        client.cancel(OperationRef(name, location, version, service))
        (request,) = requests
        method = CONTRACT.check_url("POST", str(request.url), request.content, request.headers.get("content-type", ""))
        assert request.content == (b"{}" if method.request else b""), f"{service.name} {version}"


# --- names of undocumented shapes are refused before any call ------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("//aiplatform.googleapis.com/projects/my-proj/operations/1", "projects/P/locations/L/operations/ID"),
        ("//aiplatform.googleapis.com/projects/my-proj/regions/us-central1/operations/1", "locations/L"),
        ("//dataproc.googleapis.com/projects/my-proj/operations/1", "projects/P/regions/R/operations/ID"),
        ("//documentai.googleapis.com/projects/my-proj/operations/1", "projects/P/locations/L/operations/ID"),
        ("https://aiplatform.googleapis.com/v1/projects/my-proj/operations/1", "projects/P/locations/L"),
        ("//speech.googleapis.com/projects/p/locations/global/operations/1", "not in the registry"),
    ],
)
def test_a_name_of_a_shape_its_service_does_not_document_is_refused_saying_which_it_takes(text, says):
    with pytest.raises(InvalidRequest) as caught:
        parse_name(text)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("//aiplatform.googleapis.com/projects/my-proj", "list parents must be projects/P/locations/L"),
        ("//cloudbuild.googleapis.com/projects/my-proj/locations/global", "documents no list method"),
    ],
)
def test_a_list_parent_without_a_documented_list_method_is_refused(text, says):
    with pytest.raises(InvalidRequest) as caught:
        parse_parent(text)
    assert says in str(caught.value)


def test_a_parent_made_in_code_is_held_to_the_documented_list_shapes_too():
    vertex = parse_name("//aiplatform.googleapis.com/projects/my-proj/locations/global/operations/op").service
    with pytest.raises(InvalidRequest, match="list parents must be"):
        OperationParent("projects/my-proj", GLOBAL, "v1", vertex)


def test_security_command_center_takes_organizations_only():
    assert SCC_SERVICE.shapes == ("organizations",)


# --- the checker --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "body", "rule"),
    [
        ("POST", "https://securitycenter.googleapis.com/v9/organizations/1/operations/x:cancel", b"", "no documented"),
        ("POST", "https://securitycenter.googleapis.com/v1/organizations/1/operations/x:cancel", b"{}", "no request"),
        ("POST", "https://us-documentai.googleapis.com/v1/projects/p/locations/us/operations/x:cancel", b"", "host"),
        ("POST", "https://translate.googleapis.com/v3/projects/p/locations/l/operations/x:cancel", b"{}", "host"),
        ("GET", "https://aiplatform.googleapis.com/v1/projects/p/locations/l/operations?foo=1", b"", '"foo"'),
        ("GET", "https://aiplatform.googleapis.com/v1/projects/p/locations/l/operations?pageSize=x", b"", "pageSize"),
        ("GET", "https://aiplatform.googleapis.com/v1/projects/p/locations/l/operations?pageSize=3000000000", b"", ""),
        (
            "POST",
            "https://pubsub.googleapis.com/v1/projects/p/topics/t:publish",
            b'{"messages": [{"data": "not base64!"}]}',
            "messages[0].data",
        ),
        (
            "POST",
            "https://pubsub.googleapis.com/v1/projects/p/topics/t:publish",
            b'{"messages": [{"data": "YQ==", "attributes": {"a": 1}}]}',
            "attributes",
        ),
        (
            "POST",
            "https://cloudtasks.googleapis.com/v2/projects/p/locations/l/queues/q/tasks",
            b'{"task": {"scheduleTime": "2026-13-01 00:00"}}',
            "task.scheduleTime",
        ),
    ],
)
def test_the_checker_names_the_request_and_the_rule_it_breaks(method, url, body, rule):
    with pytest.raises(Violation) as caught:
        CONTRACT.check_url(method, url, body, "application/json")
    assert rule in str(caught.value)
    assert url.split("?")[0].removeprefix("https://") in str(caught.value).replace(" ", "")


@pytest.mark.parametrize(
    ("url", "body"),
    [
        (
            "https://pubsub.googleapis.com/v1/projects/p/topics/t:publish",
            {"messages": [{"data": "YQ", "ordering_key": "k"}]},
        ),
        (
            "https://cloudtasks.googleapis.com/v2/projects/p/locations/l/queues/q/tasks",
            {"task": {"dispatchDeadline": "1.5s", "dispatchCount": "3", "httpRequest": {"httpMethod": "GET"}}},
        ),
    ],
)
def test_the_checker_accepts_what_the_schemas_accept(url, body):
    CONTRACT.check_url("POST", url, json.dumps(body).encode(), "application/json; charset=utf-8")


@pytest.mark.off_contract
def test_a_mock_transport_request_outside_the_contract_fails_the_test_naming_it():
    client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json={})))
    with pytest.raises(AssertionError, match="takes no request body"):
        client.post("https://securitycenter.googleapis.com/v2/organizations/1/operations/x:cancel", json={})
    (seen,) = LEDGER.take()
    assert "securitycenter.googleapis.com/v2/organizations/1/operations/x:cancel" in str(seen)


# --- finding 11: start-up refuses a registry or endpoint that lets a name pick the host -------------


@pytest.mark.parametrize(
    "host",
    [
        "{location}.googleapis.com",
        "{location}-googleapis.googleapis.com",
        "foo{location}.googleapis.com",
        "x.{location}.googleapis.com",
    ],
)
def test_a_host_template_that_lets_a_location_choose_another_services_host_fails_start_up(host):
    with pytest.raises(ConfigError, match="own name"):
        Settings.from_env({"OPCANCEL_SERVICES": json.dumps({"foo": {"version": "v1", "host": host}})})


@pytest.mark.parametrize(
    "host", ["{location}-foo.googleapis.com", "foo.{location}.rep.googleapis.com", "foo.googleapis.com"]
)
def test_a_host_template_that_keeps_the_services_name_starts(host):
    settings = Settings.from_env({"OPCANCEL_SERVICES": json.dumps({"foo": {"version": "v1", "host": host}})})
    assert settings.services.require("foo").host_for("us-central1").endswith(".googleapis.com")


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://proxy/{host}/../",
        "https://proxy/{host}/..",
        "https://proxy/./{host}",
        "https://proxy/a/%2e%2e/{host}",
        "https://proxy/x{host}",
        "https://proxy/{host}.example",
        "https://proxy\\{host}",
    ],
)
def test_an_api_endpoint_whose_path_could_drop_or_bend_the_host_fails_start_up(endpoint):
    with pytest.raises(ConfigError, match="OPCANCEL_API_ENDPOINT"):
        Settings.from_env({"OPCANCEL_API_ENDPOINT": endpoint})


@pytest.mark.parametrize("endpoint", ["https://proxy/{host}", "http://127.0.0.1:8090/{host}/", "https://proxy/a/b"])
def test_an_api_endpoint_with_host_as_a_whole_segment_starts(endpoint):
    assert Settings.from_env({"OPCANCEL_API_ENDPOINT": endpoint}).api_endpoint == endpoint.rstrip("/")


def test_an_added_service_takes_the_shapes_and_cancel_body_its_entry_names():
    entry = {"version": "v1", "host": "{location}-foo.googleapis.com", "shapes": ["locations"], "list_shapes": []}
    settings = Settings.from_env({"OPCANCEL_SERVICES": json.dumps({"foo": {**entry, "cancel_body": True}})})
    foo = settings.services.require("foo")
    with pytest.raises(InvalidRequest, match="foo.googleapis.com operation names must be projects/P/locations/L"):
        parse_name("//foo.googleapis.com/projects/my-proj/operations/op", settings.services)
    with pytest.raises(InvalidRequest, match="documents no list method"):
        parse_parent("//foo.googleapis.com/projects/my-proj/locations/l", settings.services)
    assert foo.cancel_takes_body("v1")
    plain = Settings.from_env(
        {"OPCANCEL_SERVICES": json.dumps({"foo": {"version": "v1", "host": "foo.googleapis.com"}})}
    )
    assert not plain.services.require("foo").cancel_takes_body("v1")
    assert parse_name("//foo.googleapis.com/projects/my-proj/operations/op", plain.services).location == GLOBAL


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"shapes": ["zones"]}, "not a name shape"),
        ({"shapes": ["organizations"]}, "not a name shape"),
        ({"shapes": []}, "at least one name shape"),
        ({"shapes": "locations"}, "lists of strings"),
        ({"cancel_body": "yes"}, "true or false"),
    ],
)
def test_a_bad_shape_or_cancel_body_fails_start_up(fields, problem):
    entry = {"version": "v1", "host": "foo.googleapis.com", **fields}
    with pytest.raises(ConfigError, match=problem):
        Settings.from_env({"OPCANCEL_SERVICES": json.dumps({"foo": entry})})
