"""Turn an inbound message into cancel requests and rejections: pure, no I/O. (Checks are decoded in
``_messages``, beside their encoder.)

A message yields a ``Parsed``: requests to act on, rejections that earn a
REJECTED result, and, when the message as a whole is unusable (not text, not
JSON, an oversized batch, a closed incident), an ``ignored`` reason with
nothing else, which the caller logs and acknowledges.

Idempotency keys live in namespaces that never meet, each with a first segment
no other can produce: a derived key is the operation's identity (an API host,
which has a dot, then the relative name); ``incident/`` keys add the incident id,
escaped unambiguously; ``explicit/`` holds a sender's own keys; ``batch/`` holds
the items of a message whose one key names several operations, the key's length
first, so no sender's key can spell an item's; ``rejected/`` holds REJECTED
results, hashed from the whole request, so a rejection never binds the key a
valid request for the same operation would use;
``dry-run/`` is put before the key of a dry run (``dry_run_key``), so a dry run never binds
the key the real request would use.
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
    matching_parent,
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
#: The items of a message whose one key names several operations: ``batch/{length of the key}/{key}/{identity}``.
BATCH_KEYS = "batch/"
INCIDENT_KEYS = "incident/"
#: An incident id too long to echo whole is keyed by its digest, in a namespace of its own, so no short
#: id can spell another incident's digest.
INCIDENT_DIGEST_KEYS = "incident-digest/"
REJECTED_KEYS = "rejected/"
#: The attributes a request reads (``_attribute_defaults``): part of what sets one rejection apart from another.
_REQUEST_ATTRIBUTES = ("idempotency_key", "location", "api_version", "dry_run")
DRY_RUN_KEYS = "dry-run/"
_REQUEST_FIELDS = frozenset(
    {"operation", "location", "api_version", "idempotency_key", "reason", "deadline_seconds", "dry_run"}
)
_BATCH_FIELDS = frozenset(
    {"operations", "location", "api_version", "idempotency_key", "reason", "deadline_seconds", "dry_run"}
)
#: What a caller's identity may be shown as: an email claim is echoed, so it is bounded like any echoed field.
_MAX_CALLER = 256
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
    dry_run: bool | None = None


_NO_DEFAULTS = _Defaults(None, None, None, None, None)


def parse_message(
    message: InboundMessage,
    *,
    default_version: str,
    allowed_parents: tuple[str, ...] | None,
    services: ServiceRegistry = REGISTRY,
    protected_parents: tuple[str, ...] | None = None,
    shadow: bool = False,
) -> Parsed:
    """``shadow`` makes every request a dry run (``OPCANCEL_MODE=shadow``); a request's ``dry_run: false``
    never overrides it."""
    parser = _MessageParser(message, default_version, allowed_parents, services, protected_parents, shadow)
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
        protected_parents: tuple[str, ...] | None,
        shadow: bool,
    ) -> None:
        self._message = message
        self._services = services
        self._default_version = default_version
        self._allowed_parents = allowed_parents
        self._protected_parents = protected_parents
        self._shadow = shadow
        self._source = Source(message.kind, message_id=message.message_id, caller=message.caller)
        self._parsed = Parsed()
        #: What the message sets for all its operations, as sent (attributes, a batch's own fields): with
        #: each entry as sent, what a rejection is keyed by.
        self._shared: dict[str, Any] = {
            "attributes": {name: message.attributes[name] for name in _REQUEST_ATTRIBUTES if name in message.attributes}
        }

    def parse(self) -> Parsed:
        text = self._text()
        try:
            attribute_defaults = self._attribute_defaults()
        except InvalidRequest as problem:
            attribute_defaults = None
            attribute_problem = problem
        stripped = text.strip()
        if stripped[:1] in ("{", "["):
            entries, body_defaults, incident = self._json_entries(stripped)
        else:
            entries, body_defaults, incident = self._text_entries(stripped), None, None
        incident_id = incident[0] if incident is not None else None
        # Set before any rejection, so an alert's rejections name their incident too.
        if incident is not None:
            self._shared["incident_id"] = incident_id
            self._source = Source(
                SourceKind.ALERT,
                message_id=self._message.message_id,
                incident_id=escape_text(incident[0]),
                policy_name=incident[1],
                caller=self._message.caller,
            )
        if attribute_defaults is None:
            shown = _shown_key(self._message.attributes.get("idempotency_key"))
            for entry in entries:
                self._reject(
                    entry,
                    _offending_text(entry),
                    f"attribute {attribute_problem}",
                    shown,
                    defaults=None,
                    dry_run=self._shadow,
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
        dry_run = attributes.get("dry_run")
        return _Defaults(
            location=_field("location", validate_known_location, location) if location is not None else None,
            api_version=_field("api_version", self._known_version, version) if version is not None else None,
            idempotency_key=_field("idempotency_key", _validate_key, key) if key is not None else None,
            reason=None,
            deadline_s=None,
            dry_run=_field("dry_run", _validate_dry_run_attribute, dry_run) if dry_run is not None else None,
        )

    def _text_entries(self, text: str) -> list[Any]:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if len(lines) > MAX_BATCH:
            raise _Ignored(f"message names {len(lines)} operations; the limit is {MAX_BATCH}")
        return lines

    def _json_entries(self, text: str) -> tuple[list[Any], _Defaults | None, tuple[str, str | None] | None]:
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
        self._shared["batch"] = {name: value for name, value in body.items() if name != "operations"}
        return operations, defaults, None

    def _incident_entries(self, body: dict[str, Any]) -> tuple[list[Any], None, tuple[str, str | None]]:
        """The names an open incident carries, and its id and policy name (escaped)."""
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
        policy = incident.get("policy_name")
        return names, None, (incident_id, escape_text(policy) if isinstance(policy, str) and policy else None)

    def _known_version(self, value: Any) -> str:
        return validate_known_version(value, self._services)

    def _entry(self, entry: Any, defaults: _Defaults, *, many: bool, incident_id: str | None) -> None:
        item: _Defaults | None = None
        name: ParsedName | None = None
        try:
            if isinstance(entry, str):
                text, item = entry, _NO_DEFAULTS
            elif isinstance(entry, dict):
                unknown = sorted(set(entry) - _REQUEST_FIELDS)
                if "operation" not in entry:
                    raise InvalidRequest("request object has no 'operation'")
                text = entry["operation"]
                if not isinstance(text, str):
                    raise InvalidRequest("'operation' must be a string")
                item = _object_defaults(entry, self._known_version)
                if unknown:
                    raise InvalidRequest(f"unknown field '{escape_text(unknown[0], 64)}'")
            else:
                raise InvalidRequest("each operation must be a name or an object")
            name = parse_name(text, self._services)
            request = self._request(name, item, defaults, many=many, incident_id=incident_id)
        except InvalidRequest as problem:
            scc = name.service.is_scc if name is not None else _scc_shaped(_offending_text(entry))
            item_key = entry.get("idempotency_key") if isinstance(entry, dict) else None
            dry_run = item.dry_run if item is not None and item.dry_run is not None else defaults.dry_run
            self._reject(
                entry,
                _offending_text(entry),
                str(problem),
                _shown_key(item_key) if item_key is not None else defaults.idempotency_key,
                defaults=defaults,
                location=name.location if name is not None and not scc else item.location if item is not None else None,
                api_version=item.api_version if item is not None else None,
                service=name.service.service_name if name is not None else None,
                dry_run=bool(dry_run) or self._shadow,
                scc_defaults=scc,
            )
            return
        ref = request.ref
        parent = ref.parent if ref.service.is_scc else f"//{ref.service_name}/{ref.parent}"
        if not allows(self._allowed_parents, ref.service, ref.name):
            error = f"{parent} is not in OPCANCEL_ALLOWED_PARENTS"
        else:
            rule = matching_parent(self._protected_parents, ref.service, ref.name)
            if rule is None:
                self._parsed.requests.append(request)
                return
            error = f"{ref.name} is protected: {rule} is in OPCANCEL_PROTECTED_PARENTS"
        self._reject(
            entry,
            ref.name,
            error,
            reported_key(request.idempotency_key),
            defaults=defaults,
            location=ref.location,
            api_version=ref.api_version,
            service=ref.service_name,
            dry_run=request.dry_run,
        )

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
            key = (
                _batch_key(defaults.idempotency_key, ref.identity) if many else EXPLICIT_KEYS + defaults.idempotency_key
            )
        elif incident_id is not None:
            key = _incident_key(incident_id, ref.identity)
        else:
            key = ref.identity
        dry_run = item.dry_run if item.dry_run is not None else defaults.dry_run
        return CancelRequest(
            ref=ref,
            idempotency_key=key,
            source=self._source,
            reason=item.reason if item.reason is not None else defaults.reason,
            deadline_s=item.deadline_s if item.deadline_s is not None else defaults.deadline_s,
            dry_run=bool(dry_run) or self._shadow,
        )

    def _reject(
        self,
        entry: Any,
        offending: str,
        error: str,
        shown_key: str | None,
        *,
        defaults: _Defaults | None,
        location: str | None = None,
        api_version: str | None = None,
        service: str | None = None,
        dry_run: bool = False,
        scc_defaults: bool = True,
    ) -> None:
        """Keyed by a hash of everything the request was made of (``entry`` as sent, what the message set for
        it, its incident, whether it is a dry run) and of what broke, in a namespace no valid request uses: its
        duplicates report once, and a request that differs in anything (location, version, deadline, reason)
        reports too. Without ``scc_defaults`` (text that is no Security Command Center name), only a stated
        location and version are echoed: Security Command Center's defaults would misdescribe it."""
        request = {**self._shared, "entry": entry, "error": error}
        if dry_run:
            request["dry_run"] = True
        key = rejected_key(json.dumps(request, ensure_ascii=True, sort_keys=True, default=str))
        self._parsed.rejections.append(
            Rejection(
                offending=escape_text(offending),
                error=error,
                idempotency_key=key,
                reported_key=shown_key,
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
                dry_run=dry_run,
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
        dry_run=_field("dry_run", _validate_dry_run, body["dry_run"]) if "dry_run" in body else None,
    )


def reported_key(key: str) -> str | None:
    """A stored key as results and answers show it: the key the sender gave (a batch's with the operation's
    identity after it), or the default derived from the operation and its incident; never the store's
    namespace. None for a ``rejected/`` key, which no sender gave (a rejection carries the key it reports)."""
    if key.startswith(DRY_RUN_KEYS):
        key = key[len(DRY_RUN_KEYS) :]
    for namespace in (EXPLICIT_KEYS, INCIDENT_KEYS, INCIDENT_DIGEST_KEYS):
        if key.startswith(namespace):
            return key[len(namespace) :]
    if key.startswith(BATCH_KEYS):
        # batch/{length}/{key}/{identity}: the sender's key and the identity, as the SPEC says they combine.
        return key[len(BATCH_KEYS) :].partition("/")[2]
    if key.startswith(REJECTED_KEYS):
        return None
    return key


def payload_hash(identity: str) -> str:
    """What a key is bound to: a request naming another operation under the same key is told apart by it."""
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()


def dry_run_key(key: str) -> str:
    """Where a dry run is deduplicated: beside, never on, the key the real request would use."""
    return DRY_RUN_KEYS + key


def plain_body(request: CancelRequest) -> dict[str, Any]:
    """A message naming ``request``'s operation with its fields (location, version, reason, deadline) and no
    key: it parses back to the request under the key derived from the operation."""
    ref = request.ref
    body: dict[str, Any] = {"operation": ref.name if ref.service.is_scc else f"//{ref.service_name}/{ref.name}"}
    if ref.service.is_scc:
        body["location"] = ref.location
    body["api_version"] = ref.api_version
    if request.reason is not None:
        body["reason"] = request.reason
    if request.deadline_s is not None:
        body["deadline_seconds"] = request.deadline_s
    return body


def replay_body(request: CancelRequest) -> tuple[bytes, dict[str, str]] | None:
    """A message that parses back to ``request`` with its key (to release a held request by publishing it
    again), or None where no message can carry that key (an incident id escaped or cut in its key): such a
    request is released in-process instead (``Pipeline.release``)."""
    ref = request.ref
    body = plain_body(request)
    key = request.idempotency_key
    if key.startswith(EXPLICIT_KEYS):
        sent = key[len(EXPLICIT_KEYS) :]
        if len(sent) > MAX_KEY_LENGTH:
            return None
        body["idempotency_key"] = sent
    elif key.startswith(BATCH_KEYS):
        length, _, rest = key[len(BATCH_KEYS) :].partition("/")
        sent = rest[: int(length)] if length.isdigit() else ""
        if not sent or _batch_key(sent, ref.identity) != key:
            return None
        # Only a message naming several operations gives its key this form: the operation twice, whose
        # second item is then a duplicate of the first.
        item = {name: value for name, value in body.items() if name != "operation"}
        return json.dumps({"operations": [body["operation"]] * 2, "idempotency_key": sent, **item}).encode(), {}
    elif key.startswith((INCIDENT_KEYS, INCIDENT_DIGEST_KEYS)):
        incident_id = request.source.incident_id
        if incident_id is None or _incident_key(incident_id, ref.identity) != key:
            # Shown cut or escaped in the source: the incident's id as sent cannot be had back.
            return None
        incident = {
            "incident_id": incident_id,
            "state": "open",
            "policy_name": request.source.policy_name or "",
            "documentation": {"content": body["operation"]},
        }
        attributes = {"api_version": ref.api_version, **({"location": ref.location} if ref.service.is_scc else {})}
        return json.dumps({"version": "1.2", "incident": incident}).encode(), attributes
    elif key != ref.identity:
        return None
    return json.dumps(body).encode(), {}


def rejected_key(context: str) -> str:
    """The key of a rejection: a hash of what sets it apart from another, in a namespace no valid request
    uses, so a rejection never binds the key of a request that could be acted on."""
    return REJECTED_KEYS + hashlib.sha256(context.encode("utf-8")).hexdigest()[:40]


def _batch_key(key: str, identity: str) -> str:
    """The key of one item of a message whose one key names several operations. The length of the sender's
    key comes first, so key and identity split one way only and no explicit key (``explicit/``) nor another
    batch's key with another split can equal it."""
    return f"{BATCH_KEYS}{len(key)}/{key}/{identity}"


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


def _shown_key(value: Any) -> str | None:
    """A key a rejected request carried, as its result reports it: as given when it is a valid key (printable,
    so safe to echo), escaped and bounded when it is the text that was rejected, none when not text."""
    if not isinstance(value, str):
        return None
    try:
        return _validate_key(value)
    except InvalidRequest:
        return escape_text(value)


def validate_stored_key(value: Any) -> str:
    """A key opcancel built and wrote into a check: any namespace's, longer than a sender may send."""
    return _validate_key(value, MAX_STORED_KEY_LENGTH)


def _validate_dry_run(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest("must be true or false")
    return value


def _validate_dry_run_attribute(value: Any) -> bool:
    """Attributes are strings: ``true`` or ``false`` in any case, and nothing else."""
    if not isinstance(value, str) or value.lower() not in ("true", "false"):
        raise InvalidRequest("must be true or false")
    return value.lower() == "true"


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
