"""Every example in docs/ that is marked to run against the local stack, run as written against
``python -m devkit.local_stack`` (what ``./demo.sh --serve`` starts), read from the Markdown itself.

Each ``sh`` block in docs/ is marked by the HTML comment before it with where it runs (docs/development.md,
"The local stack"); a block without a known mark fails here, so a new example cannot go untried unnoticed.
The ``local stack`` blocks run in bash, in the repository, after the environment file the command wrote is
sourced, as a reader's shell would; each must exit 0, and every operation they name must come back as a
result event printed by the command.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from devkit.local_stack import EMULATOR_UNAVAILABLE, ENV_FILE

ROOT = pathlib.Path(__file__).resolve().parents[2]
KINDS = ("local stack", "simulator", "project", "setting", "serve")
MARKED = re.compile(r"^<!-- example: ([a-z ]+) -->\n```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: Operation names as the examples write them; their results name the relative name.
NAMED = re.compile(
    r"(?:organizations/[0-9]+|//[a-z0-9.-]+\.googleapis\.com/projects/[a-z0-9-]+(?:/locations/[a-z0-9-]+)?)"
    r"/operations/[A-Za-z0-9._~-]+"
)
#: Where docs/development.md's example sources the environment; the test's stack writes it elsewhere.
DOCUMENTED_ENV = ".opcancel/local-stack/env"

pytestmark = [
    pytest.mark.emulator,
    pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed, so the local stack cannot run"),
]


def examples() -> list[tuple[str, str, str]]:
    """(document, kind, block) for every sh block in docs/, in order; a block without a mark fails."""
    found = []
    for path in sorted((ROOT / "docs").glob("*.md")):
        text = path.read_text()
        marked = MARKED.findall(text)
        assert len(marked) == text.count("```sh\n"), f"{path.name}: an sh block without <!-- example: KIND -->"
        for kind, block in marked:
            assert kind in KINDS, f"{path.name}: unknown example kind {kind!r}"
            found.append((path.name, kind, block))
    return found


def test_every_sh_example_in_docs_is_marked_and_some_run_on_the_local_stack():
    kinds = {kind for _, kind, _ in examples()}
    assert {"local stack", "simulator", "project"} <= kinds


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The command, as a reader starts it; its environment file, and the file its output goes to."""
    home = tmp_path_factory.mktemp("docs-examples")
    output = home / "serve.out"
    env = {name: value for name, value in os.environ.items() if not name.startswith(("OPCANCEL_", "CLOUDSDK_"))}
    # gcloud keeps its configuration and logs here, not in the user's own.
    env["CLOUDSDK_CONFIG"] = str(home / "gcloud")
    with open(output, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "devkit.local_stack", "--workdir", str(home / "stack")],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    env_file = home / "stack" / ENV_FILE
    try:
        deadline = time.monotonic() + 240
        while not env_file.exists():
            if process.poll() is not None:
                if process.returncode == EMULATOR_UNAVAILABLE:
                    pytest.skip(f"the local stack cannot run here: {output.read_text()}")
                pytest.fail(f"the local stack exited with {process.returncode}:\n{output.read_text()}")
            assert time.monotonic() < deadline, f"the local stack did not come up:\n{output.read_text()}"
            time.sleep(0.5)
        yield env, env_file, output
    finally:
        # SIGTERM, as from a closed terminal: the command stops everything and removes its folder.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output.read_text()
    assert not (home / "stack").exists(), "the local stack left its folder behind"


def run(block: str, env: dict[str, str], env_file: pathlib.Path) -> subprocess.CompletedProcess[str]:
    script = f". {env_file}\nset -euo pipefail\n" + block.replace(DOCUMENTED_ENV, str(env_file))
    return subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_local_stack_examples_run_as_written_and_each_operation_gets_a_result(served):
    env, env_file, output = served
    probe = run("gcloud pubsub topics list --format='value(name)'", env, env_file)
    unusable = {}
    if not (probe.returncode == 0 and "opcancel-requests" in probe.stdout):
        unusable["gcloud"] = f"gcloud cannot reach the emulator here ({probe.stderr.strip()[-300:]})"
    if shutil.which("curl") is None:
        unusable["curl"] = "curl is not installed"
    ran, skipped, named = [], [], set()
    for document, kind, block in examples():
        if kind != "local stack":
            continue
        if any(re.search(rf"^\s*{tool} ", block, re.MULTILINE) for tool in unusable):
            skipped.append(document)
            continue
        done = run(block, env, env_file)
        assert done.returncode == 0, f"{document}:\n{block}\n{done.stdout}\n{done.stderr}"
        ran.append((document, block, done))
        named.update(match.group(0) for match in NAMED.finditer(block))
    assert {document for document, _, _ in ran} | set(skipped) >= {
        "development.md",
        "requests.md",
        "deploy.md",
        "alerting.md",
    }
    # What the examples print is what the documents say they print.
    for document, _, done in ran:
        if document == "development.md":
            assert "published message" in done.stdout
            assert "store: sqlite " in done.stderr and "0 overdue chain(s)" in done.stdout
            assert '"accepted"' in done.stdout
    relative = {name.split(".googleapis.com/", 1)[-1] for name in named}
    deadline = time.monotonic() + 120
    while True:
        results = set(re.findall(r"^result: [A-Z_]+ (\S+)", output.read_text(), re.MULTILINE))
        if relative <= results or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert relative - results == set(), output.read_text()
    if skipped:
        reasons = "; ".join(unusable.values())
        pytest.skip(f"{reasons}: skipped the examples of {', '.join(sorted(set(skipped)))} that use it")
