"""The document table: the single source of truth for what a datastore holds.

A SQLite database in WAL mode with `synchronous=FULL`, so a committed transaction is on
disk before the call returns (an acknowledged opt-out survives `kill -9`). Each row is
one document: its licence class, source, url, state (`live` or `removed`), its kNN entry
id range `[entry_start, entry_end)`, its RIC block id range `[block_start, block_end)`
and its stored text (erased by compaction). Opt-out receipts live in a second table.

`TableSnapshot` is the columnar in-memory copy of the table that the entry filter is
computed from; it is rebuilt from the table at load.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from datastore.document import Document, LicenseClass
from datastore.errors import ConflictError, CorruptDatastoreError, NotFoundError

TABLE_FILE = "documents.sqlite"
CLASS_CODES: tuple[LicenseClass, ...] = tuple(LicenseClass)  # class -> int8 code by position

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_row INTEGER PRIMARY KEY,
    doc_id TEXT NOT NULL UNIQUE,
    license TEXT NOT NULL,
    license_class TEXT NOT NULL,
    source TEXT NOT NULL,
    url TEXT,
    added_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'live',
    entry_start INTEGER NOT NULL,
    entry_end INTEGER NOT NULL,
    block_start INTEGER NOT NULL,
    block_end INTEGER NOT NULL,
    text TEXT,
    optout_id TEXT,
    removed_at REAL
);
CREATE INDEX IF NOT EXISTS documents_source ON documents(source);
CREATE INDEX IF NOT EXISTS documents_url ON documents(url);
CREATE TABLE IF NOT EXISTS optouts (
    optout_id TEXT PRIMARY KEY,
    selector TEXT NOT NULL,
    reason TEXT,
    doc_ids TEXT NOT NULL,
    entries_removed INTEGER NOT NULL,
    blocks_removed INTEGER NOT NULL,
    effective_at REAL NOT NULL,
    purged_at REAL
);
"""

_DOC_COLUMNS = ("doc_row, doc_id, license, license_class, source, url, added_at, state, "
                "entry_start, entry_end, block_start, block_end")


@dataclass(frozen=True)
class DocumentRecord:
    """One row of the document table (without its text)."""

    doc_row: int
    doc_id: str
    license: str
    license_class: LicenseClass
    source: str
    url: str | None
    added_at: float
    state: str
    entry_start: int
    entry_end: int
    block_start: int
    block_end: int

    def __post_init__(self) -> None:
        if not 0 <= self.entry_start <= self.entry_end:
            raise ValueError(f"entry range of {self.doc_id!r} is not a range")
        if not 0 <= self.block_start <= self.block_end:
            raise ValueError(f"block range of {self.doc_id!r} is not a range")
        if self.state not in ("live", "removed"):
            raise ValueError(f"state of {self.doc_id!r} must be live or removed")

    @classmethod
    def new(cls, doc: Document, doc_row: int, entries: tuple[int, int],
            blocks: tuple[int, int]) -> DocumentRecord:
        return cls(doc_row, doc.doc_id, doc.license, doc.license_class, doc.source, doc.url,
                   time.time(), "live", entries[0], entries[1], blocks[0], blocks[1])


@dataclass(frozen=True)
class TableSnapshot:
    """Columnar copy of the table, one element per document row (rows are 0..n-1).

    entry_start, entry_end, block_start, block_end: (n,) int64; class_code: (n,) int8
    (index into CLASS_CODES); source_code: (n,) int32 (index into `sources`);
    removed: (n,) bool. Entry ranges ascend with the row, so the ranges of any subset of
    rows are already sorted.
    """

    doc_ids: tuple[str, ...]
    entry_start: np.ndarray
    entry_end: np.ndarray
    block_start: np.ndarray
    block_end: np.ndarray
    class_code: np.ndarray
    source_code: np.ndarray
    sources: tuple[str, ...]
    removed: np.ndarray
    row_of: dict[str, int]  # doc_id -> row; shared, never mutated, by derived snapshots

    @property
    def n_entries(self) -> int:
        return int(self.entry_end[-1]) if len(self.doc_ids) else 0

    @property
    def n_blocks(self) -> int:
        return int(self.block_end[-1]) if len(self.doc_ids) else 0

    def with_removed(self, rows: np.ndarray) -> TableSnapshot:
        """A copy with `rows` marked removed (copy-on-write: readers keep the old one)."""
        removed = self.removed.copy()
        removed[rows] = True
        return replace(self, removed=removed)

    def rows_of_entries(self, entry_ids: np.ndarray) -> np.ndarray:
        """Document row of each entry id (any shape, int64); -1 where the id is -1."""
        rows = np.searchsorted(self.entry_end, entry_ids, side="right")
        return np.where(entry_ids < 0, -1, rows)


