"""deploy.sh against a recording fake gcloud (tests/deploy/fake_gcloud.py), its dry run against the
real gcloud's argument parser, and shellcheck.

The fake keeps the project's state in a JSON file between runs, so a fresh deploy, a re-run and a
destroy are run one after the other against the same "cloud" and their exact calls compared.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy.sh"
FAKE = Path(__file__).with_name("fake_gcloud.py")
PROJECT = "opcancel-test"
REGION = "europe-west1"
PARENTS = "organizations/123,organizations/456"
NOT_A_PARENT = "is not organizations/ID, projects/PROJECT or //SERVICE.googleapis.com/projects/PROJECT[/...]"
BASE = ("--project", PROJECT, "--region", REGION)
FUNCTION_SA = f"opcancel-function@{PROJECT}.iam.gserviceaccount.com"
TRIGGER_SA = f"opcancel-trigger@{PROJECT}.iam.gserviceaccount.com"
BUILD_SA = f"opcancel-build@{PROJECT}.iam.gserviceaccount.com"
TASKS_SA = f"opcancel-tasks@{PROJECT}.iam.gserviceaccount.com"
PROJECT_NUMBER = "123456789012"
PUBSUB_AGENT = f"serviceAccount:service-{PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
READ_VERBS = {"describe", "list", "get-iam-policy", "list-testable-permissions"}
BUILD_ROLES = ("roles/logging.logWriter", "roles/artifactregistry.writer", "roles/storage.objectAdmin")

# The exact calls of a first deploy with two organizations; DIGEST stands for the source-and-config
# digest in each function's label (and the definitions' digests), WORK for the directory deploy.sh
# writes the metric, dashboard and alert definitions to, SUBSCRIPTION-x for Eventarc's subscriptions.
ENV_VARS = (
    f"^|^GOOGLE_CLOUD_PROJECT={PROJECT}|OPCANCEL_STORE=firestore|OPCANCEL_FIRESTORE_COLLECTION=opcancel-idempotency"
    "|OPCANCEL_CHECKS_TOPIC=opcancel-checks|OPCANCEL_RESULTS_TOPIC=opcancel-results"
    f"|OPCANCEL_TASKS_QUEUE=projects/{PROJECT}/locations/{REGION}/queues/opcancel-checks"
    f"|OPCANCEL_TASKS_SERVICE_ACCOUNT={TASKS_SA}|OPCANCEL_MODE=enforce|OPCANCEL_CANCEL_BUDGET=100/1h"
    f"|OPCANCEL_ALLOWED_PARENTS={PARENTS}"
)
DEPLOYED = (
    "--format=value(serviceConfig.environmentVariables.OPCANCEL_ALLOWED_PARENTS,"
    "serviceConfig.environmentVariables.OPCANCEL_MODE,serviceConfig.environmentVariables.OPCANCEL_PAUSED)"
)
DEAD_LETTER_TITLE = "opcancel (opcancel): messages in the dead-letter subscription"
BREAKER_TITLE = "opcancel (opcancel): the cancel budget breaker tripped"
PAUSE_TITLE = "opcancel (opcancel): cancelling is paused"
POLICY = "--flatten=bindings[].members --format=value(bindings.role)"
FRESH_DEPLOY = f"""
services list --enabled --project={PROJECT} --format=value(config.name)
services enable cloudresourcemanager.googleapis.com iam.googleapis.com cloudfunctions.googleapis.com run.googleapis.com eventarc.googleapis.com pubsub.googleapis.com firestore.googleapis.com cloudbuild.googleapis.com artifactregistry.googleapis.com cloudtasks.googleapis.com logging.googleapis.com monitoring.googleapis.com securitycenter.googleapis.com --project={PROJECT}
projects describe {PROJECT} --format=value(projectNumber)
iam list-testable-permissions //cloudresourcemanager.googleapis.com/organizations/123 --format=value(name,customRolesSupportLevel)
pubsub topics describe opcancel-requests --project={PROJECT} --format=value(name)
pubsub topics create opcancel-requests --project={PROJECT}
pubsub topics describe opcancel-checks --project={PROJECT} --format=value(name)
pubsub topics create opcancel-checks --project={PROJECT}
pubsub topics describe opcancel-results --project={PROJECT} --format=value(name)
pubsub topics create opcancel-results --project={PROJECT}
pubsub topics describe opcancel-dead-letter --project={PROJECT} --format=value(name)
pubsub topics create opcancel-dead-letter --project={PROJECT}
pubsub subscriptions describe opcancel-dead-letter --project={PROJECT} --format=value(name)
pubsub subscriptions create opcancel-dead-letter --project={PROJECT} --topic=opcancel-dead-letter --message-retention-duration=7d --expiration-period=never
iam service-accounts describe {FUNCTION_SA} --project={PROJECT} --format=value(email)
iam service-accounts create opcancel-function --project={PROJECT} '--display-name=opcancel function (opcancel)'
iam service-accounts describe {TRIGGER_SA} --project={PROJECT} --format=value(email)
iam service-accounts create opcancel-trigger --project={PROJECT} '--display-name=opcancel Eventarc trigger (opcancel)'
iam service-accounts describe {BUILD_SA} --project={PROJECT} --format=value(email)
iam service-accounts create opcancel-build --project={PROJECT} '--display-name=opcancel Cloud Build (opcancel)'
iam service-accounts describe {TASKS_SA} --project={PROJECT} --format=value(email)
iam service-accounts create opcancel-tasks --project={PROJECT} '--display-name=opcancel Cloud Tasks publisher of checks (opcancel)'
firestore databases describe --project={PROJECT} --database=(default) --format=value(type)
firestore databases create --project={PROJECT} --database=(default) --location={REGION} --type=firestore-native
firestore fields ttls list --project={PROJECT} --database=(default) --collection-group=opcancel-idempotency --format=value(name)
firestore fields ttls update expire_at --project={PROJECT} --database=(default) --collection-group=opcancel-idempotency --enable-ttl --async
projects get-iam-policy {PROJECT} POLICY roles/datastore.user serviceAccount:{FUNCTION_SA}
projects add-iam-policy-binding {PROJECT} --member=serviceAccount:{FUNCTION_SA} --role=roles/datastore.user --condition=None
pubsub topics get-iam-policy opcancel-results --project={PROJECT} POLICY roles/pubsub.publisher serviceAccount:{FUNCTION_SA}
pubsub topics add-iam-policy-binding opcancel-results --project={PROJECT} --member=serviceAccount:{FUNCTION_SA} --role=roles/pubsub.publisher
pubsub topics get-iam-policy opcancel-checks --project={PROJECT} POLICY roles/pubsub.publisher serviceAccount:{FUNCTION_SA}
pubsub topics get-iam-policy opcancel-checks --project={PROJECT} POLICY roles/pubsub.publisher serviceAccount:{TASKS_SA}
pubsub topics add-iam-policy-binding opcancel-checks --project={PROJECT} --member=serviceAccount:{TASKS_SA} --role=roles/pubsub.publisher
pubsub topics get-iam-policy opcancel-dead-letter --project={PROJECT} POLICY roles/pubsub.publisher {PUBSUB_AGENT}
pubsub topics add-iam-policy-binding opcancel-dead-letter --project={PROJECT} --member={PUBSUB_AGENT} --role=roles/pubsub.publisher
iam service-accounts get-iam-policy {TRIGGER_SA} --project={PROJECT} POLICY roles/iam.serviceAccountTokenCreator {PUBSUB_AGENT}
iam service-accounts add-iam-policy-binding {TRIGGER_SA} --project={PROJECT} --member={PUBSUB_AGENT} --role=roles/iam.serviceAccountTokenCreator
projects get-iam-policy {PROJECT} POLICY roles/logging.logWriter serviceAccount:{BUILD_SA}
projects add-iam-policy-binding {PROJECT} --member=serviceAccount:{BUILD_SA} --role=roles/logging.logWriter --condition=None
projects get-iam-policy {PROJECT} POLICY roles/artifactregistry.writer serviceAccount:{BUILD_SA}
projects add-iam-policy-binding {PROJECT} --member=serviceAccount:{BUILD_SA} --role=roles/artifactregistry.writer --condition=None
projects get-iam-policy {PROJECT} POLICY roles/storage.objectAdmin serviceAccount:{BUILD_SA}
projects add-iam-policy-binding {PROJECT} --member=serviceAccount:{BUILD_SA} --role=roles/storage.objectAdmin --condition=None
tasks queues describe opcancel-checks --project={PROJECT} --location={REGION} --format=value(retryConfig.maxAttempts,retryConfig.minBackoff,retryConfig.maxBackoff,retryConfig.maxDoublings,retryConfig.maxRetryDuration)
tasks queues create opcancel-checks --project={PROJECT} --location={REGION} --max-attempts=100 --min-backoff=5s --max-backoff=300s --max-doublings=6 --max-retry-duration=86400s
tasks queues describe opcancel-checks --project={PROJECT} --location={REGION} --format=value(name)
tasks queues get-iam-policy opcancel-checks --project={PROJECT} --location={REGION} POLICY roles/cloudtasks.enqueuer serviceAccount:{FUNCTION_SA}
tasks queues add-iam-policy-binding opcancel-checks --project={PROJECT} --location={REGION} --member=serviceAccount:{FUNCTION_SA} --role=roles/cloudtasks.enqueuer
iam service-accounts get-iam-policy {TASKS_SA} --project={PROJECT} POLICY roles/iam.serviceAccountUser serviceAccount:{FUNCTION_SA}
iam service-accounts add-iam-policy-binding {TASKS_SA} --project={PROJECT} --member=serviceAccount:{FUNCTION_SA} --role=roles/iam.serviceAccountUser
iam roles describe opcancel_operation_canceller --organization=123 --format=value(deleted,includedPermissions.list())
iam roles create opcancel_operation_canceller --organization=123 '--title=opcancel operation canceller' '--description=Cancel and get long-running operations, for the opcancel deployment opcancel in {PROJECT}' --permissions=securitycenter.operations.cancel,securitycenter.operations.get --stage=GA --quiet
organizations get-iam-policy 123 POLICY organizations/123/roles/opcancel_operation_canceller serviceAccount:{FUNCTION_SA}
organizations add-iam-policy-binding 123 --member=serviceAccount:{FUNCTION_SA} --role=organizations/123/roles/opcancel_operation_canceller --condition=None
iam roles describe opcancel_operation_canceller --organization=456 --format=value(deleted,includedPermissions.list())
iam roles create opcancel_operation_canceller --organization=456 '--title=opcancel operation canceller' '--description=Cancel and get long-running operations, for the opcancel deployment opcancel in {PROJECT}' --permissions=securitycenter.operations.cancel,securitycenter.operations.get --stage=GA --quiet
organizations get-iam-policy 456 POLICY organizations/456/roles/opcancel_operation_canceller serviceAccount:{FUNCTION_SA}
organizations add-iam-policy-binding 456 --member=serviceAccount:{FUNCTION_SA} --role=organizations/456/roles/opcancel_operation_canceller --condition=None
functions describe opcancel-requests --project={PROJECT} --region={REGION} --gen2 {DEPLOYED}
functions describe opcancel-requests --project={PROJECT} --region={REGION} --gen2 --format=value(state,labels.opcancel_deploy,eventTrigger.pubsubTopic,eventTrigger.serviceAccountEmail,eventTrigger.retryPolicy)
functions deploy opcancel-requests --project={PROJECT} --region={REGION} --gen2 --runtime=python313 --source={ROOT} --entry-point=on_event --build-service-account=projects/{PROJECT}/serviceAccounts/{BUILD_SA} --service-account={FUNCTION_SA} --timeout=540s --no-allow-unauthenticated --ingress-settings=internal-only --set-env-vars='{ENV_VARS}' --trigger-topic=opcancel-requests --trigger-service-account={TRIGGER_SA} --retry --update-labels=opcancel_deploy=DIGEST --quiet
functions describe opcancel-checks --project={PROJECT} --region={REGION} --gen2 --format=value(state,labels.opcancel_deploy,eventTrigger.pubsubTopic,eventTrigger.serviceAccountEmail,eventTrigger.retryPolicy)
functions deploy opcancel-checks --project={PROJECT} --region={REGION} --gen2 --runtime=python313 --source={ROOT} --entry-point=on_event --build-service-account=projects/{PROJECT}/serviceAccounts/{BUILD_SA} --service-account={FUNCTION_SA} --timeout=540s --no-allow-unauthenticated --ingress-settings=internal-only --set-env-vars='{ENV_VARS}' --trigger-topic=opcancel-checks --trigger-service-account={TRIGGER_SA} --retry --update-labels=opcancel_deploy=DIGEST --quiet
functions describe opcancel-http --project={PROJECT} --region={REGION} --gen2 --format=value(state,labels.opcancel_deploy,eventTrigger.pubsubTopic,eventTrigger.serviceAccountEmail,eventTrigger.retryPolicy)
functions deploy opcancel-http --project={PROJECT} --region={REGION} --gen2 --runtime=python313 --source={ROOT} --entry-point=on_http --build-service-account=projects/{PROJECT}/serviceAccounts/{BUILD_SA} --service-account={FUNCTION_SA} --timeout=540s --no-allow-unauthenticated --set-env-vars='{ENV_VARS}' --trigger-http --update-labels=opcancel_deploy=DIGEST --quiet
run services get-iam-policy opcancel-requests --project={PROJECT} --region={REGION} POLICY roles/run.invoker serviceAccount:{TRIGGER_SA}
functions add-invoker-policy-binding opcancel-requests --project={PROJECT} --region={REGION} --member=serviceAccount:{TRIGGER_SA}
functions describe opcancel-requests --project={PROJECT} --region={REGION} --gen2 --format=value(eventTrigger.trigger)
eventarc triggers describe projects/{PROJECT}/locations/{REGION}/triggers/opcancel-requests-1 --project={PROJECT} --format=value(transport.pubsub.subscription)
pubsub subscriptions describe SUBSCRIPTION-requests --project={PROJECT} --format=value(ackDeadlineSeconds,retryPolicy.minimumBackoff,retryPolicy.maximumBackoff,deadLetterPolicy.deadLetterTopic,deadLetterPolicy.maxDeliveryAttempts)
pubsub subscriptions update SUBSCRIPTION-requests --project={PROJECT} --ack-deadline=600 --min-retry-delay=10s --max-retry-delay=300s --dead-letter-topic=projects/{PROJECT}/topics/opcancel-dead-letter --max-delivery-attempts=100
pubsub subscriptions get-iam-policy SUBSCRIPTION-requests --project={PROJECT} POLICY roles/pubsub.subscriber {PUBSUB_AGENT}
pubsub subscriptions add-iam-policy-binding SUBSCRIPTION-requests --project={PROJECT} --member={PUBSUB_AGENT} --role=roles/pubsub.subscriber
run services get-iam-policy opcancel-checks --project={PROJECT} --region={REGION} POLICY roles/run.invoker serviceAccount:{TRIGGER_SA}
functions add-invoker-policy-binding opcancel-checks --project={PROJECT} --region={REGION} --member=serviceAccount:{TRIGGER_SA}
functions describe opcancel-checks --project={PROJECT} --region={REGION} --gen2 --format=value(eventTrigger.trigger)
eventarc triggers describe projects/{PROJECT}/locations/{REGION}/triggers/opcancel-checks-2 --project={PROJECT} --format=value(transport.pubsub.subscription)
pubsub subscriptions describe SUBSCRIPTION-checks --project={PROJECT} --format=value(ackDeadlineSeconds,retryPolicy.minimumBackoff,retryPolicy.maximumBackoff,deadLetterPolicy.deadLetterTopic,deadLetterPolicy.maxDeliveryAttempts)
pubsub subscriptions update SUBSCRIPTION-checks --project={PROJECT} --ack-deadline=600 --min-retry-delay=10s --max-retry-delay=300s --dead-letter-topic=projects/{PROJECT}/topics/opcancel-dead-letter --max-delivery-attempts=100
pubsub subscriptions get-iam-policy SUBSCRIPTION-checks --project={PROJECT} POLICY roles/pubsub.subscriber {PUBSUB_AGENT}
pubsub subscriptions add-iam-policy-binding SUBSCRIPTION-checks --project={PROJECT} --member={PUBSUB_AGENT} --role=roles/pubsub.subscriber
logging metrics describe opcancel-results --project={PROJECT} --format=value(description)
logging metrics create opcancel-results --project={PROJECT} --config-from-file=WORK/metric-results.json
logging metrics describe opcancel-cancels-sent --project={PROJECT} --format=value(description)
logging metrics create opcancel-cancels-sent --project={PROJECT} --config-from-file=WORK/metric-cancels-sent.json
logging metrics describe opcancel-retries --project={PROJECT} --format=value(description)
logging metrics create opcancel-retries --project={PROJECT} --config-from-file=WORK/metric-retries.json
logging metrics describe opcancel-takeovers --project={PROJECT} --format=value(description)
logging metrics create opcancel-takeovers --project={PROJECT} --config-from-file=WORK/metric-takeovers.json
logging metrics describe opcancel-guard-events --project={PROJECT} --format=value(description)
logging metrics create opcancel-guard-events --project={PROJECT} --config-from-file=WORK/metric-guard-events.json
monitoring dashboards list --project={PROJECT} '--filter=displayName="opcancel (opcancel)"' --format=value(name,etag,labels.opcancel_deploy)
monitoring dashboards create --project={PROJECT} --config-from-file=WORK/dashboard.json
alpha monitoring policies list --project={PROJECT} '--filter=displayName="{DEAD_LETTER_TITLE}"' --format=value(name,userLabels.opcancel_deploy)
alpha monitoring policies create --project={PROJECT} --policy-from-file=WORK/alert-policy.json
alpha monitoring policies list --project={PROJECT} '--filter=displayName="{BREAKER_TITLE}"' --format=value(name,userLabels.opcancel_deploy)
alpha monitoring policies create --project={PROJECT} --policy-from-file=WORK/alert-policy-breaker.json
alpha monitoring policies list --project={PROJECT} '--filter=displayName="{PAUSE_TITLE}"' --format=value(name,userLabels.opcancel_deploy)
alpha monitoring policies create --project={PROJECT} --policy-from-file=WORK/alert-policy-pause.json
"""

DESTROY = f"""
functions describe opcancel-requests --project={PROJECT} --region={REGION} --gen2 {DEPLOYED}
functions describe opcancel-requests --project={PROJECT} --region={REGION} --gen2 --format=value(name)
functions delete opcancel-requests --project={PROJECT} --region={REGION} --gen2 --quiet
functions describe opcancel-checks --project={PROJECT} --region={REGION} --gen2 --format=value(name)
functions delete opcancel-checks --project={PROJECT} --region={REGION} --gen2 --quiet
functions describe opcancel-http --project={PROJECT} --region={REGION} --gen2 --format=value(name)
functions delete opcancel-http --project={PROJECT} --region={REGION} --gen2 --quiet
tasks queues describe opcancel-checks --project={PROJECT} --location={REGION} --format=value(name)
tasks queues delete opcancel-checks --project={PROJECT} --location={REGION} --quiet
pubsub subscriptions describe opcancel-dead-letter --project={PROJECT} --format=value(name)
pubsub subscriptions delete opcancel-dead-letter --project={PROJECT}
pubsub topics describe opcancel-requests --project={PROJECT} --format=value(name)
pubsub topics delete opcancel-requests --project={PROJECT}
pubsub topics describe opcancel-checks --project={PROJECT} --format=value(name)
pubsub topics delete opcancel-checks --project={PROJECT}
pubsub topics describe opcancel-results --project={PROJECT} --format=value(name)
pubsub topics delete opcancel-results --project={PROJECT}
pubsub topics describe opcancel-dead-letter --project={PROJECT} --format=value(name)
pubsub topics delete opcancel-dead-letter --project={PROJECT}
organizations get-iam-policy 123 POLICY organizations/123/roles/opcancel_operation_canceller serviceAccount:{FUNCTION_SA}
organizations remove-iam-policy-binding 123 --member=serviceAccount:{FUNCTION_SA} --role=organizations/123/roles/opcancel_operation_canceller --all
iam roles describe opcancel_operation_canceller --organization=123 --format=value(deleted,includedPermissions.list())
iam roles delete opcancel_operation_canceller --organization=123 --quiet
organizations get-iam-policy 456 POLICY organizations/456/roles/opcancel_operation_canceller serviceAccount:{FUNCTION_SA}
organizations remove-iam-policy-binding 456 --member=serviceAccount:{FUNCTION_SA} --role=organizations/456/roles/opcancel_operation_canceller --all
iam roles describe opcancel_operation_canceller --organization=456 --format=value(deleted,includedPermissions.list())
iam roles delete opcancel_operation_canceller --organization=456 --quiet
projects get-iam-policy {PROJECT} POLICY roles/datastore.user serviceAccount:{FUNCTION_SA}
projects remove-iam-policy-binding {PROJECT} --member=serviceAccount:{FUNCTION_SA} --role=roles/datastore.user --all
projects get-iam-policy {PROJECT} POLICY roles/logging.logWriter serviceAccount:{BUILD_SA}
projects remove-iam-policy-binding {PROJECT} --member=serviceAccount:{BUILD_SA} --role=roles/logging.logWriter --all
projects get-iam-policy {PROJECT} POLICY roles/artifactregistry.writer serviceAccount:{BUILD_SA}
projects remove-iam-policy-binding {PROJECT} --member=serviceAccount:{BUILD_SA} --role=roles/artifactregistry.writer --all
projects get-iam-policy {PROJECT} POLICY roles/storage.objectAdmin serviceAccount:{BUILD_SA}
projects remove-iam-policy-binding {PROJECT} --member=serviceAccount:{BUILD_SA} --role=roles/storage.objectAdmin --all
iam service-accounts describe {FUNCTION_SA} --project={PROJECT} --format=value(email)
iam service-accounts delete {FUNCTION_SA} --project={PROJECT} --quiet
iam service-accounts describe {TRIGGER_SA} --project={PROJECT} --format=value(email)
iam service-accounts delete {TRIGGER_SA} --project={PROJECT} --quiet
iam service-accounts describe {BUILD_SA} --project={PROJECT} --format=value(email)
iam service-accounts delete {BUILD_SA} --project={PROJECT} --quiet
iam service-accounts describe {TASKS_SA} --project={PROJECT} --format=value(email)
iam service-accounts delete {TASKS_SA} --project={PROJECT} --quiet
logging metrics describe opcancel-results --project={PROJECT} --format=value(name)
logging metrics delete opcancel-results --project={PROJECT} --quiet
logging metrics describe opcancel-cancels-sent --project={PROJECT} --format=value(name)
logging metrics delete opcancel-cancels-sent --project={PROJECT} --quiet
logging metrics describe opcancel-retries --project={PROJECT} --format=value(name)
logging metrics delete opcancel-retries --project={PROJECT} --quiet
logging metrics describe opcancel-takeovers --project={PROJECT} --format=value(name)
logging metrics delete opcancel-takeovers --project={PROJECT} --quiet
logging metrics describe opcancel-guard-events --project={PROJECT} --format=value(name)
logging metrics delete opcancel-guard-events --project={PROJECT} --quiet
monitoring dashboards list --project={PROJECT} '--filter=displayName="opcancel (opcancel)"' --format=value(name)
monitoring dashboards delete DASHBOARD --project={PROJECT} --quiet
alpha monitoring policies list --project={PROJECT} '--filter=displayName="{DEAD_LETTER_TITLE}"' --format=value(name)
alpha monitoring policies delete ALERT_POLICY --project={PROJECT} --quiet
alpha monitoring policies list --project={PROJECT} '--filter=displayName="{BREAKER_TITLE}"' --format=value(name)
alpha monitoring policies delete BREAKER_POLICY --project={PROJECT} --quiet
alpha monitoring policies list --project={PROJECT} '--filter=displayName="{PAUSE_TITLE}"' --format=value(name)
alpha monitoring policies delete PAUSE_POLICY --project={PROJECT} --quiet
"""


def expected(script: str, names: dict[str, str] | None = None) -> list[list[str]]:
    """The calls in ``script``: POLICY ROLE MEMBER stands for a get-iam-policy's flatten, filter and format."""
    calls = []
    for line in script.strip().splitlines():
        words = shlex.split(line)
        if "POLICY" in words:
            at = words.index("POLICY")
            role, member = words[at + 1 : at + 3]
            flatten, format_ = POLICY.split()
            words[at : at + 3] = [flatten, f'--filter=bindings.role="{role}" AND bindings.members="{member}"', format_]
        for placeholder, value in (names or {}).items():
            words = [word.replace(placeholder, value) for word in words]
        calls.append(words)
    return calls


