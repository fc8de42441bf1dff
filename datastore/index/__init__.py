"""kNN index backends behind one interface, chosen by the config's `backend` name.

Every backend answers `search(queries, k, filter) -> (distances, entry_ids)`:
queries (q, dim) float32; distances (q, k) float32 squared L2, ascending; entry_ids
(q, k) int64; rows with fewer than k allowed entries are padded with (inf, -1). The
filter is an `EntryFilter` computed elsewhere; each backend applies it natively.

    exact        brute force in torch, CPU or GPU: the reference for tests
    faiss-flat   faiss IndexFlatL2 under an id map
    faiss-ivfpq  faiss IndexIVFPQ (nlist, M, nbits, nprobe)
    milvus       a Milvus collection (milvus-lite in the folder, or a server)
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from datastore.config import DatastoreConfig
from datastore.filter import EntryFilter
from datastore.knn import KeyValueStore


class KnnIndex(Protocol):
    """The face every kNN backend shows."""

    def search(self, queries: np.ndarray, k: int, filter: EntryFilter | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """(q, dim) float32 -> ((q, k) float32 squared L2, (q, k) int64 entry ids)."""
        ...

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        """Index keys (r, dim) under entry ids (r,) int64."""
        ...

    def remove(self, starts: np.ndarray, ends: np.ndarray) -> None:
        """Physically drop the entries of the id ranges [starts[i], ends[i])."""
        ...

    def save(self) -> None:
        """Persist to the datastore folder."""
        ...

    @property
    def files(self) -> tuple[str, ...]:
        """Names of the files this index keeps in the folder (for the manifest)."""
        ...

    def __len__(self) -> int:
        """Entries currently indexed."""
        ...


def pad_results(dist: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalise backend output: (q, <=k) -> (q, k) float32/int64, (inf, -1) padding."""
    q = dist.shape[0]
    out_d = np.full((q, k), np.inf, dtype=np.float32)
    out_i = np.full((q, k), -1, dtype=np.int64)
    width = min(k, dist.shape[1])
    out_d[:, :width] = dist[:, :width]
    out_i[:, :width] = ids[:, :width]
    missing = out_i < 0
    out_d[missing] = np.inf
    return out_d, out_i


def create_index(config: DatastoreConfig, folder: Path, kv: KeyValueStore,
                 trained: Path | None = None) -> KnnIndex:
    """A new, empty (but trained, where training applies) index for `kv`'s keys.

    `trained` names an existing faiss index file whose trained quantizer is reused, so
    two datastores share one codebook (the equivalence guarantee for IVF-PQ).
    """
    if config.backend == "exact":
        from datastore.index.exact import ExactIndex

        return ExactIndex(kv, config.device)
    if config.backend == "milvus":
        from datastore.index.milvus import MilvusIndex

        return MilvusIndex.create(folder, config, kv.dim)
    from datastore.index.faiss_index import FaissIndex

    return FaissIndex.create(folder, config, kv, trained)


def open_index(config: DatastoreConfig, folder: Path, kv: KeyValueStore) -> KnnIndex:
    """The index of an existing datastore folder."""
    if config.backend == "exact":
        from datastore.index.exact import ExactIndex

        return ExactIndex(kv, config.device)
    if config.backend == "milvus":
        from datastore.index.milvus import MilvusIndex

        return MilvusIndex.from_dir(folder, config, kv.dim)
    from datastore.index.faiss_index import FaissIndex

    return FaissIndex.from_dir(folder, config)
