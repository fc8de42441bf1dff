"""Exact kNN search in torch over keys held on the device: the GPU fast path of `exact`.

Unlike `ExactIndex`, which re-reads the memmapped key file on every search, the keys are
loaded once onto the device (fp16 on CUDA, 2 bytes per dim per entry: 50M 512-d keys are
51 GB; fp32 on CPU, where fp16 matmul is slow) with their squared norms, and a search is
a tiled matmul: ||q - x||^2 = ||q||^2 - 2 q.x + ||x||^2 per (query tile, key tile), fed
to a running top-k. A tile holds at most `tile_elems` distances, so the working memory
stays bounded whatever the store's size. Excluded entries get distance inf before the
top-k and are never returned.

On CUDA the products take fp16 inputs and give fp32 outputs (`torch.mm(out_dtype=)`), or
where that overload is missing, the tile is upcast and multiplied in fp32.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

from datastore.filter import EntryFilter
from datastore.index.base import KnnIndex
from datastore.index.torch_search import DeviceFilter, RunningTopK, to_numpy
from datastore.knn import KeyValueStore

LOAD_ROWS = 1 << 20  # key rows copied to the device per step when loading a store
CPU_TILE = 1 << 24  # distances per tile: 64 MiB of fp32 on CPU
CUDA_TILE = 1 << 28  # 1 GiB of fp32 on a GPU


def _key_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


class TorchExactIndex(KnnIndex):
    """Brute force over device-resident keys, in bounded tiles.

    keys: (n, dim) on the device (fp16 on CUDA, fp32 on CPU); row = entry id. With `kv`,
    rows appended to the store later are copied in before the next search.
    """

    files: tuple[str, ...] = ()

    def __init__(self, keys: torch.Tensor, kv: KeyValueStore | None = None,
                 tile_elems: int | None = None) -> None:
        self.device = keys.device
        self.kv = kv
        keys = keys.to(_key_dtype(self.device))
        # (keys, squared norms) swapped as one, so a search never sees one without the other
        self.rows = (keys, self._norms(keys))
        self.tile_elems = tile_elems or (CUDA_TILE if self.device.type == "cuda" else CPU_TILE)
        self._fp32_out = self.device.type == "cuda"  # try torch.mm(out_dtype=) first
        self._sync_lock = threading.Lock()  # searches run concurrently; one copies rows in

    @classmethod
    def from_store(cls, kv: KeyValueStore, device: str = "cpu") -> TorchExactIndex:
        """The index of a key/value store's rows, loaded onto `device`."""
        dev = torch.device(device)
        index = cls(torch.zeros((0, kv.dim), device=dev), kv)
        index._sync()
        return index

    @staticmethod
    def _norms(keys: torch.Tensor) -> torch.Tensor:
        """(n, dim) -> (n,) float32 squared norms, in LOAD_ROWS slices."""
        parts = [keys[s:s + LOAD_ROWS].float().pow(2).sum(1) for s in range(0, len(keys),
                                                                            LOAD_ROWS)]
        return torch.cat(parts) if parts else torch.zeros(0, device=keys.device)

    def _sync(self) -> None:
        """Copy rows the store gained since the last search (an add) onto the device."""
        if self.kv is None or len(self.kv) <= len(self.keys):
            return
        with self._sync_lock:
            (keys, norms), src, new = self.rows, self.kv.keys, []
            for s in range(len(keys), len(src), LOAD_ROWS):
                rows = torch.from_numpy(np.array(src[s:s + LOAD_ROWS]))  # a writable copy
                new.append(rows.to(self.device).to(keys.dtype))
            if new:
                added = torch.cat(new)
                self.rows = (torch.cat([keys, added]), torch.cat([norms, self._norms(added)]))

    @property
    def keys(self) -> torch.Tensor:
        """(n, dim) resident keys, fp16 on CUDA, fp32 on CPU."""
        return self.rows[0]

    def __len__(self) -> int:
        return len(self.kv) if self.kv is not None else len(self.keys)

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        """Nothing to do: the rows are in the key file and are copied in at the next search."""

    def remove(self, starts: np.ndarray, ends: np.ndarray) -> None:
        """Zero the resident rows, as compaction zeroes them in the key file; the filter
        keeps excluding them."""
        keys, norms = self.rows
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            keys[s:e] = 0
            norms[s:e] = 0

    def save(self) -> None:
        """Nothing to save."""

    def _products(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """q (a, dim) and x (b, dim) in the key dtype -> (a, b) float32 inner products."""
        if self._fp32_out:
            try:
                return torch.mm(q, x.T, out_dtype=torch.float32)
            except (RuntimeError, TypeError):  # an older torch: no fp16 -> fp32 overload
                self._fp32_out = False
        return torch.mm(q.float(), x.float().T)

    @torch.inference_mode()
    def search_tensor(self, queries: torch.Tensor, k: int, filter: EntryFilter | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, dim) -> ((q, <=k) float32 squared L2 ascending, (q, <=k) int64 ids, -1
        where fewer than k entries are allowed), on the index's device."""
        self._sync()
        q32 = queries.to(self.device, torch.float32)
        dfilter = DeviceFilter(filter, self.device)
        q_tile = max(1, min(len(q32), self.tile_elems // 4096))
        key_tile = max(1, self.tile_elems // q_tile)
        dist, ids = [], []
        for qs in range(0, len(q32), q_tile):
            d, i = self._search_rows(q32[qs:qs + q_tile], k, dfilter, key_tile, self.rows)
            dist.append(d)
            ids.append(i)
        if not dist:
            return torch.zeros((0, 0), device=self.device), torch.zeros(
                (0, 0), dtype=torch.int64, device=self.device)
        return torch.cat(dist), torch.cat(ids)

    def _search_rows(self, q32: torch.Tensor, k: int, dfilter: DeviceFilter, key_tile: int,
                     rows: tuple[torch.Tensor, torch.Tensor],
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, norms = rows
        q = q32.to(keys.dtype)
        q_sq = q32.pow(2).sum(1, keepdim=True)  # (a, 1)
        top = RunningTopK(len(q), k, self.device)
        for start in range(0, len(keys), key_tile):
            x = keys[start:start + key_tile]
            # ||x||^2 - 2 q.x ranks keys as the squared L2 does; ||q||^2 is added to the k kept
            d = self._products(q, x).mul_(-2).add_(norms[start:start + len(x)])  # (a, b)
            ids = torch.arange(start, start + len(x), device=self.device)
            banned = dfilter.excludes(ids)
            if banned is not None:
                d.masked_fill_(banned[None], math.inf)
            top.push(d, ids.expand(len(q), -1))
        dist, ids = top.tensors()
        return dist.add_(q_sq).clamp_min_(0), ids  # (a, <=k) squared L2

    def search(self, queries: np.ndarray, k: int, filter: EntryFilter | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        dist, ids = self.search_tensor(q, k, filter)
        return to_numpy(dist, ids, k)
