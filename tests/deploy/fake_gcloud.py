"""A recording stand-in for ``gcloud``, for deploy.sh's tests.

Each call appends its argv, as one JSON line, to ``$FAKE_GCLOUD_LOG`` and acts on the
JSON state in ``$FAKE_GCLOUD_STATE``: describes find what exists, creates refuse what
already does, deletes refuse what does not, IAM bindings are kept as triples, and
``--format=value(...)`` projects the stored resource. Enough of gcloud's behaviour for a
deploy run against it to fail where the real one would: a binding naming a service
account that does not exist yet, a deploy before its topic, a command on another project.
A call the model does not know exits 3, so a new command in deploy.sh needs a model here.
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
        if self.name != self.project:
            raise Refused(f"project {self.name} is not the test's project {self.project}", 4)
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
        return "\n".join(f"{name}\t{level}" for name, level in self.state["testable_permissions"].items())

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
            self.get(f"topic/{self.flags['dead-letter-topic'].rpartition('/')[2]}")
            self.get(key).update(
                retryPolicy={
                    "minimumBackoff": self.flags["min-retry-delay"],
                    "maximumBackoff": self.flags["max-retry-delay"],
                },
                deadLetterPolicy={
                    "deadLetterTopic": self.flags["dead-letter-topic"],
                    "maxDeliveryAttempts": int(self.flags["max-delivery-attempts"]),
                },
            )
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
        key = f"role/organizations/{self.flags['organization']}/roles/{self.name}"
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
            trigger = function.get("eventTrigger", {}).get("trigger")
            if trigger:
                subscription = self.resources.pop(f"trigger/{trigger}")["transport"]["pubsub"]["subscription"]
                self.remove(f"subscription/{subscription.rpartition('/')[2]}")
            self.remove(key)
            return ""
        self.flags["role"] = "roles/run.invoker"
        self.verb = "add-iam-policy-binding"
        return self.policy(key)

    def deploy(self, key: str) -> str:
        for account in ("service-account", "trigger-service-account"):
            if account in self.flags:
                self.project_account(self.flags[account])
        variables = self.flags["set-env-vars"]
        separator = "@" if variables.startswith("^@^") else ","
        environment = dict(item.split("=", 1) for item in variables.removeprefix("^@^").split(separator))
        label, _, value = self.flags["update-labels"].partition("=")
        function = self.resources.setdefault(key, {"name": key})
        function.update(state="ACTIVE", labels={label: value}, serviceConfig={"environmentVariables": environment})
        topic = self.flags.get("trigger-topic")
        if topic and "eventTrigger" not in function:
            self.get(f"topic/{topic}")
            region = self.flags["region"]
            trigger = f"projects/{self.project}/locations/{region}/triggers/{self.name}-{len(self.resources)}"
            subscription = f"eventarc-{region}-{self.name}-{len(self.resources)}-sub-001"
            function["eventTrigger"] = {"trigger": trigger, "pubsubTopic": f"projects/{self.project}/topics/{topic}"}
            self.resources[f"trigger/{trigger}"] = {
                "transport": {"pubsub": {"subscription": f"projects/{self.project}/subscriptions/{subscription}"}}
            }
            self.add(f"subscription/{subscription}", {"name": subscription, "topic": topic})
        return ""

    def _run_services(self) -> str:
        """A 2nd gen function's Cloud Run service: only its IAM policy, which holds run.invoker."""
        self.in_project()
        key = f"function/{self.flags['region']}/{self.name}"
        self.get(key)
        return self.policy(key)

    def _eventarc_triggers(self) -> str:
        self.in_project()
        return self.shown(self.get(f"trigger/{self.name}"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
