"""Opt-out: selectors, receipts and compaction.

Lifecycle: a selector (doc ids, a source, or a url prefix) is validated; the live
documents it names are found and tombstoned, and the receipt written, in one fsync'd
transaction of the document table (so two replicas opting out at once never both list
a document); the caller then swaps its in-memory filter and hands back the
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
from datastore.table.base import DocumentTable
from datastore.table.log import LogHead
from datastore.table.records import TableSnapshot


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
        object.__setattr__(self, "doc_ids", tuple(dict.fromkeys(self.doc_ids)))  # once each
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
    log_index: int | None = None  # the opt-out's leaf in the transparency log

    def __post_init__(self) -> None:
        if self.entries_removed < 0 or self.blocks_removed < 0:
            raise ValueError("entries_removed and blocks_removed must be >= 0")

    def to_json(self) -> dict[str, Any]:
        return {"optout_id": self.optout_id, "doc_ids": list(self.doc_ids),
                "entries_removed": self.entries_removed, "blocks_removed": self.blocks_removed,
                "effective_at": self.effective_at, "purged_at": self.purged_at,
                "selector": self.selector, "reason": self.reason, "log_index": self.log_index}

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Receipt:
        """From a row of the `optouts` table."""
        return cls(row[0], tuple(json.loads(row[3])), row[4], row[5], row[6],
                   json.loads(row[1]), row[2], row[7], row[8])


def check_known(selector: OptOutSelector, table: DocumentTable) -> None:
    """Unknown doc ids are a NotFoundError naming them (ids already removed are fine:
    opt-out is idempotent)."""
    ids = list(selector.doc_ids)
    known = set(table.existing(ids))
    missing = [d for d in ids if d not in known]
    if missing:
        raise NotFoundError(f"no such documents in the datastore: {missing[:10]}")


def record_optout(selector: OptOutSelector, table: DocumentTable, track_pending: bool = False,
                  ) -> tuple[Receipt, np.ndarray, int, LogHead]:
    """Find, tombstone and record in one transaction (DocumentTable.remove, its log leaf
    included). Returns the receipt, the rows removed (which the caller marks in its
    in-memory snapshot), the change sequence of the write and the log's head after it."""
    check_known(selector, table)
    optout_id, now = f"optout-{uuid.uuid4().hex[:16]}", time.time()
    selector_json = selector.to_json()
    removed, seq, index, head = table.remove(
        (selector.doc_ids, selector.source, selector.url_prefix),
        (optout_id, json.dumps(selector_json, sort_keys=True), selector.reason, now),
        track_pending)
    receipt = Receipt(optout_id, tuple(r[1] for r in removed),
                      sum(r[3] - r[2] for r in removed), sum(r[5] - r[4] for r in removed),
                      now, selector_json, selector.reason, log_index=index)
    return receipt, np.array([r[0] for r in removed], dtype=np.int64), seq, head


def purge_ranges(snapshot: TableSnapshot, rows: Sequence[int],
                 ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Entry ranges (merged, sorted) and block ids of the rows compaction erases."""
    r = np.asarray(rows, dtype=np.int64)
    starts, ends = merge_ranges(snapshot.entry_start[r], snapshot.entry_end[r])
    block_ids = [b for i in r.tolist()
                 for b in range(int(snapshot.block_start[i]), int(snapshot.block_end[i]))]
    return starts, ends, block_ids
