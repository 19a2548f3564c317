"""Operation names: every accepted form, validated strictly, normalised to one identity; the service registry.

Nothing from a request reaches a URL unless it came out of ``parse_name`` (or
``parse_parent``): organizations are digits, projects are project ids or
numbers, locations are lowercase DNS labels and operation ids are drawn from
``[A-Za-z0-9._~-]``, so none can add a path segment, a query, a fragment or a
host. A host is never taken from a request: it is derived from the service's
registry entry and the name's location, and a URL must name exactly that host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import InvalidRequest

GLOBAL = "global"
#: Security Command Center's data-residency locations, by the names its own documentation uses.
LOCATIONS = (GLOBAL, "us", "eu", "sa")
#: Other names accepted for a location and reported as the canonical one (the seed called Saudi Arabia ``me-central2``).
LOCATION_ALIASES = {"me-central2": "sa"}
#: The v1 family; ``v2`` comes last because regional endpoints serve it alone.
VERSIONS = ("v1beta1", "v1p1beta1", "v1", "v2")
#: Google requires v2 for organizations activated since December 2024 and for every regional location.
DEFAULT_VERSION = "v2"
REGIONAL_VERSION = "v2"
#: Security Command Center's registry key; a bare relative name means this service.
SCC = "securitycenter"
SERVICE = f"{SCC}.googleapis.com"
MAX_NAME_LENGTH = 512
#: Every field opcancel echoes from a message (offending text, reason, ids) is at most this long.
MAX_ECHO_LENGTH = 256
MAX_LOCATION_LENGTH = 40
_LOCATION_PLACEHOLDER = "{location}"

# Organization ids have no leading zero, so 0123 and 123 cannot name one organization twice.
_ORG = re.compile(r"[1-9][0-9]{0,31}")
_OP_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")
# A project id (6-30 characters, a letter first, no trailing hyphen) or a project number. Domain-scoped
# ids (example.com:proj) are left out on purpose: their ':' and '.' have no place in a path segment.
_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]|[1-9][0-9]{0,29}")
# A location or region becomes part of a host name, so it must be a DNS label: us-central1, eu, global.
_PLACE = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_SERVICE_LABEL = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_API_VERSION = re.compile(r"v[1-9][0-9]{0,2}(?:(?:p[0-9]{1,3})?(?:alpha|beta)[0-9]{0,3})?")
_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+googleapis\.com")
_FULL_NAME = re.compile(r"//(?P<service>[^/]*)\.googleapis\.com/(?P<rest>.*)", re.DOTALL)
_FULL_PREFIX = "//SERVICE.googleapis.com/"
_URL = re.compile(r"https://(?P<host>[^/]*)/(?P<version>[^/]*)/(?P<rest>.*)", re.DOTALL)
_REGIONAL_HOST = re.compile(r"securitycenter\.(?P<region>[a-z0-9-]+)\.rep\.googleapis\.com")
# A location's host names its region, which for Saudi Arabia is not the location's own name.
_HOST_REGIONS = {"us": "us", "eu": "eu", "sa": "me-central2"}
_REGION_LOCATIONS = {region: location for location, region in _HOST_REGIONS.items()}
_PLACE_COLLECTIONS = ("locations", "regions")
#: The parents an operation name can have, by the word a registry entry's ``shapes`` uses for each.
SHAPES = {
    "organizations": "organizations/ORG",
    "projects": "projects/P",
    "locations": "projects/P/locations/L",
    "regions": "projects/P/regions/R",
}
#: What an ``OPCANCEL_SERVICES`` entry takes unless it says otherwise.
PROJECT_SHAPES = ("locations", "regions", "projects")


def host_for(location: str) -> str:
    """Security Command Center's host for one of its locations."""
    if location == GLOBAL:
        return SERVICE
    return f"securitycenter.{_HOST_REGIONS[location]}.rep.googleapis.com"


