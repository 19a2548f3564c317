"""The CLI holds names and list parents to the shapes each service's discovery document defines."""

from __future__ import annotations

import pytest

from function.cli import Exit
from tests.cli.test_cli import Rig


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("list", "//aiplatform.googleapis.com/projects/my-proj"), "projects/P/locations/L"),
        (("list", "//cloudbuild.googleapis.com/projects/my-proj/locations/global"), "documents no list method"),
        (("cancel", "--all", "//aiplatform.googleapis.com/projects/my-proj", "--yes"), "projects/P/locations/L"),
        (("cancel", "//dataproc.googleapis.com/projects/my-proj/operations/op"), "projects/P/regions/R/operations/ID"),
    ],
)
def test_an_undocumented_shape_exits_9_before_any_call_naming_the_shapes_the_service_takes(args, says):
    rig = Rig()
    result = rig.run(*args)
    assert result.exit_code == Exit.REJECTED, result.output
    assert says in result.stdout + result.stderr
    assert rig.simulator.calls == []


def test_a_documented_list_parent_is_listed():
    rig = Rig()
    assert rig.run("list", "//dataproc.googleapis.com/projects/my-proj/regions/europe-west1").exit_code == 0
    (call,) = rig.simulator.calls
    assert call.path == "/v1/projects/my-proj/regions/europe-west1/operations"
