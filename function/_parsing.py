"""Turn an inbound message into cancel requests and rejections: pure, no I/O. (Checks are decoded in
``_messages``, beside their encoder.)

A message yields a ``Parsed``: requests to act on, rejections that earn a
REJECTED result, and, when the message as a whole is unusable (not text, not
JSON, an oversized batch, a closed incident), an ``ignored`` reason with
nothing else, which the caller logs and acknowledges.

Idempotency keys live in namespaces that never meet, each with a first segment
no other can produce: a derived key is the operation's identity (an API host,
which has a dot, then the relative name); ``incident/`` keys add the incident id,
escaped unambiguously; ``explicit/`` holds a sender's own keys; ``rejected/``
holds REJECTED results, hashed from the whole request, so a rejection never
binds the key a valid request for the same operation would use.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ._json import JsonUnreadable, read_json
from ._model import CancelRequest, InboundMessage, Rejection, Source, SourceKind
from ._names import (
    GLOBAL,
    MAX_ECHO_LENGTH,
    REGISTRY,
    OperationRef,
    ParsedName,
    ServiceRegistry,
    allows,
    escape_text,
    parse_name,
    validate_known_location,
    validate_known_version,
    validate_location,
    version_for,
)
from ._settings import MAX_DEADLINE_S
from .errors import InvalidRequest

MAX_BATCH = 100
MAX_BODY_BYTES = 1024 * 1024
MAX_KEY_LENGTH = 256
#: Keys opcancel builds (a namespace, an escaped incident id, an identity) are longer than a sender's.
MAX_STORED_KEY_LENGTH = 4096
EXPLICIT_KEYS = "explicit/"
INCIDENT_KEYS = "incident/"
#: An incident id too long to echo whole is keyed by its digest, in a namespace of its own, so no short
#: id can spell another incident's digest.
INCIDENT_DIGEST_KEYS = "incident-digest/"
REJECTED_KEYS = "rejected/"
_REQUEST_FIELDS = frozenset({"operation", "location", "api_version", "idempotency_key", "reason", "deadline_seconds"})
_BATCH_FIELDS = frozenset({"operations", "location", "api_version", "idempotency_key", "reason", "deadline_seconds"})
# Names inside free text (incident documentation): Security Command Center's in any form, other services'
# as full resource names or URLs. Trailing dots are sentence punctuation, not ids.
_NAME_IN_TEXT = re.compile(
    r"(?:https://securitycenter[A-Za-z0-9.-]*\.googleapis\.com/[A-Za-z0-9]+/|//securitycenter\.googleapis\.com/)?"
    r"organizations/[0-9]+/operations/[A-Za-z0-9._~-]+"
    r"|(?:https://[a-z0-9.-]+\.googleapis\.com/[A-Za-z0-9]+/|//[a-z0-9-]+\.googleapis\.com/)"
    r"projects/[A-Za-z0-9-]+(?:/(?:locations|regions)/[A-Za-z0-9-]+)?/operations/[A-Za-z0-9._~-]+"
)
_LABEL_MAPS = (("metric", "labels"), ("resource", "labels"), ("policy_user_labels",))
# Log-match incidents leave metric.labels empty and list the extracted labels in the summary,
# "Log match condition with labels {operation_id=..., organization_id=...} fired ...".
_LABEL_IN_TEXT = re.compile(
    r"(?<![A-Za-z0-9_])(organization_id|operation_id)[\"']?\s*[=:]\s*[\"']?([A-Za-z0-9._~-]+)(?=[\s,;}\]\"')]|$)"
)


@dataclass
class Parsed:
    """A message parsed: requests to act on, rejections to report, or why the whole was set aside."""

    requests: list[CancelRequest] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    #: Why the message as a whole was set aside, when it was.
    ignored: str | None = None
    #: The body could not be read at all: empty, too large, not UTF-8, or broken JSON.
    unreadable: bool = False
    #: Set aside as a matter of course (a closed incident), not because of a mistake.
    routine: bool = False


@dataclass(frozen=True)
class _Defaults:
    """What a message sets for each of its operations (by attributes or top-level fields) unless an item sets its own."""

    location: str | None
    api_version: str | None
    idempotency_key: str | None
    reason: str | None
    deadline_s: float | None


def parse_message(
    message: InboundMessage,
    *,
    default_version: str,
    allowed_parents: tuple[str, ...] | None,
    services: ServiceRegistry = REGISTRY,
) -> Parsed:
    parser = _MessageParser(message, default_version, allowed_parents, services)
    try:
        return parser.parse()
    except _Ignored as ignored:
        return Parsed(ignored=str(ignored), unreadable=ignored.unreadable, routine=ignored.routine)


class _Ignored(Exception):
    """The message as a whole names nothing to act on."""

    def __init__(self, reason: str, *, unreadable: bool = False, routine: bool = False) -> None:
        super().__init__(reason)
        self.unreadable = unreadable
        self.routine = routine


class _MessageParser:
    def __init__(
        self,
        message: InboundMessage,
        default_version: str,
        allowed_parents: tuple[str, ...] | None,
        services: ServiceRegistry,
    ) -> None:
        self._message = message
        self._services = services
        self._default_version = default_version
        self._allowed_parents = allowed_parents
        self._source = Source(message.kind, message_id=message.message_id)
        self._parsed = Parsed()

    def parse(self) -> Parsed:
        text = self._text()
        try:
            attribute_defaults = self._attribute_defaults()
        except InvalidRequest as problem:
            attribute_defaults = None
            attribute_problem = problem
        stripped = text.strip()
        if stripped[:1] in ("{", "["):
            entries, body_defaults, incident_id = self._json_entries(stripped)
        else:
            entries, body_defaults, incident_id = self._text_entries(stripped), None, None
        # Set before any rejection, so an alert's rejections name their incident too.
        if incident_id is not None:
            self._source = Source(
                SourceKind.ALERT, message_id=self._message.message_id, incident_id=escape_text(incident_id)
            )
        if attribute_defaults is None:
            for entry in entries:
                self._reject(
                    _offending_text(entry),
                    f"attribute {attribute_problem}",
                    context=(self._message.attributes.get("idempotency_key"), incident_id),
                    defaults=None,
                )
            return self._parsed
        defaults = _merge(attribute_defaults, body_defaults)
        many = len(entries) > 1
        for entry in entries:
            self._entry(entry, defaults, many=many, incident_id=incident_id)
        return self._parsed

    def _text(self) -> str:
        data = self._message.data
        if len(data) > MAX_BODY_BYTES:
            raise _Ignored(f"body is {len(data)} bytes; the limit is {MAX_BODY_BYTES}", unreadable=True)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _Ignored("body is not UTF-8 text", unreadable=True) from None
        if not text.strip():
            raise _Ignored("body is empty", unreadable=True)
        return text

    def _attribute_defaults(self) -> _Defaults:
        attributes = self._message.attributes
        location = attributes.get("location")
        version = attributes.get("api_version")
        key = attributes.get("idempotency_key")
        return _Defaults(
            location=_field("location", validate_known_location, location) if location is not None else None,
            api_version=_field("api_version", self._known_version, version) if version is not None else None,
            idempotency_key=_field("idempotency_key", _validate_key, key) if key is not None else None,
            reason=None,
            deadline_s=None,
        )

    def _text_entries(self, text: str) -> list[Any]:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if len(lines) > MAX_BATCH:
            raise _Ignored(f"message names {len(lines)} operations; the limit is {MAX_BATCH}")
        return lines

    def _json_entries(self, text: str) -> tuple[list[Any], _Defaults | None, str | None]:
        try:
            body = read_json(text)
        except JsonUnreadable as problem:
            raise _Ignored(f"body is {problem}", unreadable=True) from None
        if not isinstance(body, dict):
            raise _Ignored("a JSON body must be an object")
        if "incident" in body:
            return self._incident_entries(body)
        if "operations" in body:
            return self._batch_entries(body)
        if "operation" in body:
            return [body], None, None
        raise _Ignored("JSON object names no operation: expected 'operation', 'operations' or 'incident'")

    def _batch_entries(self, body: dict[str, Any]) -> tuple[list[Any], _Defaults | None, None]:
        unknown = sorted(set(body) - _BATCH_FIELDS)
        if unknown:
            raise _Ignored(f"batch has unknown field '{escape_text(unknown[0], 64)}'")
        operations = body["operations"]
        if not isinstance(operations, list) or not operations:
            raise _Ignored("'operations' must be a non-empty list")
        if len(operations) > MAX_BATCH:
            raise _Ignored(f"batch of {len(operations)} operations exceeds the limit of {MAX_BATCH}")
        try:
            defaults = _object_defaults(body, self._known_version)
        except InvalidRequest as problem:
            raise _Ignored(f"batch {problem}") from None
        return operations, defaults, None

    def _incident_entries(self, body: dict[str, Any]) -> tuple[list[Any], None, str]:
        incident = body["incident"]
        if not isinstance(incident, dict):
            raise _Ignored("'incident' must be an object")
        state = incident.get("state")
        if state != "open":
            raise _Ignored(f"incident state is '{escape_text(str(state), 32)}'; only open incidents act", routine=True)
        incident_id = incident.get("incident_id")
        # Any length: like every echoed field, a long one is cut where it is shown (SPEC), not refused.
        if not isinstance(incident_id, str) or not incident_id.strip():
            raise _Ignored("open incident has no usable incident_id")
        names = list(dict.fromkeys(_names_in_incident(incident)))
        if not names:
            raise _Ignored("open incident names no operation in its documentation or labels", routine=True)
        if len(names) > MAX_BATCH:
            raise _Ignored(f"incident names {len(names)} operations; the limit is {MAX_BATCH}")
        return names, None, incident_id

    def _known_version(self, value: Any) -> str:
        return validate_known_version(value, self._services)

    def _entry(self, entry: Any, defaults: _Defaults, *, many: bool, incident_id: str | None) -> None:
        item_key: str | None = None
        item: _Defaults | None = None
        name: ParsedName | None = None
        try:
            if isinstance(entry, str):
                text, item = entry, _Defaults(None, None, None, None, None)
            elif isinstance(entry, dict):
                unknown = sorted(set(entry) - _REQUEST_FIELDS)
                if "operation" not in entry:
                    raise InvalidRequest("request object has no 'operation'")
                text = entry["operation"]
                if not isinstance(text, str):
                    raise InvalidRequest("'operation' must be a string")
                item_key = entry.get("idempotency_key") if isinstance(entry.get("idempotency_key"), str) else None
                item = _object_defaults(entry, self._known_version)
                if unknown:
                    raise InvalidRequest(f"unknown field '{escape_text(unknown[0], 64)}'")
            else:
                raise InvalidRequest("each operation must be a name or an object")
            name = parse_name(text, self._services)
            request = self._request(name, item, defaults, many=many, incident_id=incident_id)
        except InvalidRequest as problem:
            scc = name.service.is_scc if name is not None else _scc_shaped(_offending_text(entry))
            self._reject(
                _offending_text(entry),
                str(problem),
                context=(item_key, defaults.idempotency_key, incident_id),
                defaults=defaults,
                location=name.location if name is not None and not scc else item.location if item is not None else None,
                api_version=item.api_version if item is not None else None,
                service=name.service.service_name if name is not None else None,
                scc_defaults=scc,
            )
            return
        ref = request.ref
        if not allows(self._allowed_parents, ref.service, ref.name):
            parent = ref.parent if ref.service.is_scc else f"//{ref.service_name}/{ref.parent}"
            self._reject(
                ref.name,
                f"{parent} is not in OPCANCEL_ALLOWED_PARENTS",
                context=(request.idempotency_key,),
                defaults=defaults,
                location=ref.location,
                api_version=ref.api_version,
                service=ref.service_name,
            )
            return
        self._parsed.requests.append(request)

    def _request(
        self, name: ParsedName, item: _Defaults, defaults: _Defaults, *, many: bool, incident_id: str | None
    ) -> CancelRequest:
        service = name.service
        if service.is_scc:
            location = _field(
                "location",
                validate_location,
                _pick("location", name.location, item.location, defaults.location, GLOBAL),
            )
            fallback = version_for(location, self._default_version)
        else:
            # Other services' names carry their location; a location field may only repeat it.
            location = name.location or GLOBAL
            for given in (item.location, defaults.location):
                if given is not None and given != location:
                    raise InvalidRequest(
                        f"location {given!r} contradicts the name, which says {location!r} "
                        f"(a location field applies to Security Command Center names only)"
                    )
            fallback = service.version
        version = _pick("api_version", name.api_version, item.api_version, defaults.api_version, fallback)
        ref = OperationRef(name.name, location, _field("api_version", service.validate_version, version), service)
        if item.idempotency_key is not None:
            key = EXPLICIT_KEYS + item.idempotency_key
        elif defaults.idempotency_key is not None:
            key = EXPLICIT_KEYS + (f"{defaults.idempotency_key}/{ref.identity}" if many else defaults.idempotency_key)
        elif incident_id is not None:
            key = _incident_key(incident_id, ref.identity)
        else:
            key = ref.identity
        return CancelRequest(
            ref=ref,
            idempotency_key=key,
            source=self._source,
            reason=item.reason if item.reason is not None else defaults.reason,
            deadline_s=item.deadline_s if item.deadline_s is not None else defaults.deadline_s,
        )

    def _reject(
        self,
        offending: str,
        error: str,
        *,
        context: tuple[str | None, ...],
        defaults: _Defaults | None,
        location: str | None = None,
        api_version: str | None = None,
        service: str | None = None,
        scc_defaults: bool = True,
    ) -> None:
        """``context`` is what sets this request apart from another naming the same text (its keys, its
        incident); the rejection is keyed by a hash of both, in a namespace no valid request uses. Without
        ``scc_defaults`` (text that is no Security Command Center name), only a stated location and version
        are echoed: Security Command Center's defaults would misdescribe it."""
        key = rejected_key(json.dumps([*context, offending], ensure_ascii=True))
        self._parsed.rejections.append(
            Rejection(
                offending=escape_text(offending),
                error=error,
                idempotency_key=key,
                source=self._source,
                location=location
                or (defaults.location if defaults and defaults.location else GLOBAL if scc_defaults else None),
                api_version=api_version
                or (
                    defaults.api_version
                    if defaults and defaults.api_version
                    else self._default_version
                    if scc_defaults
                    else None
                ),
                service=service,
            )
        )


