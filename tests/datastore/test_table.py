"""The SQLite document table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from datastore.errors import ConflictError, CorruptDatastoreError, NotFoundError
from datastore.table import DocumentRecord, DocumentTable
from tests.datastore.synthetic import corpus


def _filled(path: Path, n: int = 6) -> DocumentTable:
    table = DocumentTable.from_dir(path)
    docs = corpus(n)
    records = [DocumentRecord.new(d, i, (3 * i, 3 * i + 3), (i, i + 1))
               for i, d in enumerate(docs)]
    table.insert(records, [d.text for d in docs])
    return table


def test_insert_get_and_snapshot(tmp_path: Path) -> None:
    table = _filled(tmp_path)
    rec = table.get("doc-2")
    assert (rec.doc_row, rec.entry_start, rec.entry_end, rec.state) == (2, 6, 9, "live")
    snap = table.snapshot()
    assert snap.doc_ids[2] == "doc-2" and snap.n_entries == 18 and snap.n_blocks == 6
    assert snap.rows_of_entries(np.array([0, 2, 3, 17, -1])).tolist() == [0, 0, 1, 5, -1]
    assert table.text(2) == corpus(6)[2].text
    with pytest.raises(NotFoundError, match="doc-99"):
        table.get("doc-99")


def test_duplicate_id_is_a_conflict_and_nothing_is_written(tmp_path: Path) -> None:
    table = _filled(tmp_path)
    doc = corpus(1)[0]
    with pytest.raises(ConflictError, match="doc-0"):
        table.insert([DocumentRecord.new(doc, 6, (18, 19), (6, 6))], [doc.text])
    assert len(table.snapshot().doc_ids) == 6


def test_tombstones_and_purge(tmp_path: Path) -> None:
    table = _filled(tmp_path)
    table.mark_removed(["doc-1", "doc-4"], "o1", ("o1", "{}", None, '["doc-1","doc-4"]',
                                                   6, 2, 1.0))
    assert table.snapshot().removed.tolist() == [False, True, False, False, True, False]
    assert table.rows_to_purge() == [1, 4]
    assert table.purge(2.0) == [1, 4]
    assert table.text(1) is None and table.text(0) is not None
    assert table.optout_rows()[0][-1] == 2.0  # purged_at
    assert table.rows_to_purge() == []
    table.check_integrity()


def test_unreadable_file_is_reported_by_name(tmp_path: Path) -> None:
    (tmp_path / "documents.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(CorruptDatastoreError, match="documents.sqlite"):
        DocumentTable.from_dir(tmp_path)


def test_table_uses_wal_with_full_sync(tmp_path: Path) -> None:
    _filled(tmp_path).close()
    db = sqlite3.connect(tmp_path / "documents.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
