"""The simulator's chaos controls: a seeded random fault rate, and the count of accepted cancels."""

from __future__ import annotations

import httpx
import pytest

from devkit.simulator import Simulator

NAME = "organizations/1/operations/op"


def client(simulator: Simulator) -> httpx.Client:
    return httpx.Client(transport=httpx.WSGITransport(app=simulator), base_url="http://simulator.test")


def test_a_fault_rate_fails_that_share_of_calls_before_they_take_effect():
    simulator = Simulator()
    with client(simulator) as http:
        assert (
            http.post(
                "/_simulator/fault-rate", json={"rate": 0.5, "statuses": [503, 429], "retry_delay": "2s", "seed": 3}
            ).status_code
            == 200
        )
        statuses = [http.post(f"/v1/{NAME}-{i}:cancel", json={}).status_code for i in range(400)]
        assert 150 < statuses.count(200) < 250
        assert {503, 429} == set(statuses) - {200}
        refused = http.post(f"/v1/{NAME}-x:cancel", json={})
        while refused.status_code != 429:
            refused = http.post(f"/v1/{NAME}-x:cancel", json={})
        assert refused.json()["error"]["details"][0]["retryDelay"] == "2s"
        failed = [i for i, status in enumerate(statuses) if status != 200]
        calls = http.get("/_simulator/calls").json()["calls"]
        assert [i for i, call in enumerate(calls[:400]) if call["injected"]] == failed
        operations = {op["name"]: op for op in http.get("/_simulator/operations").json()["operations"]}
        # A refused call never reached the operation: it was not even created.
        assert all(f"{NAME}-{i}" not in operations for i in failed)
        http.post("/_simulator/fault-rate", json={"rate": 0})
        assert all(http.get(f"/v1/{NAME}-{i}").status_code == 200 for i in range(20))


def test_the_same_seed_gives_the_same_faults():
    def run() -> list[int]:
        simulator = Simulator()
        simulator.set_fault_rate(0.3, statuses=(503,), seed=11)
        with client(simulator) as http:
            return [http.get(f"/v1/{NAME}").status_code for _ in range(50)]

    assert run() == run()
    assert 503 in run()


def test_accepted_cancels_count_only_cancels_of_a_running_operation():
    simulator = Simulator()
    with client(simulator) as http:
        http.post(f"/v1/{NAME}:cancel", json={})
        http.post(f"/v1/{NAME}:cancel", json={})
        http.get(f"/v1/{NAME}")
        assert http.post(f"/v1/{NAME}:cancel", json={}).status_code == 400
        (operation,) = http.get("/_simulator/operations").json()["operations"]
    assert operation["accepted_cancels"] == 2
    assert operation["done"] is True


def test_a_lasting_operation_runs_until_its_seconds_after_the_first_accepted_cancel_are_up():
    now = [100.0]
    simulator = Simulator(clock=lambda: now[0])
    name = "organizations/123/operations/lasts-10-x"
    with client(simulator) as http:
        http.post(f"/v1/{name}:cancel", json={})
        now[0] = 105.0
        http.post(f"/v1/{name}:cancel", json={})  # a second cancel does not move the end
        now[0] = 109.999
        assert http.get(f"/v1/{name}").json()["done"] is False
        now[0] = 110.0
        assert http.get(f"/v1/{name}").json()["error"]["code"] == 1
    (operation,) = simulator.operations.values()
    assert (operation.cancelled_at, operation.ends_at) == (100.0, 110.0)


@pytest.mark.parametrize("body", [{"rate": 2}, {"rate": 0.1, "statuses": []}, {"rate": "x"}])
def test_a_bad_fault_rate_is_refused(body):
    with client(Simulator()) as http:
        assert http.post("/_simulator/fault-rate", json=body).status_code == 400


@pytest.mark.parametrize(
    "name",
    [
        "projects/my-proj/locations/us-central1/operations/op",
        "projects/my-proj/regions/europe-west1/operations/op",
        "projects/123/operations/op",
    ],
)
@pytest.mark.parametrize("prefix", ["", "/us-central1-aiplatform.googleapis.com"])
@pytest.mark.parametrize("version", ["v1", "v2", "v1beta1", "v3"])
def test_every_services_operations_are_served_under_any_version_with_or_without_a_host(name, prefix, version):
    simulator = Simulator()
    with client(simulator) as http:
        assert http.post(f"{prefix}/{version}/{name}:cancel", json={}).status_code == 200
        body = http.get(f"{prefix}/{version}/{name}").json()
        assert (body["name"], body["done"], body["error"]["code"]) == (name, True, 1)
        parent = name.rsplit("/operations/", 1)[0]
        listing = http.get(f"{prefix}/{version}/{parent}/operations").json()
        assert [operation["name"] for operation in listing["operations"]] == [name]
    assert [call.path for call in simulator.calls][0] == f"{prefix}/{version}/{name}:cancel"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/projects/my-proj/zones/z/operations/op",
        "/latest/projects/my-proj/operations/op",
        "/evil.com/v1/projects/my-proj/operations/op",
        "/v1/projects/my-proj/locations/us-central1/datasets/d/operations/op",
    ],
)
def test_other_paths_are_not_found(path):
    with client(Simulator()) as http:
        assert http.get(path).status_code == 404
