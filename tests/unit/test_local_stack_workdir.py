"""``python -m devkit.local_stack``'s folder: made by the command, never one it could not remove, one stack each."""

from __future__ import annotations

import os
import subprocess
import sys

from devkit.local_stack import _claim_workdir


def test_a_new_folder_is_made_and_marked_with_the_command_s_pid(tmp_path):
    workdir = tmp_path / "stack"
    assert _claim_workdir(workdir) is None
    assert (workdir / "pid").read_text() == str(os.getpid())


def test_a_folder_of_a_running_stack_is_refused(tmp_path):
    workdir = tmp_path / "stack"
    assert _claim_workdir(workdir) is None
    problem = _claim_workdir(workdir)
    assert problem == f"a local stack is already running in {workdir} (pid {os.getpid()})"


def test_a_folder_the_command_did_not_make_is_refused_and_left_alone(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    problem = _claim_workdir(tmp_path)
    assert problem == f"{tmp_path} exists and is not a local stack's folder: pass --workdir with a new one"
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_a_folder_a_killed_stack_left_is_taken_over(tmp_path):
    workdir = tmp_path / "stack"
    workdir.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (workdir / "pid").write_text(gone.stdout.strip())
    (workdir / "idempotency.sqlite3").write_text("stale")
    assert _claim_workdir(workdir) is None
    assert sorted(path.name for path in workdir.iterdir()) == ["pid"]