def version_for(location: str, configured: str) -> str:
    """The version a request that names none gets: the configured default at global, v2 where only v2 is served."""
    return configured if location == GLOBAL else REGIONAL_VERSION


def validate_pair(location: str, version: str) -> None:
    """Regional endpoints serve v2 only, so any other version there is refused before a call is made."""
    if location != GLOBAL and version != REGIONAL_VERSION:
        raise InvalidRequest(
            f"location {location} takes api_version {REGIONAL_VERSION} only (data residency needs the v2 API), "
            f"not {escape_text(version, 40)}"
        )


@dataclass(frozen=True)
class Service:
    """One API serving ``google.longrunning`` operations: its versions and how its host follows from a location.

    ``host`` is the host for a named location and may hold ``{location}``; ``global_host``
    serves the location ``global`` and names with no location. Every field is validated
    here, so no entry (built in or from ``OPCANCEL_SERVICES``) can make a URL point elsewhere
    than a ``googleapis.com`` host, and a template keeps the service's own name, so no location
    can choose another service's host. ``shapes`` are the parents (``SHAPES``) whose operations
    the API documents cancel and get for, ``list_shapes`` those it documents list for;
    ``cancel_body`` the versions whose cancel takes a ``CancelOperationRequest`` (``{}``), where
    every other cancel takes no body at all (docs/conformance.md).
    """

    name: str
    version: str
    versions: tuple[str, ...]
    host: str
    global_host: str
    #: Where the entry's facts come from, for the README's table.
    reference: str = field(default="", compare=False)
    shapes: tuple[str, ...] = PROJECT_SHAPES
    #: None: the same as ``shapes``.
    list_shapes: tuple[str, ...] | None = None
    cancel_body: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _SERVICE_LABEL.fullmatch(self.name) or len(self.name) > 40:
            raise ValueError(f"service name {escape_text(self.name, 60)!r} is not a lowercase DNS label")
        for version in self.versions:
            if not isinstance(version, str) or not _API_VERSION.fullmatch(version):
                raise ValueError(f"{escape_text(str(version), 40)!r} is not an API version such as v1 or v1beta1")
        if not self.versions or self.version not in self.versions:
            raise ValueError(f"the default version {escape_text(str(self.version), 40)!r} is not among the versions")
        for shape in (*self.shapes, *(self.list_shapes or ())):
            if shape not in SHAPES or (shape == "organizations" and self.name != SCC):
                raise ValueError(f"{escape_text(str(shape), 40)!r} is not a name shape ({', '.join(PROJECT_SHAPES)})")
        if not self.shapes:
            raise ValueError("a service needs at least one name shape")
        if self.name == SCC:
            return
        for template in (self.host, self.global_host):
            sample = template.replace(_LOCATION_PLACEHOLDER, "us-central1", 1)
            if not _HOST.fullmatch(sample) or len(sample) > 253:
                raise ValueError(
                    f"host {escape_text(template, 80)!r} is not a googleapis.com host "
                    f"(at most one {_LOCATION_PLACEHOLDER}, lowercase labels)"
                )
        if _LOCATION_PLACEHOLDER in self.global_host:
            raise ValueError("the global host cannot depend on a location")
        # {location}.googleapis.com would let a name's location pick any host (oauth2, another API) for the token.
        if _LOCATION_PLACEHOLDER in self.host and self.host.split(".", 1)[0] not in (
            self.name,
            f"{_LOCATION_PLACEHOLDER}-{self.name}",
        ):
            raise ValueError(
                f"host {escape_text(self.host, 80)!r} does not keep the service's own name: with {_LOCATION_PLACEHOLDER} "
                f"its first label must be {self.name} or {_LOCATION_PLACEHOLDER}-{self.name}, so no location can "
                "choose another service's host"
            )

    @property
    def service_name(self) -> str:
        return f"{self.name}.googleapis.com"

    @property
    def is_scc(self) -> bool:
        return self.name == SCC

    def host_for(self, location: str) -> str:
        if self.is_scc:
            return host_for(location)
        if location == GLOBAL:
            return self.global_host
        return self.host.replace(_LOCATION_PLACEHOLDER, location)

    def cancel_takes_body(self, version: str) -> bool:
        """Whether this version's cancel method takes a ``CancelOperationRequest`` (sent as ``{}``)."""
        return version in self.cancel_body

    def require_shape(self, path: str, *, operation: bool) -> None:
        """Refuse a name (or a list parent) whose shape the service's API documents no method for."""
        segments = path.split("/")
        head = segments[:-2] if operation else segments
        shape = head[0] if len(head) == 2 else head[2]
        allowed = self.shapes if operation else (self.shapes if self.list_shapes is None else self.list_shapes)
        if shape in allowed:
            return
        what = "operation names" if operation else "list parents"
        if not allowed:
            raise InvalidRequest(f"{self.service_name} documents no list method for its operations")
        forms = " or ".join(SHAPES[s] + ("/operations/ID" if operation else "") for s in allowed)
        raise InvalidRequest(f"{self.service_name} {what} must be {forms}: the shapes its API documents")

    def validate_version(self, value: object) -> str:
        if self.is_scc:
            return validate_version(value)
        if value not in self.versions:
            raise InvalidRequest(
                f"unknown API version {escape_text(str(value), 40)} for {self.service_name}; "
                f"expected one of {', '.join(self.versions)}"
            )
        return str(value)


