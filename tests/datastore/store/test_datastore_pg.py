"""A datastore whose document table is in PostgreSQL: what the manifest records, where
erased text goes, and failing closed when the database cannot be reached. (Every test
of test_datastore.py also runs on PostgreSQL.)"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from datastore.config import DatastoreConfig
from datastore.errors import UnavailableError
from datastore.store.datastore import Datastore
from datastore.table.factory import DATABASE_ENV
from tests.datastore.synthetic import SyntheticEncoder, corpus
from tests.pg import SUPERUSER, PgCluster


def _build(path: Path, docs: list) -> Datastore:  # type: ignore[type-arg]
    config = DatastoreConfig(flush_entries=64, encode_batch=4)
    return Datastore.build(path, docs, SyntheticEncoder(), config, progress=False)


def test_manifest_names_the_database_but_no_credentials(
        tmp_path: Path, pg_cluster: PgCluster, pg_database: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = pg_database.replace(f"{SUPERUSER}@", f"{SUPERUSER}:pw-not-kept@")  # trust auth
    monkeypatch.setenv(DATABASE_ENV, url)
    _build(tmp_path / "ds", corpus(12)).close()
    text = (tmp_path / "ds" / "manifest.json").read_text()
    database = json.loads(text)["database"]
    assert set(database) == {"host", "port", "dbname", "schema"}
    assert database["port"] == str(pg_cluster.port) and database["schema"].startswith("silo_")
    assert "pw-not-kept" not in text and SUPERUSER not in text
    assert not (tmp_path / "ds" / "documents.sqlite").exists()
    # without the URL, the manifest's location and libpq's variables reach the table
    monkeypatch.delenv(DATABASE_ENV)
    monkeypatch.setenv("PGUSER", SUPERUSER)
    with Datastore.open(tmp_path / "ds") as store:
        assert store.info().documents == 12


def test_compaction_leaves_the_text_in_no_table_file(
        tmp_path: Path, pg_cluster: PgCluster, pg_database: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATABASE_ENV, pg_database)
    docs = corpus(20, seed=3)
    secret = "wombatsecret"
    docs[7] = replace(docs[7], text=f"w1 {secret} w2 w3")
    with _build(tmp_path / "ds", docs) as store:
        store.optout(doc_ids=["doc-7"])
        assert store.compact() == 1
    import psycopg

    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # table pages to disk; dropped files unlinked
    # the WAL keeps the text until its segments are recycled (see datastore.table.postgres)
    for path in pg_cluster.data.rglob("*"):
        if path.is_file() and "pg_wal" not in path.parts:
            assert secret.encode() not in path.read_bytes(), path


def test_unreachable_database_fails_closed(tmp_path: Path, pg_cluster: PgCluster,
                                           pg_database: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATABASE_ENV, pg_database)
    store = _build(tmp_path / "ds", corpus(12))
    queries = np.asarray(store.kv.keys[:4], np.float32)
    before = store.knn_search(queries, 3)
    pg_cluster.stop()
    try:
        with pytest.raises(UnavailableError, match="cannot be reached"):
            store.optout(doc_ids=["doc-1"])
        with pytest.raises(UnavailableError, match="cannot be reached"):
            store.receipts()
        with pytest.raises(UnavailableError, match="cannot be reached"):
            Datastore.open(tmp_path / "ds")
        assert not store.snapshot.removed.any()  # nothing half-applied
    finally:
        pg_cluster.start()
    receipt = store.optout(doc_ids=["doc-1"])
    assert receipt.doc_ids == ("doc-1",)
    _, ids = store.knn_search(queries, 3)
    rows = store.snapshot.rows_of_entries(ids)
    assert 1 not in rows.tolist() and before[1].shape == ids.shape
    store.close()