def _names_in_incident(incident: Mapping[str, Any]) -> Iterator[str]:
    documentation = incident.get("documentation")
    texts = [documentation.get(part) for part in ("subject", "content")] if isinstance(documentation, dict) else []
    summary = incident.get("summary")
    for text in (*texts, summary):
        if isinstance(text, str):
            for match in _NAME_IN_TEXT.finditer(text[:MAX_BODY_BYTES]):
                yield match.group(0).rstrip(".")
    label_maps = []
    for path in _LABEL_MAPS:
        labels: Any = incident
        for step in path:
            labels = labels.get(step) if isinstance(labels, dict) else None
        label_maps.append(labels)
    if isinstance(summary, str):
        label_maps.append({key: value for key, value in reversed(_LABEL_IN_TEXT.findall(summary[:MAX_BODY_BYTES]))})
    for labels in label_maps:
        if isinstance(labels, dict):
            organization, operation = labels.get("organization_id"), labels.get("operation_id")
            if isinstance(organization, str) and isinstance(operation, str):
                yield f"organizations/{organization}/operations/{operation}"


def _object_defaults(body: Mapping[str, Any], validate_api_version: Callable[[Any], str]) -> _Defaults:
    return _Defaults(
        location=_field("location", validate_known_location, body["location"]) if "location" in body else None,
        api_version=_field("api_version", validate_api_version, body["api_version"]) if "api_version" in body else None,
        idempotency_key=_field("idempotency_key", _validate_key, body["idempotency_key"])
        if "idempotency_key" in body
        else None,
        reason=_field("reason", _validate_reason, body["reason"]) if "reason" in body else None,
        deadline_s=_field("deadline_seconds", _validate_deadline, body["deadline_seconds"])
        if "deadline_seconds" in body
        else None,
    )


