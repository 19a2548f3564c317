"""The simulator's chaos controls (a seeded random fault rate, the count of accepted cancels), and the
Operations methods it serves: exactly those Google's discovery documents define, refusing the rest as Google does."""

from __future__ import annotations

import httpx
import pytest

from devkit.discovery import LEDGER
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
        statuses = [http.post(f"/v1/{NAME}-{i}:cancel", content=b"").status_code for i in range(400)]
        assert 150 < statuses.count(200) < 250
        assert {503, 429} == set(statuses) - {200}
        refused = http.post(f"/v1/{NAME}-x:cancel")
        while refused.status_code != 429:
            refused = http.post(f"/v1/{NAME}-x:cancel")
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
        http.post(f"/v1/{NAME}:cancel")
        http.post(f"/v1/{NAME}:cancel")
        http.get(f"/v1/{NAME}")
        assert http.post(f"/v1/{NAME}:cancel", content=b"").status_code == 400
        (operation,) = http.get("/_simulator/operations").json()["operations"]
    assert operation["accepted_cancels"] == 2
    assert operation["done"] is True


def test_a_lasting_operation_runs_until_its_seconds_after_the_first_accepted_cancel_are_up():
    now = [100.0]
    simulator = Simulator(clock=lambda: now[0])
    name = "organizations/123/operations/lasts-10-x"
    with client(simulator) as http:
        http.post(f"/v1/{name}:cancel")
        now[0] = 105.0
        http.post(f"/v1/{name}:cancel")  # a second cancel does not move the end
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
    ("prefix", "version", "name", "body"),
    [
        ("", "v1", NAME, b""),
        ("/securitycenter.eu.rep.googleapis.com", "v2", NAME, b""),
        ("/securitycenter.googleapis.com", "v1beta1", NAME, b"{}"),
        ("/us-central1-aiplatform.googleapis.com", "v1", "projects/my-proj/locations/us-central1/operations/op", b""),
        ("/europe-west1-dataproc.googleapis.com", "v1", "projects/my-proj/regions/europe-west1/operations/op", b""),
        ("/documentai.us.rep.googleapis.com", "v1beta3", "projects/123/locations/us/operations/op", b""),
        ("/translation.googleapis.com", "v3", "projects/my-proj/locations/us-central1/operations/op", b"{}"),
    ],
)
def test_each_documented_service_version_and_shape_is_served_with_its_own_cancel_body(prefix, version, name, body):
    simulator = Simulator()
    headers = {"Content-Type": "application/json"} if body else {}
    with client(simulator) as http:
        assert http.post(f"{prefix}/{version}/{name}:cancel", content=body, headers=headers).status_code == 200
        answer = http.get(f"{prefix}/{version}/{name}").json()
        assert (answer["name"], answer["done"], answer["error"]["code"]) == (name, True, 1)
        parent = name.rsplit("/operations/", 1)[0]
        listing = http.get(f"{prefix}/{version}/{parent}/operations", params={"filter": 'metadata.state="X"'})
        assert [operation["name"] for operation in listing.json()["operations"]] == [name]
    assert [call.path for call in simulator.calls][0] == f"{prefix}/{version}/{name}:cancel"


@pytest.mark.off_contract
@pytest.mark.parametrize(
    ("method", "path", "body", "status", "rule"),
    [
        # No such method: an undocumented version, shape, host or collection.
        ("POST", f"/v9/{NAME}:cancel", b"", 404, "no documented method"),
        ("POST", "/aiplatform.googleapis.com/v1/projects/my-proj/operations/op:cancel", b"", 404, "no documented"),
        ("GET", "/us-central1-aiplatform.googleapis.com/v1/projects/p/regions/us-central1/operations/op", b"", 404, ""),
        ("GET", "/v1/projects/my-proj/zones/z/operations/op", b"", 404, "no documented method"),
        ("GET", "/latest/projects/my-proj/operations/op", b"", 404, "no documented method"),
        ("GET", "/evil.com/v1/projects/my-proj/operations/op", b"", 404, "no documented method"),
        ("GET", "/translate.googleapis.com/v3/projects/p/locations/l/operations/op", b"", 404, "not a host"),
        ("GET", "/cloudbuild.googleapis.com/v1/projects/p/locations/global/operations", b"", 404, "no documented"),
        # Bodies: none where the method takes none; only known fields where it takes one.
        ("POST", f"/securitycenter.googleapis.com/v2/{NAME}:cancel", b"{}", 400, "takes no request body"),
        ("POST", f"/securitycenter.googleapis.com/v1beta1/{NAME}:cancel", b'{"foo":1}', 400, 'Unknown name "foo"'),
        ("POST", f"/securitycenter.googleapis.com/v1beta1/{NAME}:cancel", b"text", 400, "takes a JSON body"),
        # Query parameters: only documented ones, of their type.
        ("GET", "/v1/organizations/1/operations?foo=1", b"", 400, 'Unknown name "foo"'),
        ("GET", "/v1/organizations/1/operations?pageSize=ten", b"", 400, "pageSize"),
    ],
)
def test_what_google_does_not_define_is_refused_as_google_refuses_it_and_recorded(method, path, body, status, rule):
    headers = {"Content-Type": "text/plain" if body == b"text" else "application/json"} if body else {}
    with client(Simulator()) as http:
        answer = http.request(method, path, content=body, headers=headers)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert error["status"] == ("NOT_FOUND" if status == 404 else "INVALID_ARGUMENT")
    assert rule in error["message"]
    (seen,) = LEDGER.take()
    assert seen.status == status and path.split("?")[0].split("/")[-1] in str(seen)
