import uuid

import pytest

from tests.faults.stores import open_store


@pytest.fixture(params=["memory", "sqlite"])
def store_spec(request, tmp_path):
    if request.param == "memory":
        return {"kind": "memory"}
    return {"kind": "sqlite", "path": str(tmp_path / f"{uuid.uuid4().hex}.sqlite3")}


@pytest.fixture
def make_store(store_spec):
    return lambda: open_store(store_spec)


@pytest.fixture(params=["sqlite"])
def shared_store_spec(request, tmp_path):
    return {"kind": "sqlite", "path": str(tmp_path / "shared.sqlite3")}