def rejected_key(context: str) -> str:
    """The key of a rejection: a hash of what sets it apart from another, in a namespace no valid request
    uses, so a rejection never binds the key of a request that could be acted on."""
    return REJECTED_KEYS + hashlib.sha256(context.encode("utf-8")).hexdigest()[:40]


def _incident_key(incident_id: str, identity: str) -> str:
    """The key of one operation named by an incident. The id is escaped whole and unambiguously (a backslash
    doubled), so no two incident ids share a key; one longer than an echoed field may be is keyed by the
    digest of that escaped text instead, which keeps keys (logged with every line) bounded."""
    escaped = escape_text(incident_id, None)
    if len(incident_id) <= MAX_ECHO_LENGTH:
        return f"{INCIDENT_KEYS}{escaped}/{identity}"
    return f"{INCIDENT_DIGEST_KEYS}{hashlib.sha256(escaped.encode('utf-8')).hexdigest()}/{identity}"


def _field(name: str, validate: Callable[[Any], Any], value: Any) -> Any:
    try:
        return validate(value)
    except InvalidRequest as problem:
        raise InvalidRequest(f"{name}: {problem}") from None


def _validate_key(value: Any, limit: int = MAX_KEY_LENGTH) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidRequest(f"must be a string of 1-{limit} characters")
    if not value.isprintable() or value != value.strip():
        raise InvalidRequest("must not contain control characters or surrounding whitespace")
    return value