_DOCS = "https://cloud.google.com"
SCC_SERVICE = Service(
    SCC,
    DEFAULT_VERSION,
    VERSIONS,
    host="securitycenter.{region}.rep.googleapis.com",
    global_host=SERVICE,
    reference=f"{_DOCS}/security-command-center/docs/reference/rest/v2/organizations.operations/cancel",
    shapes=("organizations",),
    # Only v1beta1's discovery document gives cancel a request (CancelOperationRequest); v1p1beta1, v1, v2 take none.
    cancel_body=("v1beta1",),
)
#: The registry shipped in code; README's "Other Google APIs" table lists the same entries and their sources.
BUILTIN_SERVICES = (
    SCC_SERVICE,
    Service(
        "aiplatform",
        "v1",
        ("v1",),
        host="{location}-aiplatform.googleapis.com",
        global_host="aiplatform.googleapis.com",
        reference=f"{_DOCS}/vertex-ai/docs/reference/rest/v1/projects.locations.operations/cancel",
        shapes=("locations",),
    ),
    Service(
        "dataproc",
        "v1",
        ("v1",),
        # Not the discovery document's dataproc.{region}.rep hosts: Google's page names this locational
        # endpoint the default one, and it serves every region (docs/conformance.md).
        host="{location}-dataproc.googleapis.com",
        global_host="dataproc.googleapis.com",
        reference=f"{_DOCS}/dataproc/docs/concepts/cluster-region",
        shapes=("regions", "locations"),
    ),
    Service(
        "documentai",
        "v1",
        ("v1", "v1beta3"),
        host="documentai.{location}.rep.googleapis.com",
        global_host="documentai.googleapis.com",
        reference=f"{_DOCS}/document-ai/docs/reference/rest/v1/projects.locations.operations/cancel",
        shapes=("locations",),
    ),
    Service(
        "translate",
        "v3",
        ("v3", "v3beta1"),
        # The discovery document's root: Cloud Translation's service is translate.googleapis.com, its host translation.
        host="translation.googleapis.com",
        global_host="translation.googleapis.com",
        reference=f"{_DOCS}/translate/docs/reference/rest/v3/projects.locations.operations/cancel",
        shapes=("locations",),
        cancel_body=("v3", "v3beta1"),
    ),
    Service(
        "cloudbuild",
        "v1",
        ("v1", "v2"),
        host="cloudbuild.googleapis.com",
        global_host="cloudbuild.googleapis.com",
        reference=f"{_DOCS}/build/docs/api/reference/rest/v1/projects.locations.operations/cancel",
        shapes=("locations",),
        # Cloud Build documents cancel and get for its operations, no list.
        list_shapes=(),
        cancel_body=("v1", "v2"),
    ),
)


