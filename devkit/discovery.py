"""Google's published REST contract, checked: every request opcancel makes must be a method one of Google's
discovery documents defines, with a body its request schema accepts.

The documents are in ``tests/data/discovery/`` (where each comes from: the README there). One checker
serves the unit tests (a wrapping ``httpx.MockTransport`` handler, ``tests/support.py``) and the devkit
stand-ins (the simulator and the Cloud Tasks stand-in refuse what it refuses, as Google would, and record
it in ``LEDGER``, which the test session turns into a failure naming the request and the rule).

What a request must satisfy (docs/conformance.md says why each):
- its HTTP method and path match a method's ``flatPath`` (servicePath included) in the document of the
  host it goes to (``rootUrl``, an ``endpoints`` entry, or a host a cited Google page names, ``CITED_HOSTS``);
  a request whose host was replaced by an endpoint override is matched against every document;
- every query parameter is the method's or one of the document's global ones, with a value of its type;
- a method without ``request`` gets no body at all; one with a ``request`` gets a JSON object that the
  schema accepts: no unknown field (JSON or proto names), each value of its type, enum, or format
  (int64 as a decimal string, google-datetime, google-duration, base64 bytes padded or not).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import pathlib
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

DOCUMENTS = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "discovery"
#: Hosts a Google page, not the discovery document, says serve a service: service -> (host pattern, page).
CITED_HOSTS = {
    "dataproc": (
        re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*-dataproc\.googleapis\.com"),
        "https://cloud.google.com/dataproc/docs/concepts/cluster-region "
        "(locational endpoints {location}-{service}.googleapis.com, the default Dataproc endpoint)",
    ),
}
#: Path bindings a discovery document leaves out (it keeps one binding per method; ``**`` matching no
#: segment is lost in its regex), from the method's REST reference page: method id -> (flatPath, page).
CITED_PATHS = {
    "firestore.projects.databases.documents.createDocument": (
        "v1/projects/{projectsId}/databases/{databasesId}/documents/{collectionId}",
        "https://cloud.google.com/firestore/docs/reference/rest/v1/projects.databases.documents/createDocument "
        "({parent=projects/*/databases/*/documents/**}/{collectionId})",
    ),
    "firestore.projects.databases.documents.runQuery": (
        "v1/projects/{projectsId}/databases/{databasesId}/documents:runQuery",
        "https://cloud.google.com/firestore/docs/reference/rest/v1/projects.databases.documents/runQuery "
        "({parent=projects/*/databases/*/documents}:runQuery)",
    ),
}
_GOOGLEAPIS = re.compile(r"[a-z0-9.-]+\.googleapis\.com")
_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
_DURATION = re.compile(r"-?[0-9]{1,12}(?:\.[0-9]{1,9})?s")
_INTEGER = re.compile(r"-?[0-9]{1,20}")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
_INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


class Violation(Exception):
    """A request outside the contract: ``status`` is what Google answers (404 no such method, 400 a bad
    argument), ``field`` the offending field or parameter, if one."""

    def __init__(self, status: int, rule: str, *, field: str | None = None, request: str = "") -> None:
        super().__init__(rule)
        self.status = status
        self.rule = rule
        self.field = field
        self.request = request

    def __str__(self) -> str:
        return f"{self.request}: {self.rule}" if self.request else self.rule

    def error_body(self) -> dict[str, Any]:
        """Google's error JSON for this refusal."""
        error: dict[str, Any] = {
            "code": self.status,
            "message": self.rule,
            "status": "NOT_FOUND" if self.status == 404 else "INVALID_ARGUMENT",
        }
        if self.field is not None:
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": self.field, "description": self.rule}],
                }
            ]
        return {"error": error}


@dataclass(frozen=True)
class Method:
    """One documented method: which document, its id, and what it takes."""

    service: str
    version: str
    id: str
    http_method: str
    flat_path: str
    parameters: dict[str, Any]
    request: str | None
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class Document:
    service: str
    version: str
    revision: str
    hosts: frozenset[str]
    parameters: dict[str, Any]
    schemas: dict[str, Any]
    methods: tuple[Method, ...]

    def serves_host(self, host: str) -> bool:
        cited = CITED_HOSTS.get(self.service)
        return host in self.hosts or bool(cited and cited[0].fullmatch(host))


