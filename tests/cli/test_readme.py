"""The README's CLI and alerting examples, run as written: copy-paste must work."""

from __future__ import annotations

import json
import re
import shlex

from function import InboundMessage, SourceKind
from function._names import BUILTIN_SERVICES
from function._parsing import parse_message
from function.cli import Exit
from tests.cli.test_cli import ROOT, Rig
from tests.support import DATA_DIR

README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MODULE = ".venv/bin/python -m function "


def section(title: str) -> str:
    """A section of the README or of a document under docs/, whose own title may be the section's."""
    for path in DOCS:
        text = "\n" + path.read_text()
        if text.startswith(f"\n# {title}\n"):
            return text  # a document of its own
        if f"\n## {title}\n" in text:
            return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    raise AssertionError(f"no section {title!r} in the README or docs/")


def slug(title: str) -> str:
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def test_every_link_between_the_docs_resolves():
    broken = []
    for path in DOCS:
        for link in re.findall(r"\]\(([^)\s]*)\)", path.read_text()):
            if link.startswith(("http://", "https://", "mailto:")):
                continue
            target_path, _, anchor = link.partition("#")
            target = (path.parent / target_path).resolve() if target_path else path
            if not target.exists():
                broken.append((path.name, link))
            elif anchor and target.suffix == ".md":
                headings = {slug(h) for h in re.findall(r"(?m)^#{1,6} (.+)$", target.read_text())}
                if anchor not in headings:
                    broken.append((path.name, link))
    assert broken == []


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def test_every_exit_status_is_documented():
    cli_section = section("The operator CLI")
    for status in Exit:
        assert re.search(rf"^\| `{status.value}` \|", cli_section, re.MULTILINE), status


def test_the_cli_examples_do_what_their_comments_say():
    commands = []
    for block in blocks(section("The operator CLI"), "sh"):
        for line in block.splitlines():
            if MODULE in line:
                command, _, comment = line.partition(MODULE)[2].partition("#")
                commands.append((shlex.split(command), comment.strip()))
    assert len(commands) >= 8
    rig = Rig()
    for args, comment in commands:
        calls = len(rig.simulator.calls)
        result = rig.run(*args)
        status = re.search(r"exit ([0-9]+)", comment)
        assert result.exit_code == (int(status.group(1)) if status else 0), (args, result.output)
        outcome = re.match(r"[A-Z_]{6,}", comment)
        if outcome:
            shown = json.loads(result.stdout)["outcome"] if "--json" in args else result.stdout
            assert outcome.group(0) in shown, (args, result.output)
        if "no call made" in comment:
            assert len(rig.simulator.calls) == calls


def test_the_one_command_start_is_the_one_the_tests_run():
    assert (
        "OPCANCEL_API_ENDPOINT=http://127.0.0.1:8090 OPCANCEL_AUTH=anonymous "
        ".venv/bin/python -m function cancel organizations/1/operations/slow-2-x --wait"
    ) in section("The operator CLI")


def test_the_alerting_policy_documentation_names_the_operation_for_opcancel():
    (policy_text,) = blocks(section("Alerting policies"), "json")
    policy = json.loads(policy_text)
    (condition,) = policy["conditions"]
    extractors = condition["conditionMatchedLog"]["labelExtractors"]
    assert set(extractors) == {"organization_id", "operation_id"}
    assert policy["alertStrategy"]["notificationRateLimit"]["period"]
    labels = {"organization_id": "123456789", "operation_id": "9c5fa5e5-e368-439a-baa4-08c17b77ec23"}

    def render(template: str) -> str:
        return re.sub(r"\$\{log\.extracted_label\.([a-z_]+)\}", lambda match: labels[match.group(1)], template)

    # What Monitoring sends for a log-match policy: metric.labels empty, the labels in the summary.
    incident = json.loads((DATA_DIR / "alert-incident-log-match.json").read_text())
    assert incident["incident"]["metric"]["labels"] == {}
    incident["incident"]["summary"] = (
        f"Log match condition with labels {{operation_id={labels['operation_id']}, "
        f"organization_id={labels['organization_id']}}} fired for audited_resource."
    )
    name = "organizations/123456789/operations/9c5fa5e5-e368-439a-baa4-08c17b77ec23"
    rendered = {
        "content": render(policy["documentation"]["content"]),
        "mime_type": policy["documentation"]["mimeType"],
        "subject": render(policy["documentation"]["subject"]),
    }
    # The documentation as written names the operation, and the summary alone does too.
    for documentation in (rendered, {"content": "", "subject": ""}):
        incident["incident"]["documentation"] = documentation
        parsed = parse_message(
            InboundMessage(json.dumps(incident).encode(), message_id="m-1"), default_version="v2", allowed_parents=None
        )
        (request,) = parsed.requests
        assert request.ref.name == name
        assert request.idempotency_key == f"incident/0.logmatch7q2x/securitycenter.googleapis.com/{name}"
        assert request.source.kind is SourceKind.ALERT
        assert parsed.rejections == []