@dataclass(frozen=True)
class ServiceRegistry:
    """The services whose operations opcancel reaches, by registry key (``aiplatform``)."""

    entries: tuple[Service, ...] = BUILTIN_SERVICES

    def get(self, name: str) -> Service | None:
        return next((service for service in self.entries if service.name == name), None)

    def require(self, name: str) -> Service:
        service = self.get(name)
        if service is None:
            raise InvalidRequest(
                f"service {escape_text(name, 60)}.googleapis.com is not in the registry "
                f"({', '.join(s.name for s in self.entries)}; OPCANCEL_SERVICES adds others)"
            )
        return service

    def with_entries(self, extra: Iterable[Service]) -> ServiceRegistry:
        """This registry with ``extra`` added, each replacing a built-in entry of the same name."""
        merged = {service.name: service for service in self.entries}
        for service in extra:
            if service.is_scc:
                raise ValueError(f"{SCC} is built in and cannot be replaced")
            merged[service.name] = service
        return ServiceRegistry(tuple(merged.values()))

    def known_versions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(version for service in self.entries for version in service.versions))


REGISTRY = ServiceRegistry()


def _validate_target(service: Service, path: str, location: str, version: str, *, operation: bool) -> None:
    """What every ref and parent validates about itself: a valid path of a documented shape, its location and
    a version its service serves."""
    place = _parse_path(service, path, operation=operation)
    service.require_shape(path, operation=operation)
    if service.is_scc:
        validate_version(version)
        if location not in LOCATIONS:
            raise InvalidRequest(f"unknown location {escape_text(location, 40)}")
        validate_pair(location, version)
        return
    if location != (place or GLOBAL):
        raise InvalidRequest(f"location {escape_text(location, 40)} is not the name's own ({place or GLOBAL})")
    service.validate_version(version)


@dataclass(frozen=True)
class OperationRef:
    """A validated operation, with where and how to reach it."""

    #: The relative name: organizations/ORG/operations/ID, or projects/P[/locations/L|/regions/R]/operations/ID.
    name: str
    location: str = GLOBAL
    api_version: str = DEFAULT_VERSION
    service: Service = SCC_SERVICE

    def __post_init__(self) -> None:
        # Every ref becomes a URL, so it is validated wherever one is made, not only where requests are parsed.
        _validate_target(self.service, self.name, self.location, self.api_version, operation=True)

    @property
    def parent(self) -> str:
        return self.name[: self.name.rindex("/operations/")]

    @property
    def host(self) -> str:
        return self.service.host_for(self.location)

    @property
    def service_name(self) -> str:
        return self.service.service_name

    @property
    def full_name(self) -> str:
        return f"//{self.service_name}/{self.name}"

    @property
    def identity(self) -> str:
        """Canonical identity, the version left out. Security Command Center keeps its host and relative
        name, so existing keys stand; other services' names carry their location, so the full name suffices."""
        return f"{self.host}/{self.name}" if self.service.is_scc else self.full_name


@dataclass(frozen=True)
class OperationParent:
    """A validated parent whose operations ``list`` reads: organizations/ORG, or projects/P[/locations/L|/regions/R]."""

    path: str
    location: str = GLOBAL
    api_version: str = DEFAULT_VERSION
    service: Service = SCC_SERVICE

    def __post_init__(self) -> None:
        _validate_target(self.service, self.path, self.location, self.api_version, operation=False)

    @property
    def host(self) -> str:
        return self.service.host_for(self.location)

    @property
    def full_name(self) -> str:
        return f"//{self.service.service_name}/{self.path}"


