"""The face every kNN backend shows, and the larger one of an index that replicas share.

Every backend answers `search(queries, k, filter) -> (distances, entry_ids)`: queries
(q, dim) float32; distances (q, k) float32 squared L2, ascending; entry_ids (q, k)
int64; rows with fewer than k allowed entries are padded with (inf, -1) (`pad_results`).
The filter is an `EntryFilter` computed in datastore.filter; each backend applies it
natively.

`SharedKnnIndex` is the index on a server that every replica of a datastore searches
and writes (a Milvus server): its entries carry scalar fields (next token, document row,
licence class, source), so replicas can pull the keys others added, and it is searched
as of a fence timestamp the document table records (datastore.index.milvus_server). The
datastore picks its replica behaviour by which of the two faces its index shows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from datastore.filter import EntryFilter


class KnnIndex(ABC):
    """A kNN index over a datastore's entries, ids = entry ids."""

    @property
    @abstractmethod
    def files(self) -> tuple[str, ...]:
        """Names of the files this index keeps in the folder (for the manifest)."""

    @abstractmethod
    def __len__(self) -> int:
        """Entries currently indexed."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, filter: EntryFilter | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """(q, dim) float32 -> ((q, k) float32 squared L2, (q, k) int64 entry ids)."""

    @abstractmethod
    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        """Index keys (r, dim) under entry ids (r,) int64."""

    @abstractmethod
    def remove(self, starts: np.ndarray, ends: np.ndarray) -> None:
        """Physically drop the entries of the id ranges [starts[i], ends[i])."""

    @abstractmethod
    def save(self) -> None:
        """Persist to the datastore folder (atomically, where it writes a file)."""

    # ---- with defaults: a backend overrides what applies to it ------------------------

    def set_nprobe(self, nprobe: int) -> None:  # noqa: B027 - most backends have no lists
        """The IVF lists searched per query, a search-time setting; nothing to set for a
        backend without lists."""

    @property
    def location(self) -> dict[str, Any] | None:
        """Where the index lives outside the folder (for the manifest); None if inside."""
        return None

    def close(self) -> None:  # noqa: B027 - only backends holding a connection override it
        """Release what the index holds open."""


class SharedKnnIndex(KnnIndex):
    """A kNN index on a server shared by every replica of a datastore."""

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        from datastore.errors import InvalidInputError

        raise InvalidInputError("a shared kNN index takes entries with their fields "
                                "(add_entries)")

    @abstractmethod
    def add_entries(self, keys: np.ndarray, ids: np.ndarray, fields: dict[str, Any]) -> None:
        """Insert entries (r, dim) under ids (r,) with their scalar fields: value,
        charpos, doc_row, license_class (each (r,) ints) and source (r strings)."""

    @abstractmethod
    def delete_rows(self, doc_rows: Sequence[int]) -> None:
        """Delete every entry of the given document rows (an opt-out)."""

    @abstractmethod
    def fence(self) -> int:
        """A server timestamp later than every write this process made to the index."""

    @abstractmethod
    def search_at(self, queries: np.ndarray, k: int, filter: EntryFilter, fence: int,
                  pending: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Search as of the table state the filter was computed from: at its fence,
        excluding the document rows in `pending` (tombstoned, not yet deleted behind it)."""

    @abstractmethod
    def fetch(self, start: int, end: int, fence: int,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Key rows [start, end): keys (n, dim) float32, values and charpos (n,) int32;
        ids the index no longer holds come back erased (zero key, value -1)."""


def pad_results(dist: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalise backend output: (q, <=k) -> (q, k) float32/int64, (inf, -1) padding."""
    q = dist.shape[0]
    if dist.shape[1] == k and dist.dtype == np.float32 and ids.dtype == np.int64:
        dist[ids < 0] = np.inf  # already (q, k): fix the padding in place
        return dist, ids
    out_d = np.full((q, k), np.inf, dtype=np.float32)
    out_i = np.full((q, k), -1, dtype=np.int64)
    width = min(k, dist.shape[1])
    out_d[:, :width] = dist[:, :width]
    out_i[:, :width] = ids[:, :width]
    missing = out_i < 0
    out_d[missing] = np.inf
    return out_d, out_i
