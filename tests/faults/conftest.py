import uuid

import pytest

from tests.support import open_store


@pytest.fixture(params=["memory", "sqlite", pytest.param("firestore", marks=pytest.mark.emulator)])
def store_spec(request, tmp_path):
    if request.param == "memory":
        return {"kind": "memory"}
    if request.param == "sqlite":
        return {"kind": "sqlite", "path": str(tmp_path / f"{uuid.uuid4().hex}.sqlite3")}
    return request.getfixturevalue("firestore_spec")


@pytest.fixture
def make_store(store_spec):
    return lambda: open_store(store_spec)


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.emulator)])
def shared_store_spec(request, tmp_path):
    """A store several processes can open at once."""
    if request.param == "sqlite":
        return {"kind": "sqlite", "path": str(tmp_path / "shared.sqlite3")}
    return request.getfixturevalue("firestore_spec")