@dataclass(frozen=True)
class ParsedName:
    """An operation name as written, before the settings fill in what it leaves open."""

    name: str
    service: Service = SCC_SERVICE
    #: Set when the name itself fixes it: a Security Command Center URL, or any other service's name.
    location: str | None = None
    #: Set only by the URL form.
    api_version: str | None = None


def parse_name(text: str, services: ServiceRegistry = REGISTRY) -> ParsedName:
    """Parse one operation name in any accepted form, or raise ``InvalidRequest`` saying why."""
    if not isinstance(text, str):
        raise InvalidRequest("operation must be a string")
    name = text.strip()
    if not name:
        raise InvalidRequest("operation name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"operation name is longer than {MAX_NAME_LENGTH} characters")
    if name.startswith("//"):
        service, rest = _split_full_name(name, services)
        return _parsed(service, rest, operation=True)
    if "://" in name:
        return _parse_url(name, services)
    _refuse_bare_projects(name)
    return ParsedName(_parse_scc_path(name, operation=True))


def parse_parent(text: str, services: ServiceRegistry = REGISTRY) -> ParsedName:
    """Parse a parent whose operations can be listed: ``organizations/ORG`` or a full resource name
    ``//SERVICE.googleapis.com/projects/P[/locations/L|/regions/R]``; or raise ``InvalidRequest``."""
    parent = text.strip() if isinstance(text, str) else ""
    if len(parent) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"parent is longer than {MAX_NAME_LENGTH} characters")
    if parent.startswith("//"):
        service, rest = _split_full_name(parent, services)
        return _parsed(service, rest, operation=False)
    _refuse_bare_projects(parent, operation=False)
    return ParsedName(_parse_scc_path(parent, operation=False))


def parse_allowed_parent(text: str, services: ServiceRegistry = REGISTRY) -> str:
    """One ``OPCANCEL_ALLOWED_PARENTS`` entry in canonical form: ``organizations/ORG``, ``projects/P``
    (every service), or either behind ``//SERVICE.googleapis.com/``, optionally down to a location."""
    entry = text.strip()
    if entry.startswith("//"):
        service, rest = _split_full_name(entry, services)
        _parse_path(service, rest, operation=False)
        return f"//{service.service_name}/{rest}"
    if entry.startswith("projects/"):
        _parse_project_path(entry, operation=False, what="allowed parents")
        return entry
    return _parse_scc_path(entry, operation=False)


def allows(allowed: tuple[str, ...] | None, service: Service, path: str) -> bool:
    """The one allow-list test: is ``path`` (a name or a parent) of ``service`` under an allowed prefix?
    None allows everything."""
    return allowed is None or matching_parent(allowed, service, path) is not None


def matching_parent(parents: tuple[str, ...] | None, service: Service, path: str) -> str | None:
    """The first of ``parents`` (in the allow-list's forms) that ``path`` of ``service`` is under, or None.

    Prefixes match whole segments, so ``projects/my-proj`` does not admit ``projects/my-proj-2``."""
    full = f"//{service.service_name}/{path}"
    for entry in parents or ():
        target = full if entry.startswith("//") else path
        if target == entry or target.startswith(entry + "/"):
            return entry
    return None


def _refuse_bare_projects(name: str, *, operation: bool = True) -> None:
    if name.startswith("projects/"):
        what, example = ("name", "/operations/ID") if operation else ("parent", "")
        raise InvalidRequest(
            f"a projects/... {what} does not say which API it belongs to: use its full resource name, "
            f"{_FULL_PREFIX}projects/..., e.g. //aiplatform.googleapis.com/projects/P/locations/L{example}"
        )


def _split_full_name(name: str, services: ServiceRegistry) -> tuple[Service, str]:
    match = _FULL_NAME.fullmatch(name)
    if not match or not _SERVICE_LABEL.fullmatch(match["service"]) or len(match["service"]) > 40:
        raise InvalidRequest(f"full resource names must start with {_FULL_PREFIX}, e.g. //{SERVICE}/")
    return services.require(match["service"]), match["rest"]


