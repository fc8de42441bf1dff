"""Reindex: rebuild a datastore's kNN index with another local backend or other
parameters, from the key files, with no forward pass and no model.

Only the entries of documents still in the datastore are indexed (and train IVF-PQ), so
the new index is the one a build without the opted-out documents would make. The index
is built in memory before anything is written (parameters it cannot take change
nothing); then the new config is recorded with status `reindexing`, so a reindex cut
short while saving is finished at the next open (`rebuild_index`), and the index is saved
atomically and swapped in under the index lock: searches use the old index until then.
Changing only nprobe rebuilds nothing.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from tqdm import tqdm

from datastore.config import LOCAL_BACKENDS, DatastoreConfig
from datastore.errors import InvalidInputError
from datastore.index.base import KnnIndex
from datastore.index.factory import create_index
from datastore.index.faiss_index import INDEX_FILE
from datastore.store.state import StoreState
from datastore.tlog.leaf import Leaf


def check_reindex(old: DatastoreConfig, new: DatastoreConfig) -> None:
    """A reindex changes the index's backend and parameters only, between local backends."""
    for c in (old, new):
        if c.backend not in LOCAL_BACKENDS:
            raise InvalidInputError(f"reindex rebuilds a local index ({', '.join(LOCAL_BACKENDS)})"
                                    f"; {c.backend!r} is not one")
    same = ("block_tokens", "block_overlap", "bm25", "bm25_backend", "ngram", "name")
    changed = [f for f in same if getattr(old, f) != getattr(new, f)]
    if changed:
        raise InvalidInputError(f"reindex changes only the kNN index; not {', '.join(changed)}")


def _index_fields(config: DatastoreConfig) -> tuple[Any, ...]:
    """The parameters that shape the kNN index's contents (nprobe is a search setting)."""
    return config.backend, config.nlist, config.m, config.nbits, config.train_size


def reindex(state: StoreState, config: DatastoreConfig, progress: bool = False) -> int:
    """Rebuild the index under `config` (module docstring); the caller holds the writer
    lock and has synced. Returns the entries indexed."""
    check_reindex(state.config, config)
    if _index_fields(state.config) == _index_fields(config):
        state.config = config
        state.knn_index().set_nprobe(config.nprobe)
        state.record_status(state.manifest.status, config=config.to_json())
        return len(state.knn_index())
    index, indexed = _build_index(state, config, progress)
    state.record_status("reindexing", config=config.to_json())  # intent: redone at open
    state.table.record(Leaf.reindexed(config.to_json(), time.time()))
    _install_index(state, config, index)
    return indexed


def rebuild_index(state: StoreState) -> None:
    """Finish a reindex cut short: build the manifest's index again and install it; the
    caller holds the writer lock."""
    config = DatastoreConfig.from_json(state.manifest.config)
    _install_index(state, config, _build_index(state, config, progress=False)[0])


def _build_index(state: StoreState, config: DatastoreConfig, progress: bool,
                 ) -> tuple[KnnIndex, int]:
    """A new index under `config` holding every entry of the documents not removed (in
    memory, not saved), and how many entries that is."""
    snap = state.views.snapshot
    # what the one filter allows with no request: every entry of a document not removed
    allowed = state.views.filter_of(snap, None)
    entries = np.flatnonzero(~allowed.excludes(np.arange(snap.n_entries)))
    index = create_index(config, state.folder, state.kv, entries=entries)
    step = config.flush_entries
    for at in tqdm(range(0, len(entries), step), disable=not progress, unit="chunk",
                   desc=f"reindex ({config.backend})"):
        ids = entries[at:at + step]
        index.add(np.asarray(state.kv.keys[ids], np.float32), ids)
    return index, len(entries)


def _install_index(state: StoreState, config: DatastoreConfig, index: KnnIndex) -> None:
    """Save `index` (atomically), swap it in, and record it as ready."""
    index.save()
    with state.index_lock.write():
        state.index = index
        state.config = config
    state.save_manifest(rewritten=index.files, status="ready", indexed_upto=len(state.kv))
    if INDEX_FILE not in index.files:  # exact search keeps no index file
        (state.folder / INDEX_FILE).unlink(missing_ok=True)
