"""Exact brute-force kNN search in torch over the memmapped fp16 keys.

The reference every fast path is tested against. Keys are read in chunks, so memory
stays bounded by the chunk size whatever the store's size; on a GPU the chunks are
moved to the device. Excluded entries get an infinite distance before the top-k.

Ties go to the lower entry id, as in faiss: a store and its filtered copy then agree on
which of two equally distant entries is kept, so results are a function of the allowed
entries alone (what the equivalence guarantee and the pointer path rely on).
"""

from __future__ import annotations

import numpy as np
import torch

from datastore.filter import EntryFilter
from datastore.index.base import KnnIndex, pad_results
from datastore.knn import KeyValueStore

CHUNK_ROWS = 65_536  # keys scored per step: 65536 x dim fp32 on the device


class ExactIndex(KnnIndex):
    """Brute force over every row of the key/value store (no files of its own)."""

    files: tuple[str, ...] = ()

    def __init__(self, kv: KeyValueStore, device: str = "cpu") -> None:
        self.kv = kv
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.kv)

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        """Nothing to do: the rows are already in the key file."""

    def remove(self, starts: np.ndarray, ends: np.ndarray) -> None:
        """Nothing to do: compaction zeroes the rows and the filter keeps excluding them."""

    def save(self) -> None:
        """Nothing to save."""

    @torch.inference_mode()
    def search(self, queries: np.ndarray, k: int, filter: EntryFilter | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        q = torch.as_tensor(np.asarray(queries, dtype=np.float32), device=self.device)
        best_d = torch.full((len(q), 0), float("inf"), device=self.device)
        best_i = torch.zeros((len(q), 0), dtype=torch.int64, device=self.device)
        keys = self.kv.keys
        q_sq = (q * q).sum(1, keepdim=True)  # (q, 1)
        for start in range(0, len(keys), CHUNK_ROWS):
            x = torch.as_tensor(np.asarray(keys[start:start + CHUNK_ROWS], dtype=np.float32),
                                device=self.device)  # (c, dim)
            # (q, c) squared L2, |q|^2 - 2 q.x + |x|^2, in place on the product
            d = (q @ x.T).mul_(-2).add_(q_sq).add_((x * x).sum(1)[None, :])
            ids = torch.arange(start, start + len(x), device=self.device)
            if filter is not None and not filter.is_empty:
                banned = torch.as_tensor(filter.excludes(ids.cpu().numpy()), device=self.device)
                d[:, banned] = float("inf")
            d = d.clamp_min_(0)
            if best_d.shape[1]:
                d = torch.cat([best_d, d], 1)
                all_i = torch.cat([best_i, ids.expand(len(q), -1)], 1)
            else:  # the first chunk: its ids as a view, not a (q, c) copy
                all_i = ids.expand(len(q), -1)
            best_d, best_i = smallest(d, all_i, min(k, d.shape[1]))
        dist, ids_np = best_d.cpu().numpy(), best_i.cpu().numpy()
        ids_np[~np.isfinite(dist)] = -1
        return pad_results(dist, ids_np, k)


def smallest(d: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest distances of each row in (distance, id) order.

    d (q, c) float32 >= 0, ids (q, c) int64 in [0, 2**31) (a broadcast view will do)
    -> (q, k) each. topk does not order ties, so rows where a finite tie straddles the
    k-th place are ordered in full (rare: equal keys at the boundary), and the k selected
    are then sorted by (distance, id).
    """
    top = torch.topk(d, k, dim=1, largest=False, sorted=False)  # sorted below, with ids
    sel_d, sel_i = top.values, torch.gather(ids, 1, top.indices)
    kth = sel_d.max(1, keepdim=True).values
    straddle = ((d <= kth).sum(1) > k) & torch.isfinite(kth[:, 0])
    for r in straddle.nonzero()[:, 0].tolist():
        by_id = torch.argsort(ids[r], stable=True)
        order = by_id[torch.argsort(d[r, by_id], stable=True)[:k]]
        sel_d[r], sel_i[r] = d[r, order], ids[r, order]
    # (distance, id) in one sort: a non-negative float's bits order as the float does
    # (+ 0.0 turns -0.0 into 0.0), so the bits above the id make one int64 key per entry
    bits = (sel_d + 0.0).view(torch.int32).to(torch.int64)
    order = torch.argsort((bits << 32) | sel_i, dim=1)
    sel_d, sel_i = torch.gather(sel_d, 1, order), torch.gather(sel_i, 1, order)
    return sel_d, sel_i
