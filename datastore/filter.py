"""The entry filter: which documents a search may draw on, computed in ONE place.

excluded = removed documents + documents whose licence class the request's policy does
not allow + documents outside the caller's access scope. `compute_filter` is the only
function that decides this; every backend only *applies* the resulting `EntryFilter`
(a faiss IDSelectorBitmap, a Milvus expression, a BM25 `allow(doc_id)` callback, a mask
in exact search).

A document's kNN entries are one contiguous id range, so the excluded entries are a
short sorted list of disjoint ranges, one per run of excluded documents; the bitmap
over all entry ids is derived from it lazily, once per filter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from datastore.document import LicenseClass
from datastore.errors import InvalidInputError
from datastore.table.records import CLASS_CODES, TableSnapshot


@dataclass(frozen=True)
class AccessScope:
    """What a caller (an API key) may draw on; None means no restriction on that axis."""

    sources: frozenset[str] | None = None
    license_classes: frozenset[LicenseClass] | None = None

    def __post_init__(self) -> None:
        if self.sources is not None and not all(isinstance(s, str) for s in self.sources):
            raise InvalidInputError("sources must be strings")
        if self.license_classes is not None and not all(
                isinstance(c, LicenseClass) for c in self.license_classes):
            raise InvalidInputError("license_classes must be LicenseClass values")


@dataclass(frozen=True)
class SearchFilter:
    """A request's filter: its licence policy (None = all classes) and access scope."""

    policy: frozenset[LicenseClass] | None = None
    scope: AccessScope = field(default_factory=AccessScope)


def _class_mask(codes: np.ndarray, allowed: Iterable[LicenseClass] | None) -> np.ndarray:
    """(n,) bool: True where the class is allowed (all True when `allowed` is None)."""
    if allowed is None:
        return np.ones(len(codes), dtype=bool)
    ok = np.array([c in set(allowed) for c in CLASS_CODES], dtype=bool)
    return ok[codes]


def excluded_rows(docs: TableSnapshot, request: SearchFilter) -> np.ndarray:
    """THE policy: (n_docs,) bool, True for every document this request may not see."""
    allowed = _class_mask(docs.class_code, request.policy)
    allowed &= _class_mask(docs.class_code, request.scope.license_classes)
    if request.scope.sources is not None:
        ok_sources = np.array([s in request.scope.sources for s in docs.sources], dtype=bool)
        allowed &= ok_sources[docs.source_code] if len(ok_sources) else False
    return docs.removed | ~allowed


