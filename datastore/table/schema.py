"""The document table's SQL schema, written once in the dialect SQLite and PostgreSQL share.

Tables: `documents` (one row per document: licence class, source, url, state, its kNN
entry and RIC block id ranges, its text until compaction erases it), `optouts` (the
receipts), `changes` (the change sequence every write bumps), and for a kNN index that
replicas share, `index_state`, `pending_deletes` and `block_spans` (datastore.table.base
says what each holds). Statements use `?` placeholders; PostgreSQL's `%s` is swapped in
by datastore.table.postgres.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# The schema in both dialects: {pk} is the row key, {int} an id or count (entry ids pass
# 2**31 in a large datastore), {real} unix seconds, {url_ops} what lets LIKE 'prefix%'
# use the url index.
SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_row {pk},
    doc_id TEXT NOT NULL UNIQUE,
    license TEXT NOT NULL,
    license_class TEXT NOT NULL,
    source TEXT NOT NULL,
    url TEXT,
    added_at {real} NOT NULL,
    state TEXT NOT NULL DEFAULT 'live',
    entry_start {int} NOT NULL,
    entry_end {int} NOT NULL,
    block_start {int} NOT NULL,
    block_end {int} NOT NULL,
    text TEXT,
    optout_id TEXT,
    removed_at {real}
);
CREATE INDEX IF NOT EXISTS documents_source ON documents(source);
CREATE INDEX IF NOT EXISTS documents_url ON documents(url{url_ops});
CREATE TABLE IF NOT EXISTS optouts (
    optout_id TEXT PRIMARY KEY,
    selector TEXT NOT NULL,
    reason TEXT,
    doc_ids TEXT NOT NULL,
    entries_removed {int} NOT NULL,
    blocks_removed {int} NOT NULL,
    effective_at {real} NOT NULL,
    purged_at {real}
);
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    seq {int} NOT NULL
);
INSERT INTO changes (id, seq) VALUES (0, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS index_state (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    published {int} NOT NULL,
    fence {int} NOT NULL,
    text_published {int} NOT NULL
);
INSERT INTO index_state (id, published, fence, text_published) VALUES (0, 0, 0, 0)
    ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS pending_deletes (
    doc_row {int} PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS block_spans (
    block_id {pk},
    doc_id TEXT NOT NULL,
    char_start {int} NOT NULL,
    char_end {int} NOT NULL
);
"""
BUMP = "UPDATE changes SET seq = seq + 1 WHERE id = 0 RETURNING seq"

# (doc_ids, source, url_prefix) of an opt-out, exactly one given
Selection = tuple[Sequence[str], str | None, str | None]
# (optout_id, selector json, reason, effective_at) of a receipt
ReceiptFields = tuple[str, str, str | None, float]
# (doc_row, doc_id, entry_start, entry_end, block_start, block_end) of a removed document
RemovedRow = tuple[int, str, int, int, int, int]

# Runs one statement in a write transaction: (sql, args, many) -> rows it returned.
# With many=True, args is a sequence of argument tuples and nothing is returned.
Run = Callable[..., list[tuple[Any, ...]]]

DOC_COLUMNS = ("doc_row, doc_id, license, license_class, source, url, added_at, state, "
                "entry_start, entry_end, block_start, block_end")
