"""The `Datastore` facade: one folder, one object, every operation the service needs.

    folder/
      manifest.json        name, model fingerprint, config, counts, checksums
      documents.sqlite     the document table (WAL) and opt-out receipts, unless the
                           manifest puts them in PostgreSQL (datastore.table_registry)
      keys.f16 values.i32 charpos.i32   the kNN entries
      index.faiss | milvus.db           the kNN index (none for exact)
      bm25/ ngram/                      RIC blocks and the verbatim index

Searches never take a lock on the opt-out path: they read the current `_View` (an
immutable reference to a `TableSnapshot` and what it was read at), compute or reuse its
`EntryFilter`, search, and retry if an opt-out swapped the snapshot meanwhile, so a
search that starts after an opt-out is acknowledged never returns a removed document.
Adds and compaction, which change the index itself, hold the index's write lock;
searches hold its read lock.

Many processes (replicas) may share one document table (PostgreSQL) and one kNN index
(a Milvus server). Before every search, `sync` reads the table's change sequence (one
SELECT); when another process wrote since this one last looked, it reloads the snapshot,
so a write acknowledged anywhere is in effect here for every search that starts after
it. With a shared index it also pulls the key rows other replicas added (the folder's
key files are a cache of the index) and reads the index's fence and pending deletes
(datastore.index.milvus_server). A table that cannot be read fails the search with
UnavailableError: nothing is answered without the filter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from datastore import pointers
from datastore.build import IngestStats, index_text, ingest
from datastore.config import LOCAL_BACKENDS, DatastoreConfig
from datastore.document import Document, LicenseClass
from datastore.encoder import KeyEncoder
from datastore.errors import (
    ConflictError,
    CorruptDatastoreError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
)
from datastore.filter import EntryFilter, SearchFilter, compute_filter
from datastore.index import KnnIndex, create_index, open_index
from datastore.index.faiss_index import INDEX_FILE
from datastore.knn import FILES as KV_FILES
from datastore.knn import KeyValueStore
from datastore.manifest import (
    Manifest,
    check_model,
    file_checksums,
    read_manifest,
    verify_checksums,
    write_manifest,
)
from datastore.optout import OptOutSelector, Receipt, purge_ranges, record_optout
from datastore.table import CLASS_CODES, DocumentTable, TableSnapshot, snapshot_of
from datastore.table_registry import new_database_location, open_table

_T = TypeVar("_T")
log = logging.getLogger(__name__)
SNIPPET_CHARS = 80  # characters of context on each side of an entry's position
FILTER_CACHE = 32  # filters kept per snapshot (one per distinct policy/scope)


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


class _SpanRecorder:
    """A BM25 index seen through `index_text`: records the spans of the blocks added,
    for the shared table (replicas cannot recompute them without the tokenizer)."""

    def __init__(self, bm25: Any) -> None:
        self.bm25 = bm25
        self.spans: list[tuple[int, str, int, int]] = []

    def add(self, blocks: list[Any]) -> None:
        self.spans += [(b.block_id, b.doc_id, b.char_start, b.char_end) for b in blocks]
        self.bm25.add(blocks)

    def save(self) -> None:
        self.bm25.save()


@dataclass(frozen=True)
class _View:
    """What a search reads, swapped as one reference: the table snapshot, the change
    sequence it reflects (at least), and for a shared index the fence to search at and
    the rows whose index delete is not yet behind it (excluded by expression)."""

    snapshot: TableSnapshot
    seq: int
    fence: int = 0
    pending: tuple[int, ...] = ()


class _ReadWriteLock:
    """Many readers or one writer (searches vs. index mutation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


def _text_indexes(folder: Path, config: DatastoreConfig, create: bool) -> tuple[Any, Any]:
    """The BM25 and n-gram indexes of the folder, or None where their modules are absent."""
    bm25 = ngram = None
    if config.bm25:
        try:
            from datastore.bm25 import create_bm25, open_bm25

            path = folder / "bm25"
            bm25 = create_bm25(config.bm25_backend, path) if create or not path.exists() \
                else open_bm25(config.bm25_backend, path)
        except ImportError:
            pass
    if config.ngram:
        try:
            from datastore.ngram import NgramIndex

            path = folder / "ngram"
            ngram = NgramIndex.create(path) if create or not path.exists() \
                else NgramIndex.from_dir(path)
        except ImportError:
            pass
    return bm25, ngram


def _shares_index(config: DatastoreConfig) -> bool:
    """True when the kNN index lives on a server that replicas share."""
    from datastore.index.milvus_server import is_server

    return config.backend == "milvus" and is_server(config.milvus_uri)


def _index_fields(config: DatastoreConfig) -> tuple[Any, ...]:
    """The parameters that shape the kNN index's contents (nprobe is a search setting)."""
    return config.backend, config.nlist, config.m, config.nbits, config.train_size


def _check_reindex(old: DatastoreConfig, new: DatastoreConfig) -> None:
    """A reindex changes the index's backend and parameters only, between local backends."""
    for c in (old, new):
        if c.backend not in LOCAL_BACKENDS:
            raise InvalidInputError(f"reindex rebuilds a local index ({', '.join(LOCAL_BACKENDS)})"
                                    f"; {c.backend!r} is not one")
    same = ("block_tokens", "block_overlap", "bm25", "bm25_backend", "ngram", "name")
    changed = [f for f in same if getattr(old, f) != getattr(new, f)]
    if changed:
        raise InvalidInputError(f"reindex changes only the kNN index; not {', '.join(changed)}")


class Datastore:
    """A datastore folder opened for search, opt-out, add and compaction."""

    def __init__(self, folder: Path, manifest: Manifest, table: DocumentTable,
                 kv: KeyValueStore, index: KnnIndex | None) -> None:
        self.folder = folder
        self.manifest = manifest
        self.config = DatastoreConfig.from_json(manifest.config)
        self.table = table
        self.kv = kv
        self.index = index  # None only while a first build is under way
        self.bm25, self.ngram = _text_indexes(folder, self.config, create=False)
        self._filters: OrderedDict[tuple[int, SearchFilter], EntryFilter] = OrderedDict()
        self._writer = threading.Lock()  # one add / opt-out / compaction at a time
        self._sync_lock = threading.Lock()  # one reload at a time; guards _view swaps
        self._index_lock = _ReadWriteLock()
        self._view = _View(snapshot_of((), (), (), np.zeros(0, bool), np.zeros((0, 4), np.int64)),
                           -1)
        self._reload()

    @property
    def _shared(self) -> bool:
        """True when the kNN index is shared by replicas (a Milvus server)."""
        return bool(getattr(self.index, "shared", False))

    @property
    def _snapshot(self) -> TableSnapshot:
        return self._view.snapshot

    # ---- replicas ----------------------------------------------------------------------

    def sync(self) -> None:
        """Catch up with what other processes committed: one read of the change sequence,
        and a reload when it moved. UnavailableError when the table cannot be read."""
        if self.table.change_seq() > self._view.seq:
            self._reload()

    def _reload(self) -> None:
        """Read the sequence first, then the state: what is read reflects at least that
        sequence, and a write committed in between only makes the next sync reload."""
        with self._sync_lock:
            seq = self.table.change_seq()
            if seq <= self._view.seq:
                return  # another search reloaded meanwhile
            snap = self.table.snapshot()
            if not self._shared:
                self._view = _View(snap.prefix(len(self.kv)), seq)
                return
            published, fence, pending = self.table.index_state()
            self._pull(min(published, snap.n_entries), fence)
            self._view = _View(snap.prefix(min(published, len(self.kv))), seq, fence,
                               tuple(pending))
            self._refresh_text()

    def _refresh_text(self) -> None:
        """Index in this replica's BM25 and n-gram indexes the documents other replicas
        added (their text and block spans from the shared table). Skipped while this
        process is itself adding: that add indexes them with its own."""
        upto = min(self.table.text_published(), len(self._view.snapshot.doc_ids))
        start = self.manifest.text_indexed_upto
        if upto <= start or not self._writer.acquire(blocking=False):
            return
        try:
            from datastore.blocks import Block

            rows = [r for r in self.table.texts(start) if r[0] < upto]
            blocks, first = [], int(self._view.snapshot.block_start[start])
            spans = {b[0]: b for b in self.table.block_spans(
                first, int(self._view.snapshot.block_end[upto - 1]))}
            for row, doc_id, state, block_start, text in rows:
                if state != "live" or text is None:
                    continue
                if self.ngram is not None:
                    self.ngram.add(doc_id, text)
                end = int(self._view.snapshot.block_end[row])
                blocks += [Block(b, doc_id, text[spans[b][2]:spans[b][3]], spans[b][2],
                                 spans[b][3]) for b in range(block_start, end) if b in spans]
            if self.bm25 is not None and blocks:
                self.bm25.add(blocks)
                self.bm25.save()
            if self.ngram is not None and rows:
                self.ngram.save()
            self.manifest = replace(self.manifest, text_indexed_upto=upto)
            write_manifest(self.folder, self.manifest)
        finally:
            self._writer.release()

    def _pull(self, upto: int, fence: int) -> None:
        """Copy the key rows [len(kv), upto) that other replicas added from the shared
        index into the folder's key files (ids the index no longer holds, being opted
        out, are written as erased rows)."""
        index = self._index()
        start = len(self.kv)
        if upto <= start:
            return
        keys, values, charpos = index.fetch(start, upto, fence)  # type: ignore[attr-defined]
        self.kv.append(keys, values, charpos)

    def _swap(self, snap: TableSnapshot, seq: int, **shared: Any) -> None:
        """Install the state after this process's own write of sequence `seq`: labelled
        `seq` only when nothing else was written since the view was read (else the next
        sync reloads). The caller holds _sync_lock."""
        view = self._view
        self._view = replace(view, snapshot=snap, seq=seq if view.seq == seq - 1 else view.seq,
                             **shared)

    # ---- lifecycle -------------------------------------------------------------------

    @classmethod
    def build(cls, path: Path, documents: Iterable[Document], encoder: KeyEncoder,
              config: DatastoreConfig | None = None, progress: bool = True,
              trained_index: Path | None = None) -> Datastore:
        """Build a datastore in `path`, or resume a build that stopped there.

        trained_index: a faiss index file whose trained IVF-PQ quantizer is reused.
        """
        folder = Path(path)
        config = config or DatastoreConfig()
        if (folder / "manifest.json").exists():
            manifest = read_manifest(folder)
            check_model(manifest, encoder.fingerprint, folder)
            if manifest.status == "ready":
                raise ConflictError(f"{folder} already holds a built datastore; use add")
            config = DatastoreConfig.from_json(manifest.config)  # resume as first asked
        else:
            folder.mkdir(parents=True, exist_ok=True)
            manifest = Manifest(config.name, encoder.fingerprint, encoder.dim,
                                config.to_json(), database=new_database_location(config.name))
            write_manifest(folder, manifest)
            _text_indexes(folder, config, create=True)
        table = open_table(folder, manifest.database, create=True)
        kv = KeyValueStore(folder, encoder.dim)
        ingest(documents, encoder, table, kv, config, skip_existing=True, progress=progress)
        store = cls(folder, manifest, table, kv, None)
        store.index = create_index(config, folder, kv, trained_index)
        store._catch_up(encoder)
        store.manifest = replace(store.manifest, status="ready",
                                 index_location=getattr(store.index, "location", None))
        store._write_manifest(rewritten=store.index.files)
        return store

    @classmethod
    def open(cls, path: Path, encoder_fingerprint: str | None = None,
             verify: bool = True) -> Datastore:
        """Open a built datastore. A different model fingerprint is a ModelMismatchError;
        `verify` checks every file against the manifest's checksums first."""
        folder = Path(path)
        manifest = read_manifest(folder)
        check_model(manifest, encoder_fingerprint, folder)
        if manifest.status == "building":
            raise CorruptDatastoreError(
                f"{folder}: the build did not finish; run the build again to resume it")
        interrupted = manifest.status in ("adding", "compacting", "reindexing")
        # with a shared index the key files are a cache that grows with other replicas'
        # adds (pulled from the index), past the manifest's checksums
        cache = KV_FILES if _shares_index(DatastoreConfig.from_json(manifest.config)) else ()
        if verify:
            # after an interrupted add the key files and index may have grown past their
            # checksums; the files an add never touches are still checked
            verify_checksums(folder, manifest, skip=(*KV_FILES, INDEX_FILE) if interrupted
                             else cache)
        table = open_table(folder, manifest.database)
        if verify:
            table.check_integrity()
        kv = KeyValueStore.from_dir(folder, manifest.key_dim)
        config = DatastoreConfig.from_json(manifest.config)
        if manifest.status == "adding":
            return cls._finish_interrupted_add(folder, manifest, table, kv, config)
        if manifest.status == "compacting":  # every step of compaction is idempotent
            store = cls(folder, manifest, table, kv, open_index(config, folder, kv))
            with store._writer:
                store._purge()
            return store
        if manifest.status == "reindexing":  # the new config is recorded: build it again
            store = cls(folder, manifest, table, kv, None)
            with store._writer:
                store._rebuild_index()
            return store
        if len(kv) != manifest.indexed_upto and not cache:
            raise CorruptDatastoreError(
                f"{folder}: the key files hold {len(kv)} entries, the manifest "
                f"{manifest.indexed_upto}")
        store = cls(folder, manifest, table, kv, open_index(config, folder, kv))
        if store._shared:
            store._delete_pending()  # finish index deletes an earlier crash cut short
        return store

    @classmethod
    def _finish_interrupted_add(cls, folder: Path, manifest: Manifest, table: DocumentTable,
                                kv: KeyValueStore, config: DatastoreConfig) -> Datastore:
        """Complete the kNN side of an add that stopped midway: keep the documents the
        table committed, drop key rows it never committed, index what the saved index
        lacks. The BM25/n-gram side catches up at the next add (it needs the encoder)."""
        kv.truncate(table.snapshot().n_entries)
        index = open_index(config, folder, kv)
        saved = manifest.checksums.get(INDEX_FILE)
        if saved is not None and file_checksums(folder / INDEX_FILE) != saved:
            # the index was saved after the add's vectors went in (saves are atomic)
            manifest = replace(manifest, indexed_upto=len(kv))
        store = cls(folder, manifest, table, kv, index)
        store._index_entries()
        store.manifest = replace(store.manifest, status="ready")
        store._write_manifest(rewritten=(*KV_FILES, *index.files))
        return store

    def close(self) -> None:
        close = getattr(self.index, "close", None)
        if close is not None:
            close()
        self.table.close()

    def __enter__(self) -> Datastore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- changing contents -----------------------------------------------------------

    def add_documents(self, documents: Iterable[Document], encoder: KeyEncoder,
                      progress: bool = False) -> IngestStats:
        """Add documents without a rebuild; an id already present is a ConflictError and
        nothing is added."""
        check_model(self.manifest, encoder.fingerprint, self.folder)
        docs = list(documents)
        ids = [d.doc_id for d in docs]
        if len(set(ids)) != len(ids):
            raise ConflictError("the same document id appears twice in the request")
        with self._writer:
            self.sync()
            if self._shared and len(self.kv) < self.table.snapshot().n_entries:
                raise ConflictError("another replica's add is still being indexed; retry")
            taken = self.table.existing(ids)
            if taken:
                raise ConflictError(f"documents already in the datastore: {taken[:10]}")
            self.manifest = replace(self.manifest, status="adding")
            write_manifest(self.folder, self.manifest)  # intent: repaired at open if cut
            stats = ingest(docs, encoder, self.table, self.kv, self.config,
                           skip_existing=False, progress=progress)
            self._catch_up(encoder)
            self.manifest = replace(self.manifest, status="ready")
            self._write_manifest(rewritten=self._index().files)
        return stats

    def _catch_up(self, encoder: KeyEncoder) -> None:
        """Index entries and texts the manifest says are not indexed yet, then publish
        the new snapshot (new documents become searchable)."""
        self._index_entries()
        next_row = self.manifest.text_indexed_upto
        if self.bm25 is not None or self.ngram is not None:
            bm25 = _SpanRecorder(self.bm25) if self.bm25 is not None else None
            next_row = index_text(self.table, encoder, self.config, bm25, self.ngram,
                                  next_row)
            if self._shared:  # what replicas need to index these documents too
                self.table.publish_text(bm25.spans if bm25 is not None else [], next_row)
        self.manifest = replace(self.manifest, text_indexed_upto=next_row)
        self._reload()

    def _index_entries(self) -> None:
        """Add key rows [indexed_upto, len(kv)) to the kNN index and save it."""
        index = self._index()
        n = len(self.kv)
        snap = self.table.snapshot() if self._shared else None
        with self._index_lock.write():
            for start in range(self.manifest.indexed_upto, n, self.config.flush_entries):
                end = min(n, start + self.config.flush_entries)
                keys = np.asarray(self.kv.keys[start:end], np.float32)
                ids = np.arange(start, end, dtype=np.int64)
                if snap is None:
                    index.add(keys, ids)
                else:  # the shared index also holds what replicas need of each entry
                    index.add_entries(keys, ids, self._entry_fields(snap, ids))  # type: ignore[attr-defined]
            index.save()
        if snap is not None:  # publish: replicas may now search and pull these entries
            self.table.index_written(index.fence(), published=n)  # type: ignore[attr-defined]
        self.manifest = replace(self.manifest, indexed_upto=n)

    def _entry_fields(self, snap: TableSnapshot, ids: np.ndarray) -> dict[str, Any]:
        """Scalar fields of entries for a shared index: next token, char position, and
        the document row, licence class code and source of each entry's document."""
        rows = snap.rows_of_entries(ids)
        return {"value": np.asarray(self.kv.values[ids[0]:ids[-1] + 1]),
                "charpos": np.asarray(self.kv.charpos[ids[0]:ids[-1] + 1]),
                "doc_row": rows, "license_class": snap.class_code[rows],
                "source": [snap.sources[c] for c in snap.source_code[rows]]}

    def optout(self, selector: OptOutSelector | None = None, *,
               doc_ids: Iterable[str] = (), source: str | None = None,
               url_prefix: str | None = None, reason: str | None = None) -> Receipt:
        """Remove documents from every search, durably, before returning the receipt."""
        if selector is None:
            selector = OptOutSelector(tuple(doc_ids), source, url_prefix, reason)
        with self._writer:
            receipt, rows, seq = record_optout(selector, self.table, self._shared)
            with self._sync_lock:
                old = self._snapshot
                mine = rows[rows < len(old.doc_ids)]  # rows another replica just added
                new = old.with_removed(mine)
                # carry the warm filters over (cheaply) so the next search pays no rebuild
                for (snap_id, request), entry_filter in list(self._filters.items()):
                    if snap_id == id(old) and entry_filter.docs is old:
                        self._filters[(id(new), request)] = entry_filter.excluding(new, mine)
                pending = tuple(sorted({*self._view.pending, *rows.tolist()}))
                # atomic reference swap: searches now exclude `rows`
                self._swap(new, seq, **({"pending": pending} if self._shared else {}))
            if self._shared and len(rows):
                self._delete_pending()
        return receipt

    def _delete_pending(self) -> None:
        """Delete from the shared index the vectors of every row tombstoned but not yet
        deleted behind the fence (this opt-out's, or one a crash cut short). Until then
        searches exclude them by expression; an index that cannot be reached leaves them
        pending (the opt-out is in effect all the same) for the next opt-out or open."""
        index: Any = self._index()
        pending = self.table.index_state()[2]
        if not pending:
            return
        try:
            index.delete_rows(pending)
            fence = index.fence()
            seq = self.table.index_written(fence, deleted=pending)
        except UnavailableError as e:
            log.warning("opt-out deletes left pending in the kNN index: %s", e)
            return
        with self._sync_lock:
            view = self._view
            left = tuple(r for r in view.pending if r not in set(pending))
            self._swap(view.snapshot, seq, pending=left, fence=max(fence, view.fence))

    def receipts(self) -> list[Receipt]:
        return [Receipt.from_row(r) for r in self.table.optout_rows()]

    def receipt(self, optout_id: str) -> Receipt:
        rows = self.table.optout_rows(optout_id)
        if not rows:
            raise NotFoundError(f"no opt-out {optout_id!r}")
        return Receipt.from_row(rows[0])

    def compact(self) -> int:
        """Physically erase removed documents: index vectors, key rows, blocks, n-gram
        entries and stored text. Returns the number of documents purged."""
        with self._writer:
            self.sync()  # rows another replica removed: in the snapshot before purging
            if not self._rows_to_purge():
                return 0
            self.manifest = replace(self.manifest, status="compacting")
            write_manifest(self.folder, self.manifest)  # intent: redone at open if cut
            return self._purge()

    def _purge(self) -> int:
        """The steps of compaction, each idempotent; the caller holds the writer lock."""
        snap = self._snapshot
        rows = self._rows_to_purge()
        starts, ends, block_ids = purge_ranges(snap, rows)
        with self._index_lock.write():
            self._index().remove(starts, ends)
            self._index().save()
            self.kv.erase(starts, ends)
        if self.bm25 is not None:
            self.bm25.delete(block_ids)
            self.bm25.save()
        if self.ngram is not None:
            self.ngram.delete([snap.doc_ids[r] for r in rows])
            self.ngram.save()
        self.table.purge(rows, time.time())
        self.manifest = replace(self.manifest, status="ready")
        self._write_manifest(rewritten=(*KV_FILES, *self._index().files))
        return len(rows)

    def reindex(self, config: DatastoreConfig, progress: bool = False) -> int:
        """Rebuild the kNN index with `config`'s backend and index parameters from the key
        files, with no forward pass; returns the entries indexed. Only the entries of
        documents still in the datastore are indexed (and train IVF-PQ), so the new index
        is the one a build without the opted-out documents would make. The index is built
        before anything is written (parameters it cannot take change nothing); then the
        intent is recorded, so a reindex cut short while saving is finished at the next
        open. Changing only nprobe rebuilds nothing."""
        old = self.config
        _check_reindex(old, config)
        with self._writer:
            self.sync()
            if _index_fields(old) == _index_fields(config):
                self.config = config
                if hasattr(self.index, "nprobe"):
                    self.index.nprobe = config.nprobe  # type: ignore[union-attr]
                self.manifest = replace(self.manifest, config=config.to_json())
                write_manifest(self.folder, self.manifest)
                return len(self._index())
            index, indexed = self._build_index(config, progress)
            self.manifest = replace(self.manifest, status="reindexing", config=config.to_json())
            write_manifest(self.folder, self.manifest)  # intent: redone at open if cut
            self._install_index(config, index)
            return indexed

    def _rebuild_index(self) -> None:
        """Finish a reindex cut short: build the manifest's index again and install it;
        the caller holds the writer lock."""
        config = DatastoreConfig.from_json(self.manifest.config)
        self._install_index(config, self._build_index(config, progress=False)[0])

    def _build_index(self, config: DatastoreConfig, progress: bool) -> tuple[KnnIndex, int]:
        """A new index under `config` holding every entry of the documents not removed
        (in memory, not saved), and how many entries that is."""
        snap = self._snapshot
        # what the one filter allows with no request: every entry of a document not removed
        allowed = self._filter_of(snap, None)
        entries = np.flatnonzero(~allowed.excludes(np.arange(snap.n_entries)))
        index = create_index(config, self.folder, self.kv, entries=entries)
        step = config.flush_entries
        for at in tqdm(range(0, len(entries), step), disable=not progress, unit="chunk",
                       desc=f"reindex ({config.backend})"):
            ids = entries[at:at + step]
            index.add(np.asarray(self.kv.keys[ids], np.float32), ids)
        return index, len(entries)

    def _install_index(self, config: DatastoreConfig, index: KnnIndex) -> None:
        """Save `index` (atomically), swap it in, and record it as ready."""
        index.save()
        with self._index_lock.write():
            self.index = index
            self.config = config
        self.manifest = replace(self.manifest, status="ready", indexed_upto=len(self.kv))
        self._write_manifest(rewritten=index.files)
        if INDEX_FILE not in index.files:  # exact search keeps no index file
            (self.folder / INDEX_FILE).unlink(missing_ok=True)

    def _rows_to_purge(self) -> list[int]:
        """Rows awaiting compaction that this process's snapshot knows as removed (a row
        another replica removed after the last sync waits for the next compaction)."""
        snap = self._snapshot
        return [r for r in self.table.rows_to_purge()
                if r < len(snap.doc_ids) and snap.removed[r]]

    def _index(self) -> KnnIndex:
        assert self.index is not None, "index used before the build created it"
        return self.index

    def _write_manifest(self, rewritten: Iterable[str] = ()) -> None:
        """Refresh counts and checksums; key files only grew unless named in `rewritten`."""
        snap = self._snapshot
        counts = {"documents": len(snap.doc_ids), "entries": snap.n_entries,
                  "blocks": snap.n_blocks}
        files = [*KV_FILES, *self._index().files]
        sums = dict(self.manifest.checksums)
        for name in rewritten:
            sums.pop(name, None)
        self.manifest = replace(self.manifest, counts=counts, checksums=sums)
        self.manifest = self.manifest.with_checksums(self.folder, files)
        write_manifest(self.folder, self.manifest)

    # ---- search ----------------------------------------------------------------------

    @property
    def snapshot(self) -> TableSnapshot:
        return self._snapshot

    def entry_filter(self, request: SearchFilter | None = None) -> EntryFilter:
        """The filter of `request` over the current state of the shared table (cached
        per snapshot)."""
        self.sync()
        return self._filter_of(self._snapshot, request)

    def _filter_of(self, snap: TableSnapshot, request: SearchFilter | None) -> EntryFilter:
        key = (id(snap), request or SearchFilter())
        found = self._filters.get(key)
        if found is not None and found.docs is snap:
            return found
        entry_filter = compute_filter(snap, key[1])
        self._filters[key] = entry_filter
        while len(self._filters) > FILTER_CACHE:
            self._filters.popitem(last=False)
        return entry_filter

    def knn_search(self, queries: np.ndarray, k: int, filter: SearchFilter | None = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
        """queries (q, dim) float32 -> (distances (q, k) float32 squared L2, entry ids
        (q, k) int64, -1 padded)."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.manifest.key_dim:
            raise InvalidInputError(
                f"queries must be (n, {self.manifest.key_dim}) float32, got {q.shape}")
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")

        return self._consistent(filter, lambda f, view: self._search(q, k, f, view))

    def _search(self, q: np.ndarray, k: int, entry_filter: EntryFilter, view: _View,
                ) -> tuple[np.ndarray, np.ndarray]:
        """The index's search under `entry_filter` (and, shared, the view's fence)."""
        index: Any = self._index()
        with self._index_lock.read():
            if self._shared:
                return index.search_at(q, k, entry_filter, view.fence, view.pending)
            return index.search(q, k, entry_filter)

    def follow(self, queries: np.ndarray, previous: np.ndarray | None,
               tokens: np.ndarray | None, k: int, filter: SearchFilter | None = None,
               min_pointers: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """kNN neighbours that follow pointers where at least `min_pointers` remain and
        search elsewhere (datastore.pointers), all under one snapshot's filter: (q, k)
        distances, (q, k) entry ids, (q,) bool searched."""
        q = np.asarray(queries, dtype=np.float32)

        def run(entry_filter: EntryFilter, view: _View,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return pointers.follow(entry_filter, self.kv.keys, self.kv.values, q, previous,
                                   tokens, k, min_pointers,
                                   lambda sub, kk: self._search(sub, kk, entry_filter, view))

        return self._consistent(filter, run)

    def _consistent(self, request: SearchFilter | None,
                    search: Callable[[EntryFilter, _View], _T]) -> _T:
        """Catch up with the shared table, then run `search` under the request's current
        filter; run it again if an opt-out swapped the snapshot meanwhile, so no result
        outlives an acknowledged opt-out."""
        self.sync()
        while True:
            view = self._view
            entry_filter = self._filter_of(view.snapshot, request)
            result = search(entry_filter, view)
            if self._snapshot is view.snapshot:
                return result

    def values(self, entry_ids: np.ndarray) -> np.ndarray:
        """Next token of each entry id (any shape), int64; -1 where the id is -1."""
        ids = np.asarray(entry_ids, dtype=np.int64)
        out = np.asarray(self.kv.values).take(ids, mode="clip").astype(np.int64)
        out[ids < 0] = -1
        return out

    def bm25_search(self, query: str, k: int, filter: SearchFilter | None = None,
                    ) -> list[Any]:
        """Top-k RIC blocks for `query` (BM25Hit), excluding filtered documents."""
        if self.bm25 is None:
            raise NotFoundError(f"{self.folder} has no BM25 index")
        bm25 = self.bm25
        return self._consistent(filter, lambda f, _: list(bm25.search(query, k,
                                                                       allow=f.allows_doc)))

    def verbatim(self, text: str, k: int = 5, filter: SearchFilter | None = None,
                 ) -> list[Any]:
        """Documents holding the longest verbatim spans of `text` (SpanMatch)."""
        if self.ngram is None:
            raise NotFoundError(f"{self.folder} has no n-gram index")
        ngram = self.ngram
        return self._consistent(filter, lambda f, _: list(ngram.longest_matches(
            text, k, allow=f.allows_doc)))

    # ---- attribution and info --------------------------------------------------------

    def entry_info(self, entry_ids: Iterable[int]) -> list[EntryInfo]:
        """Document, position and snippet of each entry id; unknown ids are an error."""
        ids = np.asarray(list(entry_ids), dtype=np.int64)
        snap = self._snapshot
        bad = ids[(ids < 0) | (ids >= snap.n_entries)]
        if len(bad):
            raise NotFoundError(f"no kNN entry {int(bad[0])} (the datastore has "
                                f"{snap.n_entries} entries)")
        rows = snap.rows_of_entries(ids)
        charpos = np.asarray(self.kv.charpos)
        texts: dict[int, str | None] = {}
        out = []
        for entry, row in zip(ids.tolist(), rows.tolist(), strict=True):
            if row not in texts:
                texts[row] = self.table.text(row)
            text, at = texts[row], int(charpos[entry])
            snippet = None if text is None else \
                text[max(0, at - SNIPPET_CHARS):at + SNIPPET_CHARS]
            out.append(EntryInfo(entry, snap.doc_ids[row], snap.sources[snap.source_code[row]],
                                 CLASS_CODES[snap.class_code[row]],
                                 entry - int(snap.entry_start[row]), at, snippet))
        return out

    def info(self) -> DatastoreInfo:
        snap = self._snapshot
        live = ~snap.removed
        return DatastoreInfo(
            name=self.manifest.name, path=str(self.folder), backend=self.config.backend,
            model_fingerprint=self.manifest.model_fingerprint,
            documents=len(snap.doc_ids), live_documents=int(live.sum()),
            entries=snap.n_entries,
            live_entries=int((snap.entry_end - snap.entry_start)[live].sum()),
            indexed_entries=len(self._index()), blocks=snap.n_blocks,
            key_dim=self.manifest.key_dim, optouts=len(self.table.optout_rows()),
            bytes_on_disk=sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file()),
        )