def _parsed(service: Service, rest: str, *, operation: bool) -> ParsedName:
    if service.is_scc:
        return ParsedName(_parse_scc_path(rest, operation=operation))
    place = _parse_path(service, rest, operation=operation)
    service.require_shape(rest, operation=operation)
    return ParsedName(rest, service, place or GLOBAL)


def _parse_url(name: str, services: ServiceRegistry) -> ParsedName:
    match = _URL.fullmatch(name)
    if not match:
        raise InvalidRequest(
            "URLs must look like https://securitycenter.googleapis.com/VERSION/organizations/ORG/operations/ID "
            "or https://HOST/VERSION/projects/.../operations/ID"
        )
    host, rest = match["host"], match["rest"]
    if rest.startswith("projects/"):
        return _parse_service_url(host, match["version"], rest, services)
    if host == SERVICE:
        location = GLOBAL
    else:
        regional = _REGIONAL_HOST.fullmatch(host)
        location = _REGION_LOCATIONS.get(regional["region"]) if regional else None
        # The global API has exactly one host; securitycenter.global.rep... and securitycenter.sa.rep... are not hosts.
        if location is None:
            raise InvalidRequest(
                f"host {escape_text(host, 80)} is not a Security Command Center API host "
                f"(securitycenter[.{{{','.join(_REGION_LOCATIONS)}}}.rep].googleapis.com)"
            )
    version = validate_version(match["version"])
    validate_pair(location, version)
    return ParsedName(_parse_scc_path(rest, operation=True), location=location, api_version=version)


def _parse_service_url(host: str, version: str, rest: str, services: ServiceRegistry) -> ParsedName:
    """A URL of another service: its host must be the very one the registry derives for the name's location."""
    place = _parse_project_path(rest, operation=True) or GLOBAL
    matching = [s for s in services.entries if not s.is_scc and s.host_for(place) == host]
    if not matching:
        raise InvalidRequest(
            f"host {escape_text(host, 80)} is not the host of any registered service for location {place} "
            f"(a full resource name, {_FULL_PREFIX}..., needs no host)"
        )
    if len(matching) > 1:
        raise InvalidRequest(
            f"host {escape_text(host, 80)} serves {', '.join(s.name for s in matching)}: use the full resource name"
        )
    (service,) = matching
    service.require_shape(rest, operation=True)
    return ParsedName(rest, service, place, service.validate_version(version))


def _parse_path(service: Service, path: str, *, operation: bool) -> str | None:
    """Validate a relative path for ``service``; return its location or region segment, if it has one."""
    if service.is_scc:
        _parse_scc_path(path, operation=operation)
        return None
    return _parse_project_path(path, operation=operation, what=f"{service.name} names")


def _parse_project_path(path: str, *, operation: bool, what: str = "operation names") -> str | None:
    segments = path.split("/")
    shapes = "projects/P[/locations/L|/regions/R]" + ("/operations/ID" if operation else "")
    tail = segments[-2:] if operation else []
    head = segments[:-2] if operation else segments
    if (
        len(head) not in (2, 4)
        or head[0] != "projects"
        or (len(head) == 4 and head[2] not in _PLACE_COLLECTIONS)
        or (operation and tail[0] != "operations")
    ):
        raise InvalidRequest(f"{what} must be {shapes}")
    if not _PROJECT.fullmatch(head[1]):
        raise InvalidRequest(
            "project must be a project id (6-30 of a-z 0-9 -, a letter first, no trailing hyphen) or a project number"
        )
    place = head[3] if len(head) == 4 else None
    if place is not None and (not _PLACE.fullmatch(place) or len(place) > MAX_LOCATION_LENGTH):
        raise InvalidRequest(
            f"{head[2][:-1]} must be 1-{MAX_LOCATION_LENGTH} characters of a-z 0-9 and single inner hyphens, "
            "a letter first"
        )
    if operation:
        _validate_operation_id(tail[1])
    return place