# After creating the queue a real run looks again (a queue name deleted days ago can fake a create):
# the one read that neither a re-run nor a dry run makes.
QUEUE_CREATED = ["tasks", "queues", "describe", "opcancel-checks", f"--project={PROJECT}", f"--location={REGION}"]
QUEUE_CREATED.append("--format=value(name)")


def is_read(call: list[str]) -> bool:
    return any(word in READ_VERBS for word in call if not word.startswith("--"))


def normalized(calls: list[list[str]]) -> list[list[str]]:
    """Calls with each digest as DIGEST and deploy.sh's directory of definitions as WORK."""
    return [
        [
            re.sub(
                r"(=)[^=]*/opcancel-deploy\.\w+/",
                r"\1WORK/",
                re.sub(r"(opcancel_deploy=)[0-9a-f]{32}$", r"\1DIGEST", word),
            )
            for word in call
        ]
        for call in calls
    ]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    calls: list[list[str]]
    sleeps: list[str]


class FakeCloud:
    """A bin directory with the fake gcloud and a fake sleep, and the fake's state file."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        # Where deploy.sh writes its definitions (and a dry run leaves them), inside the test's directory.
        self.tmp = root / "tmp"
        self.tmp.mkdir()
        self.state_file = root / "state.json"
        self.log = root / "calls.jsonl"
        (self.bin / "gcloud").write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{FAKE}" "$@"\n')
        (self.bin / "sleep").write_text('#!/bin/sh\necho "$@" >> "$FAKE_GCLOUD_LOG.sleep"\n')
        for tool in self.bin.iterdir():
            tool.chmod(0o755)
        self.state = {
            "project": PROJECT,
            "project_number": "123456789012",
            "testable_permissions": {
                "securitycenter.operations.cancel": "",
                "securitycenter.operations.get": "",
                "securitycenter.findings.setState": "TESTING",
                "resourcemanager.organizations.setIamPolicy": "NOT_SUPPORTED",
            },
        }

    @property
    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    @state.setter
    def state(self, value: dict) -> None:
        self.state_file.write_text(json.dumps(value))

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        for log in (self.log, Path(f"{self.log}.sleep")):
            log.write_text("")
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("OPCANCEL_", "CLOUDSDK_")) and key != "GOOGLE_CLOUD_PROJECT"
        }
        environment.update(
            PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            TMPDIR=str(self.tmp),
            FAKE_GCLOUD_STATE=str(self.state_file),
            FAKE_GCLOUD_LOG=str(self.log),
            **(env or {}),
        )
        process = subprocess.run(
            [str(DEPLOY), *args], capture_output=True, text=True, env=environment, timeout=120, check=False
        )
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        sleeps = Path(f"{self.log}.sleep").read_text().split()
        return Result(process.returncode, process.stdout, process.stderr, calls, sleeps)

    def deploy(self, *extra: str) -> Result:
        result = self.run(*BASE, "--allowed-parents", PARENTS, *extra)
        assert result.returncode == 0, result.stderr
        return result

    def monitoring(self) -> dict[str, str]:
        """The dashboard's and the alert policies' names, which the API chooses, for DASHBOARD, ALERT_POLICY
        (dead letters), BREAKER_POLICY and PAUSE_POLICY."""
        resources = self.state["resources"]
        names = {"DASHBOARD": next(r["name"] for key, r in resources.items() if key.startswith("dashboard/"))}
        for placeholder, title in (
            ("ALERT_POLICY", DEAD_LETTER_TITLE),
            ("BREAKER_POLICY", BREAKER_TITLE),
            ("PAUSE_POLICY", PAUSE_TITLE),
        ):
            names[placeholder] = self.policy(title)["name"]
        return names

    def policy(self, title: str) -> dict:
        (policy,) = [
            r for key, r in self.state["resources"].items() if key.startswith("policy/") and r["displayName"] == title
        ]
        return policy

    def subscriptions(self) -> dict[str, str]:
        resources = self.state["resources"]
        return {
            f"SUBSCRIPTION-{kind}": resources[key]["transport"]["pubsub"]["subscription"]
            for key in resources
            if key.startswith("trigger/")
            for kind in ("requests", "checks")
            if f"/triggers/opcancel-{kind}-" in key
        }


@pytest.fixture
def cloud(tmp_path: Path) -> FakeCloud:
    return FakeCloud(tmp_path)


# --- a fresh deploy, a re-run, a destroy ------------------------------------------------------------


def test_a_fresh_deploy_makes_exactly_these_calls(cloud):
    result = cloud.deploy()

    assert normalized(result.calls) == expected(FRESH_DEPLOY, cloud.subscriptions())
    assert "Send a first request with: gcloud pubsub topics publish opcancel-requests" in result.stderr
    assert not result.sleeps


def test_a_fresh_deploy_leaves_the_deployment_the_readme_describes(cloud):
    cloud.deploy()

    state = cloud.state
    resources = state["resources"]
    assert sorted(key for key in resources if key.startswith("topic/")) == [
        "topic/opcancel-checks",
        "topic/opcancel-dead-letter",
        "topic/opcancel-requests",
        "topic/opcancel-results",
    ]
    for role in (
        "role/organizations/123/roles/opcancel_operation_canceller",
        "role/organizations/456/roles/opcancel_operation_canceller",
    ):
        assert resources[role]["includedPermissions"] == [
            "securitycenter.operations.cancel",
            "securitycenter.operations.get",
        ]
    for function in ("opcancel-requests", "opcancel-checks", "opcancel-http"):
        deployed = resources[f"function/{REGION}/{function}"]
        assert deployed["serviceConfig"]["environmentVariables"] == {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "OPCANCEL_STORE": "firestore",
            "OPCANCEL_FIRESTORE_COLLECTION": "opcancel-idempotency",
            "OPCANCEL_CHECKS_TOPIC": "opcancel-checks",
            "OPCANCEL_RESULTS_TOPIC": "opcancel-results",
            "OPCANCEL_TASKS_QUEUE": f"projects/{PROJECT}/locations/{REGION}/queues/opcancel-checks",
            "OPCANCEL_TASKS_SERVICE_ACCOUNT": TASKS_SA,
            "OPCANCEL_MODE": "enforce",
            "OPCANCEL_CANCEL_BUDGET": "100/1h",
            "OPCANCEL_ALLOWED_PARENTS": PARENTS,
        }
        assert deployed["buildConfig"] == {"serviceAccount": f"projects/{PROJECT}/serviceAccounts/{BUILD_SA}"}
    assert resources[f"queue/{REGION}/opcancel-checks"]["retryConfig"] == {
        "maxAttempts": 100,
        "minBackoff": "5s",
        "maxBackoff": "300s",
        "maxDoublings": 6,
        "maxRetryDuration": "86400s",
    }
    for subscription in cloud.subscriptions().values():
        settings = resources[f"subscription/{subscription.rpartition('/')[2]}"]
        assert settings["ackDeadlineSeconds"] == 600
        assert settings["retryPolicy"] == {"minimumBackoff": "10s", "maximumBackoff": "300s"}
        assert settings["deadLetterPolicy"] == {
            "deadLetterTopic": f"projects/{PROJECT}/topics/opcancel-dead-letter",
            "maxDeliveryAttempts": 100,
        }
    function_sa = f"serviceAccount:{FUNCTION_SA}"
    assert sorted(map(tuple, state["bindings"])) == sorted(
        [
            (f"project/{PROJECT}", "roles/datastore.user", function_sa),
            ("topic/opcancel-results", "roles/pubsub.publisher", function_sa),
            # Only the tasks' account may publish checks; the function may create tasks acting as it.
            ("topic/opcancel-checks", "roles/pubsub.publisher", f"serviceAccount:{TASKS_SA}"),
            (f"queue/{REGION}/opcancel-checks", "roles/cloudtasks.enqueuer", function_sa),
            (f"serviceaccount/{TASKS_SA}", "roles/iam.serviceAccountUser", function_sa),
            *[(f"project/{PROJECT}", role, f"serviceAccount:{BUILD_SA}") for role in BUILD_ROLES],
            ("topic/opcancel-dead-letter", "roles/pubsub.publisher", PUBSUB_AGENT),
            (f"serviceaccount/{TRIGGER_SA}", "roles/iam.serviceAccountTokenCreator", PUBSUB_AGENT),
            ("organization/123", "organizations/123/roles/opcancel_operation_canceller", function_sa),
            ("organization/456", "organizations/456/roles/opcancel_operation_canceller", function_sa),
            (f"function/{REGION}/opcancel-requests", "roles/run.invoker", f"serviceAccount:{TRIGGER_SA}"),
            (f"function/{REGION}/opcancel-checks", "roles/run.invoker", f"serviceAccount:{TRIGGER_SA}"),
            *[
                (f"subscription/{name.rpartition('/')[2]}", "roles/pubsub.subscriber", PUBSUB_AGENT)
                for name in cloud.subscriptions().values()
            ],
        ]
    )


def test_a_re_run_only_reads_and_changes_nothing(cloud):
    fresh = cloud.deploy()
    before = cloud.state

    again = cloud.deploy()

    assert all(is_read(call) for call in again.calls), [call for call in again.calls if not is_read(call)]
    assert again.calls == [call for call in fresh.calls if is_read(call) and call != QUEUE_CREATED]
    assert cloud.state == before
    assert "+ gcloud" not in again.stderr


def test_a_destroy_removes_what_deploy_created_and_nothing_else(cloud):
    cloud.deploy()
    names = cloud.monitoring()

    result = cloud.run(*BASE, "--allowed-parents", PARENTS, "--destroy")

    assert result.returncode == 0, result.stderr
    assert result.calls == expected(DESTROY, names)
    state = cloud.state
    assert state["bindings"] == []
    # IAM keeps a deleted custom role's id for weeks (a redeploy undeletes it); the database stays.
    assert state["resources"] == {
        "database/(default)": {"type": "FIRESTORE_NATIVE", "locationId": REGION},
        "ttl/(default)/opcancel-idempotency/expire_at": {
            "name": f"projects/{PROJECT}/databases/(default)/collectionGroups/opcancel-idempotency/fields/expire_at",
            "ttlConfig": {"state": "CREATING"},
        },
        "role/organizations/123/roles/opcancel_operation_canceller": {
            "name": "organizations/123/roles/opcancel_operation_canceller",
            "includedPermissions": ["securitycenter.operations.cancel", "securitycenter.operations.get"],
            "deleted": True,
        },
        "role/organizations/456/roles/opcancel_operation_canceller": {
            "name": "organizations/456/roles/opcancel_operation_canceller",
            "includedPermissions": ["securitycenter.operations.cancel", "securitycenter.operations.get"],
            "deleted": True,
        },
    }
    assert "Kept: the Firestore database" in result.stderr


def test_a_second_destroy_only_reads(cloud):
    cloud.deploy()
    cloud.run(*BASE, "--destroy")

    again = cloud.run(*BASE, "--destroy")

    assert again.returncode == 0, again.stderr
    assert all(is_read(call) for call in again.calls)


def test_destroy_finds_the_organizations_in_the_deployed_function(cloud):
    cloud.deploy()
    names = cloud.monitoring()

    result = cloud.run(*BASE, "--destroy")

    assert result.returncode == 0, result.stderr
    assert result.calls == expected(DESTROY, names)


def test_destroy_leaves_other_topics_and_bindings_alone(cloud):
    cloud.deploy()
    state = cloud.state
    state["resources"]["topic/someone-elses"] = {"name": f"projects/{PROJECT}/topics/someone-elses"}
    state["bindings"].append([f"project/{PROJECT}", "roles/datastore.user", "user:alice@example.com"])
    cloud.state = state

    assert cloud.run(*BASE, "--destroy").returncode == 0

    assert "topic/someone-elses" in cloud.state["resources"]
    assert cloud.state["bindings"] == [[f"project/{PROJECT}", "roles/datastore.user", "user:alice@example.com"]]


# --- changes between runs -----------------------------------------------------------------------------


def test_narrowing_the_organizations_revokes_the_dropped_one(cloud):
    cloud.deploy()

    result = cloud.run(*BASE, "--allowed-parents", "organizations/123")

    assert result.returncode == 0, result.stderr
    changes = [call[:3] for call in result.calls if not is_read(call)]
    assert ["organizations", "remove-iam-policy-binding", "456"] in changes
    assert ["iam", "roles", "delete"] in changes
    assert [
        "organization/123",
        "organizations/123/roles/opcancel_operation_canceller",
        f"serviceAccount:{FUNCTION_SA}",
    ] in cloud.state["bindings"]
    assert not [binding for binding in cloud.state["bindings"] if binding[0] == "organization/456"]
    assert cloud.state["resources"]["role/organizations/456/roles/opcancel_operation_canceller"]["deleted"]
    # The functions' environment changed, so all three are redeployed.
    assert [call[:3] for call in result.calls if call[:2] == ["functions", "deploy"]] == [
        ["functions", "deploy", "opcancel-requests"],
        ["functions", "deploy", "opcancel-checks"],
        ["functions", "deploy", "opcancel-http"],
    ]


def test_a_redeploy_after_destroy_undeletes_the_custom_roles(cloud):
    cloud.deploy()
    cloud.run(*BASE, "--destroy")

    result = cloud.deploy()

    verbs = [call[:3] for call in result.calls if call[:2] == ["iam", "roles"]]
    assert ["iam", "roles", "undelete"] in verbs
    assert ["iam", "roles", "create"] not in verbs
    assert "deleted" not in cloud.state["resources"]["role/organizations/123/roles/opcancel_operation_canceller"]


def test_a_role_whose_permissions_drifted_is_updated(cloud):
    cloud.deploy()
    state = cloud.state
    state["resources"]["role/organizations/123/roles/opcancel_operation_canceller"]["includedPermissions"] = [
        "securitycenter.operations.get",
        "securitycenter.findings.setState",
    ]
    cloud.state = state

    result = cloud.deploy()

    assert [call for call in result.calls if not is_read(call)] == [
        [
            "iam",
            "roles",
            "update",
            "opcancel_operation_canceller",
            "--organization=123",
            "--permissions=securitycenter.operations.cancel,securitycenter.operations.get",
            "--quiet",
        ]
    ]


def test_only_a_function_that_is_not_active_is_redeployed(cloud):
    cloud.deploy()
    state = cloud.state
    state["resources"][f"function/{REGION}/opcancel-checks"]["state"] = "FAILED"
    cloud.state = state

    result = cloud.deploy()

    assert [call[:3] for call in result.calls if not is_read(call)] == [["functions", "deploy", "opcancel-checks"]]


def test_without_allowed_parents_nothing_is_granted_at_any_organization(cloud):
    result = cloud.run(*BASE)

    assert result.returncode == 0, result.stderr
    assert not [call for call in result.calls if call[0] == "organizations" or call[:2] == ["iam", "roles"]]
    assert not [call for call in result.calls if "list-testable-permissions" in call]
    environment = cloud.state["resources"][f"function/{REGION}/opcancel-requests"]["serviceConfig"]
    assert "OPCANCEL_ALLOWED_PARENTS" not in environment["environmentVariables"]
    assert "will accept every organization" in result.stderr


def test_a_custom_name_prefixes_every_resource(cloud):
    result = cloud.run(*BASE, "--name", "sec-ops")

    assert result.returncode == 0, result.stderr
    names = {
        key.split("/", 1)[1]
        for key in cloud.state["resources"]
        if not key.startswith(("trigger/", "database/", "dashboard/", "policy/"))
    }
    assert names == {
        "sec-ops-requests",
        "sec-ops-checks",
        "sec-ops-results",
        "sec-ops-dead-letter",
        f"sec-ops-function@{PROJECT}.iam.gserviceaccount.com",
        f"sec-ops-trigger@{PROJECT}.iam.gserviceaccount.com",
        f"sec-ops-build@{PROJECT}.iam.gserviceaccount.com",
        f"sec-ops-tasks@{PROJECT}.iam.gserviceaccount.com",
        f"{REGION}/sec-ops-checks",
        "sec-ops-cancels-sent",
        "sec-ops-retries",
        "sec-ops-takeovers",
        "sec-ops-guard-events",
        "(default)/sec-ops-idempotency/expire_at",
        f"{REGION}/sec-ops-requests",
        f"{REGION}/sec-ops-checks",
        f"{REGION}/sec-ops-http",
    } | {name.rpartition("/")[2] for name in cloud.state["resources"] if name.startswith("subscription/eventarc-")}
    environment = cloud.state["resources"][f"function/{REGION}/sec-ops-http"]["serviceConfig"]["environmentVariables"]
    assert environment["OPCANCEL_FIRESTORE_COLLECTION"] == "sec-ops-idempotency"


# --- guard rails: mode, budget, protected parents, pause ------------------------------------------------


def function_environment(cloud: FakeCloud, function: str = "opcancel-requests") -> dict[str, str]:
    return cloud.state["resources"][f"function/{REGION}/{function}"]["serviceConfig"]["environmentVariables"]


def test_the_guard_rails_reach_every_function(cloud):
    protected = "projects/prod-critical, organizations/456,projects/prod-critical"

    result = cloud.run(
        *BASE,
        "--allowed-parents",
        PARENTS,
        "--mode",
        "shadow",
        "--cancel-budget",
        "20/15m",
        "--protected-parents",
        protected,
        "--paused",
    )

    assert result.returncode == 0, result.stderr
    for function in ("opcancel-requests", "opcancel-checks", "opcancel-http"):
        environment = function_environment(cloud, function)
        assert environment["OPCANCEL_MODE"] == "shadow"
        assert environment["OPCANCEL_CANCEL_BUDGET"] == "20/15m"
        assert environment["OPCANCEL_PROTECTED_PARENTS"] == "projects/prod-critical,organizations/456"
        assert environment["OPCANCEL_PAUSED"] == "true"
    # Protected parents are never granted anything: only the allowed organizations get the role.
    assert not [
        call for call in result.calls if "prod-critical" in " ".join(call) and call[:2] != ["functions", "deploy"]
    ]


def test_the_guard_rails_can_come_from_the_environment(cloud):
    result = cloud.run(
        *BASE,
        env={
            "OPCANCEL_MODE": "shadow",
            "OPCANCEL_CANCEL_BUDGET": "5/30s",
            "OPCANCEL_PROTECTED_PARENTS": "organizations/9",
            "OPCANCEL_PAUSED": "true",
        },
    )

    assert result.returncode == 0, result.stderr
    environment = function_environment(cloud)
    assert (environment["OPCANCEL_MODE"], environment["OPCANCEL_CANCEL_BUDGET"]) == ("shadow", "5/30s")
    assert (environment["OPCANCEL_PROTECTED_PARENTS"], environment["OPCANCEL_PAUSED"]) == ("organizations/9", "true")

    flagged = cloud.run(*BASE, "--mode", "enforce", "--cancel-budget", "7/2m", env={"OPCANCEL_MODE": "shadow"})
    assert flagged.returncode == 0, flagged.stderr
    assert (function_environment(cloud)["OPCANCEL_MODE"], function_environment(cloud)["OPCANCEL_CANCEL_BUDGET"]) == (
        "enforce",
        "7/2m",
    )


@pytest.mark.parametrize(("value", "pinned"), [("TRUE", True), ("True", True), ("false", False), ("", False)])
def test_opcancel_paused_reads_as_the_function_reads_it(cloud, value, pinned):
    result = cloud.run(*BASE, env={"OPCANCEL_PAUSED": value})

    assert result.returncode == 0, result.stderr
    assert function_environment(cloud).get("OPCANCEL_PAUSED") == ("true" if pinned else None)


def test_without_guard_flags_the_functions_enforce_a_budget_of_100_an_hour_unpaused(cloud):
    cloud.deploy()

    environment = function_environment(cloud)
    assert (environment["OPCANCEL_MODE"], environment["OPCANCEL_CANCEL_BUDGET"]) == ("enforce", "100/1h")
    assert "OPCANCEL_PAUSED" not in environment
    assert "OPCANCEL_PROTECTED_PARENTS" not in environment


def test_a_bad_budget_stops_a_re_run_before_it_changes_anything(cloud):
    cloud.deploy()
    before = cloud.state

    result = cloud.run(*BASE, "--allowed-parents", PARENTS, "--cancel-budget", "100/1w")

    assert result.returncode == 2
    assert result.calls == []
    assert cloud.state == before


def test_a_new_budget_redeploys_the_functions_and_updates_the_dashboard_and_the_breaker_alert_only(cloud):
    cloud.deploy()

    result = cloud.deploy("--cancel-budget", "50/30m")

    changes = [call[:4] for call in result.calls if not is_read(call)]
    assert changes == [
        ["functions", "deploy", "opcancel-requests", f"--project={PROJECT}"],
        ["functions", "deploy", "opcancel-checks", f"--project={PROJECT}"],
        ["functions", "deploy", "opcancel-http", f"--project={PROJECT}"],
        ["monitoring", "dashboards", "update", cloud.monitoring()["DASHBOARD"]],
        ["alpha", "monitoring", "policies", "update"],
    ]
    assert (
        next(call for call in result.calls if call[:4] == ["alpha", "monitoring", "policies", "update"])[4]
        == (cloud.monitoring()["BREAKER_POLICY"])
    )
    assert "(50/30m)" in cloud.policy(BREAKER_TITLE)["documentation"]["content"]
    # And the same budget again only reads.
    again = cloud.deploy("--cancel-budget", "50/30m")
    assert all(is_read(call) for call in again.calls)


def test_going_from_shadow_to_enforce_and_unpinning_a_pause_are_said_out_loud(cloud):
    cloud.deploy("--mode", "shadow", "--paused")

    result = cloud.deploy()

    assert "from shadow mode to enforce: from this deploy on they send cancels" in result.stderr
    assert "deployed paused (OPCANCEL_PAUSED=true) and this run has no --paused: it lifts that pin" in result.stderr
    assert "OPCANCEL_PAUSED" not in function_environment(cloud)
    quiet = cloud.deploy()
    assert "shadow mode" not in quiet.stderr
    assert "lifts that pin" not in quiet.stderr


def budget_tile(cloud: FakeCloud) -> dict:
    (dashboard,) = [resource for key, resource in cloud.state["resources"].items() if key.startswith("dashboard/")]
    (tile,) = [
        tile
        for tile in dashboard["mosaicLayout"]["tiles"]
        if tile["widget"]["title"] == "Cancels sent per budget window, against the budget"
    ]
    return tile["widget"]["xyChart"]


@pytest.mark.parametrize(
    ("budget", "period", "threshold", "label"),
    [
        ("100/1h", "3600s", 100, "budget 100/1h"),
        ("20/15m", "900s", 20, "budget 20/15m"),
        ("7/60s", "60s", 7, "budget 7/60s"),
        # A chart's alignment period is at least a minute: two 30 s windows a bar, at most 20 cancels.
        ("10/30s", "60s", 20, "budget 10/30s (20 per 60s bar)"),
        ("3/45s", "90s", 6, "budget 3/45s (6 per 90s bar)"),
    ],
)
def test_the_budget_panel_sums_cancels_per_window_with_the_budget_as_its_threshold_line(
    cloud, budget, period, threshold, label
):
    assert cloud.run(*BASE, "--cancel-budget", budget).returncode == 0

    chart = budget_tile(cloud)
    (data,) = chart["dataSets"]
    query = data["timeSeriesQuery"]["timeSeriesFilter"]
    assert 'logging.googleapis.com/user/opcancel-cancels-sent"' in query["filter"]
    assert query["aggregation"] == {
        "alignmentPeriod": period,
        "perSeriesAligner": "ALIGN_SUM",
        "crossSeriesReducer": "REDUCE_SUM",
    }
    assert data["minAlignmentPeriod"] == period
    assert chart["thresholds"] == [{"label": label, "value": threshold}]


def test_the_dashboard_shows_held_and_dry_run_results_and_the_guard_events(cloud):
    cloud.deploy()

    (dashboard,) = [resource for key, resource in cloud.state["resources"].items() if key.startswith("dashboard/")]
    queries = {
        tile["widget"]["title"]: tile["widget"]["xyChart"]["dataSets"][0]["timeSeriesQuery"]["timeSeriesFilter"]
        for tile in dashboard["mosaicLayout"]["tiles"]
    }
    results = 'metric.type="logging.googleapis.com/user/opcancel-results" resource.type="cloud_run_revision"'
    assert queries["Held results (breaker open or paused)"]["filter"] == f'{results} metric.label.outcome="HELD"'
    assert queries["Dry-run results (shadow mode or dry_run requests)"]["filter"] == (
        f'{results} metric.label.outcome="DRY_RUN"'
    )
    events = queries["Breaker trips and pauses seen, by event"]
    assert 'logging.googleapis.com/user/opcancel-guard-events"' in events["filter"]
    assert events["aggregation"]["groupByFields"] == ["metric.label.event"]
    # No two tiles overlap on the 12-column grid.
    cells = [
        (tile["xPos"] + dx, tile["yPos"] + dy)
        for tile in dashboard["mosaicLayout"]["tiles"]
        for dx in range(tile["width"])
        for dy in range(tile["height"])
    ]
    assert len(cells) == len(set(cells))
    assert all(x < 12 for x, _ in cells)


@pytest.mark.parametrize(
    ("title", "event", "severity"),
    [(BREAKER_TITLE, "breaker_tripped", "CRITICAL"), (PAUSE_TITLE, "guard_paused", "WARNING")],
)
def test_the_breaker_and_pause_alerts_match_the_function_s_log_lines(cloud, title, event, severity):
    channel = f"projects/{PROJECT}/notificationChannels/7"
    assert cloud.run(*BASE, "--notification-channel", channel).returncode == 0

    policy = cloud.policy(title)
    (condition,) = policy["conditions"]
    logs = (
        'resource.type="cloud_run_revision" AND resource.labels.service_name=~"^opcancel-(requests|checks|http)$"'
        ' AND labels.component="opcancel"'
    )
    assert condition["conditionMatchedLog"] == {"filter": f'{logs} AND jsonPayload.event="{event}"'}
    # A log-based policy needs a notification rate limit; Google's floor is one per 5 minutes.
    assert policy["alertStrategy"] == {"notificationRateLimit": {"period": "300s"}, "autoClose": "1800s"}
    assert policy["severity"] == severity
    assert policy["notificationChannels"] == [channel]
    assert "guard status" in policy["documentation"]["content"]
    assert "held" in policy["documentation"]["content"]


# --- triggers and their subscriptions ------------------------------------------------------------------


def trigger_flags(call: list[str]) -> list[str]:
    return [word for word in call if word.startswith(("--trigger-", "--retry"))]


def test_a_redeploy_of_changed_functions_keeps_their_triggers_and_subscriptions(cloud):
    cloud.deploy()
    subscriptions = cloud.subscriptions()

    # The allowed parents are part of every function's environment, so all three are redeployed.
    result = cloud.run(*BASE, "--allowed-parents", "organizations/123")

    assert result.returncode == 0, result.stderr
    deploys = [call for call in result.calls if call[:2] == ["functions", "deploy"]]
    assert [call[2] for call in deploys] == ["opcancel-requests", "opcancel-checks", "opcancel-http"]
    assert [trigger_flags(call) for call in deploys] == [[], [], []]
    # Sending a trigger again would have made the fake recreate the trigger and its subscription.
    assert cloud.subscriptions() == subscriptions
    assert "subscriptions_deleted" not in cloud.state
    assert not [call for call in result.calls if call[:3] == ["pubsub", "subscriptions", "update"]]
    # Every function is still built by the build account.
    for call in deploys:
        assert f"--build-service-account=projects/{PROJECT}/serviceAccounts/{BUILD_SA}" in call


def test_a_function_whose_trigger_differs_is_redeployed_with_its_trigger_and_its_new_subscription_configured(cloud):
    cloud.deploy()
    state = cloud.state
    function = state["resources"][f"function/{REGION}/opcancel-checks"]
    function["eventTrigger"]["serviceAccountEmail"] = f"{PROJECT_NUMBER}-compute@developer.gserviceaccount.com"
    cloud.state = state
    old = cloud.subscriptions()

    result = cloud.deploy()

    deploys = [call for call in result.calls if call[:2] == ["functions", "deploy"]]
    assert [call[2] for call in deploys] == ["opcancel-checks"]
    assert trigger_flags(deploys[0]) == [
        "--trigger-topic=opcancel-checks",
        f"--trigger-service-account={TRIGGER_SA}",
        "--retry",
    ]
    assert "The trigger of opcancel-checks is not the one deploy.sh sets" in result.stderr
    new = cloud.subscriptions()
    assert new["SUBSCRIPTION-requests"] == old["SUBSCRIPTION-requests"]
    assert new["SUBSCRIPTION-checks"] != old["SUBSCRIPTION-checks"]
    settings = cloud.state["resources"][f"subscription/{new['SUBSCRIPTION-checks'].rpartition('/')[2]}"]
    assert settings["ackDeadlineSeconds"] == 600
    assert settings["retryPolicy"] == {"minimumBackoff": "10s", "maximumBackoff": "300s"}
    assert settings["deadLetterPolicy"]["maxDeliveryAttempts"] == 100
    assert [
        f"subscription/{new['SUBSCRIPTION-checks'].rpartition('/')[2]}",
        "roles/pubsub.subscriber",
        PUBSUB_AGENT,
    ] in (cloud.state["bindings"])


def test_an_ack_deadline_changed_by_hand_is_set_again(cloud):
    cloud.deploy()
    state = cloud.state
    subscription = cloud.subscriptions()["SUBSCRIPTION-requests"]
    state["resources"][f"subscription/{subscription.rpartition('/')[2]}"]["ackDeadlineSeconds"] = 10
    cloud.state = state

    result = cloud.deploy()

    assert [call for call in result.calls if not is_read(call)] == [
        [
            "pubsub",
            "subscriptions",
            "update",
            subscription,
            f"--project={PROJECT}",
            "--ack-deadline=600",
            "--min-retry-delay=10s",
            "--max-retry-delay=300s",
            f"--dead-letter-topic=projects/{PROJECT}/topics/opcancel-dead-letter",
            "--max-delivery-attempts=100",
        ]
    ]


def test_apis_are_enabled_before_anything_calls_them(cloud):
    state = cloud.state
    state["failures"] = [{"argv": ["services", "enable"], "times": 1, "message": "PERMISSION_DENIED"}]
    cloud.state = state

    result = cloud.run(*BASE, "--allowed-parents", PARENTS)

    assert result.returncode == 1
    assert [call[:2] for call in result.calls] == [["services", "list"], ["services", "enable"]]
    enabled = next(call for call in cloud.deploy().calls if call[:2] == ["services", "enable"])
    for api in ("cloudresourcemanager", "iam", "cloudtasks", "logging", "monitoring"):
        assert f"{api}.googleapis.com" in enabled


# --- the checks queue and who may publish checks ---------------------------------------------------------


def test_a_queue_whose_retry_config_drifted_is_updated(cloud):
    cloud.deploy()
    state = cloud.state
    state["resources"][f"queue/{REGION}/opcancel-checks"]["retryConfig"]["maxBackoff"] = "3600s"
    cloud.state = state

    result = cloud.deploy()

    assert [call for call in result.calls if not is_read(call)] == [
        [
            "tasks",
            "queues",
            "update",
            "opcancel-checks",
            f"--project={PROJECT}",
            f"--location={REGION}",
            "--max-attempts=100",
            "--min-backoff=5s",
            "--max-backoff=300s",
            "--max-doublings=6",
            "--max-retry-duration=86400s",
        ]
    ]
    assert cloud.state["resources"][f"queue/{REGION}/opcancel-checks"]["retryConfig"]["maxBackoff"] == "300s"


def test_a_queue_name_still_held_after_a_recent_delete_stops_the_run_with_advice(cloud):
    state = cloud.state
    state["tombstoned_queues"] = ["opcancel-checks"]
    cloud.state = state

    result = cloud.run(*BASE)

    assert result.returncode == 1
    assert "Cloud Tasks did not create the queue opcancel-checks" in result.stderr
    assert "another --name" in result.stderr
    assert not [call for call in result.calls if call[:2] == ["functions", "deploy"]]


def test_the_function_s_publish_right_on_the_checks_topic_from_an_older_deploy_is_revoked(cloud):
    cloud.deploy()
    state = cloud.state
    state["bindings"].append(["topic/opcancel-checks", "roles/pubsub.publisher", f"serviceAccount:{FUNCTION_SA}"])
    cloud.state = state

    result = cloud.deploy()

    assert [call[:4] for call in result.calls if not is_read(call)] == [
        ["pubsub", "topics", "remove-iam-policy-binding", "opcancel-checks"]
    ]
    publishers = [
        binding[2]
        for binding in cloud.state["bindings"]
        if binding[:2] == ["topic/opcancel-checks", "roles/pubsub.publisher"]
    ]
    assert publishers == [f"serviceAccount:{TASKS_SA}"]


# --- observability ----------------------------------------------------------------------------------------


def test_the_log_metrics_count_opcancel_s_events_from_its_structured_logs(cloud):
    cloud.deploy()

    resources = cloud.state["resources"]
    metrics = {
        key.removeprefix("metric/"): resource for key, resource in resources.items() if key.startswith("metric/")
    }
    assert sorted(metrics) == [
        "opcancel-cancels-sent",
        "opcancel-guard-events",
        "opcancel-results",
        "opcancel-retries",
        "opcancel-takeovers",
    ]
    logs = (
        'resource.type="cloud_run_revision" AND resource.labels.service_name=~"^opcancel-(requests|checks|http)$"'
        ' AND labels.component="opcancel"'
    )
    for metric, event in (
        ("opcancel-results", "result_published"),
        ("opcancel-cancels-sent", "cancel_sent"),
        ("opcancel-retries", "retry_later"),
        ("opcancel-takeovers", "takeover"),
    ):
        assert metrics[metric]["filter"] == f'{logs} AND jsonPayload.event="{event}"'
        assert metrics[metric]["metricDescriptor"]["metricKind"] == "DELTA"
    assert metrics["opcancel-results"]["labelExtractors"] == {"outcome": "EXTRACT(jsonPayload.outcome)"}
    assert metrics["opcancel-retries"]["labelExtractors"] == {"reason": "EXTRACT(jsonPayload.reason)"}
    assert metrics["opcancel-guard-events"]["filter"] == (
        f'{logs} AND jsonPayload.event=("breaker_tripped" OR "guard_paused")'
    )
    assert metrics["opcancel-guard-events"]["labelExtractors"] == {"event": "EXTRACT(jsonPayload.event)"}


def test_the_dashboard_shows_the_metrics_and_the_dead_letter_backlog(cloud):
    cloud.deploy()

    (dashboard,) = [resource for key, resource in cloud.state["resources"].items() if key.startswith("dashboard/")]
    assert dashboard["displayName"] == "opcancel (opcancel)"
    tiles = dashboard["mosaicLayout"]["tiles"]
    filters = {
        tile["widget"]["title"]: tile["widget"]["xyChart"]["dataSets"][0]["timeSeriesQuery"]["timeSeriesFilter"]
        for tile in tiles
    }
    assert filters["Results by outcome"]["aggregation"]["groupByFields"] == ["metric.label.outcome"]
    assert 'logging.googleapis.com/user/opcancel-results"' in filters["Results by outcome"]["filter"]
    assert 'logging.googleapis.com/user/opcancel-cancels-sent"' in filters["Cancels sent"]["filter"]
    assert "opcancel-retries" in filters["Retries (redelivery asked for) by reason"]["filter"]
    assert "opcancel-takeovers" in filters["Takeovers of keys left by dead workers"]["filter"]
    backlog = filters["Dead-letter backlog (undelivered messages)"]["filter"]
    assert "subscription/num_undelivered_messages" in backlog
    assert 'resource.label.subscription_id="opcancel-dead-letter"' in backlog


def test_the_dead_letter_alert_fires_on_any_undelivered_message_and_notifies_the_channels_given(cloud):
    channels = f"projects/{PROJECT}/notificationChannels/111,projects/{PROJECT}/notificationChannels/222"
    result = cloud.run(*BASE, "--notification-channel", channels)
    assert result.returncode == 0, result.stderr

    policy = cloud.policy(DEAD_LETTER_TITLE)
    condition = policy["conditions"][0]["conditionThreshold"]
    assert "subscription/num_undelivered_messages" in condition["filter"]
    assert 'subscription_id="opcancel-dead-letter"' in condition["filter"]
    assert (condition["comparison"], condition["thresholdValue"]) == ("COMPARISON_GT", 0)
    assert policy["notificationChannels"] == channels.split(",")
    assert "gcloud pubsub subscriptions pull opcancel-dead-letter" in policy["documentation"]["content"]

    for title in (BREAKER_TITLE, PAUSE_TITLE):
        assert cloud.policy(title)["notificationChannels"] == channels.split(",")

    # Without the flag on the next run the policies' definitions changed: they are updated in place.
    again = cloud.run(*BASE)
    assert [call[:4] for call in again.calls if not is_read(call)] == [
        ["alpha", "monitoring", "policies", "update"]
    ] * 3
    for title in (DEAD_LETTER_TITLE, BREAKER_TITLE, PAUSE_TITLE):
        assert cloud.policy(title)["notificationChannels"] == []


def test_a_dashboard_edited_by_hand_is_replaced_with_the_etag_it_was_read_at(cloud):
    cloud.deploy()
    state = cloud.state
    key = next(key for key in state["resources"] if key.startswith("dashboard/"))
    state["resources"][key]["labels"] = {"opcancel_deploy": "edited"}
    state["resources"][key]["etag"] = "etag-edited"
    cloud.state = state

    result = cloud.deploy()

    assert [call[:3] for call in result.calls if not is_read(call)] == [["monitoring", "dashboards", "update"]]
    dashboard = cloud.state["resources"][key]
    assert dashboard["labels"]["opcancel_deploy"] != "edited"
    assert len(dashboard["mosaicLayout"]["tiles"]) == 9


def test_a_log_metric_whose_definition_changed_is_updated(cloud):
    cloud.deploy()
    state = cloud.state
    state["resources"]["metric/opcancel-takeovers"]["filter"] = 'jsonPayload.event="takeover"'
    state["resources"]["metric/opcancel-takeovers"]["description"] = "edited by hand"
    cloud.state = state

    result = cloud.deploy()

    assert [call[:4] for call in result.calls if not is_read(call)] == [
        ["logging", "metrics", "update", "opcancel-takeovers"]
    ]
    assert cloud.state["resources"]["metric/opcancel-takeovers"]["filter"].endswith('jsonPayload.event="takeover"')
    assert "labels.component" in cloud.state["resources"]["metric/opcancel-takeovers"]["filter"]


# --- other Google APIs: permissions at projects -------------------------------------------------------------

OTHER_PARENTS = (
    "organizations/123,projects/other-proj,//dataproc.googleapis.com/projects/third-proj/regions/europe-west1,"
    "//aiplatform.googleapis.com/projects/third-proj/locations/us-central1"
)


def with_other_projects(cloud: FakeCloud, untestable: tuple[str, ...] = ()) -> None:
    state = cloud.state
    state["other_projects"] = ["other-proj", "third-proj"]
    catalogue = {
        f"{prefix}.operations.{verb}": ""
        for prefix in ("aiplatform", "dataproc", "documentai", "cloudtranslate", "cloudbuild")
        for verb in ("cancel", "get", "list")
        if f"{prefix}.operations.{verb}" not in untestable
    }
    state["testable_by_resource"] = {
        f"//cloudresourcemanager.googleapis.com/projects/{project}": catalogue
        for project in ("other-proj", "third-proj")
    }
    cloud.state = state


def role_permissions(cloud: FakeCloud, scope: str) -> list[str]:
    return cloud.state["resources"][f"role/{scope}/roles/opcancel_operation_canceller"]["includedPermissions"]


def test_project_parents_get_a_project_role_with_their_services_operation_permissions(cloud):
    with_other_projects(cloud)

    result = cloud.run(*BASE, "--allowed-parents", OTHER_PARENTS)

    assert result.returncode == 0, result.stderr
    assert role_permissions(cloud, "projects/other-proj") == [
        "aiplatform.operations.cancel",
        "aiplatform.operations.get",
        "cloudbuild.operations.cancel",
        "cloudbuild.operations.get",
        "cloudtranslate.operations.cancel",
        "cloudtranslate.operations.get",
        "dataproc.operations.cancel",
        "dataproc.operations.get",
        "documentai.operations.cancel",
        "documentai.operations.get",
    ]
    # A full resource prefix grants its own service only, at the project it names.
    assert role_permissions(cloud, "projects/third-proj") == [
        "aiplatform.operations.cancel",
        "aiplatform.operations.get",
        "dataproc.operations.cancel",
        "dataproc.operations.get",
    ]
    function_sa = f"serviceAccount:{FUNCTION_SA}"
    for project in ("other-proj", "third-proj"):
        assert [f"project/{project}", f"projects/{project}/roles/opcancel_operation_canceller", function_sa] in (
            cloud.state["bindings"]
        )
    environment = cloud.state["resources"][f"function/{REGION}/opcancel-requests"]["serviceConfig"]
    assert environment["environmentVariables"]["OPCANCEL_ALLOWED_PARENTS"] == OTHER_PARENTS
    # Each project's permissions were asked of IAM before anything was created.
    asked = [call for call in result.calls if "list-testable-permissions" in call]
    assert [call[2] for call in asked] == [
        "//cloudresourcemanager.googleapis.com/organizations/123",
        "//cloudresourcemanager.googleapis.com/projects/other-proj",
        "//cloudresourcemanager.googleapis.com/projects/third-proj",
    ]
    first_change = next(
        i for i, call in enumerate(result.calls) if not is_read(call) and call[:2] != ["services", "enable"]
    )
    assert all(result.calls.index(call) < first_change for call in asked)


def test_projects_parents_cover_every_service_of_the_registry_the_code_ships():
    from function._names import BUILTIN_SERVICES, SCC_SERVICE

    script = DEPLOY.read_text()
    (listed,) = re.findall(r"^readonly OPERATION_SERVICES=\((.*)\)$", script, re.MULTILINE)
    assert listed.split() == [service.name for service in BUILTIN_SERVICES if service is not SCC_SERVICE]


def test_permissions_iam_does_not_know_at_a_project_are_skipped_with_a_message(cloud):
    with_other_projects(cloud, untestable=("aiplatform.operations.cancel", "aiplatform.operations.get"))

    result = cloud.run(
        *BASE, "--allowed-parents", "//aiplatform.googleapis.com/projects/third-proj,projects/other-proj"
    )

    assert result.returncode == 0, result.stderr
    assert "Skipping aiplatform.operations.cancel at projects/third-proj: IAM does not know it there" in result.stderr
    assert "No permission is granted at projects/third-proj" in result.stderr
    assert "role/projects/third-proj/roles/opcancel_operation_canceller" not in cloud.state["resources"]
    assert "aiplatform.operations.get" not in role_permissions(cloud, "projects/other-proj")
    assert "dataproc.operations.cancel" in role_permissions(cloud, "projects/other-proj")


def test_a_service_deploy_sh_knows_no_permissions_of_is_allowed_but_granted_nothing(cloud):
    with_other_projects(cloud)
    parents = "//workflows.googleapis.com/projects/third-proj/locations/europe-west1"

    result = cloud.run(*BASE, "--allowed-parents", parents)

    assert result.returncode == 0, result.stderr
    assert "No permission is granted at projects/third-proj: deploy.sh knows no operation permissions" in result.stderr
    assert not [key for key in cloud.state["resources"] if key.startswith("role/")]
    assert not [call for call in result.calls if "list-testable-permissions" in call]
    environment = cloud.state["resources"][f"function/{REGION}/opcancel-requests"]["serviceConfig"]
    assert environment["environmentVariables"]["OPCANCEL_ALLOWED_PARENTS"] == parents


def test_a_project_dropped_from_the_parents_loses_its_role_and_destroy_removes_the_rest(cloud):
    with_other_projects(cloud)
    assert cloud.run(*BASE, "--allowed-parents", OTHER_PARENTS).returncode == 0

    result = cloud.run(*BASE, "--allowed-parents", "organizations/123,projects/other-proj")

    assert result.returncode == 0, result.stderr
    assert ["projects", "remove-iam-policy-binding", "third-proj"] in [call[:3] for call in result.calls]
    assert cloud.state["resources"]["role/projects/third-proj/roles/opcancel_operation_canceller"]["deleted"]
    assert not [binding for binding in cloud.state["bindings"] if binding[0] == "project/third-proj"]

    assert cloud.run(*BASE, "--destroy").returncode == 0
    assert cloud.state["bindings"] == []
    assert cloud.state["resources"]["role/projects/other-proj/roles/opcancel_operation_canceller"]["deleted"]


def test_docs_deploy_md_names_every_role_granted_every_option_and_every_panel(cloud):
    docs = (ROOT / "docs" / "deploy.md").read_text()
    with_other_projects(cloud)
    channel = f"projects/{PROJECT}/notificationChannels/1"
    assert cloud.run(*BASE, "--allowed-parents", OTHER_PARENTS, "--notification-channel", channel).returncode == 0

    state = cloud.state
    for _, role, _ in state["bindings"]:
        assert role.rpartition("/roles/")[2] in docs, role
    for key, resource in state["resources"].items():
        if key.startswith("dashboard/"):
            for tile in resource["mosaicLayout"]["tiles"]:
                assert f"| {tile['widget']['title']} |" in docs
        elif key.startswith("metric/"):
            assert f"`{key.removeprefix('metric/')}`" in docs
        elif key.startswith(("policy/", "dashboard/")):
            assert resource["displayName"] in docs
    for option in re.findall(r"^  (--[a-z-]+)", cloud.run("--help").stdout, re.MULTILINE):
        assert f"`{option}`" in docs, option


# --- failures ---------------------------------------------------------------------------------------


def test_a_permission_iam_does_not_know_stops_before_any_change(cloud):
    result = cloud.run(*BASE, "--allowed-parents", PARENTS, "--role-permissions", "securitycenter.operations.nope")

    assert result.returncode == 1
    assert "IAM does not know the permission securitycenter.operations.nope at organizations/123" in result.stderr
    assert [call[:2] for call in result.calls if not is_read(call)] == [["services", "enable"]]


def test_a_permission_custom_roles_cannot_hold_stops_before_any_change(cloud):
    result = cloud.run(
        *BASE, "--allowed-parents", PARENTS, "--role-permissions", "resourcemanager.organizations.setIamPolicy"
    )

    assert result.returncode == 1
    assert "cannot be used in a custom role" in result.stderr
    assert [call[:2] for call in result.calls if not is_read(call)] == [["services", "enable"]]


def test_a_datastore_mode_database_is_refused(cloud):
    state = cloud.state
    state["resources"] = {"database/(default)": {"type": "DATASTORE_MODE"}}
    cloud.state = state

    result = cloud.run(*BASE)

    assert result.returncode == 1
    assert "needs Firestore in Native mode" in result.stderr
    assert not [call for call in result.calls if "firestore" in call and "create" in call]


def test_a_binding_refused_while_a_new_account_propagates_is_retried(cloud):
    state = cloud.state
    state["failures"] = [
        {
            "argv": ["add-iam-policy-binding", "opcancel-checks"],
            "times": 1,
            "message": "INVALID_ARGUMENT: Service account opcancel-function does not exist.",
        }
    ]
    cloud.state = state

    result = cloud.run(*BASE)

    assert result.returncode == 0, result.stderr
    assert result.sleeps == ["10"]
    tries = [
        call for call in result.calls if call[:4] == ["pubsub", "topics", "add-iam-policy-binding", "opcancel-checks"]
    ]
    assert len(tries) == 2


def test_a_binding_that_keeps_failing_fails_the_run(cloud):
    state = cloud.state
    state["failures"] = [
        {"argv": ["add-iam-policy-binding", "opcancel-checks"], "times": 9, "message": "PERMISSION_DENIED"}
    ]
    cloud.state = state

    result = cloud.run(*BASE)

    assert result.returncode == 1
    assert result.sleeps == ["10", "20", "30"]
    assert "deploy.sh: failed: gcloud pubsub topics add-iam-policy-binding opcancel-checks" in result.stderr
    assert not [call for call in result.calls if call[:2] == ["functions", "deploy"]]


def test_a_failed_create_stops_the_run(cloud):
    state = cloud.state
    state["failures"] = [{"argv": ["topics", "create", "opcancel-results"], "times": 1, "message": "PERMISSION_DENIED"}]
    cloud.state = state

    result = cloud.run(*BASE)

    assert result.returncode == 1
    assert "deploy.sh: failed: gcloud pubsub topics create opcancel-results" in result.stderr
    assert result.calls[-1][:4] == ["pubsub", "topics", "create", "opcancel-results"]


# --- arguments and environment ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "no project: pass --project or set OPCANCEL_PROJECT or GOOGLE_CLOUD_PROJECT"),
        (("--project", PROJECT), {}, "no region: pass --region or set OPCANCEL_REGION"),
        (("--project", "Bad_Project", "--region", REGION), {}, "'Bad_Project' is not a project id"),
        (("--project", "abc", "--region", REGION), {}, "'abc' is not a project id"),
        (("--project", PROJECT, "--region", "Europe West"), {}, "'Europe West' is not a region"),
        (("--project", PROJECT, "--region", "europe-west"), {}, "'europe-west' is not a region"),
        ((*BASE, "--allowed-parents", "organizations/12x"), {}, f"'organizations/12x' {NOT_A_PARENT}"),
        ((*BASE, "--allowed-parents", "organizations/0123"), {}, f"'organizations/0123' {NOT_A_PARENT}"),
        ((*BASE, "--allowed-parents", "folders/1"), {}, f"'folders/1' {NOT_A_PARENT}"),
        ((*BASE, "--allowed-parents", "organizations/1 organizations/2"), {}, NOT_A_PARENT),
        ((*BASE, "--allowed-parents", "projects/Bad_Project"), {}, f"'projects/Bad_Project' {NOT_A_PARENT}"),
        ((*BASE, "--allowed-parents", "projects/my-proj/locations"), {}, NOT_A_PARENT),
        ((*BASE, "--allowed-parents", "//aiplatform.googleapis.com/projects/p/../x"), {}, NOT_A_PARENT),
        ((*BASE, "--allowed-parents", "//aiplatform.googleapis.com/projects/my-proj/a%2Fb"), {}, NOT_A_PARENT),
        ((*BASE, "--allowed-parents", "//aiplatform.googleapis.com/organizations/1"), {}, NOT_A_PARENT),
        ((*BASE, "--allowed-parents", "https://aiplatform.googleapis.com/v1/projects/my-proj"), {}, NOT_A_PARENT),
        ((*BASE, "--notification-channel", "channels/1"), {}, "'channels/1' is not a notification channel"),
        (
            (*BASE, "--notification-channel", 'projects/p-1234/notificationChannels/1"'),
            {},
            "is not a notification channel",
        ),
        ((*BASE, "--allowed-parents", " , "), {}, "allowed parents are set but empty"),
        (BASE, {"OPCANCEL_ALLOWED_PARENTS": ""}, "allowed parents are set but empty"),
        ((*BASE, "--name", "Opcancel"), {}, "'Opcancel' is not a usable name"),
        ((*BASE, "--name", "a-name-that-is-far-too-long"), {}, "is not a usable name"),
        ((*BASE, "--firestore-location", "EU"), {}, "'EU' is not a Firestore location"),
        ((*BASE, "--role-permissions", "cancel"), {}, "'cancel' is not an IAM permission"),
        ((*BASE, "--role-permissions", ","), {}, "the organization role needs at least one permission"),
        (("--project", "--region", REGION), {}, "--project needs a value"),
        (("--project",), {}, "--project needs a value"),
        ((*BASE, "--allowed-parent", "organizations/1"), {}, "unknown argument '--allowed-parent'"),
        ((*BASE, "extra"), {}, "unknown argument 'extra'"),
        (BASE, {"OPCANCEL_DRY_RUN": "yes"}, "OPCANCEL_DRY_RUN must be 1, true, 0 or false"),
        ((*BASE, "--mode", "dry-run"), {}, "--mode must be enforce or shadow, not 'dry-run'"),
        ((*BASE, "--mode", "Shadow"), {}, "--mode must be enforce or shadow"),
        (BASE, {"OPCANCEL_MODE": "audit"}, "--mode must be enforce or shadow, not 'audit'"),
        ((*BASE, "--cancel-budget", "100"), {}, "cancel budget '100' is not N/DURATION"),
        ((*BASE, "--cancel-budget", "0/1h"), {}, "cancel budget '0/1h' is not N/DURATION"),
        ((*BASE, "--cancel-budget", "10/0m"), {}, "cancel budget '10/0m' is not N/DURATION"),
        ((*BASE, "--cancel-budget", "10/1d"), {}, "cancel budget '10/1d' is not N/DURATION"),
        ((*BASE, "--cancel-budget", "10/1.5h"), {}, "is not N/DURATION"),
        ((*BASE, "--cancel-budget", "-1/1h"), {}, "is not N/DURATION"),
        ((*BASE, "--cancel-budget", "10/h"), {}, "is not N/DURATION"),
        ((*BASE, "--cancel-budget", "10 / 1h"), {}, "is not N/DURATION"),
        ((*BASE, "--cancel-budget", "010/1h"), {}, "is not N/DURATION"),
        ((*BASE, "--cancel-budget", "none"), {}, "cancel budget 'none' is not N/DURATION"),
        ((*BASE, "--cancel-budget", "10/169h"), {}, "has a window longer than a week (168h)"),
        ((*BASE, "--cancel-budget", "10001/1h"), {}, "allows more than 10000 cancels, the most the function counts"),
        ((*BASE, "--cancel-budget", "10/604801s"), {}, "has a window longer than a week"),
        ((*BASE, "--cancel-budget", ""), {}, "the cancel budget is set but empty"),
        (BASE, {"OPCANCEL_CANCEL_BUDGET": ""}, "the cancel budget is set but empty"),
        (BASE, {"OPCANCEL_CANCEL_BUDGET": "5 per hour"}, "cancel budget '5 per hour' is not N/DURATION"),
        ((*BASE, "--cancel-budget"), {}, "--cancel-budget needs a value"),
        ((*BASE, "--protected-parents", "folders/1"), {}, f"protected parent 'folders/1' {NOT_A_PARENT}"),
        ((*BASE, "--protected-parents", " , "), {}, "protected parents are set but empty"),
        (BASE, {"OPCANCEL_PROTECTED_PARENTS": ""}, "protected parents are set but empty"),
        (BASE, {"OPCANCEL_PAUSED": "yes"}, "OPCANCEL_PAUSED must be true or false, not 'yes'"),
        ((*BASE, "--paused=true"), {}, "unknown argument '--paused=true'"),
    ],
)
def test_bad_arguments_fail_before_anything_runs(cloud, args, env, message):
    result = cloud.run(*args, env=env)

    assert result.returncode == 2
    assert message in result.stderr
    assert "--help" in result.stderr
    assert result.calls == []


def test_help_describes_every_option_and_runs_nothing(cloud):
    result = cloud.run("--help")

    assert result.returncode == 0
    for option in (
        "--project",
        "--region",
        "--allowed-parents",
        "--name",
        "--firestore-location",
        "--role-permissions",
        "--dry-run",
        "--destroy",
        "OPCANCEL_PROJECT",
        "GOOGLE_CLOUD_PROJECT",
        "OPCANCEL_REGION",
        "OPCANCEL_ALLOWED_PARENTS",
        "OPCANCEL_NAME",
        "OPCANCEL_DRY_RUN",
        "--mode",
        "--cancel-budget",
        "--protected-parents",
        "--paused",
        "OPCANCEL_MODE",
        "OPCANCEL_CANCEL_BUDGET",
        "OPCANCEL_PROTECTED_PARENTS",
        "OPCANCEL_PAUSED",
    ):
        assert option in result.stdout
    assert result.calls == []


def test_every_setting_can_come_from_the_environment(cloud):
    result = cloud.run(
        env={
            "OPCANCEL_PROJECT": PROJECT,
            "OPCANCEL_REGION": REGION,
            "OPCANCEL_ALLOWED_PARENTS": PARENTS,
            "OPCANCEL_NAME": "opcancel",
            "OPCANCEL_FIRESTORE_LOCATION": "eur3",
            "OPCANCEL_ROLE_PERMISSIONS": "securitycenter.operations.get, securitycenter.operations.cancel",
        }
    )

    assert result.returncode == 0, result.stderr
    assert cloud.state["resources"]["database/(default)"]["locationId"] == "eur3"
    assert normalized(result.calls)[:3] == expected(FRESH_DEPLOY)[:3]


def test_google_cloud_project_is_the_fallback_and_flags_win(cloud):
    environment = {"GOOGLE_CLOUD_PROJECT": "another-project", "OPCANCEL_REGION": "us-central1"}

    assert cloud.run("--region", REGION, "--dry-run", env=environment).stdout.startswith(
        "gcloud services list --enabled --project=another-project "
    )
    environment["OPCANCEL_PROJECT"] = "third-project"
    assert " --project=third-project" in cloud.run("--dry-run", env=environment).stdout
    flagged = cloud.run("--project", PROJECT, "--region", REGION, "--dry-run", env=environment)
    assert f"--region={REGION} " in flagged.stdout
    assert "third-project" not in flagged.stdout


def test_the_allowed_parents_are_trimmed_and_deduplicated(cloud):
    result = cloud.run(*BASE, "--allowed-parents", " organizations/456 ,organizations/123,,organizations/456 ")

    assert result.returncode == 0, result.stderr
    environment = cloud.state["resources"][f"function/{REGION}/opcancel-requests"]["serviceConfig"]
    assert environment["environmentVariables"]["OPCANCEL_ALLOWED_PARENTS"] == "organizations/456,organizations/123"


# --- the dry run ------------------------------------------------------------------------------------


def dry_run_lines(cloud: FakeCloud, *args: str, env: dict[str, str] | None = None) -> list[str]:
    result = cloud.run(*args, "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert result.calls == [], "a dry run must not run gcloud"
    return result.stdout.splitlines()


def test_a_dry_run_prints_the_fresh_deploy_and_runs_nothing(cloud):
    dry = cloud.run(*BASE, "--allowed-parents", PARENTS, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.calls == [], "a dry run must not run gcloud"
    lines = dry.stdout.splitlines()

    assert all(line.startswith("gcloud ") for line in lines)
    printed = [shlex.split(line)[1:] for line in lines]
    # The same commands a real fresh deploy runs, with what only a real run can read as placeholders.
    fresh = cloud.deploy()
    triggers = {
        key.rpartition("/")[2].rpartition("-")[0]: key.removeprefix("trigger/")
        for key in cloud.state["resources"]
        if key.startswith("trigger/")
    }
    placeholders = {
        "<project-number>": "123456789012",
        "<trigger of opcancel-requests>": triggers["opcancel-requests"],
        "<trigger of opcancel-checks>": triggers["opcancel-checks"],
        **{
            f"<subscription of opcancel-{kind}>": name
            for kind, name in (
                ("requests", cloud.subscriptions()["SUBSCRIPTION-requests"]),
                ("checks", cloud.subscriptions()["SUBSCRIPTION-checks"]),
            )
        },
    }
    resolved = []
    for call in printed:
        for placeholder, value in placeholders.items():
            call = [word.replace(placeholder, value) for word in call]
        resolved.append(call)
    assert normalized(resolved) == normalized([call for call in fresh.calls if call != QUEUE_CREATED])
    # The files the printed commands name are kept, and hold the definitions a real run would create.
    work = Path(
        next(word for line in printed for word in line if "--config-from-file=" in word).split("=", 1)[1]
    ).parent
    assert f"The files the commands above name are kept in {work}." in dry.stderr
    assert sorted(path.name for path in work.iterdir()) == [
        "alert-policy-breaker.json",
        "alert-policy-pause.json",
        "alert-policy.json",
        "dashboard.json",
        "metric-cancels-sent.json",
        "metric-guard-events.json",
        "metric-results.json",
        "metric-retries.json",
        "metric-takeovers.json",
    ]


def test_the_dry_run_can_be_asked_for_in_the_environment(cloud):
    lines = dry_run_lines(cloud, *BASE, env={"OPCANCEL_DRY_RUN": "1"})

    assert lines[0] == f"gcloud services list --enabled --project={PROJECT} '--format=value(config.name)'"


def test_a_destroy_dry_run_prints_every_removal_and_runs_nothing(cloud):
    lines = dry_run_lines(cloud, *BASE, "--allowed-parents", PARENTS, "--destroy")

    placeholders = {
        "DASHBOARD": "<dashboard of opcancel>",
        "ALERT_POLICY": "<alert policy of opcancel>",
        "BREAKER_POLICY": "<breaker alert policy of opcancel>",
        "PAUSE_POLICY": "<pause alert policy of opcancel>",
    }
    assert [shlex.split(line)[1:] for line in lines] == expected(DESTROY, placeholders)


def test_dry_run_lines_are_shell_quoted(cloud):
    lines = dry_run_lines(cloud, *BASE, "--allowed-parents", PARENTS)

    ttl_update = next(line for line in lines if " ttls update " in line)
    assert "'--database=(default)'" in ttl_update
    filter_word = next(word for line in lines for word in shlex.split(line) if word.startswith("--filter="))
    assert filter_word.count('"') == 4


# --- gcloud's own parser, shellcheck, .gcloudignore ---------------------------------------------------

GCLOUD = shutil.which("gcloud")
PARSE_ERROR = re.compile(
    r"unrecognized arguments|argument [^ ]+: |Invalid choice|invalid choice|is not a valid|"
    r"must be specified|expected one argument|ambiguous option",
)
PARSED = re.compile(r"You do not currently have an active account selected|gcloud auth login|credentials", re.I)


def isolated_gcloud_environment(config: Path) -> dict[str, str]:
    """No credentials, no metadata server, and a dead proxy: nothing can reach Google."""
    (config / "gce").write_text("False")
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CLOUDSDK_", "GOOGLE_", "GCE_")) and key not in ("HTTP_PROXY", "HTTPS_PROXY")
    }
    environment.update(
        CLOUDSDK_CONFIG=str(config),
        CLOUDSDK_CORE_DISABLE_PROMPTS="1",
        CLOUDSDK_CORE_CHECK_GCE_METADATA="false",
        CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="true",
        CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="true",
        CLOUDSDK_SURVEY_DISABLE_PROMPTS="true",
        CLOUDSDK_PROXY_TYPE="http",
        CLOUDSDK_PROXY_ADDRESS="127.0.0.1",
        CLOUDSDK_PROXY_PORT="9",
        HTTPS_PROXY="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
    )
    return environment


@pytest.mark.skipif(GCLOUD is None, reason="gcloud is not installed: the dry run's commands cannot be parsed")
def test_every_dry_run_command_passes_gcloud_s_own_parser(cloud, tmp_path):
    channel = f"--notification-channel=projects/{PROJECT}/notificationChannels/123"
    lines = dry_run_lines(cloud, *BASE, "--allowed-parents", PARENTS)
    lines += dry_run_lines(cloud, *BASE, "--allowed-parents", OTHER_PARENTS, channel)
    lines += dry_run_lines(cloud, *BASE, "--allowed-parents", OTHER_PARENTS, "--destroy")
    commands = list(dict.fromkeys(lines))
    config = tmp_path / "gcloud-config"
    config.mkdir()
    environment = isolated_gcloud_environment(config)

    def parse(line: str) -> tuple[str, int, str]:
        words = shlex.split(line)
        process = subprocess.run(
            [GCLOUD, *words[1:]], capture_output=True, text=True, env=environment, timeout=120, check=False
        )
        return line, process.returncode, process.stderr

    with ThreadPoolExecutor(max_workers=max(2, min(8, (os.cpu_count() or 2) * 2))) as pool:
        outcomes = list(pool.map(parse, commands))

    refused = [
        f"{line}\n  -> exit {code}: {stderr.strip()[:400]}"
        for line, code, stderr in outcomes
        if code == 0 or code == 2 or PARSE_ERROR.search(stderr) or not PARSED.search(stderr)
    ]
    assert not refused, "gcloud did not stop at authentication for:\n" + "\n".join(refused)


# Where gcloud sends each definition deploy.sh writes (file prefix: the create method's URL), checked against
# Google's discovery documents for those methods (tests/data/discovery/deploy, devkit/discovery.py).
CREATED_AT = {
    "alert-policy": f"https://monitoring.googleapis.com/v3/projects/{PROJECT}/alertPolicies",
    "dashboard": f"https://monitoring.googleapis.com/v1/projects/{PROJECT}/dashboards",
    "metric-": f"https://logging.googleapis.com/v2/projects/{PROJECT}/metrics",
}
DEPLOY_DOCUMENTS = ROOT / "tests" / "data" / "discovery" / "deploy"


@pytest.mark.parametrize("budget", ["100/1h", "3/45s"])
def test_every_definition_is_a_body_google_s_create_method_accepts(cloud, budget):
    from devkit.discovery import Contract

    contract = Contract.load(DEPLOY_DOCUMENTS)
    channel = f"--notification-channel=projects/{PROJECT}/notificationChannels/123"
    dry = cloud.run(*BASE, "--allowed-parents", PARENTS, channel, "--cancel-budget", budget, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    work = Path(re.search(r"kept in (.+)\.$", dry.stderr, re.MULTILINE).group(1))
    files = sorted(work.iterdir())
    assert len(files) == 9
    for path in files:
        (url,) = [url for prefix, url in CREATED_AT.items() if path.name.startswith(prefix)]
        contract.check_url("POST", url, path.read_bytes(), "application/json")


def test_the_definitions_check_refuses_an_unknown_field_a_bad_enum_and_a_bad_duration():
    from devkit.discovery import Contract, Violation

    contract = Contract.load(DEPLOY_DOCUMENTS)
    for body in (
        {"displayName": "x", "conditions": [{"conditionMatchedLog": {"filtre": "x"}}]},
        {"displayName": "x", "severity": "HUGE"},
        {"displayName": "x", "alertStrategy": {"autoClose": "half an hour"}},
    ):
        with pytest.raises(Violation):
            contract.check_url("POST", CREATED_AT["alert-policy"], json.dumps(body).encode(), "application/json")


@pytest.mark.skipif(GCLOUD is None, reason="gcloud is not installed: its upload listing cannot be checked")
def test_only_what_the_function_runs_is_uploaded(tmp_path):
    config = tmp_path / "gcloud-config"
    config.mkdir()
    process = subprocess.run(
        [GCLOUD, "meta", "list-files-for-upload", str(ROOT)],
        capture_output=True,
        text=True,
        env=isolated_gcloud_environment(config),
        timeout=120,
        check=True,
    )

    uploaded = set(process.stdout.split())
    # deploy.sh's digest of the source lists the same files, so a change to any of them redeploys.
    digested = {"main.py", "requirements.txt"} | {
        str(path.relative_to(ROOT))
        for path in (ROOT / "function").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert uploaded == digested


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)"
)
def test_deploy_sh_passes_shellcheck():
    process = subprocess.run(["shellcheck", str(DEPLOY)], capture_output=True, text=True, check=False)

    assert process.returncode == 0, process.stdout + process.stderr


def test_the_bench_runs_the_functions_on_the_python_deploy_sh_deploys():
    (deployed,) = re.findall(r"^readonly RUNTIME=python3(\d+)$", (ROOT / "deploy.sh").read_text(), re.MULTILINE)
    (reading,) = [line for line in (ROOT / "bench" / "run").read_text().splitlines() if line.startswith("runtime=")]
    found = subprocess.run(
        ["bash", "-c", f'{reading}; printf %s "$runtime"'], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert found.stdout == f"3.{deployed}"
