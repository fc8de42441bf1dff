"""Replicas of one datastore sharing its document table in PostgreSQL: each process has
its own copy of the folder (and a local faiss index), and a write acknowledged by one is
in effect on the other for every search that starts after it."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from datastore.config import DatastoreConfig
from datastore.errors import UnavailableError
from datastore.store.datastore import Datastore
from datastore.table.factory import DATABASE_ENV
from tests.datastore.synthetic import SyntheticEncoder, corpus
from tests.pg import PgCluster


@pytest.fixture
def replicas(tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch,
             ) -> Iterator[tuple[Datastore, Datastore]]:
    monkeypatch.setenv(DATABASE_ENV, pg_database)
    config = DatastoreConfig(backend="faiss-flat", flush_entries=64, encode_batch=4)
    Datastore.build(tmp_path / "a", corpus(30, seed=5), SyntheticEncoder(), config,
                    progress=False).close()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a, b = Datastore.open(tmp_path / "a"), Datastore.open(tmp_path / "b")
    yield a, b
    a.close()
    b.close()


def _docs_found(store: Datastore, queries: np.ndarray) -> set[str]:
    _, ids = store.knn_search(queries, 8)
    rows = store.snapshot.rows_of_entries(ids[ids >= 0])
    return {store.snapshot.doc_ids[r] for r in rows.tolist()}


def test_an_optout_through_one_replica_is_in_effect_on_the_other(
        replicas: tuple[Datastore, Datastore]) -> None:
    a, b = replicas
    queries = np.asarray(b.kv.keys[::7], np.float32)
    victims = sorted(_docs_found(b, queries))[:3]
    receipt = a.optout(doc_ids=victims)
    assert receipt.doc_ids == tuple(victims)
    # b never saw the write; its next search reads the sequence and reloads
    assert not _docs_found(b, queries) & set(victims)
    assert not b.entry_filter().allows_doc(victims[0])
    hits = b.bm25_search(" ".join(corpus(30, seed=5)[0].text.split()[:4]), 30)
    assert not {h.doc_id for h in hits} & set(victims)
    assert [r.optout_id for r in b.receipts()] == [receipt.optout_id]


def test_a_search_without_a_change_reads_only_the_sequence(
        replicas: tuple[Datastore, Datastore]) -> None:
    a, b = replicas
    queries = np.asarray(b.kv.keys[:4], np.float32)
    b.knn_search(queries, 4)
    view = b.view
    b.knn_search(queries, 4)
    assert b.view is view  # nothing written: the snapshot was kept
    a.optout(doc_ids=["doc-3"])
    b.knn_search(queries, 4)
    assert b.view is not view and b.view.snapshot.removed[3]


def test_concurrent_optouts_never_list_one_document_twice(
        replicas: tuple[Datastore, Datastore]) -> None:
    a, b = replicas
    receipts = []

    def opt_out(store: Datastore, source: str) -> None:
        receipts.append(store.optout(source=source))

    sources = sorted(set(b.snapshot.sources))
    threads = [threading.Thread(target=opt_out, args=(store, sources[0]))
               for store in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    listed = [d for r in receipts for d in r.doc_ids]
    assert len(listed) == len(set(listed))
    snap = b.view.snapshot
    b.sync()
    expected = {d for d, c in zip(snap.doc_ids, snap.source_code, strict=True)
                if snap.sources[c] == sources[0]}
    assert set(listed) == expected == {d for d in b.snapshot.doc_ids
                                       if not b.entry_filter().allows_doc(d)}


def test_a_replica_fails_closed_while_the_table_is_down_and_resumes(
        replicas: tuple[Datastore, Datastore], pg_cluster: PgCluster) -> None:
    a, b = replicas
    queries = np.asarray(b.kv.keys[:4], np.float32)
    before = b.knn_search(queries, 4)
    pg_cluster.stop()
    try:
        with pytest.raises(UnavailableError, match="cannot be reached"):
            b.knn_search(queries, 4)
        with pytest.raises(UnavailableError, match="cannot be reached"):
            b.bm25_search("w1 w2", 3)
    finally:
        pg_cluster.start()
    after = b.knn_search(queries, 4)
    assert np.array_equal(before[1], after[1])
    a.optout(doc_ids=["doc-0"])
    assert not b.entry_filter().allows_doc("doc-0")
