"""What changes a datastore's contents: add, opt-out, compaction, and finishing a build
or a write that a crash cut short.

One write at a time: the state's writer lock in this process, the folder's lock across
processes (datastore.store.lock; a write finds the folder as another process left it,
`StoreState.refresh`). A write that changes files records its intent in the manifest
first (status `adding` or `compacting`), so an open after a crash finishes it
(`recover`); every step of compaction is idempotent. An opt-out is one
durable transaction of the document table, then an atomic swap of the view: searches
exclude its documents from the moment it returns.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from datastore.build import IngestStats, index_text, ingest
from datastore.document import Document
from datastore.encoder import KeyEncoder
from datastore.errors import ConflictError
from datastore.index.factory import create_index
from datastore.knn import FILES as KV_FILES
from datastore.manifest import check_model
from datastore.optout import OptOutSelector, Receipt, purge_ranges, record_optout
from datastore.store.reindex import rebuild_index
from datastore.store.replica import Replica
from datastore.store.state import StoreState

WRITE_WAIT_S = 5.0  # how long a write waits for another process's short write


class _SpanRecorder:
    """A BM25 index seen through `index_text`: records the spans of the blocks added,
    for a shared table (replicas cannot recompute them without the tokenizer)."""

    def __init__(self, bm25: Any) -> None:
        self.bm25 = bm25
        self.spans: list[tuple[int, str, int, int]] = []

    def add(self, blocks: list[Any]) -> None:
        self.spans += [(b.block_id, b.doc_id, b.char_start, b.char_end) for b in blocks]
        self.bm25.add(blocks)

    def save(self) -> None:
        self.bm25.save()


class Writer:
    """The write side of a datastore (see the module docstring)."""

    def __init__(self, state: StoreState, replica: Replica) -> None:
        self.state = state
        self.replica = replica

    @contextmanager
    def writing(self, what: str, wait_s: float = WRITE_WAIT_S) -> Iterator[None]:
        """Hold this process's writer lock and the folder's lock; a folder another
        process wrote since this one looked is read again first."""
        s = self.state
        with s.writer, s.lock.hold(what, wait_s):
            if s.changed_on_disk():
                s.refresh()
                self.replica.reload()
            yield

    # ---- building and recovering ---------------------------------------------------------

    def finish_build(self, encoder: KeyEncoder, trained_index: Path | None) -> None:
        """After a build's ingest: create the index, index everything, mark it ready."""
        s = self.state
        s.index = create_index(s.config, s.folder, s.kv, trained_index)
        self._catch_up(encoder)
        s.save_manifest(rewritten=s.index.files, status="ready", index_location=s.index.location)

    def recover(self) -> None:
        """Finish what the manifest says a crash cut short (an add's kNN side, a
        compaction, a reindex), or the replica's own pending work. The caller (open)
        holds the folder's lock."""
        s = self.state
        status = s.manifest.status
        if status == "adding":  # the BM25/n-gram side catches up at the next add
            self._index_entries()
            s.save_manifest(rewritten=(*KV_FILES, *s.knn_index().files), status="ready")
        elif status in ("compacting", "reindexing"):
            with s.writer:
                self._purge() if status == "compacting" else rebuild_index(s)
        else:
            self.replica.after_open()

    # ---- adding ----------------------------------------------------------------------------

    def add_documents(self, documents: Iterable[Document], encoder: KeyEncoder,
                      progress: bool = False) -> IngestStats:
        """Add documents without a rebuild; an id already present is a ConflictError and
        nothing is added."""
        s = self.state
        check_model(s.manifest, encoder.fingerprint, s.folder)
        docs = list(documents)
        ids = [d.doc_id for d in docs]
        if len(set(ids)) != len(ids):
            raise ConflictError("the same document id appears twice in the request")
        with self.writing(f"adding {len(docs)} documents"):
            self.replica.sync()
            self.replica.check_add()
            taken = s.table.existing(ids)
            if taken:
                raise ConflictError(f"documents already in the datastore: {taken[:10]}")
            s.record_status("adding")  # intent: repaired at open if cut
            stats = ingest(docs, encoder, s.table, s.kv, s.config, skip_existing=False,
                           progress=progress)
            self._catch_up(encoder)
            s.save_manifest(rewritten=s.knn_index().files, status="ready")
        return stats

    def _catch_up(self, encoder: KeyEncoder) -> None:
        """Index entries and texts the manifest says are not indexed yet, then publish
        the new snapshot (new documents become searchable)."""
        s = self.state
        self._index_entries()
        next_row = s.manifest.text_indexed_upto
        if s.bm25 is not None or s.ngram is not None:
            bm25 = _SpanRecorder(s.bm25) if s.bm25 is not None else None
            next_row = index_text(s.table, encoder, s.config, bm25, s.ngram, next_row)
            self.replica.publish_text(bm25.spans if bm25 is not None else [], next_row)
        s.manifest = replace(s.manifest, text_indexed_upto=next_row)
        self.replica.reload()

    def _index_entries(self) -> None:
        """Add key rows [indexed_upto, len(kv)) to the kNN index and save it."""
        s = self.state
        index, n, step = s.knn_index(), len(s.kv), s.config.flush_entries
        add = self.replica.entry_adder()
        with s.index_lock.write():
            for start in range(s.manifest.indexed_upto, n, step):
                end = min(n, start + step)
                add(np.asarray(s.kv.keys[start:end], np.float32),
                    np.arange(start, end, dtype=np.int64))
            index.save()
        self.replica.published(n)
        s.manifest = replace(s.manifest, indexed_upto=n)

    # ---- opting out ------------------------------------------------------------------------

    def optout(self, selector: OptOutSelector) -> Receipt:
        """Remove documents from every search, durably, before returning the receipt."""
        s = self.state
        with self.writing("an opt-out"):
            receipt, rows, seq, head = record_optout(selector, s.table,
                                                     self.replica.tracks_pending)
            with s.views.lock:
                old = s.views.snapshot
                mine = rows[rows < len(old.doc_ids)]  # rows another replica just added
                new = old.with_removed(mine)
                s.views.carry_filters(old, new, mine)
                # atomic reference swap: searches now exclude `rows`
                s.views.after_write(new, seq, head, **self.replica.pending_after_optout(rows))
            self.replica.after_optout(rows)
        return receipt

    # ---- compaction ------------------------------------------------------------------------

    def compact(self) -> int:
        """Physically erase removed documents: index vectors, key rows, blocks, n-gram
        entries and stored text. Returns the number of documents purged."""
        s = self.state
        with self.writing("compaction"):
            self.replica.sync()  # rows another replica removed: in the snapshot first
            if not self._rows_to_purge():
                return 0
            s.record_status("compacting")  # intent: redone at open if cut
            return self._purge()

    def _purge(self) -> int:
        """The steps of compaction, each idempotent; the caller holds the writer lock."""
        s = self.state
        snap = s.views.snapshot
        rows = self._rows_to_purge()
        starts, ends, block_ids = purge_ranges(snap, rows)
        index = s.knn_index()
        with s.index_lock.write():
            index.remove(starts, ends)
            index.save()
            s.kv.erase(starts, ends)
        if s.bm25 is not None:
            s.bm25.delete(block_ids)
            s.bm25.save()
        if s.ngram is not None:
            s.ngram.delete([snap.doc_ids[r] for r in rows])
            s.ngram.save()
        s.table.purge(rows, time.time())
        s.save_manifest(rewritten=(*KV_FILES, *index.files), status="ready")
        return len(rows)

    def _rows_to_purge(self) -> list[int]:
        """Rows awaiting compaction that this process's snapshot knows as removed (a row
        another replica removed after the last sync waits for the next compaction)."""
        snap = self.state.views.snapshot
        return [r for r in self.state.table.rows_to_purge()
                if r < len(snap.doc_ids) and snap.removed[r]]
