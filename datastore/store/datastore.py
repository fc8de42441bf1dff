"""`Datastore`: one folder, one object, every operation the service needs.

It is assembled at open from parts, one concept each, that share the folder's state
(datastore.store.state):

    Replica   how this process keeps up with others writing the same datastore, chosen
              by where the kNN index lives (datastore.store.replica)
    Searcher  kNN, pointers, BM25 and verbatim search behind the one filter
              (datastore.store.search)
    Writer    add, opt-out, compaction, and finishing what a crash cut short
              (datastore.store.writes; reindex in datastore.store.reindex)

and opened or built by datastore.store.opening. Searches never take a lock on the
opt-out path (datastore.store.view); writes take the writer lock, one at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datastore.bm25.base import BM25Hit, BM25Index
from datastore.build import IngestStats, ingest
from datastore.config import DatastoreConfig
from datastore.document import Document
from datastore.encoder import KeyEncoder
from datastore.errors import NotFoundError
from datastore.filter import EntryFilter, SearchFilter
from datastore.index.base import KnnIndex
from datastore.knn import KeyValueStore
from datastore.manifest import Manifest
from datastore.ngram import NgramIndex, SpanMatch
from datastore.optout import OptOutSelector, Receipt
from datastore.store import opening
from datastore.store.lock import FolderLock
from datastore.store.reindex import reindex
from datastore.store.replica import replica_for
from datastore.store.search import EntryInfo, Searcher
from datastore.store.state import StoreState
from datastore.store.transparency import TransparencyLog, signer_from_env
from datastore.store.view import View
from datastore.store.writes import WRITE_WAIT_S, Writer
from datastore.table.factory import open_table
from datastore.table.records import TableSnapshot


@dataclass(frozen=True)
class DatastoreInfo:
    """Counts and settings, for `silo datastore info` and the admin API."""

    name: str
    path: str
    backend: str
    model_fingerprint: str
    documents: int
    live_documents: int
    entries: int
    live_entries: int
    indexed_entries: int
    blocks: int
    key_dim: int
    optouts: int
    bytes_on_disk: int


class Datastore:
    """A datastore folder opened for search, opt-out, add and compaction.

    `on_knn_search`, when given, receives the seconds of every kNN index search. `log` is
    its transparency log, signed with the key `SILO_LOG_KEY_FILE` names, if set."""

    def __init__(self, state: StoreState,
                 on_knn_search: Callable[[float], None] | None = None) -> None:
        self._state = state
        self.folder = state.folder
        self.table = state.table
        self.kv = state.kv
        self.log = TransparencyLog(state.table, state.manifest.name, signer_from_env())
        self.replica = replica_for(state)
        self._search = Searcher(state, self.replica, on_knn_search)
        self._writer = Writer(state, self.replica)
        self.replica.reload()

    @property
    def manifest(self) -> Manifest:
        return self._state.manifest

    @property
    def config(self) -> DatastoreConfig:
        return self._state.config

    @property
    def index(self) -> KnnIndex | None:
        return self._state.index

    @property
    def bm25(self) -> BM25Index | None:
        return self._state.bm25

    @property
    def ngram(self) -> NgramIndex | None:
        return self._state.ngram

    @property
    def view(self) -> View:
        """What a search started now reads: the table snapshot and what it was read at."""
        return self._state.views.current

    @property
    def snapshot(self) -> TableSnapshot:
        return self._state.views.snapshot

    # ---- lifecycle -------------------------------------------------------------------

    @classmethod
    def build(cls, path: Path, documents: Iterable[Document], encoder: KeyEncoder,
              config: DatastoreConfig | None = None, progress: bool = True,
              trained_index: Path | None = None) -> Datastore:
        """Build a datastore in `path`, or resume a build that stopped there.

        trained_index: a faiss index file whose trained IVF-PQ quantizer is reused.
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        with FolderLock(folder).hold("a build"):  # for its whole run: refused meanwhile
            manifest, config = opening.start_build(folder, encoder,
                                                   config or DatastoreConfig())
            table = open_table(folder, manifest.database, create=True)
            kv = KeyValueStore(folder, encoder.dim)
            ingest(documents, encoder, table, kv, config, skip_existing=True,
                   progress=progress)
            store = cls(StoreState(folder, manifest, table, kv, None))
            store._writer.finish_build(encoder, trained_index)
        return store

    @classmethod
    def open(cls, path: Path, encoder_fingerprint: str | None = None, verify: bool = True,
             on_knn_search: Callable[[float], None] | None = None) -> Datastore:
        """Open a built datastore, finishing a write a crash cut short. A different model
        fingerprint is a ModelMismatchError; `verify` checks every file against the
        manifest's checksums first."""
        folder = Path(path)
        # a write another process has under way is not a crash to repair: wait for it
        with FolderLock(folder).hold("opening the datastore", WRITE_WAIT_S):
            store = cls(opening.open_state(folder, encoder_fingerprint, verify),
                        on_knn_search)
            store._writer.recover()
        return store

    def close(self) -> None:
        if self._state.index is not None:
            self._state.index.close()
        self.table.close()

    def __enter__(self) -> Datastore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- search ----------------------------------------------------------------------

    def sync(self) -> None:
        """Catch up with what other processes committed (datastore.store.replica)."""
        self.replica.sync()

    def entry_filter(self, request: SearchFilter | None = None) -> EntryFilter:
        """The filter of `request` over the current state of the shared table (cached
        per snapshot)."""
        return self._search.entry_filter(request)

    def knn_search(self, queries: np.ndarray, k: int, filter: SearchFilter | None = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
        """queries (q, dim) float32 -> (distances (q, k) float32 squared L2, entry ids
        (q, k) int64, -1 padded)."""
        return self._search.knn(queries, k, filter)

    def follow(self, queries: np.ndarray, previous: np.ndarray | None,
               tokens: np.ndarray | None, k: int, filter: SearchFilter | None = None,
               min_pointers: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Neighbours that follow pointers where enough remain (Searcher.follow)."""
        return self._search.follow(queries, previous, tokens, k, filter, min_pointers)

    def values(self, entry_ids: np.ndarray) -> np.ndarray:
        """Next token of each entry id (any shape), int64; -1 where the id is -1."""
        return self._search.values(entry_ids)

    def bm25_search(self, query: str, k: int, filter: SearchFilter | None = None,
                    ) -> list[BM25Hit]:
        """Top-k RIC blocks for `query`, excluding filtered documents."""
        return self._search.bm25(query, k, filter)

    def verbatim(self, text: str, k: int = 5, filter: SearchFilter | None = None,
                 ) -> list[SpanMatch]:
        """Documents holding the longest verbatim spans of `text`."""
        return self._search.verbatim(text, k, filter)

    def entry_info(self, entry_ids: Iterable[int]) -> list[EntryInfo]:
        """Document, position and snippet of each entry id; unknown ids are an error."""
        return self._search.entry_info(entry_ids)

    def info(self) -> DatastoreInfo:
        snap = self.snapshot
        live = ~snap.removed
        index = self._state.knn_index()
        return DatastoreInfo(
            name=self.manifest.name, path=str(self.folder), backend=self.config.backend,
            model_fingerprint=self.manifest.model_fingerprint,
            documents=len(snap.doc_ids), live_documents=int(live.sum()),
            entries=snap.n_entries,
            live_entries=int((snap.entry_end - snap.entry_start)[live].sum()),
            indexed_entries=len(index), blocks=snap.n_blocks,
            key_dim=self.manifest.key_dim, optouts=len(self.table.optout_rows()),
            bytes_on_disk=sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file()),
        )

    # ---- changing contents -----------------------------------------------------------

    def add_documents(self, documents: Iterable[Document], encoder: KeyEncoder,
                      progress: bool = False) -> IngestStats:
        """Add documents without a rebuild; an id already present is a ConflictError and
        nothing is added."""
        return self._writer.add_documents(documents, encoder, progress)

    def optout(self, selector: OptOutSelector | None = None, *,
               doc_ids: Iterable[str] = (), source: str | None = None,
               url_prefix: str | None = None, reason: str | None = None) -> Receipt:
        """Remove documents from every search, durably, before returning the receipt."""
        if selector is None:
            selector = OptOutSelector(tuple(doc_ids), source, url_prefix, reason)
        return self._writer.optout(selector)

    def receipts(self, optout_id: str | None = None) -> list[Receipt]:
        """Every opt-out receipt, oldest first, or the one named (NotFoundError if none)."""
        rows = self.table.optout_rows(optout_id)
        if optout_id is not None and not rows:
            raise NotFoundError(f"no opt-out {optout_id!r}")
        return [Receipt.from_row(r) for r in rows]

    def compact(self) -> int:
        """Physically erase removed documents: index vectors, key rows, blocks, n-gram
        entries and stored text. Returns the number of documents purged."""
        return self._writer.compact()

    def reindex(self, config: DatastoreConfig, progress: bool = False) -> int:
        """Rebuild the kNN index with `config`'s backend and index parameters from the key
        files (datastore.store.reindex); returns the entries indexed."""
        with self._writer.writing("a reindex", wait_s=0):
            self.replica.sync()
            return reindex(self._state, config, progress)
