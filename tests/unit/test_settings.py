"""``Settings.from_env``: defaults, every variable, and a start-up failure naming the variable for each bad value."""

from __future__ import annotations

import json

import pytest

from function import PollingPolicy, Settings
from function._names import REGISTRY
from function.errors import ConfigError

WEEK = 7 * 24 * 3600


def bad(environ: dict[str, str], variable: str) -> str:
    """``from_env`` must fail naming ``variable``; returns the message."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ)
    assert caught.value.variable == variable
    message = str(caught.value)
    assert message.startswith(f"{variable}: ")
    return message


# --- defaults ----------------------------------------------------------------------------------


def test_an_empty_environment_gives_the_documented_defaults():
    settings = Settings.from_env({})
    assert settings.project is None
    assert settings.results_topic == "opcancel-results"
    assert settings.checks_topic == "opcancel-checks"
    assert settings.api_endpoint is None
    assert settings.api_version == "v2"
    assert settings.auth == "adc"
    assert settings.allowed_parents is None
    assert settings.polling == PollingPolicy(initial_delay_s=1.0, multiplier=1.5, max_delay_s=20.0, deadline_s=3600.0)
    assert settings.pubsub_emulator_host is None
    assert settings.firestore_emulator_host is None
    assert settings.on_cloud is False
    assert settings.metadata_host == "metadata.google.internal"
    assert settings.credentials_file is False


def test_locally_the_store_defaults_to_the_embedded_one():
    settings = Settings.from_env({})
    assert settings.store == "sqlite"
    assert settings.sqlite_path == ".opcancel/idempotency.sqlite3"


def test_on_cloud_the_store_defaults_to_firestore():
    settings = Settings.from_env({"K_SERVICE": "opcancel"})
    assert settings.on_cloud is True
    assert settings.store == "firestore"


def test_an_explicit_store_wins_on_cloud():
    assert Settings.from_env({"K_SERVICE": "opcancel", "OPCANCEL_STORE": "memory"}).store == "memory"


def test_the_metadata_host_and_a_credentials_file_are_read_as_google_auth_reads_them():
    settings = Settings.from_env({"GCE_METADATA_HOST": "127.0.0.1:8977", "GOOGLE_APPLICATION_CREDENTIALS": "/k.json"})
    assert (settings.metadata_host, settings.credentials_file) == ("127.0.0.1:8977", True)


@pytest.mark.parametrize("host", ["http://169.254.169.254", "metadata/x", "h:0", "h:99999x", "a b"])
def test_a_bad_metadata_host_fails_start_up_naming_it(host):
    with pytest.raises(ConfigError, match="GCE_METADATA_HOST"):
        Settings.from_env({"GCE_METADATA_HOST": host})


def test_an_empty_k_service_is_not_cloud():
    settings = Settings.from_env({"K_SERVICE": ""})
    assert (settings.on_cloud, settings.store) == (False, "sqlite")


def test_blank_values_count_as_unset():
    blank = {
        name: "  "
        for name in (
            "GOOGLE_CLOUD_PROJECT",
            "OPCANCEL_RESULTS_TOPIC",
            "OPCANCEL_CHECKS_TOPIC",
            "OPCANCEL_API_ENDPOINT",
            "OPCANCEL_API_VERSION",
            "OPCANCEL_AUTH",
            "OPCANCEL_STORE",
            "OPCANCEL_CHECK_INITIAL_DELAY_S",
            "OPCANCEL_CHECK_MULTIPLIER",
            "OPCANCEL_CHECK_MAX_DELAY_S",
            "OPCANCEL_CHECK_DEADLINE_S",
            "OPCANCEL_SERVICES",
        )
    }
    assert Settings.from_env(blank) == Settings.from_env({})


# --- each variable -----------------------------------------------------------------------------


@pytest.mark.parametrize("project", ["sec-ops-prod", "my-project-123", "example.com:my-project"])
def test_google_cloud_project(project):
    assert Settings.from_env({"GOOGLE_CLOUD_PROJECT": project}).project == project


def test_topics():
    settings = Settings.from_env({"OPCANCEL_RESULTS_TOPIC": "results.v1", "OPCANCEL_CHECKS_TOPIC": "Checks_~+%-x"})
    assert (settings.results_topic, settings.checks_topic) == ("results.v1", "Checks_~+%-x")


def test_a_topic_id_of_255_characters_is_accepted():
    topic = "t" * 255
    assert Settings.from_env({"OPCANCEL_RESULTS_TOPIC": topic}).results_topic == topic


def test_values_are_stripped():
    settings = Settings.from_env({"OPCANCEL_RESULTS_TOPIC": "  results \n", "OPCANCEL_API_VERSION": " v2 "})
    assert (settings.results_topic, settings.api_version) == ("results", "v2")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://localhost:8080/", "http://localhost:8080"),
        ("https://private.example.com/scc/", "https://private.example.com/scc"),
        ("http://[::1]:9000", "http://[::1]:9000"),
        ("https://securitycenter.googleapis.com", "https://securitycenter.googleapis.com"),
    ],
)
def test_api_endpoint(value, expected):
    assert Settings.from_env({"OPCANCEL_API_ENDPOINT": value}).api_endpoint == expected


@pytest.mark.parametrize("version", ["v1beta1", "v1p1beta1", "v1", "v2"])
def test_api_version(version):
    assert Settings.from_env({"OPCANCEL_API_VERSION": version}).api_version == version


@pytest.mark.parametrize("auth", ["adc", "anonymous"])
def test_auth(auth):
    assert Settings.from_env({"OPCANCEL_AUTH": auth}).auth == auth


@pytest.mark.parametrize("store", ["firestore", "memory", "sqlite"])
def test_store(store):
    assert Settings.from_env({"OPCANCEL_STORE": store}).store == store


def test_sqlite_path():
    assert Settings.from_env({"OPCANCEL_SQLITE_PATH": "/tmp/x.db"}).sqlite_path == "/tmp/x.db"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("organizations/123", ("organizations/123",)),
        ("organizations/1,organizations/2", ("organizations/1", "organizations/2")),
        (" organizations/1 , organizations/2 ,", ("organizations/1", "organizations/2")),
    ],
)
def test_allowed_parents(value, expected):
    assert Settings.from_env({"OPCANCEL_ALLOWED_PARENTS": value}).allowed_parents == expected


def test_the_polling_policy_takes_fractional_seconds():
    settings = Settings.from_env(
        {
            "OPCANCEL_CHECK_INITIAL_DELAY_S": "0.05",
            "OPCANCEL_CHECK_MULTIPLIER": "1.5",
            "OPCANCEL_CHECK_MAX_DELAY_S": "0.2",
            "OPCANCEL_CHECK_DEADLINE_S": "2.5",
        }
    )
    assert settings.polling == PollingPolicy(initial_delay_s=0.05, multiplier=1.5, max_delay_s=0.2, deadline_s=2.5)


def test_the_deadline_may_be_seven_days():
    assert Settings.from_env({"OPCANCEL_CHECK_DEADLINE_S": str(WEEK)}).polling.deadline_s == WEEK


def test_max_delay_may_equal_initial_delay():
    settings = Settings.from_env({"OPCANCEL_CHECK_INITIAL_DELAY_S": "7", "OPCANCEL_CHECK_MAX_DELAY_S": "7"})
    assert settings.polling.max_delay_s == settings.polling.initial_delay_s == 7


def test_emulator_hosts_are_passed_through():
    environ = {"PUBSUB_EMULATOR_HOST": "localhost:8085", "FIRESTORE_EMULATOR_HOST": "localhost:8086"}
    settings = Settings.from_env(environ)
    assert (settings.pubsub_emulator_host, settings.firestore_emulator_host) == ("localhost:8085", "localhost:8086")


def test_lease_and_record_ttl():
    settings = Settings.from_env({"OPCANCEL_LEASE_S": "30", "OPCANCEL_RECORD_TTL_S": "86400"})
    assert (settings.lease_s, settings.record_ttl_s) == (30.0, 86400.0)


# --- bad values fail start-up naming the variable -----------------------------------------------


@pytest.mark.parametrize("variable", ["OPCANCEL_RESULTS_TOPIC", "OPCANCEL_CHECKS_TOPIC"])
@pytest.mark.parametrize(
    "value",
    [
        "ab",
        "t" * 256,
        "1topic",
        "-topic",
        "goog-topic",
        "GOOGtopic",
        "has space",
        "projects/p/topics/t",
        "topic/x",
        "tópico",
        "top\nic",
        "topic#1",
        "topic?x",
    ],
)
def test_bad_topic_ids(variable, value):
    assert "is not a Pub/Sub topic id" in bad({variable: value}, variable)


@pytest.mark.parametrize("value", ["My_Project", "UPPER", "project id", "p/q", "projects/p", "p\x00"])
def test_bad_project_ids(value):
    assert "is not a Google Cloud project id" in bad({"GOOGLE_CLOUD_PROJECT": value}, "GOOGLE_CLOUD_PROJECT")


@pytest.mark.parametrize(
    "value",
    [
        "localhost:8080",
        "127.0.0.1",
        "ftp://host",
        "file:///etc/passwd",
        "http://",
        "https://",
        "https:///path",
        "https://host?x=1",
        "https://host/#frag",
        "https://host:notaport",
        "https://host:99999",
        "http://[::1",
        "https://exa mple.com",
        "https://ho\nst",
        "https://host/\x00",
        "https://host:0",
        "//host",
    ],
)
def test_bad_endpoint_urls(value):
    assert "is not an http(s) base URL" in bad({"OPCANCEL_API_ENDPOINT": value}, "OPCANCEL_API_ENDPOINT")


@pytest.mark.parametrize("value", ["https://user:secret@host", "https://user@host", "https://:secret@host:8080/p"])
def test_endpoints_with_credentials_are_refused_without_echoing_them(value):
    message = bad({"OPCANCEL_API_ENDPOINT": value}, "OPCANCEL_API_ENDPOINT")
    assert "without credentials" in message
    assert "secret" not in message and "user" not in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OPCANCEL_API_VERSION", "v3"),
        ("OPCANCEL_API_VERSION", "V1"),
        ("OPCANCEL_API_VERSION", "v1beta"),
        ("OPCANCEL_AUTH", "none"),
        ("OPCANCEL_AUTH", "ADC"),
        ("OPCANCEL_AUTH", "service-account"),
        ("OPCANCEL_STORE", "redis"),
        ("OPCANCEL_STORE", "Firestore"),
        ("OPCANCEL_STORE", "postgres"),
    ],
)
def test_unknown_choices(variable, value):
    message = bad({variable: value}, variable)
    assert f"{value!r} is not one of" in message


NUMERIC_VARIABLES = [
    "OPCANCEL_CHECK_INITIAL_DELAY_S",
    "OPCANCEL_CHECK_MAX_DELAY_S",
    "OPCANCEL_CHECK_DEADLINE_S",
    "OPCANCEL_CHECK_MULTIPLIER",
    "OPCANCEL_LEASE_S",
    "OPCANCEL_RECORD_TTL_S",
]


@pytest.mark.parametrize("variable", NUMERIC_VARIABLES)
@pytest.mark.parametrize("value", ["five", "5s", "1,5", "0x10", "--1", "1e", "½"])
def test_non_numeric_polling_values(variable, value):
    assert "is not a number" in bad({variable: value}, variable)


@pytest.mark.parametrize("variable", NUMERIC_VARIABLES)
@pytest.mark.parametrize("value", ["-1", "-0.001", "inf", "-inf", "Infinity", "nan", "NaN", "1e999"])
def test_negative_and_non_finite_polling_values(variable, value):
    assert "is outside" in bad({variable: value}, variable)


@pytest.mark.parametrize(
    "variable",
    ["OPCANCEL_CHECK_INITIAL_DELAY_S", "OPCANCEL_CHECK_MAX_DELAY_S", "OPCANCEL_CHECK_DEADLINE_S", "OPCANCEL_LEASE_S"],
)
@pytest.mark.parametrize("value", ["0", "0.0", "-0"])
def test_zero_seconds_are_refused(variable, value):
    assert "must be a positive number of seconds" in bad({variable: value}, variable)


@pytest.mark.parametrize("value", ["0.5", "0.99", "10.01", "100"])
def test_the_multiplier_is_between_1_and_10(value):
    assert "outside 1..10" in bad({"OPCANCEL_CHECK_MULTIPLIER": value}, "OPCANCEL_CHECK_MULTIPLIER")


@pytest.mark.parametrize("value", ["1", "10", "2.5"])
def test_multiplier_bounds_are_inclusive(value):
    assert Settings.from_env({"OPCANCEL_CHECK_MULTIPLIER": value}).polling.multiplier == float(value)


def test_max_delay_smaller_than_initial_delay_is_refused():
    message = bad(
        {"OPCANCEL_CHECK_INITIAL_DELAY_S": "10", "OPCANCEL_CHECK_MAX_DELAY_S": "9.5"}, "OPCANCEL_CHECK_MAX_DELAY_S"
    )
    assert "OPCANCEL_CHECK_INITIAL_DELAY_S" in message


def test_the_default_max_delay_is_checked_against_a_larger_initial_delay():
    bad({"OPCANCEL_CHECK_INITIAL_DELAY_S": "21"}, "OPCANCEL_CHECK_MAX_DELAY_S")


@pytest.mark.parametrize("value", [str(WEEK + 1), str(WEEK + 0.5), "1e7"])
def test_a_deadline_over_seven_days_is_refused(value):
    assert "outside 0..604800" in bad({"OPCANCEL_CHECK_DEADLINE_S": value}, "OPCANCEL_CHECK_DEADLINE_S")


@pytest.mark.parametrize(
    "value",
    [
        "organizations/abc",
        "organizations/",
        "organizations/1/",
        "organizations/1 organizations/2",
        "organizations/1;organizations/2",
        "folders/123",
        "projects/p",
        "123",
        "Organizations/1",
        "organizations/１",
        "organizations/" + "1" * 33,
        "organizations/1,organizations/x",
        "organizations/*",
    ],
)
def test_bad_allowed_parents(value):
    message = bad({"OPCANCEL_ALLOWED_PARENTS": value}, "OPCANCEL_ALLOWED_PARENTS")
    assert "is not organizations/DIGITS, projects/PROJECT or a full resource prefix" in message


@pytest.mark.parametrize("value", [",", " , ,"])
def test_an_allow_list_naming_no_parent_is_refused(value):
    assert "names no parent" in bad({"OPCANCEL_ALLOWED_PARENTS": value}, "OPCANCEL_ALLOWED_PARENTS")


def test_the_first_bad_variable_is_reported_even_with_others_good():
    environ = {"GOOGLE_CLOUD_PROJECT": "sec-ops-prod", "OPCANCEL_AUTH": "adc", "OPCANCEL_STORE": "mongo"}
    bad(environ, "OPCANCEL_STORE")


# --- the polling policy ------------------------------------------------------------------------


def test_delays_grow_by_the_multiplier_and_are_capped():
    policy = PollingPolicy(initial_delay_s=5.0, multiplier=2.0, max_delay_s=60.0, deadline_s=600.0)
    assert [policy.delay_before(attempt) for attempt in range(0, 7)] == [5, 5, 10, 20, 40, 60, 60]


def test_each_check_is_due_its_delay_after_the_check_before_was_due_not_after_it_ran():
    policy = PollingPolicy(initial_delay_s=1.0, multiplier=1.5, max_delay_s=20.0, deadline_s=3600.0)
    # Check 3 (due 2.25 s after check 2) computed when check 2, due at 102.5, ran 0.4 s late.
    assert policy.due(3, previous_due_at=102.5, now=102.9, deadline_at=4000.0) == 104.75


def test_a_check_that_ran_past_the_next_ones_planned_time_is_followed_by_one_due_now_not_earlier():
    policy = PollingPolicy(initial_delay_s=1.0, multiplier=1.5, max_delay_s=20.0, deadline_s=3600.0)
    assert policy.due(3, previous_due_at=102.5, now=130.0, deadline_at=4000.0) == 130.0
    # The plan goes on from that due time: one check at once, then the spacing again, never a burst.
    assert policy.due(4, previous_due_at=130.0, now=130.3, deadline_at=4000.0) == 130.0 + 3.375


def test_no_check_is_due_past_the_deadline():
    policy = PollingPolicy(initial_delay_s=1.0, multiplier=1.5, max_delay_s=20.0, deadline_s=3600.0)
    assert policy.due(20, previous_due_at=3590.0, now=3590.2, deadline_at=3600.0) == 3600.0


def test_huge_attempt_numbers_do_not_overflow():
    policy = PollingPolicy(initial_delay_s=1.0, multiplier=10.0, max_delay_s=300.0, deadline_s=WEEK)
    assert policy.delay_before(100_000) == 300.0


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_set_but_blank_allow_list_fails_closed(blank):
    with pytest.raises(ConfigError, match="OPCANCEL_ALLOWED_PARENTS: is set but empty"):
        Settings.from_env({"OPCANCEL_ALLOWED_PARENTS": blank})


# --- other Google APIs -------------------------------------------------------------------------


def test_without_opcancel_services_the_built_in_registry_serves():
    assert Settings.from_env({}).services is REGISTRY
    assert Settings.from_env({"OPCANCEL_SERVICES": "  "}).services is REGISTRY


def test_opcancel_services_adds_and_overrides_entries():
    value = json.dumps(
        {
            "workflows": {"version": "v1", "host": "workflows.googleapis.com"},
            "aiplatform": {
                "version": "v1beta1",
                "versions": ["v1", "v1beta1"],
                "host": "{location}-aiplatform.googleapis.com",
            },
            "notebooks": {
                "version": "v2",
                "host": "{location}-notebooks.googleapis.com",
                "global_host": "nb.googleapis.com",
            },
        }
    )
    services = Settings.from_env({"OPCANCEL_SERVICES": value}).services
    workflows = services.require("workflows")
    assert (workflows.version, workflows.versions, workflows.host_for("us-east1")) == (
        "v1",
        ("v1",),
        "workflows.googleapis.com",
    )
    # One host everywhere serves global names too; a location-shaped host falls back to NAME.googleapis.com.
    assert workflows.host_for("global") == "workflows.googleapis.com"
    vertex = services.require("aiplatform")
    assert (vertex.version, vertex.versions, vertex.global_host) == (
        "v1beta1",
        ("v1", "v1beta1"),
        "aiplatform.googleapis.com",
    )
    assert services.require("notebooks").host_for("global") == "nb.googleapis.com"
    assert services.require("dataproc") == REGISTRY.require("dataproc")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("workflows", "is not JSON"),
        ("[" * 100_000, "is not JSON"),
        ("[]", "must be a JSON object"),
        ("{}", "must be a JSON object"),
        ('{"x": "v1"}', "is not an object"),
        ('{"x": {"version": "v1"}}', "needs version and host"),
        ('{"x": {"host": "x.googleapis.com"}}', "needs version and host"),
        ('{"x": {"version": "v1", "host": "x.googleapis.com", "scope": "y"}}', "unknown field 'scope'"),
        ('{"x": {"version": "v1", "host": "x.evil.com"}}', "not a googleapis.com host"),
        ('{"x": {"version": "v1", "host": "{location}.x.googleapis.com", "global_host": 1}}', "must be strings"),
        ('{"x": {"version": 1, "host": "x.googleapis.com"}}', "must be strings"),
        ('{"x": {"version": "v1", "versions": "v1", "host": "x.googleapis.com"}}', "versions a list"),
        ('{"x": {"version": "v1", "versions": ["v2"], "host": "x.googleapis.com"}}', "not among the versions"),
        ('{"x": {"version": "latest", "host": "x.googleapis.com"}}', "not an API version"),
        ('{"X Y": {"version": "v1", "host": "x.googleapis.com"}}', "not a lowercase DNS label"),
        ('{"securitycenter": {"version": "v1", "host": "x.googleapis.com"}}', "cannot be replaced"),
    ],
)
def test_a_bad_opcancel_services_fails_start_up_naming_it(value, problem):
    assert problem in bad({"OPCANCEL_SERVICES": value}, "OPCANCEL_SERVICES")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("projects/my-proj", ("projects/my-proj",)),
        (
            "organizations/1, //aiplatform.googleapis.com/projects/my-proj/locations/us-central1,projects/123",
            ("organizations/1", "//aiplatform.googleapis.com/projects/my-proj/locations/us-central1", "projects/123"),
        ),
        ("projects/my-proj,projects/my-proj", ("projects/my-proj",)),
    ],
)
def test_allowed_parents_take_full_resource_prefixes(value, expected):
    assert Settings.from_env({"OPCANCEL_ALLOWED_PARENTS": value}).allowed_parents == expected


def test_an_allowed_parent_may_name_a_service_opcancel_services_adds():
    environ = {
        "OPCANCEL_SERVICES": '{"workflows": {"version": "v1", "host": "workflows.googleapis.com"}}',
        "OPCANCEL_ALLOWED_PARENTS": "//workflows.googleapis.com/projects/my-proj",
    }
    assert Settings.from_env(environ).allowed_parents == ("//workflows.googleapis.com/projects/my-proj",)
    del environ["OPCANCEL_SERVICES"]
    assert "is not in the registry" in bad(environ, "OPCANCEL_ALLOWED_PARENTS")


@pytest.mark.parametrize("value", ["http://127.0.0.1:8090/{host}", "https://proxy.example.com/api/{host}/x"])
def test_the_api_endpoint_may_carry_the_host_in_its_path(value):
    assert Settings.from_env({"OPCANCEL_API_ENDPOINT": value}).api_endpoint == value


@pytest.mark.parametrize(
    "value", ["http://{host}:8090", "http://{host}/", "http://127.0.0.1/{host}/{host}", "http://127.0.0.1/{hosts}"]
)
def test_the_host_placeholder_may_not_choose_the_server(value):
    assert "is not an http(s) base URL" in bad({"OPCANCEL_API_ENDPOINT": value}, "OPCANCEL_API_ENDPOINT")


# --- Cloud Tasks and the lease ----------------------------------------------------------------

QUEUE = "projects/sec-ops-prod/locations/europe-west1/queues/opcancel-checks"
ACCOUNT = "opcancel-tasks@sec-ops-prod.iam.gserviceaccount.com"


def test_without_a_queue_checks_wait_for_redelivery_and_the_lease_is_a_minute():
    settings = Settings.from_env({})
    assert (settings.tasks_queue, settings.tasks_service_account, settings.tasks_endpoint) == (None, None, None)
    assert settings.lease_s == 60.0


def test_a_queue_with_its_account_and_an_endpoint():
    settings = Settings.from_env(
        {
            "OPCANCEL_TASKS_QUEUE": QUEUE,
            "OPCANCEL_TASKS_SERVICE_ACCOUNT": ACCOUNT,
            "OPCANCEL_TASKS_ENDPOINT": "http://127.0.0.1:8123/",
        }
    )
    assert (settings.tasks_queue, settings.tasks_service_account) == (QUEUE, ACCOUNT)
    assert settings.tasks_endpoint == "http://127.0.0.1:8123"


def test_against_the_pubsub_emulator_a_queue_needs_no_account():
    settings = Settings.from_env({"OPCANCEL_TASKS_QUEUE": QUEUE, "PUBSUB_EMULATOR_HOST": "127.0.0.1:8085"})
    assert settings.tasks_queue == QUEUE and settings.tasks_service_account is None


def test_a_queue_without_its_account_fails_start_up_naming_the_account_variable():
    assert "required" in bad({"OPCANCEL_TASKS_QUEUE": QUEUE}, "OPCANCEL_TASKS_SERVICE_ACCOUNT")


@pytest.mark.parametrize(
    "queue",
    [
        "opcancel-checks",
        "projects/p/queues/q",
        "projects/sec-ops-prod/locations/europe-west1/queues/",
        "projects/sec-ops-prod/locations/europe-west1/queues/q/tasks/t",
        "projects/sec-ops-prod/locations/europe-west1/queues/q_with_underscore",
        "https://cloudtasks.googleapis.com/v2/projects/p/locations/l/queues/q",
    ],
)
def test_a_malformed_queue_fails_start_up_naming_it(queue):
    bad({"OPCANCEL_TASKS_QUEUE": queue, "OPCANCEL_TASKS_SERVICE_ACCOUNT": ACCOUNT}, "OPCANCEL_TASKS_QUEUE")


@pytest.mark.parametrize("account", ["opcancel", "a b@c.iam.gserviceaccount.com", "@example.com"])
def test_a_malformed_account_fails_start_up_naming_it(account):
    bad({"OPCANCEL_TASKS_QUEUE": QUEUE, "OPCANCEL_TASKS_SERVICE_ACCOUNT": account}, "OPCANCEL_TASKS_SERVICE_ACCOUNT")


@pytest.mark.parametrize("endpoint", ["cloudtasks.googleapis.com", "ftp://x", "http://u:p@host"])
def test_a_malformed_tasks_endpoint_fails_start_up_naming_it(endpoint):
    bad({"OPCANCEL_TASKS_ENDPOINT": endpoint}, "OPCANCEL_TASKS_ENDPOINT")


# --- guard rails ------------------------------------------------------------------------------


def test_the_guard_rails_default_to_enforce_with_no_budget_no_pause_and_nothing_protected():
    settings = Settings.from_env({})
    assert (settings.mode, settings.cancel_budget, settings.paused, settings.protected_parents) == (
        "enforce",
        None,
        False,
        None,
    )


@pytest.mark.parametrize(
    ("value", "count", "window_s", "shown"),
    [("50/1h", 50, 3600.0, "50/1h"), ("1/30s", 1, 30.0, "1/30s"), (" 20 / 90m ", 20, 5400.0, "20/90m")],
)
def test_a_cancel_budget_is_n_per_duration_in_seconds_minutes_or_hours(value, count, window_s, shown):
    budget = Settings.from_env({"OPCANCEL_CANCEL_BUDGET": value}).cancel_budget
    assert (budget.count, budget.window_s, str(budget)) == (count, window_s, shown)


@pytest.mark.parametrize("value", ["50", "50/h", "0/1h", "50/1d", "-1/1h", "50/1.5h", "1/0s", "10001/1h", "x/1h"])
def test_a_bad_cancel_budget_fails_start_up_naming_it(value):
    bad({"OPCANCEL_CANCEL_BUDGET": value}, "OPCANCEL_CANCEL_BUDGET")


@pytest.mark.parametrize(("value", "paused"), [("true", True), ("TRUE", True), ("False", False), ("", False)])
def test_opcancel_paused_takes_true_or_false_in_any_case(value, paused):
    assert Settings.from_env({"OPCANCEL_PAUSED": value}).paused is paused


@pytest.mark.parametrize("value", ["yes", "1", "on"])
def test_a_bad_opcancel_paused_fails_start_up_naming_it(value):
    bad({"OPCANCEL_PAUSED": value}, "OPCANCEL_PAUSED")


def test_the_mode_is_enforce_or_shadow():
    assert Settings.from_env({"OPCANCEL_MODE": "shadow"}).mode == "shadow"
    bad({"OPCANCEL_MODE": "dry"}, "OPCANCEL_MODE")


def test_protected_parents_take_the_allow_list_s_forms():
    value = "organizations/1, projects/my-proj,//aiplatform.googleapis.com/projects/my-proj-2"
    settings = Settings.from_env({"OPCANCEL_PROTECTED_PARENTS": value})
    assert settings.protected_parents == (
        "organizations/1",
        "projects/my-proj",
        "//aiplatform.googleapis.com/projects/my-proj-2",
    )


@pytest.mark.parametrize("value", ["", "  ", "organizations/x", ","])
def test_bad_protected_parents_fail_start_up_naming_them(value):
    bad({"OPCANCEL_PROTECTED_PARENTS": value}, "OPCANCEL_PROTECTED_PARENTS")
