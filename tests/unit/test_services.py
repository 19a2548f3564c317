"""Other Google APIs: the service registry, their operation names in every form, identities and the allow-list."""

from __future__ import annotations

import io
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from function import AnonymousAuth, Logger, OperationRef, OperationsClient, parse_name
from function._names import (
    BUILTIN_SERVICES,
    GLOBAL,
    REGISTRY,
    SCC_SERVICE,
    OperationParent,
    ParsedName,
    Service,
    ServiceRegistry,
    allows,
    parse_allowed_parent,
    parse_parent,
)
from function.errors import InvalidRequest
from tests.support import FakeClock

VERTEX = REGISTRY.require("aiplatform")
DATAPROC = REGISTRY.require("dataproc")
NAME = "projects/my-proj/locations/us-central1/operations/1234567890"
FULL = f"//aiplatform.googleapis.com/{NAME}"
REGIONS = "projects/my-proj/regions/europe-west1/operations/5e6c-4a1b"
#: What each built-in service's host is for a region and for global: README's table says the same.
HOSTS = {
    "aiplatform": ("us-central1-aiplatform.googleapis.com", "aiplatform.googleapis.com"),
    "dataproc": ("us-central1-dataproc.googleapis.com", "dataproc.googleapis.com"),
    "documentai": ("documentai.us-central1.rep.googleapis.com", "documentai.googleapis.com"),
    "translate": ("translation.googleapis.com", "translation.googleapis.com"),
    "cloudbuild": ("cloudbuild.googleapis.com", "cloudbuild.googleapis.com"),
}
OTHERS = [service for service in BUILTIN_SERVICES if not service.is_scc]


def rejected(text: str, services: ServiceRegistry = REGISTRY) -> str:
    with pytest.raises(InvalidRequest) as caught:
        parse_name(text, services)
    return str(caught.value)


# --- the registry ------------------------------------------------------------------------------


def test_the_registry_has_vertex_ai_and_dataproc_at_v1_and_every_documented_service():
    assert (VERTEX.version, DATAPROC.version) == ("v1", "v1")
    assert {service.name for service in BUILTIN_SERVICES} == {"securitycenter", *HOSTS}
    assert all(service.reference.startswith("https://cloud.google.com/") for service in BUILTIN_SERVICES)


@pytest.mark.parametrize("service", OTHERS, ids=lambda service: service.name)
def test_each_service_derives_its_regional_and_global_hosts(service):
    assert (service.host_for("us-central1"), service.host_for(GLOBAL)) == HOSTS[service.name]


@pytest.mark.parametrize("service", OTHERS, ids=lambda service: service.name)
@pytest.mark.parametrize("location", ["us-central1", "eu", GLOBAL])
def test_every_service_url_the_registry_derives_parses_back_to_its_operation(service, location):
    name = f"projects/my-proj/locations/{location}/operations/op-1"
    parsed = parse_name(f"https://{service.host_for(location)}/{service.version}/{name}")
    assert parsed == ParsedName(name, service, location, service.version)


def test_an_entry_replaces_a_built_in_one_and_adds_new_ones():
    mine = Service("aiplatform", "v1beta1", ("v1beta1",), "{location}-aiplatform.googleapis.com", "x.googleapis.com")
    new = Service("workflows", "v1", ("v1",), "workflows.googleapis.com", "workflows.googleapis.com")
    registry = REGISTRY.with_entries([mine, new])
    assert registry.require("aiplatform") is mine and registry.require("workflows") is new
    assert registry.require("dataproc") is DATAPROC
    assert parse_name(f"//workflows.googleapis.com/{NAME}", registry).service is new
    assert "workflows.googleapis.com is not in the registry" in rejected(f"//workflows.googleapis.com/{NAME}")