def validate_stored_key(value: Any) -> str:
    """A key opcancel built and wrote into a check: any namespace's, longer than a sender may send."""
    return _validate_key(value, MAX_STORED_KEY_LENGTH)


def _validate_reason(value: Any) -> str:
    """Any text: it is only echoed, so it is escaped and bounded here, once, rather than refused."""
    if not isinstance(value, str):
        raise InvalidRequest("must be a string")
    return escape_text(value)


def _validate_deadline(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest("must be a number of seconds")
    # Only floats can be non-finite; math.isfinite overflows on a JSON integer beyond float range.
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest("must be a number of seconds")
    if not 0 < value <= MAX_DEADLINE_S:
        raise InvalidRequest(f"must be more than 0 and at most {MAX_DEADLINE_S} seconds (7 days)")
    return float(value)


def _pick(name: str, from_name: str | None, item: str | None, *fallbacks: str | None) -> str:
    if from_name is not None and item is not None and from_name != item:
        raise InvalidRequest(f"{name} {item!r} contradicts the URL, which says {from_name!r}")
    return next(candidate for candidate in (from_name, item, *fallbacks) if candidate is not None)


def _merge(attributes: _Defaults, body: _Defaults | None) -> _Defaults:
    if body is None:
        return attributes
    merged = {}
    for item in fields(_Defaults):
        from_body = getattr(body, item.name)
        merged[item.name] = from_body if from_body is not None else getattr(attributes, item.name)
    return _Defaults(**merged)


def _scc_shaped(text: str) -> bool:
    """Whether unparsable text was still meant as a Security Command Center name (or names no API at all)."""
    return not text.strip().startswith(("projects/", "//", "https://", "http://"))


def _offending_text(entry: Any) -> str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("operation"), str):
        return entry["operation"]
    return json.dumps(entry, ensure_ascii=False, default=str)
