"""How a datastore's process keeps up with the others that write it: the replica
behaviour, one explicit object chosen at open by where the kNN index lives.

`LocalReplica`: the kNN index is in the folder. Other processes may still share the
document table (PostgreSQL), so `sync` reads its change sequence before every search
(one SELECT) and reloads the snapshot when another process wrote; the snapshot is cut to
the entries this folder's key files hold.

`SharedReplica`: the kNN index is on a server every replica writes (a Milvus server,
datastore.index.milvus_server). Reloading also pulls the key rows other replicas added
(the folder's key files are a cache of the index), reads the index's fence and pending
deletes, and indexes their new documents' text in this replica's BM25 and n-gram
indexes. Entries go into the index with their scalar fields and are published through
the table; an opt-out's rows are excluded by expression until their index delete is
behind the fence.

Either way a write acknowledged anywhere is in effect here for every search that starts
after it, and a table that cannot be read fails the search with UnavailableError:
nothing is answered without the filter.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from datastore.blocks import Block
from datastore.errors import ConflictError, UnavailableError, WriterBusyError
from datastore.filter import EntryFilter
from datastore.index.base import SharedKnnIndex
from datastore.store.state import StoreState
from datastore.store.view import View
from datastore.table.log import LogHead
from datastore.table.records import TableSnapshot

log = logging.getLogger(__name__)

# adds key rows (r, dim) under entry ids (r,) to the kNN index
AddEntries = Callable[[np.ndarray, np.ndarray], None]


class Replica(ABC):
    """The replica behaviour of one open datastore (see the module docstring)."""

    # the folder's key files are a cache that grows past the manifest's checksums
    caches_keys: bool = False
    # an opt-out lists its rows as pending index deletes in the table
    tracks_pending: bool = False

    def __init__(self, state: StoreState) -> None:
        self.state = state

    # ---- catching up -------------------------------------------------------------------

    def sync(self) -> None:
        """Catch up with what other processes committed: one read of the change sequence,
        and a reload when it moved. UnavailableError when the table cannot be read."""
        if self.state.table.change_seq() > self.state.views.current.seq:
            self.reload()

    def reload(self) -> None:
        """Read the sequence first, then the state: what is read reflects at least that
        sequence, and a write committed in between only makes the next sync reload."""
        views, table = self.state.views, self.state.table
        with views.lock:
            seq = table.change_seq()
            if seq <= views.current.seq:
                return  # another search reloaded meanwhile
            # the log's head before the snapshot: every leaf below it is in the snapshot
            head = table.log.head()
            views.current = self._view_of(table.snapshot(), seq, head)
            self._after_reload()

    @abstractmethod
    def _view_of(self, snap: TableSnapshot, seq: int, head: LogHead) -> View:
        """The view of a snapshot read at `seq` after the log's `head` (the caller holds
        the views' lock)."""

    def _after_reload(self) -> None:  # noqa: B027 - only a shared index has work here
        """What a reload brings in besides the view."""

    # ---- searching ---------------------------------------------------------------------

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, entry_filter: EntryFilter, view: View,
               ) -> tuple[np.ndarray, np.ndarray]:
        """The index's search under the filter, as of `view`."""

    # ---- writing -----------------------------------------------------------------------

    def check_add(self) -> None:  # noqa: B027 - only a shared index can be behind
        """Refuse an add this replica cannot make now (the caller holds the writer lock)."""

    @abstractmethod
    def entry_adder(self) -> AddEntries:
        """How key rows go into the index during one add (index write lock held)."""

    def published(self, n: int) -> None:  # noqa: B027 - only a shared index publishes
        """After the index saved entries [0, n): let other processes search them."""

    def publish_text(self, spans: Sequence[tuple[int, str, int, int]], upto: int) -> None:  # noqa: B027
        """After an add indexed the text of rows [0, upto) with these RIC block spans."""

    def pending_after_optout(self, rows: np.ndarray) -> dict[str, Any]:
        """The view's fields an opt-out of `rows` changes besides the snapshot."""
        return {}

    def after_optout(self, rows: np.ndarray) -> None:  # noqa: B027
        """After an opt-out of `rows` is in effect in this process."""

    def after_open(self) -> None:  # noqa: B027
        """Finish what a crash left of this replica's own work."""


class LocalReplica(Replica):
    """A kNN index in the folder."""

    def _view_of(self, snap: TableSnapshot, seq: int, head: LogHead) -> View:
        return View(snap.prefix(len(self.state.kv)), seq, head)

    def search(self, queries: np.ndarray, k: int, entry_filter: EntryFilter, view: View,
               ) -> tuple[np.ndarray, np.ndarray]:
        return self.state.knn_index().search(queries, k, entry_filter)

    def entry_adder(self) -> AddEntries:
        return self.state.knn_index().add