def test_security_command_center_cannot_be_replaced():
    with pytest.raises(ValueError, match="built in"):
        REGISTRY.with_entries([Service("securitycenter", "v1", ("v1",), "a.googleapis.com", "a.googleapis.com")])


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"host": "{location}-x.evil.com"}, "not a googleapis.com host"),
        ({"host": "{location}-{location}-x.googleapis.com"}, "not a googleapis.com host"),
        ({"host": "X.googleapis.com"}, "not a googleapis.com host"),
        ({"host": "x.googleapis.com/v1"}, "not a googleapis.com host"),
        ({"host": "x.googleapis.com:443"}, "not a googleapis.com host"),
        ({"host": "{project}.x.googleapis.com"}, "not a googleapis.com host"),
        ({"host": "x.googleapis.com."}, "not a googleapis.com host"),
        ({"global_host": "{location}.x.googleapis.com"}, "cannot depend on a location"),
        ({"global_host": "googleapis.com"}, "not a googleapis.com host"),
        ({"name": "X"}, "not a lowercase DNS label"),
        ({"name": "a.b"}, "not a lowercase DNS label"),
        ({"versions": ("v1", "latest")}, "not an API version"),
        ({"versions": ("v1/../x",)}, "not an API version"),
        ({"version": "v2"}, "not among the versions"),
    ],
)
def test_a_service_entry_that_could_send_a_call_elsewhere_is_refused(fields, problem):
    entry = {"name": "x", "version": "v1", "versions": ("v1",), "host": "x.googleapis.com", "global_host": ""}
    entry["global_host"] = "x.googleapis.com"
    with pytest.raises(ValueError, match=problem):
        Service(**{**entry, **fields})


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "location"),
    [
        (NAME, "us-central1"),
        (REGIONS, "europe-west1"),
        ("projects/my-proj/locations/global/operations/op", GLOBAL),
        ("projects/my-proj/regions/global/operations/op", GLOBAL),
        ("projects/123456789012/locations/eu/operations/op", "eu"),
    ],
)
def test_every_name_shape_is_accepted_as_a_full_resource_name_with_its_location(name, location):
    assert parse_name(f"//dataproc.googleapis.com/{name}") == ParsedName(name, DATAPROC, location)


def test_a_url_fixes_service_location_and_version_from_its_host():
    url = f"https://us-central1-aiplatform.googleapis.com/v1/{NAME}"
    assert parse_name(url) == ParsedName(NAME, VERTEX, "us-central1", "v1")
    dataproc = f"https://europe-west1-dataproc.googleapis.com/v1/{REGIONS}"
    assert parse_name(dataproc) == ParsedName(REGIONS, DATAPROC, "europe-west1", "v1")


@pytest.mark.parametrize(
    "url",
    [
        f"https://us-east1-aiplatform.googleapis.com/v1/{NAME}",
        f"https://aiplatform.googleapis.com/v1/{NAME}",
        f"https://us-central1-aiplatform.googleapis.com.evil.com/v1/{NAME}",
        f"https://evil.com/v1/{NAME}",
        f"https://us-central1-aiplatform.googleapis.com:443/v1/{NAME}",
        f"https://x@us-central1-aiplatform.googleapis.com/v1/{NAME}",
        f"https://US-CENTRAL1-aiplatform.googleapis.com/v1/{NAME}",
        f"https://us-central1-compute.googleapis.com/v1/{NAME}",
        "https://dataproc.googleapis.com/v1/projects/my-proj/regions/us-central1/operations/x",
    ],
)
def test_a_url_on_any_host_but_the_derived_one_is_rejected(url):
    assert "is not the host of any registered service" in rejected(url)


@pytest.mark.parametrize("version", ["v2", "v1beta1", "v3", "V1", "", "v1%2F.."])
def test_a_url_version_the_service_does_not_serve_is_rejected(version):
    assert "unknown API version" in rejected(f"https://us-central1-aiplatform.googleapis.com/{version}/{NAME}")


@pytest.mark.parametrize(
    "text",
    [
        "//compute.googleapis.com/projects/my-proj/operations/x",
        "//storage.googleapis.com/projects/my-proj/locations/us/operations/x",
    ],
)
def test_a_service_not_in_the_registry_is_rejected_naming_the_setting(text):
    message = rejected(text)
    assert "is not in the registry" in message and "OPCANCEL_SERVICES" in message


@pytest.mark.parametrize("name", [NAME, REGIONS, "projects/my-proj/operations/x"])
def test_a_bare_projects_name_is_rejected_asking_for_the_full_resource_name(name):
    assert "use its full resource name" in rejected(name)