def _document(raw: dict[str, Any]) -> Document:
    hosts = {urlsplit(raw["rootUrl"]).hostname or ""}
    hosts |= {urlsplit(endpoint["endpointUrl"]).hostname or "" for endpoint in raw.get("endpoints", [])}
    service_path = raw.get("servicePath", "")
    methods = []
    for method in _methods(raw.get("resources", {})):
        cited = CITED_PATHS.get(method["id"])
        for flat_path in (method["flatPath"], *(cited[:1] if cited else ())):
            template = re.escape("/" + service_path + flat_path)
            pattern = re.sub(r"\\\{[A-Za-z0-9_]+\\\}", "[^/:]+", template)
            methods.append(
                Method(
                    raw["name"],
                    raw["version"],
                    method["id"],
                    method["httpMethod"],
                    flat_path,
                    method.get("parameters", {}),
                    method.get("request", {}).get("$ref"),
                    re.compile(pattern),
                )
            )
    return Document(
        raw["name"],
        raw["version"],
        raw["revision"],
        frozenset(hosts),
        raw.get("parameters", {}),
        raw.get("schemas", {}),
        tuple(methods),
    )


def _methods(resources: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for resource in resources.values():
        yield from resource.get("methods", {}).values()
        yield from _methods(resource.get("resources", {}))


class Contract:
    """The documents, and the one check of a request against them."""

    def __init__(self, documents: Iterable[dict[str, Any]]) -> None:
        self.documents = tuple(_document(raw) for raw in documents)

    @classmethod
    @functools.cache
    def load(cls, directory: pathlib.Path = DOCUMENTS) -> Contract:
        return cls(json.loads(path.read_text(encoding="utf-8")) for path in sorted(directory.glob("*.json")))

    def document(self, service: str, version: str) -> Document | None:
        return next((d for d in self.documents if (d.service, d.version) == (service, version)), None)

    def methods_for(self, http_method: str, path: str, host: str | None = None) -> list[tuple[Document, Method]]:
        """Every documented method a request's method and path (and host, when known) can be."""
        found = []
        for document in self.documents:
            if host is not None and not document.serves_host(host):
                continue
            for method in document.methods:
                if method.http_method == http_method and method.pattern.fullmatch(path):
                    found.append((document, method))
        return found

    def check(
        self,
        http_method: str,
        path: str,
        *,
        host: str | None = None,
        query: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str = "",
    ) -> Method:
        """The documented method this request is, or raise ``Violation`` saying which rule it breaks.

        With no host (an endpoint override hid it), a request conforms when any method it can be
        accepts it."""
        shown = f"{http_method} {host or ''}{path}"
        if host is not None and not any(d.serves_host(host) for d in self.documents):
            raise Violation(404, f"{host} is not a host any discovery document (or cited page) names", request=shown)
        candidates = self.methods_for(http_method, path, host)
        if not candidates:
            raise Violation(404, "no documented method has this HTTP method and path", request=shown)
        problem: Violation | None = None
        for document, method in candidates:
            try:
                _check_query(document, method, query)
                _check_body(document, method, body, content_type)
                return method
            except Violation as violation:
                violation.request = f"{shown} ({method.id} {method.version})"
                problem = problem or violation
        assert problem is not None
        raise problem

    def check_url(self, http_method: str, url: str, body: bytes = b"", content_type: str = "") -> Method:
        """``check`` for a whole URL: a googleapis.com host is the host; otherwise a first path segment that
        is one (``OPCANCEL_API_ENDPOINT=http://stand-in/{host}``) is, and the rest is the path."""
        parts = urlsplit(url)
        host, path = split_host(parts.hostname or "", parts.path)
        query = parse_qsl(parts.query, keep_blank_values=True)
        return self.check(http_method, path, host=host, query=query, body=body, content_type=content_type)


def split_host(hostname: str, path: str) -> tuple[str | None, str]:
    """The Google host a request was meant for and its path: the URL's own host when it is a
    googleapis.com host, else a leading ``/HOST.googleapis.com`` path segment, else unknown."""
    if _GOOGLEAPIS.fullmatch(hostname):
        return hostname, path
    first, _, rest = path.lstrip("/").partition("/")
    if _GOOGLEAPIS.fullmatch(first):
        return first, "/" + rest
    return None, path


def _check_query(document: Document, method: Method, query: Iterable[tuple[str, str]]) -> None:
    for name, value in query:
        parameter = method.parameters.get(name) or document.parameters.get(name)
        if parameter is None or parameter.get("location") != "query":
            raise Violation(
                400, f'Invalid JSON payload received. Unknown name "{name}": Cannot bind query parameter.', field=name
            )
        _scalar(document, parameter, value, name, from_query=True)


def _check_body(document: Document, method: Method, body: bytes, content_type: str) -> None:
    if method.request is None:
        if body:
            raise Violation(400, f"{method.id} takes no request body (the request body must be empty)", field="body")
        return
    if body and "json" not in content_type.lower():
        raise Violation(400, f"{method.id} takes a JSON body, not {content_type or 'an untyped one'}", field="body")
    try:
        value = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        raise Violation(400, "Invalid JSON payload received.", field="body") from None
    validate(document, {"$ref": method.request}, value, "")


def validate(document: Document, schema: dict[str, Any], value: Any, where: str) -> None:
    """Raise ``Violation`` unless ``value`` is what ``schema`` (a discovery JSON schema) accepts."""
    if "$ref" in schema:
        schema = document.schemas[schema["$ref"]]
    if value is None:
        return  # proto3 JSON: null is the field's default
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise Violation(400, f"Invalid value at '{where or 'request'}': expected an object", field=where or None)
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        if properties is None and extra is not None:
            for key, item in value.items():
                validate(document, extra, item, f"{where}[{key!r}]")
            return
        properties = properties or {}
        seen: dict[str, str] = {}
        for key, item in value.items():
            name = key if key in properties else _camel(key)
            if name not in properties:
                raise Violation(
                    400,
                    f"Invalid JSON payload received. Unknown name \"{key}\" at '{where or 'request'}': "
                    "Cannot find field.",
                    field=f"{where}.{key}".lstrip("."),
                )
            if name in seen:
                raise Violation(400, f"field {name} is set twice ({seen[name]}, {key})", field=name)
            seen[name] = key
            validate(document, properties[name], item, f"{where}.{name}".lstrip("."))
        return
    if kind == "array":
        if not isinstance(value, list):
            raise Violation(400, f"Invalid value at '{where}': expected a list", field=where)
        for index, item in enumerate(value):
            validate(document, schema.get("items", {}), item, f"{where}[{index}]")
        return
    if kind == "any" or kind is None:
        return
    _scalar(document, schema, value, where, from_query=False)


def _scalar(document: Document, schema: dict[str, Any], value: Any, where: str, *, from_query: bool) -> None:
    kind, form = schema.get("type"), schema.get("format")

    def bad(why: str) -> Violation:
        return Violation(400, f"Invalid value at '{where}' ({why}): {str(value)[:80]!r}", field=where)

    if kind == "boolean":
        if value not in (("true", "false") if from_query else (True, False)) or (
            not from_query and not isinstance(value, bool)
        ):
            raise bad("TYPE_BOOL")
        return
    if kind == "integer" or form in _INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise bad(f"TYPE_{(form or 'int32').upper()}")
        if isinstance(value, str) and not _INTEGER.fullmatch(value):
            raise bad(f"TYPE_{(form or 'int32').upper()}")
        low, high = _INT_RANGES.get(form or "int32", _INT_RANGES["int32"])
        if not low <= int(value) <= high:
            raise bad(f"TYPE_{(form or 'int32').upper()} out of range")
        return
    if kind == "number":
        if isinstance(value, bool) or not (
            isinstance(value, (int, float)) or value in ("NaN", "Infinity", "-Infinity") or from_query
        ):
            raise bad("TYPE_DOUBLE")
        return
    if not isinstance(value, str):
        raise bad("TYPE_STRING")
    if "enum" in schema and value not in schema["enum"]:
        raise bad(f"not one of {', '.join(schema['enum'])}")
    if form == "google-datetime" and not _DATETIME.fullmatch(value):
        raise bad("type.googleapis.com/google.protobuf.Timestamp")
    if form == "google-duration" and not _DURATION.fullmatch(value):
        raise bad("type.googleapis.com/google.protobuf.Duration")
    if form == "byte":
        _base64(value, bad)


def _base64(value: str, bad: Any) -> None:
    # proto3 JSON takes standard or URL-safe base64, with or without padding.
    if not _BASE64.fullmatch(value):
        raise bad("TYPE_BYTES")
    text = value.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise bad("TYPE_BYTES") from None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class Ledger:
    """Every violation the stand-ins saw in this process, for the test session to report."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[Violation] = []

    def record(self, violation: Violation) -> None:
        with self._lock:
            self._seen.append(violation)

    def take(self) -> list[Violation]:
        with self._lock:
            seen, self._seen = self._seen, []
        return seen


LEDGER = Ledger()
