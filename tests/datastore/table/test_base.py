"""The document table, on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from datastore.errors import (
    ConflictError,
    CorruptDatastoreError,
    NotFoundError,
    UnavailableError,
)
from datastore.table.base import DocumentTable
from datastore.table.records import DocumentRecord
from datastore.table.sqlite import SqliteTable
from tests.datastore.conftest import OpenTable
from tests.datastore.synthetic import corpus
from tests.pg import PgCluster


def _fill(table: DocumentTable, n: int = 6) -> DocumentTable:
    docs = corpus(n)
    docs[1] = replace(docs[1], url="https://news.example/x%_1")
    docs[4] = replace(docs[4], url="https://NEWS.example/x%_1")
    records = [DocumentRecord.new(d, i, (3 * i, 3 * i + 3), (i, i + 1))
               for i, d in enumerate(docs)]
    table.insert(records, [d.text for d in docs])
    return table


def test_insert_get_and_snapshot(new_table: OpenTable) -> None:
    table = _fill(new_table())
    rec = table.get("doc-2")
    assert (rec.doc_row, rec.entry_start, rec.entry_end, rec.state) == (2, 6, 9, "live")
    snap = table.snapshot()
    assert snap.doc_ids[2] == "doc-2" and snap.n_entries == 18 and snap.n_blocks == 6
    assert snap.rows_of_entries(np.array([0, 2, 3, 17, -1])).tolist() == [0, 0, 1, 5, -1]
    assert table.text(2) == corpus(6)[2].text
    assert [r.doc_id for r in table.records([3, 0])] == ["doc-3", "doc-0"]
    assert [t[:2] for t in table.texts(4, batch=1)] == [(4, "doc-4"), (5, "doc-5")]
    with pytest.raises(NotFoundError, match="doc-99"):
        table.get("doc-99")


def test_duplicate_id_is_a_conflict_and_nothing_is_written(new_table: OpenTable) -> None:
    table = _fill(new_table())
    seq = table.change_seq()
    doc = corpus(1)[0]
    with pytest.raises(ConflictError, match="doc-0"):
        table.insert([DocumentRecord.new(doc, 6, (18, 19), (6, 6))], [doc.text])
    other = replace(doc, doc_id="doc-new")
    with pytest.raises(ConflictError, match="another add"):  # row 5 is taken
        table.insert([DocumentRecord.new(other, 5, (18, 19), (6, 6))], [doc.text])
    assert len(table.snapshot().doc_ids) == 6
    assert table.change_seq() == seq


def test_tombstones_and_purge(new_table: OpenTable) -> None:
    table = _fill(new_table())
    removed, _, *_ = table.remove((["doc-4", "doc-1"], None, None), ("o1", "{}", None, 1.0))
    assert [r[:2] for r in removed] == [(4, "doc-4"), (1, "doc-1")]  # the selector's order
    assert table.optout_rows("o1")[0][3:6] == ('["doc-4", "doc-1"]', 6, 2)
    assert table.snapshot().removed.tolist() == [False, True, False, False, True, False]
    assert table.rows_to_purge() == [1, 4]
    # an opt-out committed after the purger read its rows keeps its text and open receipt
    table.remove((["doc-2"], None, None), ("o2", "{}", None, 1.5))
    assert table.purge([1, 4], 2.0) == [1, 4]
    assert table.text(1) is None and table.text(0) is not None
    assert table.text(2) is not None
    stamped = {r[0]: r[7] for r in table.optout_rows()}
    assert stamped == {"o1": 2.0, "o2": None}  # purged_at
    assert table.optout_rows("o1")[0][6] == 1.0  # effective_at
    assert table.rows_to_purge() == [2]
    assert table.purge([2], 3.0) == [2] and table.rows_to_purge() == []
    assert {r[0]: r[7] for r in table.optout_rows()} == {"o1": 2.0, "o2": 3.0}
    table.check_integrity()


def test_every_write_bumps_the_change_sequence_seen_by_other_connections(
        new_table: OpenTable) -> None:
    table, other = new_table(), new_table()
    assert table.change_seq() == other.change_seq() == 0
    _fill(table)
    assert other.change_seq() == 1
    _, seq, *_ = table.remove((["doc-2"], None, None), ("o1", "{}", None, 1.0))
    assert other.change_seq() == seq == 2 and other.snapshot().removed[2]
    table.purge([2], 2.0)
    assert other.change_seq() == 3


def test_live_ids_by_source_and_exact_url_prefix(new_table: OpenTable) -> None:
    table = _fill(new_table())
    assert table.live_doc_ids(source="news") == ["doc-0", "doc-3"]
    # % and _ are literal, and the prefix is case-sensitive
    assert table.live_doc_ids(url_prefix="https://news.example/x%_") == ["doc-1"]
    assert table.live_doc_ids(url_prefix="https://news.example/x") == ["doc-1"]
    removed, _, *_ = table.remove(([], "news", None), ("o1", "{}", None, 1.0))
    assert [r[1] for r in removed] == ["doc-0", "doc-3"]
    assert table.live_doc_ids(source="news") == []
    again, _, *_ = table.remove(([], "news", None), ("o2", "{}", None, 1.0))
    assert again == []  # already removed: in no second receipt


def test_shared_index_state_records_publication_fence_and_pending_deletes(
        new_table: OpenTable) -> None:
    table, other = _fill(new_table()), new_table()
    assert other.index_state() == (0, 0, [])
    removed, seq, *_ = table.remove((["doc-1", "doc-4"], None, None), ("o1", "{}", None, 1.0),
                                track_pending=True)
    assert other.index_state() == (0, 0, [1, 4])
    assert table.index_written(70, published=18, deleted=[4]) == seq + 1
    assert table.index_written(50) == seq + 2  # the fence never goes back
    assert other.index_state() == (18, 70, [1])


def test_unreadable_file_is_reported_by_name(tmp_path: Path) -> None:
    (tmp_path / "documents.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(CorruptDatastoreError, match="documents.sqlite"):
        SqliteTable.from_dir(tmp_path)


def test_table_uses_wal_with_full_sync(tmp_path: Path) -> None:
    _fill(SqliteTable.from_dir(tmp_path)).close()
    db = sqlite3.connect(tmp_path / "documents.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_postgres_schema_that_is_not_there_is_reported(pg_database: str) -> None:
    from datastore.table.postgres import PostgresTable

    with pytest.raises(CorruptDatastoreError, match="silo_gone_1234abcd.*missing documents"):
        PostgresTable(pg_database, "silo_gone_1234abcd")


def test_unreachable_postgres_fails_closed_and_recovers(pg_cluster: PgCluster,
                                                        pg_database: str) -> None:
    from datastore.table.postgres import PostgresTable, database_location

    table = PostgresTable(pg_database, database_location(pg_database, "t")["schema"],
                          create=True)
    _fill(table)
    pg_cluster.stop()
    try:
        for call in (table.snapshot, table.change_seq, lambda: table.purge([1], 1.0),
                     lambda: table.remove((["doc-1"], None, None), ("o", "{}", None, 1.0))):
            with pytest.raises(UnavailableError, match="cannot be reached"):
                call()
    finally:
        pg_cluster.start()
    assert table.change_seq() == 1 and not table.snapshot().removed.any()
    table.close()