def _parse_scc_path(path: str, *, operation: bool) -> str:
    if not operation:
        organization = path.removeprefix("organizations/")
        if organization == path or not _ORG.fullmatch(organization):
            raise InvalidRequest(
                "parents must be organizations/ORG, the organization 1-32 digits without a leading zero, "
                f"or {_FULL_PREFIX}projects/P[/locations/L|/regions/R]"
            )
        return path
    segments = path.split("/")
    if len(segments) != 4 or segments[0] != "organizations" or segments[2] != "operations":
        raise InvalidRequest("operation names must be organizations/ORG/operations/ID")
    if not _ORG.fullmatch(segments[1]):
        raise InvalidRequest("organization must be 1-32 digits without a leading zero")
    _validate_operation_id(segments[3])
    return path


def _validate_operation_id(operation_id: str) -> None:
    if not _OP_ID.fullmatch(operation_id):
        raise InvalidRequest("operation id must be 1-128 characters of A-Z a-z 0-9 . _ ~ -")
    if operation_id in (".", ".."):
        raise InvalidRequest("operation id must not be '.' or '..'")


def validate_location(value: object) -> str:
    """A location by its canonical name, aliases resolved (``me-central2`` is reported as ``sa``)."""
    location = LOCATION_ALIASES.get(value, value) if isinstance(value, str) else value
    if location not in LOCATIONS:
        expected = ", ".join((*LOCATIONS, *(f"{alias} (= {to})" for alias, to in LOCATION_ALIASES.items())))
        raise InvalidRequest(f"unknown location {escape_text(str(value), 40)}; expected one of {expected}")
    return str(location)


def validate_known_location(value: object) -> str:
    """A location field read before its service is known, as ``validate_known_version`` reads a version: a
    Security Command Center location (aliases resolved), or a place another service's name can carry
    (``us-central1``), which ``_parsing`` then holds to the name's own."""
    location = LOCATION_ALIASES.get(value, value) if isinstance(value, str) else value
    if location in LOCATIONS:
        return str(location)
    if isinstance(value, str) and _PLACE.fullmatch(value) and len(value) <= MAX_LOCATION_LENGTH:
        return value
    return validate_location(value)


def validate_version(value: object) -> str:
    if value not in VERSIONS:
        raise InvalidRequest(
            f"unknown API version {escape_text(str(value), 40)}; expected one of {', '.join(VERSIONS)}"
        )
    return str(value)


def validate_known_version(value: object, services: ServiceRegistry = REGISTRY) -> str:
    """An ``api_version`` field read before its service is known: one that some registered service serves."""
    known = services.known_versions()
    if value not in known:
        raise InvalidRequest(f"unknown API version {escape_text(str(value), 40)}; expected one of {', '.join(known)}")
    return str(value)


def escape_text(text: str, limit: int | None = MAX_ECHO_LENGTH) -> str:
    """Make untrusted text safe to log and to echo: bounded, and escaped so any Unicode can be written.

    The one escaper of echoed fields. Non-printable characters (controls, lone surrogates, U+2028/2029,
    bidi and other format characters) become Python escapes and a backslash is doubled, so the escaping
    is unambiguous (``a\\x01`` and ``a\\\\x01`` stay apart) and the result encodes as UTF-8. Past ``limit``
    characters the text is cut and ends in "…"; ``None`` keeps it whole (for keys, which must not collide).
    """
    # Each character escapes to at least one, so nothing past the limit can be shown: the work stays bounded.
    shown = text if limit is None else text[: limit + 1]
    pieces = []
    for char in shown:
        if char == "\\":
            pieces.append("\\\\")
        elif not char.isprintable():
            # Format (bidi overrides), unassigned, private-use, surrogate and separator characters can
            # disguise text in a console or break an encoder, so everything non-printable goes.
            pieces.append(char.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            pieces.append(char)
    escaped = "".join(pieces)
    if limit is not None and len(escaped) > limit:
        return escaped[: limit - 1] + "…"
    return escaped