@pytest.mark.parametrize(
    "project",
    ["p", "my-pr", "My-Proj", "my_proj", "my-proj-", "1my-proj", "0123", "a" * 31, "example.com:proj", "mу-proj", ""],
)
def test_projects_must_be_a_project_id_or_number(project):
    assert "project must be a project id" in rejected(f"//aiplatform.googleapis.com/projects/{project}/operations/x")


@pytest.mark.parametrize("project", ["my-proj", "a" * 30, "abcdef", "a1-2-3", "1", "123456789012"])
def test_project_ids_and_numbers_are_accepted(project):
    name = f"projects/{project}/locations/us-central1/operations/x"
    assert parse_name(f"//aiplatform.googleapis.com/{name}").name == name


@pytest.mark.parametrize(
    "location",
    ["", "US", "us_central1", "-us", "us-", "us--central1", "1us", "a" * 41, "us.central1", "ùs", "%75s", "us central"],
)
def test_locations_and_regions_must_be_dns_labels(location):
    for collection in ("locations", "regions"):
        name = f"//dataproc.googleapis.com/projects/my-proj/{collection}/{location}/operations/x"
        message = rejected(name)
        assert "must be 1-40 characters" in message or "must be projects/P" in message, message


@pytest.mark.parametrize(
    "name",
    [
        "projects/my-proj/zones/us-central1-a/operations/x",
        "projects/my-proj/locations/us-central1/datasets/d/operations/x",
        "projects/my-proj/locations/us-central1/operations",
        "projects/my-proj/locations/us-central1/operations/x/",
        "projects/my-proj/locations/us-central1/operations/x/y",
        "projects/my-proj//operations/x",
        "projects/my-proj/locations/us-central1/Operations/x",
        "Projects/my-proj/operations/x",
        "projects/my-proj",
        "organizations/1/operations/x",
    ],
)
def test_other_shapes_are_rejected_naming_the_accepted_ones(name):
    assert "names must be projects/P[/locations/L|/regions/R]/operations/ID" in rejected(
        f"//aiplatform.googleapis.com/{name}"
    )


@pytest.mark.parametrize("suffix", ["a%2Fb", "a?b", "a#b", "a:cancel", "a b", ".", "..", "x" * 129, "\u202ex"])
def test_operation_ids_are_held_to_the_same_rules(suffix):
    message = rejected(f"//aiplatform.googleapis.com/projects/my-proj/operations/{suffix}")
    assert "operation id must" in message


@pytest.mark.parametrize(
    "text",
    [
        f"//aiplatform.googleapis.com/{NAME}?x=1",
        f"//aiplatform.googleapis.com//{NAME}",
        f"//aiplatform.googleapis.com/v1/{NAME}",
        f"//aiplatform.googleapis.com/{NAME}\n",
        f"//aiplatform.googleapis.com/{NAME}".replace("my-proj", "my-proj/../other"),
    ],
)
def test_hostile_variants_of_a_full_resource_name_are_rejected_or_trimmed_safely(text):
    try:
        parsed = parse_name(text)
    except InvalidRequest:
        return
    # Only surrounding whitespace may be forgiven.
    assert parsed.name == NAME


# --- refs and identity -------------------------------------------------------------------------


def test_identity_is_the_full_resource_name_for_other_services_and_unchanged_for_scc():
    ref = OperationRef(NAME, "us-central1", "v1", VERTEX)
    assert ref.identity == FULL == ref.full_name
    assert ref.host == "us-central1-aiplatform.googleapis.com"
    assert ref.parent == "projects/my-proj/locations/us-central1"
    assert ref.service_name == "aiplatform.googleapis.com"
    scc = OperationRef("organizations/1/operations/x", "eu", "v2")
    assert scc.identity == "securitycenter.eu.rep.googleapis.com/organizations/1/operations/x"
    assert scc.service is SCC_SERVICE


def test_a_ref_refuses_a_location_that_is_not_its_names_or_a_version_its_service_lacks():
    with pytest.raises(InvalidRequest, match="is not the name's own"):
        OperationRef(NAME, "us-east1", "v1", VERTEX)
    with pytest.raises(InvalidRequest, match="is not the name's own"):
        OperationRef(NAME, GLOBAL, "v1", VERTEX)
    with pytest.raises(InvalidRequest, match="unknown API version v2 for aiplatform"):
        OperationRef(NAME, "us-central1", "v2", VERTEX)
    with pytest.raises(InvalidRequest):
        OperationRef("projects/my-proj/operations/../x", GLOBAL, "v1", VERTEX)
    with pytest.raises(InvalidRequest):
        OperationRef(NAME, "us-central1", "v1")