class SharedReplica(Replica):
    """A kNN index on a server that every replica writes."""

    caches_keys = True
    tracks_pending = True

    def _index(self) -> SharedKnnIndex:
        index = self.state.knn_index()
        assert isinstance(index, SharedKnnIndex), "a shared replica needs a shared index"
        return index

    def _view_of(self, snap: TableSnapshot, seq: int, head: LogHead) -> View:
        published, fence, pending = self.state.table.index_state()
        self._pull(min(published, snap.n_entries), fence)
        return View(snap.prefix(min(published, len(self.state.kv))), seq, head, fence,
                    tuple(pending))

    def _pull(self, upto: int, fence: int) -> None:
        """Copy the key rows [len(kv), upto) that other replicas added from the shared
        index into the folder's key files (ids the index no longer holds, being opted
        out, are written as erased rows)."""
        kv = self.state.kv
        start = len(kv)
        if upto <= start:
            return
        kv.append(*self._index().fetch(start, upto, fence))

    def _after_reload(self) -> None:
        """Index in this replica's BM25 and n-gram indexes the documents other replicas
        added (their text and block spans from the shared table). Skipped while this
        process is itself adding: that add indexes them with its own."""
        s = self.state
        snap = s.views.snapshot
        upto = min(s.table.text_published(), len(snap.doc_ids))
        start = s.manifest.text_indexed_upto
        if upto <= start or not s.writer.acquire(blocking=False):
            return
        try:
            with s.lock.hold("a text index refresh"):
                self._index_text(snap, start, upto)
        except WriterBusyError:
            return  # another process writes this folder: the next reload tries again
        finally:
            s.writer.release()

    def _index_text(self, snap: TableSnapshot, start: int, upto: int) -> None:
        """Rows [start, upto) into the text indexes (writer lock and folder lock held)."""
        s = self.state
        rows = [r for r in s.table.texts(start) if r[0] < upto]
        blocks, first = [], int(snap.block_start[start])
        spans = {b[0]: b for b in s.table.block_spans(first, int(snap.block_end[upto - 1]))}
        for row, doc_id, state, block_start, text in rows:
            if state != "live" or text is None:
                continue
            if s.ngram is not None:
                s.ngram.add(doc_id, text)
            end = int(snap.block_end[row])
            blocks += [Block(b, doc_id, text[spans[b][2]:spans[b][3]], spans[b][2],
                             spans[b][3]) for b in range(block_start, end) if b in spans]
        if s.bm25 is not None and blocks:
            s.bm25.add(blocks)
            s.bm25.save()
        if s.ngram is not None and rows:
            s.ngram.save()
        s.record_status(s.manifest.status, text_indexed_upto=upto)

    def search(self, queries: np.ndarray, k: int, entry_filter: EntryFilter, view: View,
               ) -> tuple[np.ndarray, np.ndarray]:
        return self._index().search_at(queries, k, entry_filter, view.fence, view.pending)

    def check_add(self) -> None:
        if len(self.state.kv) < self.state.table.snapshot().n_entries:
            raise ConflictError("another replica's add is still being indexed; retry")

    def entry_adder(self) -> AddEntries:
        index, kv, snap = self._index(), self.state.kv, self.state.table.snapshot()

        def add(keys: np.ndarray, ids: np.ndarray) -> None:
            # the shared index also holds what replicas need of each entry: next token,
            # char position, and the document row, licence class code and source
            rows = snap.rows_of_entries(ids)
            index.add_entries(keys, ids, {
                "value": np.asarray(kv.values[ids[0]:ids[-1] + 1]),
                "charpos": np.asarray(kv.charpos[ids[0]:ids[-1] + 1]),
                "doc_row": rows, "license_class": snap.class_code[rows],
                "source": [snap.sources[c] for c in snap.source_code[rows]]})

        return add

    def published(self, n: int) -> None:
        """Replicas may now search and pull these entries."""
        self.state.table.index_written(self._index().fence(), published=n)

    def publish_text(self, spans: Sequence[tuple[int, str, int, int]], upto: int) -> None:
        """What replicas need to index these documents' text too."""
        self.state.table.publish_text(spans, upto)

    def pending_after_optout(self, rows: np.ndarray) -> dict[str, Any]:
        return {"pending": tuple(sorted({*self.state.views.current.pending, *rows.tolist()}))}

    def after_optout(self, rows: np.ndarray) -> None:
        if len(rows):
            self._delete_pending()

    def after_open(self) -> None:
        self._delete_pending()  # finish index deletes an earlier crash cut short

    def _delete_pending(self) -> None:
        """Delete from the shared index the vectors of every row tombstoned but not yet
        deleted behind the fence (this opt-out's, or one a crash cut short). Until then
        searches exclude them by expression; an index that cannot be reached leaves them
        pending (the opt-out is in effect all the same) for the next opt-out or open."""
        index, table, views = self._index(), self.state.table, self.state.views
        pending = table.index_state()[2]
        if not pending:
            return
        try:
            index.delete_rows(pending)
            fence = index.fence()
            seq = table.index_written(fence, deleted=pending)
        except UnavailableError as e:
            log.warning("opt-out deletes left pending in the kNN index: %s", e)
            return
        with views.lock:
            view = views.current
            left = tuple(r for r in view.pending if r not in set(pending))
            views.after_write(view.snapshot, seq, pending=left, fence=max(fence, view.fence))


def replica_for(state: StoreState) -> Replica:
    """The replica behaviour of a datastore, by where its config puts the kNN index."""
    return SharedReplica(state) if state.config.shares_index else LocalReplica(state)

