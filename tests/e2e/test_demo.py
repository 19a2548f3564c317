"""The README's first command, as a new user runs it."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.emulator,
    pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed, so the demo cannot run"),
]


def test_the_demo_cancels_a_sample_and_prints_every_result_of_a_batch(tmp_path):
    batch = (
        '{"operations": ["organizations/42/operations/missing-x", '
        '"//aiplatform.googleapis.com/projects/my-proj/locations/us-central1/operations/slow-1-x"]}'
    )
    run = subprocess.run(
        [str(ROOT / "demo.sh"), "organizations/42/operations/slow-1-readme", batch],
        capture_output=True,
        text=True,
        timeout=240,
        # Where the stack makes its temporary folder: it must leave nothing behind.
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (
        "checks     first 1 s after the cancel, then x1.5, at most 20 s apart (the function's defaults)" in run.stdout
    )
    assert "TIMED_OUT after 30 s (the demo's" in run.stdout
    assert "result CANCELLED published" in run.stdout
    assert '"outcome": "CANCELLED"' in run.stdout
    assert '"outcome": "NOT_FOUND"' in run.stdout
    assert '"service": "aiplatform.googleapis.com"' in run.stdout
    # One message, two requests: both results, not the first one only.
    assert "3 result event(s) on opcancel-results" in run.stdout
    assert list(tmp_path.iterdir()) == []
