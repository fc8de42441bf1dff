"""Datastore fixtures: the document table on SQLite and on PostgreSQL.

`table_backend` runs a test once per table: SQLite in the datastore folder, and
PostgreSQL (a fresh database in one cluster per test session, named to the code by
SILO_DATABASE_URL). Without PostgreSQL the second run is skipped, except under CI,
where it fails.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from datastore.table.base import DocumentTable
from datastore.table.factory import DATABASE_ENV, open_table
from tests.milvus import MilvusServer
from tests.pg import PgCluster, cluster, find_bin_dir

OpenTable = Callable[[], DocumentTable]


def _missing() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None."""
    if find_bin_dir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    return None


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI runs the PostgreSQL tests")
        pytest.skip(reason)
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    with cluster(bin_dir) as pg:
        yield pg


@pytest.fixture
def pg_database(pg_cluster: PgCluster) -> Iterator[str]:
    """The URL of a new empty database, dropped after the test."""
    with pg_cluster.database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def table_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which table new datastores get: SILO_DATABASE_URL set to a fresh database for
    "postgres", unset for "sqlite"."""
    if request.param == "postgres":
        monkeypatch.setenv(DATABASE_ENV, request.getfixturevalue("pg_database"))
    else:
        monkeypatch.delenv(DATABASE_ENV, raising=False)
    return str(request.param)


@pytest.fixture
def new_table(tmp_path: Path, table_backend: str) -> Iterator[OpenTable]:
    """Opens one new document table of the parametrised kind; each call opens another
    connection to the same table. All are closed after the test."""
    location = None
    if table_backend == "postgres":
        from datastore.table.postgres import database_location

        location = database_location(os.environ[DATABASE_ENV], "test")
    opened: list[DocumentTable] = []

    def open_() -> DocumentTable:
        opened.append(open_table(tmp_path, location, create=True))
        return opened[-1]

    yield open_
    for table in opened:
        table.close()


@pytest.fixture(scope="session")
def milvus() -> Iterator[MilvusServer]:
    """A Milvus server started once per session (skipped where none can be started,
    except under CI, where that fails)."""
    from tests.milvus import milvus_server, missing

    reason = missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI runs the Milvus server tests")
        pytest.skip(reason)
    with milvus_server() as server:
        yield server


@pytest.fixture
def milvus_uri(milvus: MilvusServer) -> str:
    return milvus.uri