class DocumentTable:
    """The SQLite document table of one datastore folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise CorruptDatastoreError(f"{path}: not a readable document table ({e})") from None

    @classmethod
    def from_dir(cls, folder: Path) -> DocumentTable:
        return cls(Path(folder) / TABLE_FILE)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def insert(self, records: Sequence[DocumentRecord], texts: Sequence[str]) -> None:
        """Insert documents in one transaction; an existing doc_id is a ConflictError."""
        rows = [(r.doc_row, r.doc_id, r.license, r.license_class.value, r.source, r.url,
                 r.added_at, r.state, r.entry_start, r.entry_end, r.block_start, r.block_end,
                 t) for r, t in zip(records, texts, strict=True)]
        try:
            with self._transaction() as db:
                db.executemany(f"INSERT INTO documents ({_DOC_COLUMNS}, text) VALUES "
                               "(?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        except sqlite3.IntegrityError:
            taken = self.existing([r.doc_id for r in records])
            raise ConflictError(f"document id already in the datastore: {taken[:5]}") from None

    def existing(self, doc_ids: Sequence[str], live_only: bool = False) -> list[str]:
        """The ids among `doc_ids` that the table holds (only live ones if `live_only`)."""
        state = " AND state='live'" if live_only else ""
        found: list[str] = []
        with self._lock:
            for i in range(0, len(doc_ids), 500):
                part = list(doc_ids[i:i + 500])
                marks = ",".join("?" * len(part))
                found += [r[0] for r in self._db.execute(
                    f"SELECT doc_id FROM documents WHERE doc_id IN ({marks}){state}", part)]
        return found

    def _record(self, row: tuple) -> DocumentRecord:  # type: ignore[type-arg]
        return DocumentRecord(row[0], row[1], row[2], LicenseClass(row[3]), *row[4:])

    def get(self, doc_id: str) -> DocumentRecord:
        with self._lock:
            row = self._db.execute(f"SELECT {_DOC_COLUMNS} FROM documents WHERE doc_id=?",
                                   (doc_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no document {doc_id!r} in the datastore")
        return self._record(row)

    def records(self, rows: Sequence[int]) -> list[DocumentRecord]:
        """Records of the given doc rows, in the given order."""
        with self._lock:
            out = {r[0]: self._record(r) for i in range(0, len(rows), 500) for r in
                   self._db.execute(f"SELECT {_DOC_COLUMNS} FROM documents WHERE doc_row IN "
                                    f"({','.join('?' * len(rows[i:i + 500]))})",
                                    list(rows[i:i + 500]))}
        return [out[r] for r in rows]

    def text(self, doc_row: int) -> str | None:
        """Stored text of a document; None once compaction has erased it."""
        with self._lock:
            row = self._db.execute("SELECT text FROM documents WHERE doc_row=?",
                                   (doc_row,)).fetchone()
        return None if row is None else row[0]

    def texts(self, start_row: int, batch: int = 1000,
              ) -> Iterator[tuple[int, str, str, int, str | None]]:
        """(doc_row, doc_id, state, block_start, text) of rows >= start_row, in row order, read in
        batches so memory stays bounded."""
        row = start_row
        while True:
            with self._lock:
                part = self._db.execute(
                    "SELECT doc_row, doc_id, state, block_start, text FROM documents "
                    "WHERE doc_row >= ? "
                    "ORDER BY doc_row LIMIT ?", (row, batch)).fetchall()
            if not part:
                return
            yield from part
            row = part[-1][0] + 1

    def query_doc_ids(self, where: str, args: Sequence[object]) -> list[str]:
        """doc_ids of live documents matching a SQL condition (built by the caller)."""
        with self._lock:
            return [r[0] for r in self._db.execute(
                f"SELECT doc_id FROM documents WHERE state='live' AND ({where}) "
                "ORDER BY doc_row", list(args))]

    def snapshot(self) -> TableSnapshot:
        """Read the whole table into columns (at load; later kept up to date in memory)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT doc_row, doc_id, license_class, source, state, entry_start, entry_end, "
                "block_start, block_end FROM documents ORDER BY doc_row").fetchall()
        if any(r[0] != i for i, r in enumerate(rows)):
            raise CorruptDatastoreError(f"{self.path}: document rows are not contiguous")
        return snapshot_of(
            [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
            np.array([r[4] == "removed" for r in rows], dtype=bool),
            np.array([r[5:9] for r in rows], dtype=np.int64).reshape(-1, 4))

    def mark_removed(self, doc_ids: Sequence[str], optout_id: str, receipt_row: tuple,  # type: ignore[type-arg]
                     ) -> None:
        """Tombstone documents and record the receipt, in one fsync'd transaction."""
        now = receipt_row[5]
        with self._transaction() as db:
            db.executemany("UPDATE documents SET state='removed', optout_id=?, removed_at=? "
                           "WHERE doc_id=? AND state='live'",
                           [(optout_id, now, d) for d in doc_ids])
            db.execute("INSERT INTO optouts (optout_id, selector, reason, doc_ids, "
                       "entries_removed, blocks_removed, effective_at) VALUES (?,?,?,?,?,?,?)",
                       receipt_row)

    def optout_rows(self, optout_id: str | None = None) -> list[tuple]:  # type: ignore[type-arg]
        with self._lock:
            sql = ("SELECT optout_id, selector, reason, doc_ids, entries_removed, "
                   "blocks_removed, effective_at, purged_at FROM optouts")
            if optout_id is None:
                return self._db.execute(sql + " ORDER BY effective_at").fetchall()
            return self._db.execute(sql + " WHERE optout_id=?", (optout_id,)).fetchall()

    def purge(self, now: float) -> list[int]:
        """Erase the text of removed documents, stamp their receipts, and vacuum so no
        freed page keeps the text. Returns the rows purged by this call."""
        with self._transaction() as db:
            rows = [r[0] for r in db.execute(
                "SELECT doc_row FROM documents WHERE state='removed' AND text IS NOT NULL")]
            db.execute("UPDATE documents SET text=NULL WHERE state='removed'")
            db.execute("UPDATE optouts SET purged_at=? WHERE purged_at IS NULL", (now,))
        with self._lock:
            # VACUUM rewrites the file without free pages; the checkpoint empties the WAL.
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return rows

    def rows_to_purge(self) -> list[int]:
        """Rows of removed documents whose data compaction has not yet erased."""
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT doc_row FROM documents WHERE state='removed' AND text IS NOT NULL "
                "ORDER BY doc_row")]

    def check_integrity(self) -> None:
        with self._lock:
            result = self._db.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise CorruptDatastoreError(f"{self.path}: integrity check failed: {result}")


def snapshot_of(doc_ids: Sequence[str], classes: Sequence[str], sources: Sequence[str],
                removed: np.ndarray, ranges: np.ndarray) -> TableSnapshot:
    """Columns from parallel lists; `ranges` is (n, 4) int64 [entry_start, entry_end,
    block_start, block_end]."""
    code = {c.value: i for i, c in enumerate(CLASS_CODES)}
    names = tuple(sorted(set(sources)))
    source_index = {s: i for i, s in enumerate(names)}
    return TableSnapshot(
        doc_ids=tuple(doc_ids),
        entry_start=ranges[:, 0].copy(), entry_end=ranges[:, 1].copy(),
        block_start=ranges[:, 2].copy(), block_end=ranges[:, 3].copy(),
        class_code=np.array([code[c] for c in classes], dtype=np.int8),
        source_code=np.array([source_index[s] for s in sources], dtype=np.int32),
        sources=names, removed=removed, row_of={d: i for i, d in enumerate(doc_ids)},
    )