def merge_ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (by start) half-open ranges -> disjoint ranges with empty ones dropped and
    touching ones joined. (r,) int64 each in and out."""
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if len(starts) == 0:
        return starts.astype(np.int64), ends.astype(np.int64)
    # a range opens a new run unless it starts where the running maximum end is
    run_end = np.maximum.accumulate(ends)
    new = np.ones(len(starts), dtype=bool)
    new[1:] = starts[1:] > run_end[:-1]
    group = np.cumsum(new) - 1
    out_ends = np.zeros(int(group[-1]) + 1, dtype=np.int64)
    np.maximum.at(out_ends, group, ends)
    return starts[new].astype(np.int64), out_ends


def range_bitmap(starts: np.ndarray, ends: np.ndarray, n: int, inside: bool) -> np.ndarray:
    """Packed bitmap over ids 0..n-1 in the layout of faiss.IDSelectorBitmap (bit i of
    byte i // 8, little-endian): set for ids in a range when `inside`, else for ids
    outside every range. Ranges are disjoint; (r,) int64 each. Returns (ceil(n/8),) uint8.
    """
    covered = np.zeros(n, dtype=bool)
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):  # r slices, not n adds
        covered[s:e] = True
    return np.packbits(covered if inside else ~covered, bitorder="little")


def _clear_bits(bitmap: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
    """Clear bits [starts[i], ends[i]) of a packed little-endian bitmap, in place."""
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if e <= s:
            continue
        lo, hi = s >> 3, (e - 1) >> 3  # first and last byte touched
        bits = np.unpackbits(bitmap[lo:hi + 1], bitorder="little")
        bits[s - 8 * lo:e - 8 * lo] = 0
        bitmap[lo:hi + 1] = np.packbits(bits, bitorder="little")


class EntryFilter:
    """Excluded documents and entry ranges for one request over one table snapshot."""

    def __init__(self, docs: TableSnapshot, excluded: np.ndarray) -> None:
        self.docs = docs
        self.excluded_docs = excluded  # (n_docs,) bool
        self.n_entries = docs.n_entries
        self.starts, self.ends = merge_ranges(docs.entry_start[excluded],
                                              docs.entry_end[excluded])

    @property
    def is_empty(self) -> bool:
        """True when no entry is excluded (backends then search without a selector)."""
        return len(self.starts) == 0

    @property
    def n_excluded_entries(self) -> int:
        return int((self.ends - self.starts).sum())

    def allows_doc(self, doc_id: str) -> bool:
        """For BM25 and n-gram search: may a hit from this document be returned?"""
        row = self.docs.row_of.get(doc_id)
        return row is not None and not bool(self.excluded_docs[row])

    def excluding(self, docs: TableSnapshot, rows: np.ndarray) -> EntryFilter:
        """This filter over `docs`, a snapshot that differs from ours only by more removed
        `rows`. Costs O(documents + bitmap bytes) rather than O(entries): the bitmap, if
        already built, is copied and the new ranges cleared."""
        assert docs.n_entries == self.n_entries, "derive filters only across opt-outs"
        excluded = self.excluded_docs.copy()
        excluded[rows] = True
        derived = EntryFilter(docs, excluded)
        if "allow_bitmap" in self.__dict__:  # built: patch a copy instead of rebuilding
            bitmap = self.allow_bitmap.copy()
            new = np.asarray(rows, dtype=np.int64)
            _clear_bits(bitmap, docs.entry_start[new], docs.entry_end[new])
            derived.__dict__["allow_bitmap"] = bitmap
        return derived

    def excludes(self, entry_ids: np.ndarray) -> np.ndarray:
        """Bool mask of the same shape: True where the entry id is excluded, is -1, or was
        added after the snapshot this filter was computed from."""
        ids = np.asarray(entry_ids, dtype=np.int64)
        outside = (ids < 0) | (ids >= self.n_entries)
        if self.is_empty:
            return outside
        i = np.searchsorted(self.starts, ids, side="right") - 1  # last range starting <= id
        return outside | ((i >= 0) & (ids < self.ends[np.maximum(i, 0)]))

    @cached_property
    def allow_bitmap(self) -> np.ndarray:
        """(ceil(n_entries / 8),) uint8, bit i set when entry i is allowed."""
        return range_bitmap(self.starts, self.ends, self.n_entries, inside=False)

    def faiss_selector(self) -> Any:
        """A faiss IDSelector admitting the allowed ids. The bitmap array is kept alive by
        this filter, which must outlive the search."""
        import faiss

        bitmap = self.allow_bitmap
        return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))  # n = bytes

    def milvus_expression(self, field: str = "id") -> str:
        """A Milvus boolean expression admitting the allowed ids of this snapshot. One
        clause per excluded range."""
        bound = f"{field} < {self.n_entries}"
        if self.is_empty:
            return bound
        parts = [f"({field} >= {s} and {field} < {e})" if e - s > 1 else f"{field} == {s}"
                 for s, e in zip(self.starts.tolist(), self.ends.tolist(), strict=True)]
        return f"{bound} and not (" + " or ".join(parts) + ")"


def compute_filter(docs: TableSnapshot, request: SearchFilter | None = None) -> EntryFilter:
    """The one place a request's filter is computed from the document table snapshot."""
    return EntryFilter(docs, excluded_rows(docs, request or SearchFilter()))