def test_the_url_and_the_full_resource_name_share_one_identity():
    forms = [FULL, f"https://us-central1-aiplatform.googleapis.com/v1/{NAME}", f"  {FULL}\n"]
    identities = set()
    for form in forms:
        parsed = parse_name(form)
        identities.add(OperationRef(parsed.name, parsed.location, "v1", parsed.service).identity)
    assert identities == {FULL}


def test_the_same_relative_name_under_two_services_has_two_identities():
    name = "projects/my-proj/locations/us/operations/x"
    documentai = REGISTRY.require("documentai")
    assert OperationRef(name, "us", "v1", VERTEX).identity != OperationRef(name, "us", "v1", documentai).identity


# --- parents and the allow-list ----------------------------------------------------------------


def test_parents_parse_to_a_service_and_location():
    assert parse_parent("organizations/1") == ParsedName("organizations/1")
    parent = parse_parent("//aiplatform.googleapis.com/projects/my-proj/locations/us-central1")
    assert parent == ParsedName("projects/my-proj/locations/us-central1", VERTEX, "us-central1")
    assert parse_parent("//dataproc.googleapis.com/projects/my-proj/regions/global").location == GLOBAL
    built = OperationParent(parent.name, "us-central1", "v1", VERTEX)
    assert built.host == "us-central1-aiplatform.googleapis.com"
    assert built.full_name == "//aiplatform.googleapis.com/projects/my-proj/locations/us-central1"


@pytest.mark.parametrize(
    "text",
    [
        "projects/my-proj",
        "//aiplatform.googleapis.com/projects/my-proj/locations/us-central1/operations",
        "//aiplatform.googleapis.com/projects/my-proj/locations",
        "//aiplatform.googleapis.com/projects/p",
        "//nope.googleapis.com/projects/my-proj",
        "//securitycenter.googleapis.com/projects/my-proj",
    ],
)
def test_bad_parents_are_rejected(text):
    with pytest.raises(InvalidRequest):
        parse_parent(text)


@pytest.mark.parametrize(
    ("entry", "canonical"),
    [
        ("organizations/123", "organizations/123"),
        ("projects/my-proj", "projects/my-proj"),
        ("projects/my-proj/locations/us-central1", "projects/my-proj/locations/us-central1"),
        (" //aiplatform.googleapis.com/projects/my-proj ", "//aiplatform.googleapis.com/projects/my-proj"),
        ("//securitycenter.googleapis.com/organizations/123", "//securitycenter.googleapis.com/organizations/123"),
    ],
)
def test_allowed_parents_take_every_documented_form(entry, canonical):
    assert parse_allowed_parent(entry) == canonical


@pytest.mark.parametrize(
    "entry",
    [
        "projects/p",
        "projects/my-proj/",
        "projects/my-proj/operations/x",
        "//aiplatform.googleapis.com/organizations/1",
        "//nope.googleapis.com/projects/my-proj",
        "//aiplatform.googleapis.com/",
        "folders/1",
        "projects/*",
    ],
)
def test_allowed_parents_in_no_documented_form_are_refused(entry):
    with pytest.raises(InvalidRequest):
        parse_allowed_parent(entry)


