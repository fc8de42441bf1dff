"""The state every part of a `Datastore` shares: the folder, its manifest and config, the
files opened in it (document table, key/value store, kNN index, BM25 and n-gram indexes),
the current view, and the two locks.

    folder/
      manifest.json        name, model fingerprint, config, counts, checksums
      documents.sqlite     the document table (WAL) and opt-out receipts, unless the
                           manifest puts them in PostgreSQL (datastore.table.factory)
      keys.f16 values.i32 charpos.i32   the kNN entries (datastore.knn)
      index.faiss | milvus.db           the kNN index (none for exact)
      bm25/ ngram/                      RIC blocks and the verbatim index

The manifest is written in two ways: `record_status` before a write that changes files
(the intent, so an open after a crash knows what to finish), and `save_manifest` after it
(counts and checksums of what the write left). Writes hold the folder's writer lock
(datastore.store.lock); one that finds the manifest changed by another process since this
one last read or wrote it reads the folder's parts again first (`refresh`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from datastore.bm25.base import BM25Index
from datastore.config import DatastoreConfig
from datastore.index.base import KnnIndex
from datastore.index.factory import open_index
from datastore.knn import FILES as KV_FILES
from datastore.knn import KeyValueStore
from datastore.manifest import MANIFEST_FILE, Manifest, read_manifest, write_manifest
from datastore.ngram import NgramIndex
from datastore.store.lock import FolderLock
from datastore.store.view import ReadWriteLock, Views
from datastore.table.base import DocumentTable


def text_indexes(folder: Path, config: DatastoreConfig, create: bool,
                 ) -> tuple[BM25Index | None, NgramIndex | None]:
    """The BM25 and n-gram indexes of the folder, or None where the config has none or
    their modules cannot be imported."""
    bm25 = ngram = None
    if config.bm25:
        try:
            from datastore.bm25.factory import create_bm25, open_bm25

            path = folder / "bm25"
            bm25 = create_bm25(config.bm25_backend, path) if create or not path.exists() \
                else open_bm25(config.bm25_backend, path)
        except ImportError:
            pass
    if config.ngram:
        path = folder / "ngram"
        ngram = NgramIndex.create(path) if create or not path.exists() \
            else NgramIndex.from_dir(path)
    return bm25, ngram


class StoreState:
    """A datastore folder's parts, opened (see the module docstring)."""

    def __init__(self, folder: Path, manifest: Manifest, table: DocumentTable,
                 kv: KeyValueStore, index: KnnIndex | None) -> None:
        self.folder = folder
        self.manifest = manifest
        self.config = DatastoreConfig.from_json(manifest.config)
        self.table = table
        self.kv = kv
        self.index = index  # None only while a first build or a reindex creates it
        self.bm25, self.ngram = text_indexes(folder, self.config, create=False)
        self.views = Views()
        self.writer = threading.Lock()  # one add / opt-out / compaction at a time
        self.index_lock = ReadWriteLock()
        self.lock = FolderLock(folder)  # and one process at a time
        self._stamp = self._manifest_stamp()

    def _manifest_stamp(self) -> tuple[int, int, int]:
        """What tells one manifest file from another (writes replace it: a new inode)."""
        st = (self.folder / MANIFEST_FILE).stat()
        return st.st_ino, st.st_mtime_ns, st.st_size

    def changed_on_disk(self) -> bool:
        """Did another process write the folder since this one last read or wrote it?"""
        return self._manifest_stamp() != self._stamp

    def refresh(self) -> None:
        """Read the folder's manifest, key files and indexes again (another process
        wrote them); the caller holds the writer lock and the folder's lock."""
        self.manifest = read_manifest(self.folder)
        self.config = DatastoreConfig.from_json(self.manifest.config)
        self.kv.refresh(None if self.config.shares_index else self.manifest.indexed_upto)
        if self.index is not None:
            self.index.close()
            self.index = open_index(self.config, self.folder, self.kv)
        self.bm25, self.ngram = text_indexes(self.folder, self.config, create=False)
        self._stamp = self._manifest_stamp()

    def knn_index(self) -> KnnIndex:
        assert self.index is not None, "index used before the build created it"
        return self.index

    def record_status(self, status: str, **changes: Any) -> None:
        """Write the manifest with `status` (and `changes`) before the files change."""
        self.manifest = replace(self.manifest, status=status, **changes)
        write_manifest(self.folder, self.manifest)
        self._stamp = self._manifest_stamp()

    def save_manifest(self, rewritten: Iterable[str] = (), **changes: Any) -> None:
        """Refresh counts and checksums (and apply `changes`); key files only grew
        unless named in `rewritten`."""
        snap = self.views.snapshot
        counts = {"documents": len(snap.doc_ids), "entries": snap.n_entries,
                  "blocks": snap.n_blocks}
        sums = dict(self.manifest.checksums)
        for name in rewritten:
            sums.pop(name, None)
        self.manifest = replace(self.manifest, counts=counts, checksums=sums, **changes)
        self.manifest = self.manifest.with_checksums(
            self.folder, [*KV_FILES, *self.knn_index().files])
        write_manifest(self.folder, self.manifest)
        self._stamp = self._manifest_stamp()
