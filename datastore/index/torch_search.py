"""What the torch kNN backends share: the entry filter applied on the search's device, and
a running top-k that merges one tile of candidates at a time.

The filter itself is computed in `datastore.filter.compute_filter`; `DeviceFilter` only
moves its excluded id ranges to the device once per search and tests candidate ids
against them there, with the same rule as `EntryFilter.excludes` (ids past the snapshot
are excluded too).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from datastore.filter import EntryFilter
from datastore.index.base import pad_results


class DeviceFilter:
    """An `EntryFilter`'s excluded ranges as tensors on one device (None: no filter)."""

    def __init__(self, filter: EntryFilter | None, device: torch.device) -> None:
        self.active = filter is not None
        self.n_entries = filter.n_entries if filter is not None else 0
        starts = filter.starts if filter is not None else np.zeros(0, np.int64)
        ends = filter.ends if filter is not None else np.zeros(0, np.int64)
        self.starts = torch.as_tensor(starts, dtype=torch.int64, device=device)
        self.ends = torch.as_tensor(ends, dtype=torch.int64, device=device)

    def excludes(self, ids: torch.Tensor) -> torch.Tensor | None:
        """int64 ids of any shape -> bool of that shape, True where excluded; None when
        there is no filter at all (nothing to mask)."""
        if not self.active:
            return None
        outside = (ids < 0) | (ids >= self.n_entries)
        if len(self.starts) == 0:
            return outside
        i = torch.searchsorted(self.starts, ids, right=True) - 1  # last range starting <= id
        return outside | ((i >= 0) & (ids < self.ends[i.clamp_min(0)]))


class RunningTopK:
    """The k smallest distances seen so far per query, merged tile by tile.

    Memory is (q, k) plus one tile; excluded candidates arrive with distance inf and
    end as id -1.
    """

    def __init__(self, n_queries: int, k: int, device: torch.device) -> None:
        self.k = k
        self.dist = torch.full((n_queries, 0), math.inf, device=device)
        self.ids = torch.zeros((n_queries, 0), dtype=torch.int64, device=device)

    def push(self, dist: torch.Tensor, ids: torch.Tensor) -> None:
        """dist (q, c) float32 and ids (q, c) int64 of one tile of candidates."""
        if dist.shape[1] > self.k:  # shrink the tile first: the merge then copies only 2k
            top = torch.topk(dist, self.k, dim=1, largest=False, sorted=False)
            dist, ids = top.values, torch.gather(ids, 1, top.indices)
        dist = torch.cat([self.dist, dist], 1)
        ids = torch.cat([self.ids, ids], 1)
        top = torch.topk(dist, min(self.k, dist.shape[1]), dim=1, largest=False, sorted=True)
        self.dist, self.ids = top.values, torch.gather(ids, 1, top.indices)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, <=k) float32 ascending and int64 ids, -1 where the distance is inf."""
        return self.dist, self.ids.masked_fill(~torch.isfinite(self.dist), -1)


def to_numpy(dist: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Tensor results -> the backends' numpy face: (q, k) float32 and int64, padded."""
    return pad_results(dist.float().cpu().numpy(), ids.cpu().numpy(), k)
