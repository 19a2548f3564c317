"""Envelopes: a CloudEvent, a Pub/Sub push body, a legacy background event or a plain HTTP body, unwrapped
to the ``InboundMessage`` it carries. Nothing else happens here: no parsing of requests, no decisions."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from ._json import JsonUnreadable, read_json
from ._model import InboundMessage, SourceKind
from ._names import escape_text

PUBSUB_MESSAGE_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
_JSON_TYPES = ("application/json", "application/cloudevents+json")
#: The attributes a binary-mode CloudEvent carries as ``ce-`` headers (CloudEvents 1.0, HTTP binding).
_REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type")
#: Google's ID tokens are a few KiB; a longer header is not one, and is not decoded.
_MAX_AUTHORIZATION = 16 * 1024


class UnusableEvent(Exception):
    """An event that carries no message opcancel can read."""


def message_from_http(headers: Mapping[str, str], media_type: str, data: bytes) -> InboundMessage:
    """An HTTP body, however it is framed: a CloudEvent (either mode), a Pub/Sub push body, a legacy background
    event, or a request as JSON or text; each names its caller, where the bearer token claims an email."""
    message = _http_message(headers, media_type, data)
    caller = caller_email(headers.get("Authorization"))
    return message if caller is None else dataclasses.replace(message, caller=caller)


def caller_email(authorization: str | None) -> str | None:
    """The ``email`` claim of the bearer token, read WITHOUT verifying its signature, or None.

    Cloud Run verified the token before the request reached the function (the service admits only
    authenticated callers, deploy.sh), so its claims are who called; verifying again would fetch Google's
    keys on a cold start for nothing. It is still a claim a sender wrote: bounded and escaped like any
    echoed field, and only used to say who triggered a cancel, never to decide anything.
    """
    if not authorization or len(authorization) > _MAX_AUTHORIZATION:
        return None
    scheme, _, token = authorization.partition(" ")
    parts = token.strip().split(".")
    if scheme.lower() != "bearer" or len(parts) != 3:
        return None
    try:
        payload = read_json(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, JsonUnreadable):
        return None
    email = payload.get("email") if isinstance(payload, dict) else None
    return escape_text(email) if isinstance(email, str) and email else None


def _http_message(headers: Mapping[str, str], media_type: str, data: bytes) -> InboundMessage:
    if not data.strip():
        raise UnusableEvent("body is empty")
    media_type = media_type.lower()
    if "ce-specversion" in headers or media_type == "application/cloudevents+json":
        return message_from_cloud_event(_cloud_event(headers, media_type, data))
    if media_type in _JSON_TYPES:
        try:
            body = read_json(data)
        except JsonUnreadable as problem:
            raise UnusableEvent(f"body is {problem}") from None
        if isinstance(body, dict) and isinstance(body.get("message"), dict) and "subscription" in body:
            return _pubsub_message(body["message"])
        if isinstance(body, dict) and isinstance(body.get("context"), dict):
            return _legacy_message(body)
        return InboundMessage(data=data, kind=SourceKind.HTTP)
    if media_type in ("text/plain", ""):
        return InboundMessage(data=data, kind=SourceKind.HTTP)
    # A body in another media type cannot be read at all: a 400, as for an empty or broken body (SPEC).
    raise UnusableEvent(
        f"content type '{escape_text(media_type, 64)}' is not application/json, text/plain or a CloudEvent"
    )


def _cloud_event(headers: Any, media_type: str, data: bytes) -> Any:
    """A CloudEvent from an HTTP request, its JSON read by opcancel's own reader in either mode.

    The cloudevents library is handed a dict, never the body: its own reading parses JSON with a parser
    that recurses without a bound, and it takes the body for a structured event whenever the four
    required ``ce-`` headers are not all there. Binary mode (all four, and not the structured media
    type) keeps the data as bytes; anything else is read here as a structured event's envelope, and the
    required attributes are checked here in both modes.
    """
    from cloudevents.exceptions import GenericException
    from cloudevents.http import from_dict

    attributes = {name.lower(): value for name, value in headers.items()}
    sent: Any = {name[3:]: value for name, value in attributes.items() if name.startswith("ce-")}
    structured = media_type == "application/cloudevents+json"
    if not structured and all(name in sent for name in _REQUIRED_ATTRIBUTES):
        _require_attributes(sent, "ce-")
        envelope = sent
        if "content-type" in attributes:
            envelope["datacontenttype"] = attributes["content-type"]
        envelope["data"] = data
    else:
        # ce- headers short of binary mode: the body may still be a structured event; if it is none, the
        # answer names the headers missing (a body nested too deep is said too, never read any further).
        partial = not structured
        try:
            envelope = read_json(data)
        except JsonUnreadable as problem:
            if partial:
                raise UnusableEvent(f"{_missing(sent, 'ce-')}, and the body is {problem}") from None
            raise UnusableEvent(f"structured CloudEvent is {problem}") from None
        if partial and not (isinstance(envelope, dict) and "specversion" in envelope):
            raise UnusableEvent(_missing(sent, "ce-"))
        if not isinstance(envelope, dict):
            raise UnusableEvent("structured CloudEvent is not a JSON object")
        _require_attributes(envelope, "")
    try:
        return from_dict(envelope)
    except GenericException as problem:
        raise UnusableEvent(f"malformed CloudEvent: {escape_text(str(problem))}") from None


def _require_attributes(envelope: Mapping[str, Any], prefix: str) -> None:
    """The required attributes of a CloudEvents 1.0 event, present and non-empty strings: the library fills in
    a missing specversion and reads a 0.3 event, so neither would otherwise get the 400 a malformed event
    gets (binary mode names the ``ce-`` headers)."""
    if not all(_is_text(envelope.get(name)) for name in _REQUIRED_ATTRIBUTES):
        raise UnusableEvent(_missing(envelope, prefix))
    if envelope["specversion"] != "1.0":
        shown = escape_text(envelope["specversion"], 16)
        raise UnusableEvent(f"malformed CloudEvent: {prefix}specversion '{shown}' is not 1.0")


def _missing(envelope: Mapping[str, Any], prefix: str) -> str:
    missing = [f"{prefix}{name}" for name in _REQUIRED_ATTRIBUTES if not _is_text(envelope.get(name))]
    return f"malformed CloudEvent: no {', '.join(missing)}"


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def message_from_cloud_event(event: Any) -> InboundMessage:
    """A Pub/Sub messagePublished event unwraps to its message, noting the topic it came from (the event's
    source); any other event's data is the request."""
    data = event.data
    if event["type"] == PUBSUB_MESSAGE_PUBLISHED:
        if isinstance(data, (bytes, bytearray)):
            try:
                data = read_json(bytes(data))
            except JsonUnreadable as problem:
                raise UnusableEvent(f"messagePublished data is {problem}") from None
        if not isinstance(data, Mapping) or not isinstance(data.get("message"), Mapping):
            raise UnusableEvent("messagePublished event without a message")
        source = event.get("source")
        return dataclasses.replace(
            _pubsub_message(data["message"]), event_source=source if isinstance(source, str) else None
        )
    if isinstance(data, (bytes, bytearray)):
        payload = bytes(data)
    elif isinstance(data, str):
        # Kept as sent, surrogates and all: the parser refuses what is not UTF-8.
        payload = data.encode("utf-8", "surrogatepass")
    elif data is None:
        raise UnusableEvent(f"{escape_text(str(event['type']))} event has no data")
    else:
        payload = json.dumps(data).encode("utf-8")
    return InboundMessage(data=payload, message_id=_echoed_id(event["id"]), kind=SourceKind.HTTP)


def _pubsub_message(message: Mapping[str, Any]) -> InboundMessage:
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise UnusableEvent("Pub/Sub attributes must map strings to strings")
    encoded = message.get("data") or ""
    if not isinstance(encoded, str):
        raise UnusableEvent("Pub/Sub data must be a base64 string")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise UnusableEvent("Pub/Sub data is not valid base64") from None
    message_id = message.get("messageId") or message.get("message_id")
    return InboundMessage(
        data=data,
        attributes=dict(attributes),
        message_id=_echoed_id(message_id) if message_id is not None else None,
        kind=SourceKind.PUBSUB,
    )


def _echoed_id(value: Any) -> str:
    """A sender's message or event id, escaped and bounded once, here, before anything echoes it."""
    return escape_text(str(value))


def _legacy_message(body: Mapping[str, Any]) -> InboundMessage:
    """A legacy background event; both ``data`` and ``event`` have been seen holding the Pub/Sub message."""
    message = body.get("data", body.get("event"))
    if not isinstance(message, Mapping):
        raise UnusableEvent("background event without a Pub/Sub message")
    event_id = body["context"].get("eventId")
    return _pubsub_message({**message, "messageId": event_id} if isinstance(event_id, str) else message)
