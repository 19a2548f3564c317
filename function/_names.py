"""Operation names: the three accepted forms, validated strictly, normalised to one identity.

Nothing from a request reaches a URL unless it came out of ``parse_name``: the
organization is digits and the operation id is drawn from ``[A-Za-z0-9._~-]``,
so neither can add a path segment, a query or a fragment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
SERVICE = "securitycenter.googleapis.com"
MAX_NAME_LENGTH = 512
MAX_OFFENDING_LENGTH = 256

# Organization ids have no leading zero, so 0123 and 123 cannot name one organization twice.
_ORG = re.compile(r"[1-9][0-9]{0,31}")
_OP_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_FULL_RESOURCE_PREFIX = f"//{SERVICE}/"
_URL = re.compile(r"https://(?P<host>[^/]*)/(?P<version>[^/]*)/(?P<rest>.*)", re.DOTALL)
_REGIONAL_HOST = re.compile(r"securitycenter\.(?P<region>[a-z0-9-]+)\.rep\.googleapis\.com")
# A location's host names its region, which for Saudi Arabia is not the location's own name.
_HOST_REGIONS = {"us": "us", "eu": "eu", "sa": "me-central2"}
_REGION_LOCATIONS = {region: location for location, region in _HOST_REGIONS.items()}


def host_for(location: str) -> str:
    if location == GLOBAL:
        return SERVICE
    return f"securitycenter.{_HOST_REGIONS[location]}.rep.googleapis.com"


def version_for(location: str, configured: str) -> str:
    """The version a request that names none gets: the configured default at global, v2 where only v2 is served."""
    return configured if location == GLOBAL else REGIONAL_VERSION


def check_pair(location: str, version: str) -> None:
    """Regional endpoints serve v2 only, so any other version there is refused before a call is made."""
    if location != GLOBAL and version != REGIONAL_VERSION:
        raise InvalidRequest(
            f"location {location} takes api_version {REGIONAL_VERSION} only (data residency needs the v2 API), "
            f"not {escape_text(version, 40)}"
        )


@dataclass(frozen=True)
class OperationRef:
    """A validated operation, with where and how to reach it."""

    organization: str
    operation_id: str
    location: str = GLOBAL
    api_version: str = DEFAULT_VERSION

    def __post_init__(self) -> None:
        # Every ref becomes a URL, so the pair is checked wherever one is made, not only where requests are parsed.
        check_version(self.api_version)
        if self.location not in LOCATIONS:
            raise InvalidRequest(f"unknown location {escape_text(self.location, 40)}")
        check_pair(self.location, self.api_version)

    @property
    def name(self) -> str:
        return f"organizations/{self.organization}/operations/{self.operation_id}"

    @property
    def parent(self) -> str:
        return f"organizations/{self.organization}"

    @property
    def host(self) -> str:
        return host_for(self.location)

    @property
    def identity(self) -> str:
        """Canonical identity: API host and relative name. The version is deliberately left out."""
        return f"{self.host}/{self.name}"


@dataclass(frozen=True)
class ParsedName:
    organization: str
    operation_id: str
    #: Set only when the name itself fixes them (the URL form).
    location: str | None = None
    api_version: str | None = None


def parse_name(text: str) -> ParsedName:
    """Parse one operation name in any accepted form, or raise ``InvalidRequest`` saying why."""
    if not isinstance(text, str):
        raise InvalidRequest("operation must be a string")
    name = text.strip()
    if not name:
        raise InvalidRequest("operation name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"operation name is longer than {MAX_NAME_LENGTH} characters")
    if name.startswith("//"):
        if not name.startswith(_FULL_RESOURCE_PREFIX):
            raise InvalidRequest(f"full resource names must start with {_FULL_RESOURCE_PREFIX}")
        return _parse_relative(name[len(_FULL_RESOURCE_PREFIX) :])
    if "://" in name:
        return _parse_url(name)
    return _parse_relative(name)


def _parse_url(name: str) -> ParsedName:
    match = _URL.fullmatch(name)
    if not match:
        raise InvalidRequest(
            "URLs must look like https://securitycenter.googleapis.com/VERSION/organizations/ORG/operations/ID"
        )
    host = match["host"]
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
    version = check_version(match["version"])
    check_pair(location, version)
    parsed = _parse_relative(match["rest"])
    return ParsedName(parsed.organization, parsed.operation_id, location, version)


def _parse_relative(path: str) -> ParsedName:
    segments = path.split("/")
    if len(segments) != 4 or segments[0] != "organizations" or segments[2] != "operations":
        raise InvalidRequest("operation names must be organizations/ORG/operations/ID")
    organization, operation_id = segments[1], segments[3]
    if not _ORG.fullmatch(organization):
        raise InvalidRequest("organization must be 1-32 digits without a leading zero")
    if not _OP_ID.fullmatch(operation_id):
        raise InvalidRequest("operation id must be 1-128 characters of A-Z a-z 0-9 . _ ~ -")
    if operation_id in (".", ".."):
        raise InvalidRequest("operation id must not be '.' or '..'")
    return ParsedName(organization, operation_id)


def parse_parent(text: str) -> str:
    """Parse ``organizations/ORG``, the parent whose operations ``list`` reads, or raise ``InvalidRequest``."""
    parent = text.strip()
    organization = parent.removeprefix("organizations/")
    if organization == parent or not _ORG.fullmatch(organization):
        raise InvalidRequest("parents must be organizations/ORG, the organization 1-32 digits without a leading zero")
    return parent


def check_location(value: object) -> str:
    """A location by its canonical name, aliases resolved (``me-central2`` is reported as ``sa``)."""
    location = LOCATION_ALIASES.get(value, value) if isinstance(value, str) else value
    if location not in LOCATIONS:
        expected = ", ".join((*LOCATIONS, *(f"{alias} (= {to})" for alias, to in LOCATION_ALIASES.items())))
        raise InvalidRequest(f"unknown location {escape_text(str(value), 40)}; expected one of {expected}")
    return str(location)


def check_version(value: object) -> str:
    if value not in VERSIONS:
        raise InvalidRequest(
            f"unknown API version {escape_text(str(value), 40)}; expected one of {', '.join(VERSIONS)}"
        )
    return str(value)


def escape_text(text: str, limit: int = MAX_OFFENDING_LENGTH) -> str:
    """Make untrusted text safe to log and to echo: control and format characters escaped, bounded."""
    pieces = []
    for char in text:
        # Not only control characters: format (bidi overrides), unassigned, private-use and
        # separator characters can disguise text in a console, so everything non-printable goes.
        if not char.isprintable():
            pieces.append(char.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            pieces.append(char)
    escaped = "".join(pieces)
    if len(escaped) > limit:
        return escaped[: limit - 1] + "…"
    return escaped