@pytest.mark.parametrize(
    ("allowed", "service", "path", "admitted"),
    [
        (("projects/my-proj",), VERTEX, NAME, True),
        (("projects/my-proj",), DATAPROC, REGIONS, True),
        (("projects/my-proj",), VERTEX, NAME.replace("my-proj", "my-proj-2"), False),
        (("projects/my-proj-2",), VERTEX, NAME, False),
        (("//aiplatform.googleapis.com/projects/my-proj",), VERTEX, NAME, True),
        (("//aiplatform.googleapis.com/projects/my-proj",), DATAPROC, REGIONS, False),
        (("//aiplatform.googleapis.com/projects/my-proj/locations/us-central1",), VERTEX, NAME, True),
        (("//aiplatform.googleapis.com/projects/my-proj/locations/us-central",), VERTEX, NAME, False),
        (("projects/my-proj/locations/us-east1",), VERTEX, NAME, False),
        (("organizations/123",), SCC_SERVICE, "organizations/123/operations/x", True),
        (("organizations/12",), SCC_SERVICE, "organizations/123/operations/x", False),
        (("organizations/123",), VERTEX, NAME, False),
        (("projects/my-proj",), SCC_SERVICE, "organizations/123/operations/x", False),
        (("//securitycenter.googleapis.com/organizations/123",), SCC_SERVICE, "organizations/123/operations/x", True),
        ((), VERTEX, NAME, False),
        (None, VERTEX, NAME, True),
        (("projects/my-proj",), VERTEX, "projects/my-proj/locations/us-central1", True),
    ],
)
def test_the_allow_list_matches_whole_segments_of_full_resource_prefixes(allowed, service, path, admitted):
    assert allows(allowed, service, path) is admitted


# --- nothing unvalidated reaches a URL ---------------------------------------------------------


#: Each part of a URL or full resource name: values that are valid alone, then hostile ones.
_PARTS = {
    "service": (("aiplatform", "dataproc", "translate", "cloudbuild"), ("evil", "aiplatform.evil", "", "Aiplatform")),
    "host": (
        ("us-central1-aiplatform.googleapis.com", "aiplatform.googleapis.com", "europe-west1-dataproc.googleapis.com"),
        ("evil.com", "us-central1-aiplatform.googleapis.com.evil.com", "aiplatform.googleapis.com:443", "x@evil"),
    ),
    "version": (("v1", "v3"), ("v9", "V1", "..", "v1%2F", "")),
    "projects": (("projects",), ("Projects", "folders", "")),
    "project": (("my-proj", "123456"), ("p", "my-proj-", "example.com:p", "my-proj/..", "%2F", "")),
    "place": (
        ("", "/locations/us-central1", "/regions/europe-west1", "/locations/global"),
        ("/zones/a", "/locations/US", "/locations/a--b", "/locations/x/y", "/locations/", "/locations/a.b"),
    ),
    "operations": (("operations",), ("operation", "Operations", "")),
    "id": (("123", "op-1", "a.b~c_d"), (".", "..", "a?b", "a#b", "a:cancel", "a/b", "a%2Fb", "\u202ea", "a\n")),
}


@st.composite
def _texts(draw: st.DrawFn) -> str:
    """A full resource name or URL, valid in every part but, half the time, one part made hostile."""
    parts = {part: draw(st.sampled_from(valid)) for part, (valid, _) in _PARTS.items()}
    if draw(st.booleans()):
        part = draw(st.sampled_from(sorted(_PARTS)))
        parts[part] = draw(st.one_of(st.sampled_from(_PARTS[part][1]), st.text(max_size=8)))
    name = f"{parts['projects']}/{parts['project']}{parts['place']}/{parts['operations']}/{parts['id']}"
    if draw(st.booleans()):
        return f"//{parts['service']}.googleapis.com/{name}"
    return f"https://{parts['host']}/{parts['version']}/{name}"


_URL = re.compile(
    r"https://[a-z0-9.-]+\.googleapis\.com/v[0-9a-z]+/projects/[a-z0-9-]+(?:/(?:locations|regions)/[a-z0-9-]+)?"
    r"/operations/[A-Za-z0-9._~-]+"
)


_CLIENT = OperationsClient(auth=AnonymousAuth(), clock=FakeClock(), log=Logger(io.StringIO()))


@given(_texts())
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_whatever_parses_becomes_a_url_on_the_derived_host_and_nothing_else(text):
    try:
        parsed = parse_name(text)
    except InvalidRequest:
        return
    if parsed.service.is_scc:
        return
    ref = OperationRef(parsed.name, parsed.location, parsed.api_version or parsed.service.version, parsed.service)
    url = _CLIENT.url(ref)
    assert _URL.fullmatch(url), url
    assert url.startswith(f"https://{parsed.service.host_for(parsed.location)}/")
    assert "/../" not in url and "/./" not in url
