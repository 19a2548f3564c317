"""Google's published contract through the entry points: names of shapes a service does not document are
refused before any call, and what is called is what the documents define (the stand-in refuses the rest)."""

from __future__ import annotations

from tests.entry.test_entrypoints import load_wired

VERTEX = "//aiplatform.googleapis.com/projects/my-proj/locations/us-central1/operations/op-1"


def test_names_of_undocumented_shapes_are_rejected_before_any_call_saying_which_shapes_the_service_takes():
    http_client, rig = load_wired("on_http", "http")
    undocumented = [
        "//aiplatform.googleapis.com/projects/my-proj/operations/op-1",
        "//aiplatform.googleapis.com/projects/my-proj/regions/us-central1/operations/op-1",
        "//dataproc.googleapis.com/projects/my-proj/operations/op-1",
        "//documentai.googleapis.com/projects/my-proj/operations/op-1",
    ]
    response = http_client.post("/", json={"operations": [*undocumented, VERTEX]})
    assert response.status_code == 202
    answer = response.get_json()
    assert [item["operation"] for item in answer["rejected"]] == undocumented
    for item in answer["rejected"]:
        assert item["outcome"] == "REJECTED"
        assert "the shapes its API documents" in item["error"], item["error"]
        assert "/locations/L/operations/ID" in item["error"] or "/regions/R/operations/ID" in item["error"]
    assert [(item["operation"], item["outcome"]) for item in answer["accepted"]] == [
        (VERTEX.removeprefix("//aiplatform.googleapis.com/"), "CANCELLED")
    ]
    # Only the documented name reached the API, with the cancel its method defines: no body.
    (cancel,) = rig.simulator.cancel_calls()
    assert cancel.path == "/v1/projects/my-proj/locations/us-central1/operations/op-1:cancel"
    assert cancel.body == ""


def test_a_cancel_that_takes_a_cancel_operation_request_gets_an_empty_object():
    http_client, rig = load_wired("on_http", "http")
    name = "organizations/123/operations/op-2"
    response = http_client.post("/", json={"operation": name, "api_version": "v1beta1"})
    assert response.status_code == 202
    (cancel,) = rig.simulator.cancel_calls()
    assert (cancel.path, cancel.body) == (f"/v1beta1/{name}:cancel", "{}")
