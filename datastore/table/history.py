"""The history kept in the document table: the transparency log (datastore.table.log),
started at first open with what an older table already holds, leaves for changes made
outside the table, and the admin audit log."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from datastore.document import LicenseClass
from datastore.table.core import TableCore
from datastore.table.log import LogHead, TableLog, append
from datastore.table.schema import BUMP
from datastore.tlog.leaf import (
    Action,
    Leaf,
    LeafDocument,
    format_time,
    selector_sha256,
    sha256_hex,
)

# the text hash of a document whose text was erased before the log began
UNKNOWN_TEXT = "0" * 64


class TableHistory(TableCore):
    """The logs in the table (a part of `DocumentTable`)."""

    @property
    def log(self) -> TableLog:
        """The transparency log kept in this table (datastore.table.log)."""
        return TableLog(self._read)

    def _backfill_log(self) -> None:
        """A table written before the log existed gets, as its first leaves, what it holds:
        one `add` leaf for every document, an `optout` leaf per receipt (at its time), and
        a `purge` leaf for the documents already erased (whose text hashes are unknown)."""
        with self._transaction() as run:
            if run("SELECT size FROM log_state WHERE id = 0")[0][0] or \
                    not run("SELECT 1 FROM documents LIMIT 1"):
                return
            rows = run("SELECT doc_row, doc_id, license_class, text_sha256, optout_id, "
                       "text IS NULL, text FROM documents ORDER BY doc_row")
            rows = [(r[0], r[1], r[2], r[3] or (None if r[6] is None else sha256_hex(r[6])),
                     r[4], bool(r[5])) for r in rows]
            run("UPDATE documents SET text_sha256 = ? WHERE doc_row = ?",
                [(r[3], r[0]) for r in rows if r[3] is not None], True)
            now = time.time()
            append(run, Leaf(Action.ADD, format_time(now), leaf_documents(rows, 1, 2, 3)))
            for optout_id, selector, at in run("SELECT optout_id, selector, effective_at "
                                               "FROM optouts ORDER BY effective_at"):
                ((kind, value),) = json.loads(selector).items()
                mine = [r for r in rows if r[4] == optout_id]
                index = append(run, Leaf(Action.OPTOUT, format_time(at),
                                         leaf_documents(mine, 1, 2, 3),
                                         (kind, selector_sha256(kind, value))))[0]
                run("UPDATE optouts SET log_index = ? WHERE optout_id = ?", (index, optout_id))
            erased = [r for r in rows if r[5]]
            if erased:
                append(run, Leaf(Action.PURGE, format_time(now),
                                 leaf_documents(erased, 1, 2, 3)))
            run(BUMP)

    def record(self, leaf: Leaf) -> LogHead:
        """Append a leaf that records a change outside this table (a datastore activated
        or reindexed) in a transaction of its own; returns the log's head after it."""
        with self._transaction() as run:
            head = append(run, leaf)[1]
            run(BUMP)
        return head

    def record_audit(self, who: str, action: str, outcome: str, detail: dict[str, Any],
                     now: float) -> None:
        """One line of the admin audit log, durable before the call returns."""
        with self._transaction() as run:
            run("INSERT INTO audit (time, who, action, outcome, detail) VALUES (?,?,?,?,?)",
                (now, who, action, outcome, json.dumps(detail, default=str, sort_keys=True)))

    def audit_entries(self) -> list[dict[str, Any]]:
        """The audit log, oldest first."""
        return [{"time": t, "who": w, "action": a, "outcome": o, **json.loads(d)}
                for t, w, a, o, d in self._read(
                    "SELECT time, who, action, outcome, detail FROM audit ORDER BY id")]


def leaf_documents(rows: Sequence[Sequence[Any]], doc_id: int, license_class: int,
                    text_sha256: int) -> tuple[LeafDocument, ...]:
    """The leaf's view of documents: the hashes of their ids and texts, their class (the
    columns of `rows` named by position)."""
    return tuple(LeafDocument(sha256_hex(r[doc_id]), r[text_sha256] or UNKNOWN_TEXT,
                              LicenseClass(r[license_class])) for r in rows)
