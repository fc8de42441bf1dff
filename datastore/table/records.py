"""The document table in memory: one row as a record, the whole table as columns.

`DocumentRecord` is one row of the `documents` table (without its text); `TableSnapshot`
is the columnar copy of the whole table that the entry filter is computed from
(datastore.filter), rebuilt from the table at load and kept up to date in memory by
copy-on-write. Licence classes are stored in the snapshot as int8 codes, by position in
`CLASS_CODES`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from datastore.document import Document, LicenseClass
from datastore.errors import NotFoundError

CLASS_CODES: tuple[LicenseClass, ...] = tuple(LicenseClass)  # class -> int8 code by position


@dataclass(frozen=True)
class DocumentRef:
    """What attribution shows of a document besides its text: its id, source and class."""

    doc_id: str
    source: str
    license_class: LicenseClass


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

    def prefix(self, entries: int) -> TableSnapshot:
        """The documents whose entries all lie below `entries` (rows are in entry order),
        for a replica whose kNN entries stop there; self when all of them do."""
        n = int(np.searchsorted(self.entry_end, entries, side="right"))
        if n == len(self.doc_ids):
            return self
        return snapshot_of(self.doc_ids[:n], [CLASS_CODES[c].value for c in self.class_code[:n]],
                           [self.sources[c] for c in self.source_code[:n]],
                           self.removed[:n].copy(),
                           np.stack([self.entry_start[:n], self.entry_end[:n],
                                     self.block_start[:n], self.block_end[:n]], axis=1))

    def rows_of_entries(self, entry_ids: np.ndarray) -> np.ndarray:
        """Document row of each entry id (any shape, int64); -1 where the id is -1."""
        rows = np.searchsorted(self.entry_end, entry_ids, side="right")
        return np.where(entry_ids < 0, -1, rows)

    def document(self, doc_id: str) -> DocumentRef:
        """Source and licence class of a document the snapshot holds (NotFoundError
        otherwise)."""
        row = self.row_of.get(doc_id)
        if row is None:
            raise NotFoundError(f"no document {doc_id!r} in the datastore")
        return DocumentRef(doc_id, self.sources[self.source_code[row]],
                           CLASS_CODES[int(self.class_code[row])])


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
