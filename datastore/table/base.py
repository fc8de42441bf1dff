"""`DocumentTable`: the one interface to the document table, the single source of truth
for what a datastore holds.

Each row is one document: its licence class, source, url, state (`live` or `removed`),
its kNN entry id range `[entry_start, entry_end)`, its RIC block id range
`[block_start, block_end)` and its stored text (erased by compaction). Opt-out receipts
live in a second table, and a one-row third table holds the change sequence, which every
write (add, opt-out, compaction) bumps in its own transaction, so a reader can tell
cheaply whether the table changed since it last looked. For a kNN index shared by many
replicas (a Milvus server) two more tables record what the index holds: `index_state`
(entries [0, published) are in it, and `fence`, an index timestamp taken after the last
recorded index write, at which a search sees every one of them) and `pending_deletes`
(rows tombstoned whose index delete is not yet behind the fence). `block_spans` and
`index_state.text_published` let replicas refresh their BM25 and n-gram indexes with
documents another replica added: the RIC block spans of rows [0, text_published)
(spans need the tokenizer, which a serving replica's datastore does not hold).

Every query is written here once, over the schema of datastore.table.schema; an
implementation (datastore.table.sqlite, datastore.table.postgres) supplies the
connection, the transaction and the storage clean-up after a purge. A write returns only
once its transaction is committed and durable, so an acknowledged opt-out survives
`kill -9`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from datastore.document import LicenseClass
from datastore.errors import ConflictError, CorruptDatastoreError, NotFoundError
from datastore.table.history import TableHistory, leaf_documents
from datastore.table.log import LogHead, append, init_log
from datastore.table.records import DocumentRecord, TableSnapshot, snapshot_of
from datastore.table.schema import (
    ADDED_COLUMNS,
    BUMP,
    DOC_COLUMNS,
    Dialect,
    ReceiptFields,
    RemovedRow,
    Selection,
)
from datastore.table.shared_index import SharedIndexState
from datastore.tlog.leaf import (
    Action,
    Leaf,
    LeafDocument,
    format_time,
    selector_sha256,
    sha256_hex,
)


class DocumentTable(SharedIndexState, TableHistory):
    """The document table of one datastore, whichever database holds it.

    Implementations provide `_read`, `_transaction`, `_compact_storage`, `close`,
    `check_integrity` and `_columns` (datastore.table.core); every query is written once,
    here and in the two parts it is made of: the state of a shared kNN index
    (datastore.table.shared_index) and the history, the transparency log and the audit
    log (datastore.table.history).
    """

    # ---- after the schema: what older datastores lack ----------------------------------

    def _prepare(self, dialect: Dialect) -> None:
        """Add the columns and the log state an older table lacks, and start its log
        with what it already holds (`_backfill_log`)."""
        for table, column, kind in ADDED_COLUMNS:
            if column not in self._columns(table):
                with self._transaction() as run:
                    run(f"ALTER TABLE {table} ADD COLUMN {column} "
                        f"{kind.format(int=dialect.int)}")
        with self._transaction() as run:
            init_log(run)
        self._backfill_log()

    # ---- the interface -----------------------------------------------------------------

    def change_seq(self) -> int:
        """The change sequence: it grows with every committed write and never goes back,
        so a reader whose copy was made at sequence s must reload when this is > s."""
        return int(self._read("SELECT seq FROM changes WHERE id = 0")[0][0])

    def insert(self, records: Sequence[DocumentRecord], texts: Sequence[str]) -> None:
        """Insert documents and their `add` leaf in one transaction; an existing doc_id is
        a ConflictError."""
        hashes = [sha256_hex(t) for t in texts]
        rows = [(r.doc_row, r.doc_id, r.license, r.license_class.value, r.source, r.url,
                 r.added_at, r.state, r.entry_start, r.entry_end, r.block_start, r.block_end,
                 t, h) for r, t, h in zip(records, texts, hashes, strict=True)]
        leaf = Leaf(Action.ADD, format_time(time.time()), tuple(
            LeafDocument(sha256_hex(r.doc_id), h, r.license_class)
            for r, h in zip(records, hashes, strict=True)))
        try:
            with self._transaction() as run:
                run(f"INSERT INTO documents ({DOC_COLUMNS}, text, text_sha256) VALUES "
                    "(?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows, True)
                append(run, leaf)
                run(BUMP)
        except self._duplicate:
            taken = self.existing([r.doc_id for r in records])
            if not taken:  # the row numbers, not the ids: another writer added first
                raise ConflictError("another add took these document rows first; retry "
                                    "the add") from None
            raise ConflictError(f"document id already in the datastore: {taken[:5]}") from None

    def existing(self, doc_ids: Sequence[str], live_only: bool = False) -> list[str]:
        """The ids among `doc_ids` that the table holds (only live ones if `live_only`)."""
        state = " AND state='live'" if live_only else ""
        found: list[str] = []
        for i in range(0, len(doc_ids), 500):
            part = list(doc_ids[i:i + 500])
            marks = ",".join("?" * len(part))
            found += [r[0] for r in self._read(
                f"SELECT doc_id FROM documents WHERE doc_id IN ({marks}){state}", part)]
        return found

    def get(self, doc_id: str) -> DocumentRecord:
        rows = self._read(f"SELECT {DOC_COLUMNS} FROM documents WHERE doc_id=?", (doc_id,))
        if not rows:
            raise NotFoundError(f"no document {doc_id!r} in the datastore")
        return _record(rows[0])

    def records(self, rows: Sequence[int]) -> list[DocumentRecord]:
        """Records of the given doc rows, in the given order."""
        out = {r[0]: _record(r) for i in range(0, len(rows), 500) for r in self._read(
            f"SELECT {DOC_COLUMNS} FROM documents WHERE doc_row IN "
            f"({','.join('?' * len(rows[i:i + 500]))})", list(rows[i:i + 500]))}
        return [out[r] for r in rows]

    def text(self, doc_row: int) -> str | None:
        """Stored text of a document; None once compaction has erased it."""
        rows = self._read("SELECT text FROM documents WHERE doc_row=?", (doc_row,))
        return rows[0][0] if rows else None

    def texts(self, start_row: int, batch: int = 1000,
              ) -> Iterator[tuple[int, str, str, int, str | None]]:
        """(doc_row, doc_id, state, block_start, text) of rows >= start_row, in row order,
        read in batches so memory stays bounded."""
        row = start_row
        while True:
            part = self._read("SELECT doc_row, doc_id, state, block_start, text FROM "
                              "documents WHERE doc_row >= ? ORDER BY doc_row LIMIT ?",
                              (row, batch))
            if not part:
                return
            yield from part  # type: ignore[misc]
            row = part[-1][0] + 1

    def live_doc_ids(self, source: str | None = None, url_prefix: str | None = None,
                     ) -> list[str]:
        """doc_ids of the live documents of `source`, or whose url starts with
        `url_prefix` (exactly one is given), in row order."""
        where, args = _selection(source=source, url_prefix=url_prefix)
        return [r[0] for r in self._read(
            f"SELECT doc_id FROM documents WHERE state='live' AND {where} ORDER BY doc_row",
            args)]

    def snapshot(self) -> TableSnapshot:
        """Read the whole table into columns (at load; later kept up to date in memory)."""
        rows = self._read(
            "SELECT doc_row, doc_id, license_class, source, state, entry_start, entry_end, "
            "block_start, block_end FROM documents ORDER BY doc_row")
        if any(r[0] != i for i, r in enumerate(rows)):
            raise CorruptDatastoreError(f"{self.location}: document rows are not contiguous")
        return snapshot_of(
            [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
            np.array([r[4] == "removed" for r in rows], dtype=bool),
            np.array([r[5:9] for r in rows], dtype=np.int64).reshape(-1, 4))

    def remove(self, selector: Selection, receipt: ReceiptFields, track_pending: bool = False,
               ) -> tuple[list[RemovedRow], int, int, LogHead]:
        """Tombstone the live documents the selector names and record the receipt, in one
        durable transaction. The documents are found by the UPDATE itself (RETURNING), so
        of two concurrent opt-outs each document is in exactly one receipt.

        selector: (doc_ids, source, url_prefix), exactly one given. receipt: (optout_id,
        selector json, reason, effective_at); its doc_ids and counts are filled from the
        rows removed. track_pending: also list the rows in `pending_deletes` (a shared
        index that still holds their vectors). The `optout` leaf names the selector's kind
        and the hash of its value as the receipt records it. Returns the rows removed
        (doc_row, doc_id, entry_start, entry_end, block_start, block_end, license_class,
        text_sha256), in the selector's order for doc_ids, else in row order, the change
        sequence of this write, the leaf's index and the log's head after it.
        """
        optout_id, selector_json, reason, now = receipt
        doc_ids, source, url_prefix = selector
        parts = [_selection(doc_ids=doc_ids[i:i + 500]) for i in range(0, len(doc_ids), 500)] \
            if doc_ids else [_selection(source=source, url_prefix=url_prefix)]
        with self._transaction() as run:
            found: list[tuple[Any, ...]] = []
            for where, args in parts:
                found += run("UPDATE documents SET state='removed', optout_id=?, removed_at=? "
                             f"WHERE state='live' AND {where} RETURNING doc_row, doc_id, "
                             "entry_start, entry_end, block_start, block_end, license_class, "
                             "text_sha256", [optout_id, now, *args])
            order = {d: i for i, d in enumerate(doc_ids)}
            found.sort(key=(lambda r: order[r[1]]) if doc_ids else (lambda r: r[0]))
            entries = sum(r[3] - r[2] for r in found)
            blocks = sum(r[5] - r[4] for r in found)
            index, head = append(run, Leaf(
                Action.OPTOUT, format_time(now), leaf_documents(found, 1, 6, 7),
                _leaf_selector(selector)))
            run("INSERT INTO optouts (optout_id, selector, reason, doc_ids, entries_removed, "
                "blocks_removed, effective_at, log_index) VALUES (?,?,?,?,?,?,?,?)",
                (optout_id, selector_json, reason, json.dumps([r[1] for r in found]),
                 entries, blocks, now, index))
            if track_pending and found:
                run("INSERT INTO pending_deletes (doc_row) VALUES (?)",
                    [(r[0],) for r in found], True)
            seq = int(run(BUMP)[0][0])
        return [tuple(r) for r in found], seq, index, head  # type: ignore[misc]

    def optout_rows(self, optout_id: str | None = None) -> list[tuple[Any, ...]]:
        sql = ("SELECT optout_id, selector, reason, doc_ids, entries_removed, "
               "blocks_removed, effective_at, purged_at, log_index FROM optouts")
        if optout_id is None:
            return self._read(sql + " ORDER BY effective_at")
        return self._read(sql + " WHERE optout_id=?", (optout_id,))

    def purge(self, rows: Sequence[int], now: float) -> list[int]:
        """Erase the text of the removed documents among `rows` (those whose vectors and
        blocks the caller has erased), stamp the receipts all of whose documents are now
        erased, and compact the storage so no freed page keeps the text. An opt-out
        another replica commits meanwhile keeps its text and an open receipt for the next
        compaction. The `purge` leaf names the documents erased. Returns the rows purged by
        this call."""
        ids = [int(r) for r in rows]
        with self._transaction() as run:
            purged: list[tuple[Any, ...]] = []
            for at in range(0, len(ids), 500):  # bound the statement's parameters
                part = ids[at:at + 500]
                marks = ",".join("?" * len(part))
                purged += run(
                    f"UPDATE documents SET text=NULL WHERE doc_row IN ({marks}) AND "
                    "state='removed' AND text IS NOT NULL RETURNING doc_row, doc_id, "
                    "license_class, text_sha256", part)
            run("UPDATE optouts SET purged_at=? WHERE purged_at IS NULL AND NOT EXISTS "
                "(SELECT 1 FROM documents d WHERE d.optout_id = optouts.optout_id AND "
                "d.text IS NOT NULL)", (now,))
            if purged:
                purged.sort(key=lambda r: r[0])
                append(run, Leaf(Action.PURGE, format_time(now),
                                 leaf_documents(purged, 1, 2, 3)))
            run(BUMP)
        self._compact_storage()
        return [int(r[0]) for r in purged]

    def rows_to_purge(self) -> list[int]:
        """Rows of removed documents whose data compaction has not yet erased."""
        return [r[0] for r in self._read(
            "SELECT doc_row FROM documents WHERE state='removed' AND text IS NOT NULL "
            "ORDER BY doc_row")]


def _selection(doc_ids: Sequence[str] = (), source: str | None = None,
               url_prefix: str | None = None) -> tuple[str, list[object]]:
    """A WHERE clause (and its arguments) naming documents by id, source or url prefix."""
    if doc_ids:
        return f"doc_id IN ({','.join('?' * len(doc_ids))})", list(doc_ids)
    if source is not None:
        return "source = ?", [source]
    prefix = str(url_prefix)
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    # LIKE finds candidates with the index; it ignores case in SQLite, so the substr
    # comparison keeps the match exact
    return ("url LIKE ? ESCAPE '\\' AND substr(url, 1, ?) = ?",
            [escaped + "%", len(prefix), prefix])


def _leaf_selector(selector: Selection) -> tuple[str, str]:
    """(kind, SHA-256 of the value) of an opt-out's selector, for its leaf."""
    doc_ids, source, url_prefix = selector
    kind, value = ("doc_ids", list(doc_ids)) if doc_ids else (
        ("source", str(source)) if source is not None else ("url_prefix", str(url_prefix)))
    return kind, selector_sha256(kind, value)


def _record(row: tuple[Any, ...]) -> DocumentRecord:
    return DocumentRecord(row[0], row[1], row[2], LicenseClass(row[3]), *row[4:])