def test_the_alerting_commands_wire_the_channel_the_grant_and_the_policy():
    (commands,) = [block for block in blocks(section("Alerting policies"), "sh") if "monitoring" in block]
    assert "gcloud beta monitoring channels create" in commands
    assert "--type=pubsub" in commands
    assert "--channel-labels=topic=projects/$PROJECT_ID/topics/opcancel-requests" in commands
    assert "service-$PROJECT_NUMBER@gcp-sa-monitoring-notification.iam.gserviceaccount.com" in commands
    assert "--role=roles/pubsub.publisher" in commands
    assert "gcloud alpha monitoring policies create" in commands
    assert "--policy-from-file=opcancel-policy.json" in commands


def test_the_vertex_ai_alert_example_names_an_operation_opcancel_cancels():
    (policy_text,) = blocks(section("Other Google APIs"), "json")
    policy = json.loads(policy_text)
    (condition,) = policy["conditions"]
    assert set(condition["conditionMatchedLog"]["labelExtractors"]) == {"vertex_parent", "vertex_operation"}
    labels = {"vertex_parent": "projects/123456789012/locations/us-central1", "vertex_operation": "4411"}
    content = re.sub(
        r"\$\{log\.extracted_label\.([a-z_]+)\}",
        lambda match: labels[match.group(1)],
        policy["documentation"]["content"],
    )
    incident = json.loads((DATA_DIR / "alert-incident-open.json").read_text())
    incident["incident"]["documentation"] = {"content": content, "subject": "", "mime_type": "text/markdown"}
    parsed = parse_message(
        InboundMessage(json.dumps(incident).encode(), message_id="m-1"), default_version="v2", allowed_parents=None
    )
    names = [(request.ref.service_name, request.ref.name, request.ref.host) for request in parsed.requests]
    assert (
        "aiplatform.googleapis.com",
        "projects/123456789012/locations/us-central1/operations/4411",
        "us-central1-aiplatform.googleapis.com",
    ) in names
    assert parsed.rejections == []


def test_the_registry_table_lists_every_built_in_service_with_its_hosts_and_a_source():
    table = section("Other Google APIs")
    for service in BUILTIN_SERVICES:
        (row,) = [line for line in table.splitlines() if line.startswith(f"| `{service.name}`")]
        assert f"`{service.version}`" in row and "](https://cloud.google.com/" in row
        if not service.is_scc:
            regional = service.host.replace("{location}", "L")
            assert f"`{regional}`" in row and f"`{service.global_host}`" in row, row


def test_the_layout_names_every_module_of_the_package_and_nothing_gone():
    layout = section("Layout")
    package = ROOT / "function"
    modules = {path.name for path in package.iterdir() if path.suffix == ".py" or (path / "__init__.py").exists()}
    modules -= {"__init__.py", "__main__.py", "__pycache__"}
    named = set(re.findall(r"\b(_?[a-z_]+(?:\.py|/))", layout))
    assert {m if m.endswith(".py") else m + "/" for m in modules} <= named
    for name in named:
        if name.startswith("_") and not (package / name.rstrip("/")).exists():
            raise AssertionError(f"the layout names {name}, which function/ no longer has")
