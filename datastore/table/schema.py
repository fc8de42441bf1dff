"""The document table's SQL schema, written once in the dialect SQLite and PostgreSQL share.

Tables: `documents` (one row per document: licence class, source, url, state, its kNN
entry and RIC block id ranges, its text until compaction erases it, and the SHA-256 of
that text), `optouts` (the receipts), `changes` (the change sequence every write bumps),
for a kNN index that replicas share `index_state`, `pending_deletes` and `block_spans`
(datastore.table.base says what each holds), the transparency log (`log_state`,
`log_leaves`, `log_hashes`: datastore.table.log) and the admin audit log (`audit`).
Statements use `?` placeholders; PostgreSQL's `%s` is swapped in by
datastore.table.postgres.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dialect:
    """What the two databases spell differently: the row key, an id or count (entry ids
    pass 2**31 in a large datastore), unix seconds, bytes, an auto-numbered key, and what
    lets LIKE 'prefix%' use the url index."""

    pk: str
    int: str
    real: str
    blob: str
    serial: str
    url_ops: str = ""


SQLITE = Dialect("INTEGER PRIMARY KEY", "INTEGER", "REAL", "BLOB",
                 "INTEGER PRIMARY KEY AUTOINCREMENT")
POSTGRES = Dialect("BIGINT PRIMARY KEY", "BIGINT", "DOUBLE PRECISION", "BYTEA",
                   "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", " text_pattern_ops")

# columns later versions added to tables an older datastore already has: (table, column,
# type); an implementation adds each where it is missing
ADDED_COLUMNS = (("documents", "text_sha256", "TEXT"), ("optouts", "log_index", "{int}"))

_SCHEMA = """
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
    removed_at {real},
    text_sha256 TEXT
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
    purged_at {real},
    log_index {int}
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
CREATE TABLE IF NOT EXISTS log_state (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    size {int} NOT NULL,
    log_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS log_leaves (
    idx {pk},
    leaf {blob} NOT NULL
);
CREATE TABLE IF NOT EXISTS log_hashes (
    node {pk},
    hash {blob} NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id {serial},
    time {real} NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""


def statements(dialect: Dialect) -> str:
    """The schema's statements in one dialect."""
    return _SCHEMA.format(pk=dialect.pk, int=dialect.int, real=dialect.real,
                          blob=dialect.blob, serial=dialect.serial, url_ops=dialect.url_ops)
BUMP = "UPDATE changes SET seq = seq + 1 WHERE id = 0 RETURNING seq"

# (doc_ids, source, url_prefix) of an opt-out, exactly one given
Selection = tuple[Sequence[str], str | None, str | None]
# (optout_id, selector json, reason, effective_at) of a receipt
ReceiptFields = tuple[str, str, str | None, float]
# (doc_row, doc_id, entry_start, entry_end, block_start, block_end, license_class,
# text_sha256) of a removed document
RemovedRow = tuple[int, str, int, int, int, int, str, str]

# Runs one statement in a write transaction: (sql, args, many) -> rows it returned.
# With many=True, args is a sequence of argument tuples and nothing is returned.
Run = Callable[..., list[tuple[Any, ...]]]

DOC_COLUMNS = ("doc_row, doc_id, license, license_class, source, url, added_at, state, "
                "entry_start, entry_end, block_start, block_end")
