"""Opt-out: selectors, receipts and compaction.

Lifecycle: a selector (doc ids, a source, or a url prefix) is validated and resolved to
live documents; their tombstones and the receipt are written to the document table in
one fsync'd transaction; the caller then swaps its in-memory filter and hands back the
`Receipt`. Compaction later erases the removed documents' vectors, key rows, blocks
and stored text, and stamps `purged_at` on every receipt it completed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from datastore.errors import InvalidSelectorError, NotFoundError
from datastore.filter import merge_ranges
from datastore.table import DocumentTable, TableSnapshot


@dataclass(frozen=True)
class OptOutSelector:
    """Exactly one of: doc_ids (non-empty), source, url_prefix."""

    doc_ids: tuple[str, ...] = ()
    source: str | None = None
    url_prefix: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        given = [n for n, v in (("doc_ids", self.doc_ids), ("source", self.source),
                                ("url_prefix", self.url_prefix)) if v]
        if len(given) != 1:
            raise InvalidSelectorError(
                "an opt-out names exactly one of doc_ids, source, url_prefix; got "
                f"{', '.join(given) or 'none'}")
        if isinstance(self.doc_ids, str):
            raise InvalidSelectorError("doc_ids must be a list of ids, not one string")
        bad = [d for d in self.doc_ids if not isinstance(d, str) or not d.strip()]
        if bad:
            raise InvalidSelectorError(f"doc_ids holds invalid ids: {bad[:5]!r}")
        for name in ("source", "url_prefix"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidSelectorError(f"{name} must be a non-empty string")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OptOutSelector:
        """From the admin request body {"doc_ids": [...]} | {"source"} | {"url_prefix"}."""
        unknown = set(data) - {"doc_ids", "source", "url_prefix", "reason"}
        if unknown:
            raise InvalidSelectorError(f"unknown opt-out fields: {sorted(unknown)}")
        ids = data.get("doc_ids") or ()
        if isinstance(ids, str):
            raise InvalidSelectorError("doc_ids must be a list of ids, not one string")
        return cls(tuple(ids), data.get("source"), data.get("url_prefix"), data.get("reason"))

    def to_json(self) -> dict[str, Any]:
        if self.doc_ids:
            return {"doc_ids": list(self.doc_ids)}
        return {"source": self.source} if self.source else {"url_prefix": self.url_prefix}


@dataclass(frozen=True)
class Receipt:
    """The acknowledgement of one opt-out. doc_ids are the documents this request
    removed (ids it named that were already removed are not repeated)."""

    optout_id: str
    doc_ids: tuple[str, ...]
    entries_removed: int
    blocks_removed: int
    effective_at: float  # unix seconds at which the filter excluded them
    selector: dict[str, Any]
    reason: str | None = None
    purged_at: float | None = None

    def __post_init__(self) -> None:
        if self.entries_removed < 0 or self.blocks_removed < 0:
            raise ValueError("entries_removed and blocks_removed must be >= 0")

    def to_json(self) -> dict[str, Any]:
        return {"optout_id": self.optout_id, "doc_ids": list(self.doc_ids),
                "entries_removed": self.entries_removed, "blocks_removed": self.blocks_removed,
                "effective_at": self.effective_at, "purged_at": self.purged_at,
                "selector": self.selector, "reason": self.reason}

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Receipt:
        """From a row of the `optouts` table."""
        return cls(row[0], tuple(json.loads(row[3])), row[4], row[5], row[6],
                   json.loads(row[1]), row[2], row[7])


def resolve(selector: OptOutSelector, table: DocumentTable) -> list[str]:
    """Live doc ids the selector names. Unknown doc ids are a NotFoundError naming them;
    ids already removed are skipped (opt-out is idempotent)."""
    if selector.doc_ids:
        ids = list(dict.fromkeys(selector.doc_ids))
        known = set(table.existing(ids))
        missing = [d for d in ids if d not in known]
        if missing:
            raise NotFoundError(f"no such documents in the datastore: {missing[:10]}")
        live = set(table.existing(ids, live_only=True))
        return [d for d in ids if d in live]
    return table.live_doc_ids(source=selector.source, url_prefix=selector.url_prefix)


def removal_counts(snapshot: TableSnapshot, rows: np.ndarray) -> tuple[int, int]:
    """(entries, blocks) held by the given document rows."""
    entries = int((snapshot.entry_end[rows] - snapshot.entry_start[rows]).sum())
    blocks = int((snapshot.block_end[rows] - snapshot.block_start[rows]).sum())
    return entries, blocks


def record_optout(selector: OptOutSelector, table: DocumentTable,
                  snapshot: TableSnapshot) -> tuple[Receipt, np.ndarray]:
    """Resolve, tombstone and record in one transaction. Returns the receipt and the
    rows removed, which the caller marks in its in-memory snapshot."""
    doc_ids = resolve(selector, table)
    rows = np.array([snapshot.row_of[d] for d in doc_ids], dtype=np.int64)
    entries, blocks = removal_counts(snapshot, rows)
    receipt = Receipt(f"optout-{uuid.uuid4().hex[:16]}", tuple(doc_ids), entries, blocks,
                      time.time(), selector.to_json(), selector.reason)
    table.mark_removed(doc_ids, receipt.optout_id, (
        receipt.optout_id, json.dumps(receipt.selector, sort_keys=True), receipt.reason,
        json.dumps(list(doc_ids)), entries, blocks, receipt.effective_at))
    return receipt, rows


def purge_ranges(snapshot: TableSnapshot, rows: Sequence[int],
                 ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Entry ranges (merged, sorted) and block ids of the rows compaction erases."""
    r = np.asarray(rows, dtype=np.int64)
    starts, ends = merge_ranges(snapshot.entry_start[r], snapshot.entry_end[r])
    block_ids = [b for i in r.tolist()
                 for b in range(int(snapshot.block_start[i]), int(snapshot.block_end[i]))]
    return starts, ends, block_ids
