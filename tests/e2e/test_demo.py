"""The README's first command, as a new user runs it."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.emulator,
    pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed, so the demo cannot run"),
]


def test_the_demo_cancels_a_sample_and_prints_its_result():
    run = subprocess.run(
        [
            str(ROOT / "demo.sh"),
            "organizations/42/operations/slow-1-readme",
            "organizations/42/operations/missing-x",
            "//aiplatform.googleapis.com/projects/my-proj/locations/us-central1/operations/slow-1-x",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "result CANCELLED published" in run.stdout
    assert '"outcome": "CANCELLED"' in run.stdout
    assert '"outcome": "NOT_FOUND"' in run.stdout
    assert '"service": "aiplatform.googleapis.com"' in run.stdout
    assert "3 result event(s) on opcancel-results" in run.stdout
