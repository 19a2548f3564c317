"""A recording stand-in for ``gcloud``, for deploy.sh's tests.

Each call appends its argv, as one JSON line, to ``$FAKE_GCLOUD_LOG`` and acts on the
JSON state in ``$FAKE_GCLOUD_STATE``: describes find what exists, creates refuse what
already does, deletes refuse what does not, IAM bindings are kept as triples, and
``--format=value(...)`` projects the stored resource. Enough of gcloud's behaviour for a
deploy run against it to fail where the real one would: a call to an API not enabled yet,
a binding naming a service account that does not exist yet, a deploy before its topic, a
command on another project. ``gcloud functions deploy`` follows gcloud's own rule for
triggers (command_lib/functions/v2/deploy/command.py): a trigger flag replaces the
function's trigger, and the fake then recreates the trigger and its subscription, as
google-github-actions/deploy-cloud-functions#419 reports, losing the subscription's settings;
without one the trigger is kept. Files named by ``--config-from-file`` and
``--policy-from-file`` are read and must hold JSON. A call the model does not know exits 3,
so a new command in deploy.sh needs a model here.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

VERBS = {
    "describe",
    "create",
    "delete",
    "deploy",
    "update",
    "undelete",
    "list",
    "enable",
    "get-iam-policy",
    "add-iam-policy-binding",
    "remove-iam-policy-binding",
    "add-invoker-policy-binding",
    "list-testable-permissions",
}

# The API each command group calls, which must be enabled in the project first.
APIS = {
    "projects": "cloudresourcemanager.googleapis.com",
    "organizations": "cloudresourcemanager.googleapis.com",
    "iam": "iam.googleapis.com",
    "pubsub": "pubsub.googleapis.com",
    "functions": "cloudfunctions.googleapis.com",
    "run": "run.googleapis.com",
    "eventarc": "eventarc.googleapis.com",
    "firestore": "firestore.googleapis.com",
    "tasks": "cloudtasks.googleapis.com",
    "logging": "logging.googleapis.com",
    "monitoring": "monitoring.googleapis.com",
}
TRIGGER_FLAGS = ("trigger-topic", "trigger-http", "trigger-bucket", "trigger-event", "trigger-event-filters")


class Refused(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def main(argv: list[str]) -> int:
    with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\n")
    path = os.environ["FAKE_GCLOUD_STATE"]
    with open(path) as file:
        state = json.load(file)
    try:
        output = Gcloud(state, argv).run()
    except Refused as refusal:
        print(f"ERROR: (gcloud) {refusal}", file=sys.stderr)
        return refusal.code
    finally:
        with open(path, "w") as file:
            json.dump(state, file, indent=1, sort_keys=True)
    if output:
        print(output)
    return 0


class Gcloud:
    def __init__(self, state: dict[str, Any], argv: list[str]) -> None:
        self.state = state
        self.argv = argv
        positionals = [arg for arg in argv if not arg.startswith("--")]
        self.flags: dict[str, Any] = {}
        for arg in argv:
            if arg.startswith("--"):
                key, _, value = arg[2:].partition("=")
                self.flags[key] = value if "=" in arg else True
        verb_at = next((i for i, word in enumerate(positionals) if word in VERBS), None)
        if verb_at is None:
            raise Refused(f"fake gcloud has no model for {argv}", 3)
        self.group = tuple(positionals[:verb_at])
        self.verb = positionals[verb_at]
        self.name = positionals[verb_at + 1] if len(positionals) > verb_at + 1 else None
        self.project = state["project"]

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.state.setdefault("resources", {})

    @property
    def bindings(self) -> list[list[str]]:
        return self.state.setdefault("bindings", [])

    def run(self) -> str:
        for failure in self.state.get("failures", []):
            if failure["times"] > 0 and all(token in self.argv for token in failure["argv"]):
                failure["times"] -= 1
                raise Refused(failure["message"])
        handler = getattr(self, "_" + "_".join(self.group).replace("-", "_"), None)
        if handler is None:
            raise Refused(f"fake gcloud has no model for {self.argv}", 3)
        api = APIS.get(self.group[1] if self.group[0] == "alpha" else self.group[0])
        if api and api not in self.state.get("services", []):
            raise Refused(f"PERMISSION_DENIED: {api} has not been used in project {self.project} or it is disabled")
        return handler() or ""

    # --- helpers ----------------------------------------------------------------------------

    def in_project(self) -> None:
        if self.flags.get("project") != self.project:
            raise Refused(f"--project={self.flags.get('project')} is not the test's project {self.project}", 4)

    def get(self, key: str) -> dict[str, Any]:
        if key not in self.resources:
            raise Refused(f"NOT_FOUND: {key}")
        return self.resources[key]

    def add(self, key: str, resource: dict[str, Any]) -> None:
        if key in self.resources:
            raise Refused(f"ALREADY_EXISTS: {key}")
        self.resources[key] = resource

    def remove(self, key: str) -> None:
        self.get(key)
        del self.resources[key]
        self.bindings[:] = [binding for binding in self.bindings if binding[0] != key]

    def project_account(self, email: str) -> None:
        if email.endswith(f"@{self.project}.iam.gserviceaccount.com"):
            self.get(f"serviceaccount/{email}")

    def known_project(self, project: str) -> None:
        if project != self.project and project not in self.state.get("other_projects", []):
            raise Refused(f"project {project} is not one of the test's projects", 4)

    def serial(self) -> int:
        self.state["serial"] = self.state.get("serial", 0) + 1
        return self.state["serial"]

    def config(self, flag: str) -> dict[str, Any]:
        """The JSON file a ``--config-from-file``-style flag names, as gcloud reads it."""
        try:
            with open(self.flags[flag]) as file:
                return json.load(file)
        except (OSError, ValueError) as error:
            raise Refused(f"--{flag}: {error}", 2) from error

    def listed(self, kind: str) -> str:
        """``list`` of the resources of KIND, filtered by ``displayName="..."`` as deploy.sh asks."""
        match = re.fullmatch(r'displayName="(.*)"', self.flags.get("filter", ""))
        if not match:
            raise Refused(f"fake gcloud cannot filter {kind} by {self.flags.get('filter')!r}", 3)
        return "\n".join(
            self.shown(resource)
            for key, resource in self.resources.items()
            if key.startswith(f"{kind}/") and resource["displayName"] == match.group(1)
        )

    def policy(self, key: str) -> str:
        """add/remove/get-iam-policy on the resource ``key``."""
        if self.verb == "get-iam-policy":
            match = re.fullmatch(r'bindings\.role="(.+)" AND bindings\.members="(.+)"', self.flags["filter"])
            if not match or self.flags.get("flatten") != "bindings[].members":
                raise Refused(f"fake gcloud cannot filter a policy by {self.flags.get('filter')!r}", 3)
            return match.group(1) if [key, match.group(1), match.group(2)] in self.bindings else ""
        member, role = self.flags["member"], self.flags["role"]
        if member.startswith("serviceAccount:"):
            self.project_account(member.removeprefix("serviceAccount:"))
        binding = [key, role, member]
        if self.verb == "add-iam-policy-binding":
            if binding not in self.bindings:
                self.bindings.append(binding)
        elif binding in self.bindings:
            self.bindings.remove(binding)
        else:
            raise Refused("Policy binding with the specified principal, role, and condition not found!")
        return ""

    def shown(self, resource: dict[str, Any]) -> str:
        """The resource as ``--format=value(a,b.c,d.list())`` prints it."""
        fields = re.fullmatch(r"value\((.*)\)", self.flags.get("format", ""))
        if not fields:
            return json.dumps(resource)
        values = []
        for field in fields.group(1).split(","):
            value: Any = resource
            for part in field.removesuffix(".list()").split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if isinstance(value, list):
                value = ",".join(value)
            values.append("" if value is None else str(value))
        return "\t".join(values)

    # --- commands ---------------------------------------------------------------------------

    def _projects(self) -> str:
        if self.verb == "describe" and self.name != self.project:
            raise Refused(f"project {self.name} is not the test's project {self.project}", 4)
        self.known_project(self.name)
        if self.verb == "describe":
            return self.shown({"projectId": self.project, "projectNumber": self.state["project_number"]})
        return self.policy(f"project/{self.name}")

    def _organizations(self) -> str:
        return self.policy(f"organization/{self.name}")

    def _services(self) -> str:
        self.in_project()
        enabled = self.state.setdefault("services", [])
        if self.verb == "list":
            return "\n".join(enabled)
        enabled.extend(service for service in self.argv[2:] if not service.startswith("--") and service not in enabled)
        return ""

    def _iam(self) -> str:
        catalogue = self.state.get("testable_by_resource", {}).get(self.name, self.state["testable_permissions"])
        return "\n".join(f"{name}\t{level}" for name, level in catalogue.items())

    def _pubsub_topics(self) -> str:
        self.in_project()
        key = f"topic/{self.name}"
        if self.verb == "describe":
            return self.shown(self.get(key))
        if self.verb == "create":
            self.add(key, {"name": f"projects/{self.project}/topics/{self.name}"})
        elif self.verb == "delete":
            self.remove(key)
        else:
            self.get(key)
            return self.policy(key)
        return ""

    def _pubsub_subscriptions(self) -> str:
        self.in_project()
        key = f"subscription/{self.name.rpartition('/')[2]}"
        if self.verb == "describe":
            return self.shown(self.get(key))
        if self.verb == "create":
            self.get(f"topic/{self.flags['topic']}")
            self.add(key, {"name": f"projects/{self.project}/subscriptions/{self.name}", "topic": self.flags["topic"]})
        elif self.verb == "delete":
            self.remove(key)
        elif self.verb == "update":
            subscription = self.get(key)
            if "ack-deadline" in self.flags:
                deadline = int(self.flags["ack-deadline"])
                if not 10 <= deadline <= 600:
                    raise Refused("INVALID_ARGUMENT: the ack deadline must be between 10 and 600 seconds")
                subscription["ackDeadlineSeconds"] = deadline
            if "min-retry-delay" in self.flags:
                subscription["retryPolicy"] = {
                    "minimumBackoff": self.flags["min-retry-delay"],
                    "maximumBackoff": self.flags["max-retry-delay"],
                }
            if "dead-letter-topic" in self.flags:
                self.get(f"topic/{self.flags['dead-letter-topic'].rpartition('/')[2]}")
                subscription["deadLetterPolicy"] = {
                    "deadLetterTopic": self.flags["dead-letter-topic"],
                    "maxDeliveryAttempts": int(self.flags["max-delivery-attempts"]),
                }
        else:
            self.get(key)
            return self.policy(key)
        return ""

    def _iam_service_accounts(self) -> str:
        self.in_project()
        if self.verb == "create":
            email = f"{self.name}@{self.project}.iam.gserviceaccount.com"
            self.add(f"serviceaccount/{email}", {"email": email, "displayName": self.flags["display-name"]})
            return ""
        key = f"serviceaccount/{self.name}"
        if self.verb == "describe":
            return self.shown(self.get(key))
        if self.verb == "delete":
            self.remove(key)
            return ""
        self.get(key)
        return self.policy(key)

    def _iam_roles(self) -> str:
        if "organization" in self.flags:
            key = f"role/organizations/{self.flags['organization']}/roles/{self.name}"
        else:
            self.known_project(self.flags["project"])
            key = f"role/projects/{self.flags['project']}/roles/{self.name}"
        if self.verb == "create":
            self.add(
                key, {"name": key.removeprefix("role/"), "includedPermissions": self.flags["permissions"].split(",")}
            )
            return ""
        role = self.get(key)
        if self.verb == "describe":
            return self.shown(role)
        if self.verb == "update":
            role["includedPermissions"] = self.flags["permissions"].split(",")
        elif self.verb == "delete":
            if role.get("deleted"):
                raise Refused(f"FAILED_PRECONDITION: {key} is already deleted")
            role["deleted"] = True
        elif self.verb == "undelete" and not role.pop("deleted", False):
            raise Refused(f"FAILED_PRECONDITION: {key} is not deleted")
        return ""

    def _firestore_databases(self) -> str:
        self.in_project()
        key = f"database/{self.flags['database']}"
        if self.verb == "describe":
            return self.shown(self.get(key))
        types = {"firestore-native": "FIRESTORE_NATIVE", "datastore-mode": "DATASTORE_MODE"}
        self.add(key, {"type": types[self.flags["type"]], "locationId": self.flags["location"]})
        return ""

    def _firestore_fields_ttls(self) -> str:
        self.in_project()
        database, group = self.flags["database"], self.flags["collection-group"]
        self.get(f"database/{database}")
        prefix = f"projects/{self.project}/databases/{database}/collectionGroups/{group}/fields/"
        if self.verb == "list":
            return "\n".join(
                self.shown(ttl) for key, ttl in self.resources.items() if ttl.get("name", "").startswith(prefix)
            )
        key = f"ttl/{database}/{group}/{self.name}"
        if self.flags.get("enable-ttl"):
            self.resources[key] = {"name": prefix + self.name, "ttlConfig": {"state": "CREATING"}}
        else:
            self.remove(key)
        return ""

    def _functions(self) -> str:
        self.in_project()
        key = f"function/{self.flags['region']}/{self.name}"
        if self.verb == "describe":
            return self.shown(self.get(key))
        if self.verb == "deploy":
            return self.deploy(key)
        function = self.get(key)
        if self.verb == "delete":
            self.drop_trigger(function)
            self.remove(key)
            return ""
        self.flags["role"] = "roles/run.invoker"
        self.verb = "add-iam-policy-binding"
        return self.policy(key)

    def deploy(self, key: str) -> str:
        for account in ("service-account", "trigger-service-account"):
            if account in self.flags:
                self.project_account(self.flags[account])
        build = self.flags.get("build-service-account")
        if build is not None:
            match = re.fullmatch(r"projects/([^/]+)/serviceAccounts/([^/]+)", build)
            if not match:
                raise Refused(f"--build-service-account: {build} is not projects/PROJECT/serviceAccounts/EMAIL", 2)
            self.project_account(match.group(2))
        if "retry" in self.flags and "trigger-http" in self.flags:
            raise Refused("`--retry` is only supported with an event trigger not http triggers.", 2)
        triggered = [flag for flag in TRIGGER_FLAGS if flag in self.flags]
        if key not in self.resources and not triggered:
            raise Refused("You must specify a trigger when deploying a new function.", 2)
        variables = self.flags["set-env-vars"]
        separator = ","
        if match := re.match(r"\^(.)\^", variables):
            separator, variables = match.group(1), variables[3:]
        environment = dict(item.split("=", 1) for item in variables.split(separator))
        label, _, value = self.flags["update-labels"].partition("=")
        function = self.resources.setdefault(key, {"name": key})
        function.update(
            state="ACTIVE",
            labels={label: value},
            serviceConfig={"environmentVariables": environment},
            buildConfig={"serviceAccount": build},
        )
        self.state.setdefault("deploys", []).append({"function": self.name, "triggers": triggered})
        if triggered:
            # gcloud sends the whole trigger in the update mask: the old one is replaced.
            self.drop_trigger(function)
        topic = self.flags.get("trigger-topic")
        if topic:
            self.get(f"topic/{topic}")
            region, serial = self.flags["region"], self.serial()
            trigger = f"projects/{self.project}/locations/{region}/triggers/{self.name}-{serial}"
            subscription = f"eventarc-{region}-{self.name}-{serial}-sub-001"
            function["eventTrigger"] = {
                "trigger": trigger,
                "pubsubTopic": f"projects/{self.project}/topics/{topic}",
                "serviceAccountEmail": self.flags.get("trigger-service-account", self.flags.get("service-account")),
                "retryPolicy": "RETRY_POLICY_RETRY" if "retry" in self.flags else "RETRY_POLICY_DO_NOT_RETRY",
            }
            self.resources[f"trigger/{trigger}"] = {
                "transport": {"pubsub": {"subscription": f"projects/{self.project}/subscriptions/{subscription}"}}
            }
            self.add(f"subscription/{subscription}", {"name": subscription, "topic": topic, "ackDeadlineSeconds": 10})
        elif "retry" in self.flags:
            if "eventTrigger" not in function:
                raise Refused("`--retry` is only supported with an event trigger not http triggers.", 2)
            function["eventTrigger"]["retryPolicy"] = "RETRY_POLICY_RETRY"
        return ""

    def drop_trigger(self, function: dict[str, Any]) -> None:
        """Deletes the function's trigger with its subscription, the messages waiting in it and its settings."""
        trigger = function.pop("eventTrigger", {}).get("trigger")
        if trigger:
            subscription = self.resources.pop(f"trigger/{trigger}")["transport"]["pubsub"]["subscription"]
            self.remove(f"subscription/{subscription.rpartition('/')[2]}")
            self.state["subscriptions_deleted"] = self.state.get("subscriptions_deleted", 0) + 1

    def _run_services(self) -> str:
        """A 2nd gen function's Cloud Run service: only its IAM policy, which holds run.invoker."""
        self.in_project()
        key = f"function/{self.flags['region']}/{self.name}"
        self.get(key)
        return self.policy(key)

    def _eventarc_triggers(self) -> str:
        self.in_project()
        return self.shown(self.get(f"trigger/{self.name}"))

    def _tasks_queues(self) -> str:
        self.in_project()
        key = f"queue/{self.flags['location']}/{self.name}"
        if self.verb == "describe":
            return self.shown(self.get(key))
        if self.verb == "create":
            if self.name in self.state.get("tombstoned_queues", []):
                return ""  # the reference's "may appear to recreate the queue": no error, no queue
            self.add(key, {"name": f"projects/{self.project}/locations/{self.flags['location']}/queues/{self.name}"})
        if self.verb in ("create", "update"):
            retry = self.get(key).setdefault("retryConfig", {})
            for flag, field, kind in (
                ("max-attempts", "maxAttempts", int),
                ("min-backoff", "minBackoff", str),
                ("max-backoff", "maxBackoff", str),
                ("max-doublings", "maxDoublings", int),
                ("max-retry-duration", "maxRetryDuration", str),
            ):
                if flag in self.flags:
                    retry[field] = kind(self.flags[flag])
        elif self.verb == "delete":
            self.remove(key)
        else:
            self.get(key)
            return self.policy(key)
        return ""

    def _logging_metrics(self) -> str:
        self.in_project()
        key = f"metric/{self.name}"
        if self.verb == "describe":
            return self.shown({"name": self.name, **self.get(key)})
        if self.verb == "create":
            self.add(key, self.config("config-from-file"))
        elif self.verb == "update":
            self.get(key).update(self.config("config-from-file"))
        else:
            self.remove(key)
        return ""

    def _monitoring_dashboards(self) -> str:
        self.in_project()
        if self.verb == "list":
            return self.listed("dashboard")
        if self.verb == "create":
            dashboard = self.config("config-from-file")
            if "etag" in dashboard:
                raise Refused("INVALID_ARGUMENT: etag must not be set on create")
            serial = self.serial()
            name = f"projects/{self.state['project_number']}/dashboards/{serial}"
            self.add(f"dashboard/{serial}", {**dashboard, "name": name, "etag": f"etag-{serial}"})
            return ""
        key = f"dashboard/{self.name.rpartition('/')[2]}"
        if self.verb == "update":
            dashboard = self.config("config-from-file")
            if dashboard.get("etag") != self.get(key)["etag"]:
                raise Refused("ABORTED: the dashboard changed since its etag was read")
            self.resources[key] = {**dashboard, "name": self.name, "etag": f"etag-{self.serial()}"}
        else:
            self.remove(key)
        return ""

    def _alpha_monitoring_policies(self) -> str:
        self.in_project()
        if self.verb == "list":
            return self.listed("policy")
        if self.verb == "create":
            serial = self.serial()
            name = f"projects/{self.project}/alertPolicies/{serial}"
            self.add(f"policy/{serial}", {**self.config("policy-from-file"), "name": name})
            return ""
        key = f"policy/{self.name.rpartition('/')[2]}"
        if self.verb == "update":
            self.get(key)
            self.resources[key] = {**self.config("policy-from-file"), "name": self.name}
        else:
            self.remove(key)
        return ""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
