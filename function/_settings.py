"""Configuration, read from the environment exactly once."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from ._backoff import PollingPolicy  # also imported from here: the policy is read from the environment here
from ._json import JsonUnreadable, read_json
from ._names import (
    DEFAULT_VERSION,
    PROJECT_SHAPES,
    REGISTRY,
    VERSIONS,
    Service,
    ServiceRegistry,
    parse_allowed_parent,
)
from .errors import ConfigError, InvalidRequest

STORES = ("firestore", "memory", "sqlite")
MAX_DEADLINE_S = 7 * 24 * 3600
_TOPIC_ID = re.compile(r"[A-Za-z][A-Za-z0-9._~+%-]{2,254}")
_PROJECT_ID = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]|[a-z0-9.:-]{1,100}")
_DATABASE_ID = re.compile(r"\(default\)|[a-z][a-z0-9-]{2,61}[a-z0-9]")
_COLLECTION_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
_SERVICE_FIELDS = frozenset({"version", "versions", "host", "global_host", "shapes", "list_shapes", "cancel_body"})
_HOST_PORT = re.compile(r"[A-Za-z0-9.-]{1,253}(:[1-9][0-9]{0,4})?")
# Cloud Tasks resource names (tasks/docs/reference/rest/v2/projects.locations.queues): queue ids are
# letters, digits and hyphens, at most 100; locations are region names.
_TASKS_QUEUE = re.compile(
    r"projects/(?:[a-z][a-z0-9-]{4,28}[a-z0-9]|[a-z0-9.:-]{1,100})/locations/[a-z][a-z0-9-]{0,62}/queues/[A-Za-z0-9-]{1,100}"
)
_SERVICE_ACCOUNT = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}@[a-z0-9][a-z0-9.-]{0,253}\.[a-z]{2,}")
#: Default lease: a request's work is bounded by its retry budgets, well inside a minute.
DEFAULT_LEASE_S = 60.0
MODES = ("enforce", "shadow")
_BUDGET = re.compile(r"(?P<count>[0-9]{1,6})\s*/\s*(?P<length>[0-9]{1,7})(?P<unit>[smh])")
_UNITS = {"s": 1, "m": 60, "h": 3600}
#: The budget document keeps one entry per cancel in its window, so its size bounds the count.
MAX_BUDGET_COUNT = 10_000


@dataclass(frozen=True)
class CancelBudget:
    """``OPCANCEL_CANCEL_BUDGET=N/DURATION``: at most ``count`` first cancels in any window of ``window_s``."""

    count: int
    window_s: float

    def __str__(self) -> str:
        for unit, size in (("h", 3600), ("m", 60)):
            if self.window_s % size == 0:
                return f"{self.count}/{int(self.window_s // size)}{unit}"
        return f"{self.count}/{int(self.window_s)}s"


@dataclass(frozen=True)
class Settings:
    """Every setting, read once from the environment and frozen; nothing else reads ``os.environ``."""

    project: str | None = None
    results_topic: str = "opcancel-results"
    checks_topic: str = "opcancel-checks"
    requests_topic: str = "opcancel-requests"
    api_endpoint: str | None = None
    api_version: str = DEFAULT_VERSION
    auth: str = "adc"
    store: str = "sqlite"
    sqlite_path: str = ".opcancel/idempotency.sqlite3"
    firestore_database: str = "(default)"
    firestore_collection: str = "opcancel-idempotency"
    #: OPCANCEL_STORE or OPCANCEL_SQLITE_PATH is set: the store was chosen, not defaulted (see ``with_store``).
    store_configured: bool = False
    #: Canonical prefixes (``organizations/1``, ``projects/p``, ``//aiplatform.googleapis.com/projects/p``).
    allowed_parents: tuple[str, ...] | None = None
    #: Parents never cancelled, in the allow-list's forms; None protects nothing.
    protected_parents: tuple[str, ...] | None = None
    #: ``enforce``, or ``shadow``: every request a dry run.
    mode: str = "enforce"
    #: None: no budget (warned at start-up).
    cancel_budget: CancelBudget | None = None
    #: ``OPCANCEL_PAUSED=true``: paused whatever ``guard unpause`` writes.
    paused: bool = False
    services: ServiceRegistry = REGISTRY
    polling: PollingPolicy = PollingPolicy()
    lease_s: float = DEFAULT_LEASE_S
    #: ``projects/P/locations/L/queues/Q``: checks are Cloud Tasks tasks; None: checks wait for redelivery.
    tasks_queue: str | None = None
    #: The account whose OAuth token each task's publish carries (none against the Pub/Sub emulator).
    tasks_service_account: str | None = None
    #: Base URL replacing ``https://cloudtasks.googleapis.com`` (tests, the devkit stand-in).
    tasks_endpoint: str | None = None
    record_ttl_s: float = 8 * 24 * 3600.0
    pubsub_emulator_host: str | None = None
    firestore_emulator_host: str | None = None
    on_cloud: bool = False
    #: Where the metadata server answers (``GCE_METADATA_HOST``, as google-auth reads it).
    metadata_host: str = "metadata.google.internal"
    #: ``GOOGLE_APPLICATION_CREDENTIALS`` is set: credentials come from that file, not the metadata server.
    credentials_file: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "Settings":
        reader = _Reader(environ)
        on_cloud = bool(environ.get("K_SERVICE"))
        # The defaults are PollingPolicy's own, so the policy's defaults are stated once.
        default = PollingPolicy()
        polling = PollingPolicy(
            initial_delay_s=reader.seconds("OPCANCEL_CHECK_INITIAL_DELAY_S", default.initial_delay_s),
            multiplier=reader.number("OPCANCEL_CHECK_MULTIPLIER", default.multiplier, minimum=1.0, maximum=10.0),
            max_delay_s=reader.seconds("OPCANCEL_CHECK_MAX_DELAY_S", default.max_delay_s),
            deadline_s=reader.seconds("OPCANCEL_CHECK_DEADLINE_S", default.deadline_s, maximum=MAX_DEADLINE_S),
        )
        if polling.max_delay_s < polling.initial_delay_s:
            raise ConfigError(
                "OPCANCEL_CHECK_MAX_DELAY_S",
                "must not be smaller than OPCANCEL_CHECK_INITIAL_DELAY_S",
            )
        services = reader.services("OPCANCEL_SERVICES")
        tasks_queue = reader.optional(
            "OPCANCEL_TASKS_QUEUE", _TASKS_QUEUE, "of the form projects/P/locations/L/queues/Q"
        )
        tasks_service_account = reader.optional(
            "OPCANCEL_TASKS_SERVICE_ACCOUNT", _SERVICE_ACCOUNT, "a service account email"
        )
        pubsub_emulator_host = environ.get("PUBSUB_EMULATOR_HOST") or None
        if tasks_queue is not None and tasks_service_account is None and pubsub_emulator_host is None:
            raise ConfigError(
                "OPCANCEL_TASKS_SERVICE_ACCOUNT",
                "is required with OPCANCEL_TASKS_QUEUE: each task's publish carries that account's token",
            )
        return cls(
            project=reader.optional("GOOGLE_CLOUD_PROJECT", _PROJECT_ID, "a Google Cloud project id"),
            results_topic=reader.topic("OPCANCEL_RESULTS_TOPIC", "opcancel-results"),
            checks_topic=reader.topic("OPCANCEL_CHECKS_TOPIC", "opcancel-checks"),
            requests_topic=reader.topic("OPCANCEL_REQUESTS_TOPIC", "opcancel-requests"),
            api_endpoint=reader.endpoint("OPCANCEL_API_ENDPOINT"),
            api_version=reader.choice("OPCANCEL_API_VERSION", VERSIONS, DEFAULT_VERSION),
            auth=reader.choice("OPCANCEL_AUTH", ("adc", "anonymous"), "adc"),
            store=reader.choice("OPCANCEL_STORE", STORES, "firestore" if on_cloud else "sqlite"),
            sqlite_path=environ.get("OPCANCEL_SQLITE_PATH") or ".opcancel/idempotency.sqlite3",
            firestore_database=reader.optional("OPCANCEL_FIRESTORE_DATABASE", _DATABASE_ID, "a Firestore database id")
            or "(default)",
            firestore_collection=reader.optional(
                "OPCANCEL_FIRESTORE_COLLECTION", _COLLECTION_ID, "a Firestore collection id"
            )
            or "opcancel-idempotency",
            store_configured=reader.given("OPCANCEL_STORE") or reader.given("OPCANCEL_SQLITE_PATH"),
            allowed_parents=reader.parents("OPCANCEL_ALLOWED_PARENTS", services),
            protected_parents=reader.parents("OPCANCEL_PROTECTED_PARENTS", services, protecting=True),
            mode=reader.choice("OPCANCEL_MODE", MODES, "enforce"),
            cancel_budget=reader.budget("OPCANCEL_CANCEL_BUDGET"),
            paused=reader.flag("OPCANCEL_PAUSED"),
            services=services,
            polling=polling,
            lease_s=reader.seconds("OPCANCEL_LEASE_S", DEFAULT_LEASE_S),
            record_ttl_s=reader.seconds("OPCANCEL_RECORD_TTL_S", 8 * 24 * 3600.0),
            tasks_queue=tasks_queue,
            tasks_service_account=tasks_service_account,
            tasks_endpoint=reader.endpoint("OPCANCEL_TASKS_ENDPOINT"),
            pubsub_emulator_host=pubsub_emulator_host,
            firestore_emulator_host=environ.get("FIRESTORE_EMULATOR_HOST") or None,
            on_cloud=on_cloud,
            metadata_host=reader.optional("GCE_METADATA_HOST", _HOST_PORT, "a host or host:port")
            or "metadata.google.internal",
            credentials_file=bool(environ.get("GOOGLE_APPLICATION_CREDENTIALS")),
        )

    def with_store(self, choice: str) -> "Settings":
        """These settings on the store an operator named (``sqlite:PATH``, ``firestore`` or ``firestore:DATABASE``,
        the command line's ``--store``), as if OPCANCEL_STORE had said so."""
        backend, _, where = choice.partition(":")
        if backend == "sqlite" and where.strip():
            return replace(self, store="sqlite", sqlite_path=where, store_configured=True)
        if backend == "firestore" and (not where or _DATABASE_ID.fullmatch(where)):
            return replace(self, store="firestore", firestore_database=where or "(default)", store_configured=True)
        raise ConfigError("--store", f"{choice!r} is not sqlite:PATH, firestore or firestore:DATABASE")


class _Reader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def _raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def given(self, name: str) -> bool:
        return self._raw(name) is not None

    def optional(self, name: str, pattern: re.Pattern[str], what: str) -> str | None:
        value = self._raw(name)
        if value is not None and not pattern.fullmatch(value):
            raise ConfigError(name, f"{value!r} is not {what}")
        return value

    def topic(self, name: str, default: str) -> str:
        value = self._raw(name) or default
        if not _TOPIC_ID.fullmatch(value) or value.lower().startswith("goog"):
            raise ConfigError(name, f"{value!r} is not a Pub/Sub topic id")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self._raw(name) or default
        if value not in choices:
            raise ConfigError(name, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        text = self._raw(name)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(name, f"{text!r} is not a number") from None
        if not math.isfinite(value) or not minimum <= value <= maximum:
            raise ConfigError(name, f"{text!r} is outside {minimum:g}..{maximum:g}")
        return value

    def seconds(self, name: str, default: float, *, maximum: float = MAX_DEADLINE_S * 2) -> float:
        value = self.number(name, default, minimum=0.0, maximum=maximum)
        if value <= 0:
            raise ConfigError(name, "must be a positive number of seconds")
        return value

    def endpoint(self, name: str) -> str | None:
        value = self._raw(name)
        if value is None:
            return None
        # A value with userinfo may hold a password, which must not reach the start-up log.
        shown = "the value" if "@" in value else repr(value)
        problem = ConfigError(name, f"{shown} is not an http(s) base URL without credentials")
        # urlsplit is lenient: it raises on a malformed IPv6 host, checks a port only when asked,
        # and passes spaces through; each would otherwise surface on the first API call, not at start-up.
        if any(char.isspace() or not char.isprintable() for char in value):
            raise problem
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            raise problem from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise problem
        # {host} (see OperationsClient) may stand once in the path, never where it could change the server, and
        # as a whole segment of a path without dot segments or escapes: https://proxy/{host}/../ would drop it.
        segments = parts.path.split("/")
        if value.count("{host}") > 1 or "{host}" in parts.netloc or ("{" in value.replace("{host}", "")):
            raise problem
        if ("{host}" in value and "{host}" not in segments) or any(s in (".", "..") for s in segments):
            raise problem
        if "%" in parts.path or "\\" in value:
            raise problem
        # httpx turns URL userinfo into Basic auth, which would replace the Bearer token.
        if port == 0 or parts.username is not None or parts.password is not None:
            raise problem
        return value.rstrip("/")

    def budget(self, name: str) -> CancelBudget | None:
        text = self._raw(name)
        if text is None:
            return None
        match = _BUDGET.fullmatch(text)
        problem = f"{text[:40]!r} is not N/DURATION, e.g. 50/1h (DURATION in s, m or h)"
        if match is None:
            raise ConfigError(name, problem)
        count, window_s = int(match["count"]), int(match["length"]) * _UNITS[match["unit"]]
        if not 1 <= count <= MAX_BUDGET_COUNT:
            raise ConfigError(name, f"N must be 1..{MAX_BUDGET_COUNT}, not {count}")
        if not 1 <= window_s <= MAX_DEADLINE_S:
            raise ConfigError(name, f"DURATION must be 1s..{MAX_DEADLINE_S // 3600}h")
        return CancelBudget(count, float(window_s))

    def flag(self, name: str) -> bool:
        text = self._raw(name)
        if text is None:
            return False
        if text.lower() not in ("true", "false"):
            raise ConfigError(name, f"{text[:40]!r} is not true or false")
        return text.lower() == "true"

    def parents(self, name: str, services: ServiceRegistry, *, protecting: bool = False) -> tuple[str, ...] | None:
        if name not in self._environ:
            return None
        value = self._environ[name].strip()
        # Set but blank is most likely a templating slip: for the allow-list, allowing everything would fail
        # open; for protection, protecting nothing would.
        if not value:
            unset = "protect nothing" if protecting else "allow every organization and project"
            raise ConfigError(name, f"is set but empty; unset it to {unset}")
        parents = []
        for part in (part.strip() for part in value.split(",") if part.strip()):
            try:
                parents.append(parse_allowed_parent(part, services))
            except InvalidRequest as problem:
                raise ConfigError(
                    name,
                    f"{part!r} is not organizations/DIGITS, projects/PROJECT or a full resource prefix such as "
                    f"//aiplatform.googleapis.com/projects/PROJECT ({problem})",
                ) from None
        if not parents:
            raise ConfigError(
                name, "names no parent; unset it to " + ("protect nothing" if protecting else "allow all")
            )
        return tuple(dict.fromkeys(parents))

    def services(self, name: str) -> ServiceRegistry:
        """``{"NAME": {"version": "v1", "host": "{location}-NAME.googleapis.com", ...}}``: entries added to,
        or replacing, the built-in registry. ``shapes`` / ``list_shapes`` name the parents the API documents
        cancel and get / list for (``locations``, ``regions``, ``projects``); ``cancel_body: true`` sends ``{}``
        to a cancel that takes a ``CancelOperationRequest`` (docs/configuration.md)."""
        text = self._raw(name)
        if text is None:
            return REGISTRY
        try:
            entries = read_json(text)
        except JsonUnreadable:
            raise ConfigError(name, "is not JSON; expected an object of service entries") from None
        if not isinstance(entries, dict) or not entries:
            raise ConfigError(name, 'must be a JSON object such as {"NAME": {"version": "v1", "host": "..."}}')
        services = []
        for key, entry in entries.items():
            shown = repr(key)[:60]
            if not isinstance(entry, dict):
                raise ConfigError(name, f"the entry for {shown} is not an object")
            unknown = sorted(set(entry) - _SERVICE_FIELDS)
            if unknown:
                raise ConfigError(name, f"the entry for {shown} has unknown field {unknown[0]!r}")
            if "version" not in entry or "host" not in entry:
                raise ConfigError(name, f"the entry for {shown} needs version and host")
            host = entry["host"]
            # One host for every location (no placeholder) serves global names too, unless told otherwise.
            default_global = host if isinstance(host, str) and "{location}" not in host else f"{key}.googleapis.com"
            versions = entry.get("versions", [entry["version"]])
            global_host = entry.get("global_host", default_global)
            shapes = entry.get("shapes", list(PROJECT_SHAPES))
            list_shapes = entry.get("list_shapes", shapes)
            try:
                if not isinstance(versions, list) or not all(
                    isinstance(v, str) for v in [*versions, entry["version"], host, global_host]
                ):
                    raise ValueError("version and hosts must be strings, versions a list of strings")
                if not all(isinstance(s, list) and all(isinstance(x, str) for x in s) for s in (shapes, list_shapes)):
                    raise ValueError("shapes and list_shapes must be lists of strings")
                if not isinstance(entry.get("cancel_body", False), bool):
                    raise ValueError("cancel_body must be true or false")
                services.append(
                    Service(
                        str(key),
                        entry["version"],
                        tuple(versions),
                        host=host,
                        global_host=global_host,
                        reference=name,
                        shapes=tuple(shapes),
                        list_shapes=tuple(list_shapes),
                        cancel_body=tuple(versions) if entry.get("cancel_body") else (),
                    )
                )
            except (ValueError, TypeError) as problem:
                raise ConfigError(name, f"the entry for {shown}: {problem}") from None
        try:
            return REGISTRY.with_entries(services)
        except ValueError as problem:
            raise ConfigError(name, str(problem)) from None
