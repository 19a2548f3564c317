"""Commands on the function's state say which store they read, and refuse to read one made up on the spot."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from function import Settings
from function.cli import CliClients, Exit, cli
from tests.cli.test_cli import ROOT, _environment
from tests.support import Rig as ServiceRig


class StateRig:
    """The CLI with a pipeline builder that records the settings each command opened it on."""

    def __init__(self, settings: Settings) -> None:
        self.rig = ServiceRig()
        self.opened: list[Settings] = []

        def pipeline(chosen: Settings):
            self.opened.append(chosen)
            return self.rig.service

        self.clients = CliClients(
            settings=settings, auth=None, api=self.rig.api, clock=self.rig.clock, pipeline=pipeline
        )

    def run(self, *args: str):
        return CliRunner().invoke(cli, list(args), obj=self.clients, catch_exceptions=False)


def test_resume_with_no_store_configured_and_no_file_refuses_and_creates_nothing(tmp_path):
    path = tmp_path / "idempotency.sqlite3"
    state = StateRig(Settings(sqlite_path=str(path)))
    result = state.run("resume")
    assert result.exit_code == Exit.BAD_CONFIGURATION
    assert result.stdout == ""
    assert "no store configured" in result.stderr and "--store sqlite:PATH" in result.stderr
    assert state.opened == [] and not path.exists()


def test_resume_reads_an_existing_default_file_and_says_so(tmp_path):
    path = tmp_path / "idempotency.sqlite3"
    path.touch()
    state = StateRig(Settings(sqlite_path=str(path)))
    result = state.run("resume")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"store: sqlite {path}\n"
    assert result.stdout == "0 overdue chain(s), 0 resumed\n"


def test_store_names_one_explicitly(tmp_path):
    path = tmp_path / "new.sqlite3"
    state = StateRig(Settings(sqlite_path=str(tmp_path / "missing.sqlite3")))
    result = state.run("resume", "--dry-run", "--store", f"sqlite:{path}")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"store: sqlite {path}\n"
    (opened,) = state.opened
    assert (opened.store, opened.sqlite_path) == ("sqlite", str(path))


def test_a_configured_store_is_read_as_configured():
    settings = Settings(project="p-1", store="firestore", store_configured=True, firestore_emulator_host="[::1]:8681")
    state = StateRig(settings)
    result = state.run("resume", "--store", "firestore:audit-db")
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        "store: firestore project p-1 database audit-db collection opcancel-idempotency "
        "(emulator at [::1]:8681, FIRESTORE_EMULATOR_HOST)\n"
    )


@pytest.mark.parametrize("choice", ["memory", "sqlite:", "firestore:Bad_Name", "redis:x", "/tmp/x.sqlite3"])
def test_a_store_that_is_not_one_is_bad_configuration(choice, tmp_path):
    state = StateRig(Settings(store="sqlite", store_configured=True, sqlite_path=str(tmp_path / "x")))
    result = state.run("resume", "--store", choice)
    assert result.exit_code == Exit.BAD_CONFIGURATION
    assert result.stderr.startswith("Error: --store: ") and state.opened == []


def test_the_memory_store_is_never_read_from_the_command_line():
    state = StateRig(dataclasses.replace(ServiceRig().settings, store_configured=True))
    result = state.run("resume")
    assert result.exit_code == Exit.BAD_CONFIGURATION
    assert "OPCANCEL_STORE=memory" in result.stderr and state.opened == []


def test_python_m_function_resume_in_an_empty_folder_refuses(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "function", "resume"],
        cwd=tmp_path,
        env={**_environment(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == Exit.BAD_CONFIGURATION, run.stderr
    assert "no store configured" in run.stderr
    assert os.listdir(tmp_path) == []
