"""Search of a datastore: kNN, pointers, BM25 and verbatim spans, all through the one
entry filter over one consistent view, and what attribution reads of an entry.

Every search first catches up with the shared table (`Replica.sync`), then runs under the
request's filter over the current view; if an opt-out swapped the snapshot meanwhile it
runs again, so no result outlives an acknowledged opt-out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from datastore import pointers
from datastore.bm25.base import BM25Hit
from datastore.document import LicenseClass
from datastore.errors import InvalidInputError, NotFoundError
from datastore.filter import EntryFilter, SearchFilter
from datastore.ngram import SpanMatch
from datastore.store.replica import Replica
from datastore.store.state import StoreState
from datastore.store.view import View
from datastore.table.records import CLASS_CODES

_T = TypeVar("_T")
SNIPPET_CHARS = 80  # characters of context on each side of an entry's position


@dataclass(frozen=True)
class EntryInfo:
    """Attribution of one kNN entry: where its key came from."""

    entry_id: int
    doc_id: str
    source: str
    license_class: LicenseClass
    position: int  # token position in the document of the key (the value is t+1)
    char_offset: int  # where the next token starts in the document text
    snippet: str | None  # text around the position; None once compaction erased it


class Searcher:
    """The search side of a datastore. `on_knn_search`, when set, receives the seconds of
    every kNN index search (the server's metrics)."""

    def __init__(self, state: StoreState, replica: Replica,
                 on_knn_search: Callable[[float], None] | None = None) -> None:
        self.state = state
        self.replica = replica
        self.on_knn_search = on_knn_search

    def entry_filter(self, request: SearchFilter | None = None) -> EntryFilter:
        """The filter of `request` over the current state of the shared table."""
        self.replica.sync()
        return self.state.views.filter_of(self.state.views.snapshot, request)

    def consistent(self, request: SearchFilter | None,
                   search: Callable[[EntryFilter, View], _T]) -> _T:
        """Catch up with the shared table, then run `search` under the request's current
        filter; run it again if an opt-out swapped the snapshot meanwhile."""
        self.replica.sync()
        views = self.state.views
        while True:
            view = views.current
            result = search(views.filter_of(view.snapshot, request), view)
            if views.snapshot is view.snapshot:
                return result

    def _index_search(self, q: np.ndarray, k: int, entry_filter: EntryFilter, view: View,
                      ) -> tuple[np.ndarray, np.ndarray]:
        started = time.perf_counter()
        try:
            with self.state.index_lock.read():
                return self.replica.search(q, k, entry_filter, view)
        finally:
            if self.on_knn_search is not None:
                self.on_knn_search(time.perf_counter() - started)

    def knn(self, queries: np.ndarray, k: int, filter: SearchFilter | None = None,
            ) -> tuple[np.ndarray, np.ndarray]:
        """queries (q, dim) float32 -> (distances (q, k) float32 squared L2, entry ids
        (q, k) int64, -1 padded)."""
        dim = self.state.manifest.key_dim
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != dim:
            raise InvalidInputError(f"queries must be (n, {dim}) float32, got {q.shape}")
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        return self.consistent(filter, lambda f, view: self._index_search(q, k, f, view))

    def follow(self, queries: np.ndarray, previous: np.ndarray | None,
               tokens: np.ndarray | None, k: int, filter: SearchFilter | None = None,
               min_pointers: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """kNN neighbours that follow pointers where at least `min_pointers` remain and
        search elsewhere (datastore.pointers), all under one snapshot's filter: (q, k)
        distances, (q, k) entry ids, (q,) bool searched."""
        q = np.asarray(queries, dtype=np.float32)
        kv = self.state.kv

        def run(entry_filter: EntryFilter, view: View,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return pointers.follow(entry_filter, kv.keys, kv.values, q, previous, tokens, k,
                                   min_pointers,
                                   lambda sub, kk: self._index_search(sub, kk, entry_filter,
                                                                      view))

        return self.consistent(filter, run)

    def values(self, entry_ids: np.ndarray) -> np.ndarray:
        """Next token of each entry id (any shape), int64; -1 where the id is -1."""
        ids = np.asarray(entry_ids, dtype=np.int64)
        out = np.asarray(self.state.kv.values).take(ids, mode="clip").astype(np.int64)
        out[ids < 0] = -1
        return out

    def bm25(self, query: str, k: int, filter: SearchFilter | None = None) -> list[BM25Hit]:
        """Top-k RIC blocks for `query`, excluding filtered documents."""
        bm25 = self.state.bm25
        if bm25 is None:
            raise NotFoundError(f"{self.state.folder} has no BM25 index")
        return self.consistent(filter, lambda f, _: list(bm25.search(query, k,
                                                                      allow=f.allows_doc)))

    def verbatim(self, text: str, k: int = 5, filter: SearchFilter | None = None,
                 ) -> list[SpanMatch]:
        """Documents holding the longest verbatim spans of `text`."""
        ngram = self.state.ngram
        if ngram is None:
            raise NotFoundError(f"{self.state.folder} has no n-gram index")
        return self.consistent(filter, lambda f, _: list(ngram.longest_matches(
            text, k, allow=f.allows_doc)))

    def entry_info(self, entry_ids: Iterable[int]) -> list[EntryInfo]:
        """Document, position and snippet of each entry id; unknown ids are an error."""
        ids = np.asarray(list(entry_ids), dtype=np.int64)
        snap = self.state.views.snapshot
        bad = ids[(ids < 0) | (ids >= snap.n_entries)]
        if len(bad):
            raise NotFoundError(f"no kNN entry {int(bad[0])} (the datastore has "
                                f"{snap.n_entries} entries)")
        rows = snap.rows_of_entries(ids)
        charpos = np.asarray(self.state.kv.charpos)
        texts: dict[int, str | None] = {}
        out = []
        for entry, row in zip(ids.tolist(), rows.tolist(), strict=True):
            if row not in texts:
                texts[row] = self.state.table.text(row)
            text, at = texts[row], int(charpos[entry])
            snippet = None if text is None else \
                text[max(0, at - SNIPPET_CHARS):at + SNIPPET_CHARS]
            out.append(EntryInfo(entry, snap.doc_ids[row], snap.sources[snap.source_code[row]],
                                 CLASS_CODES[snap.class_code[row]],
                                 entry - int(snap.entry_start[row]), at, snippet))
        return out
