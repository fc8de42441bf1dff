"""IVF-PQ search in torch over a trained faiss IndexIVFPQ: the GPU path where faiss-gpu is
not installed, and the filtered GPU path where it is.

The coarse centroids, PQ codebooks and inverted lists are read out of faiss into tensors
(`IvfPq.from_faiss`), lists laid end to end: codes (n, M) and ids (n,) ordered by list,
with `offsets` (nlist + 1,) marking each list's rows. A search does what faiss's CPU
IndexIVFPQ does (L2, residuals, no polysemous filtering):

    probes   the nprobe nearest coarse centroids c of each query q
    table    lut[p, m, j] = ||r_m - codebook[m, j]||^2, r = q - c for each (query, probe)
    scan     distance of an entry = sum_m lut[p, m, code_m], for every entry of the lists

then drops excluded ids and keeps the k smallest. Queries are scanned in groups whose
candidates number at most `max_candidates`, so memory stays bounded on 50M+ entries.
`TorchIvfPqIndex` is the datastore backend: faiss still trains, adds, removes and saves
the index file; the tensors are re-read after any change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from datastore.filter import EntryFilter
from datastore.index.base import KnnIndex
from datastore.index.torch_search import DeviceFilter, RunningTopK, to_numpy

if TYPE_CHECKING:
    from datastore.index.faiss_index import FaissIndex

CPU_CANDIDATES = 1 << 22  # list entries scanned per group of queries
CUDA_CANDIDATES = 1 << 24
ENCODE_ROWS = 1 << 16  # keys encoded per step
UNPACK_ROWS = 1 << 16  # faiss codes of other than 8 bits unpacked per step


def faiss_has_gpu() -> bool:
    """Is faiss-gpu installed and does it see a GPU?"""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (n, d), b (m, d) float32 -> (n, m) squared L2."""
    return (a.pow(2).sum(1, keepdim=True) - 2 * a @ b.T + b.pow(2).sum(1)).clamp_min_(0)


def _unpack_codes(packed: np.ndarray, m: int, nbits: int) -> np.ndarray:
    """faiss PQ codes (n, code_size) uint8, `nbits` per sub-quantizer packed LSB first ->
    (n, m): the array itself at 8 bits, else int32, unpacked in slices of rows so the
    bit array stays small."""
    if nbits == 8:
        return packed
    weights = 1 << np.arange(nbits, dtype=np.int32)
    out = np.empty((len(packed), m), dtype=np.int32)
    for s in range(0, len(packed), UNPACK_ROWS):
        part = packed[s:s + UNPACK_ROWS]
        bits = np.unpackbits(part, axis=1, bitorder="little")[:, :m * nbits]
        out[s:s + len(part)] = (bits.reshape(len(part), m, nbits) * weights).sum(-1)
    return out


@dataclass
class IvfPq:
    """A trained IVF-PQ index as tensors on one device.

    centroids (nlist, d) float32; codebooks (M, ksub, dsub) float32; codes (n, M) uint8
    (int32 above 8 bits) and ids (n,) int64 ordered by list; offsets (nlist + 1,) int64.
    """

    centroids: torch.Tensor
    codebooks: torch.Tensor
    codes: torch.Tensor
    ids: torch.Tensor
    offsets: torch.Tensor
    by_residual: bool = True
    max_candidates: int = CPU_CANDIDATES

    @property
    def device(self) -> torch.device:
        return self.centroids.device

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_faiss(cls, index: Any, device: str | torch.device = "cpu") -> IvfPq:
        """Read a faiss IndexIVFPQ's quantizer, codebooks and lists onto `device`."""
        import faiss
        from faiss.contrib.inspect_tools import get_invlist

        ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
        pq = ivf.pq
        centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        codebooks = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
        lists = [get_invlist(ivf.invlists, lst) for lst in range(ivf.nlist)]
        sizes = np.array([len(ids) for ids, _ in lists], dtype=np.int64)
        ids = np.concatenate([ids for ids, _ in lists]) if lists else np.zeros(0, np.int64)
        packed = np.concatenate([c for _, c in lists]) if lists else np.zeros((0, pq.code_size),
                                                                            np.uint8)
        codes = _unpack_codes(packed, pq.M, pq.nbits)
        dev = torch.device(device)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        return cls(torch.as_tensor(centroids, device=dev),
                   torch.as_tensor(codebooks, device=dev),
                   torch.as_tensor(codes, dtype=_code_dtype(pq.nbits), device=dev),
                   torch.as_tensor(ids, device=dev), torch.as_tensor(offsets, device=dev),
                   bool(ivf.by_residual), _candidates(dev))

    @classmethod
    def trained(cls, centroids: torch.Tensor, codebooks: torch.Tensor) -> IvfPq:
        """An empty index (residual PQ) over a quantizer trained elsewhere: centroids
        (nlist, d), codebooks (M, ksub, dsub), on the device they are on."""
        dev, m = centroids.device, codebooks.shape[0]
        nbits = max(1, (codebooks.shape[1] - 1).bit_length())
        return cls(centroids, codebooks, torch.zeros((0, m), dtype=_code_dtype(nbits), device=dev),
                   torch.zeros(0, dtype=torch.int64, device=dev),
                   torch.zeros(len(centroids) + 1, dtype=torch.int64, device=dev),
                   True, _candidates(dev))

    @classmethod
    def from_codes(cls, template: IvfPq, lists: torch.Tensor, codes: torch.Tensor,
                   ids: torch.Tensor) -> IvfPq:
        """`template`'s quantizer with these entries: lists (n,) int64 as `encode` gives
        them, codes (n, M), ids (n,) int64, in any order."""
        order = torch.argsort(lists, stable=True)
        sizes = torch.bincount(lists, minlength=len(template.centroids))
        offsets = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])
        return cls(template.centroids, template.codebooks, codes[order], ids[order], offsets,
                   template.by_residual, template.max_candidates)

    @torch.inference_mode()
    def encode(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """keys (n, d) -> (lists (n,) int64, codes (n, M)) as faiss would assign them."""
        lists, codes = [], []
        m, _, dsub = self.codebooks.shape
        for s in range(0, len(keys), ENCODE_ROWS):
            x = keys[s:s + ENCODE_ROWS].to(self.device, torch.float32)
            assign = _sq_dist(x, self.centroids).argmin(1)
            r = x - self.centroids[assign] if self.by_residual else x
            sub = r.view(len(x), m, dsub)
            # per sub-quantizer m: argmin_j ||r_m - codebook[m, j]||^2
            d = (sub.pow(2).sum(-1, keepdim=True)
                 - 2 * torch.einsum("nmd,mjd->nmj", sub, self.codebooks)
                 + self.codebooks.pow(2).sum(-1)[None])
            lists.append(assign)
            codes.append(d.argmin(-1).to(self.codes.dtype))
        return torch.cat(lists), torch.cat(codes)

    def _tables(self, q: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
        """q (a, d), probes (a, nprobe) -> lut (a * nprobe, M, ksub) float32."""
        m, _, dsub = self.codebooks.shape
        r = q[:, None, :] - self.centroids[probes] if self.by_residual else \
            q[:, None, :].expand(-1, probes.shape[1], -1)
        sub = r.reshape(-1, m, dsub)
        return (sub.pow(2).sum(-1, keepdim=True)
                - 2 * torch.einsum("pmd,mjd->pmj", sub, self.codebooks)
                + self.codebooks.pow(2).sum(-1)[None])

    @torch.inference_mode()
    def search_tensor(self, queries: torch.Tensor, k: int, nprobe: int,
                      filter: EntryFilter | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, d) -> ((q, <=k) float32 squared L2 ascending, (q, <=k) int64 ids, -1 where
        the probed lists hold fewer than k allowed entries)."""
        q = queries.to(self.device, torch.float32)
        nprobe = min(nprobe, len(self.centroids))
        probes = torch.topk(_sq_dist(q, self.centroids), nprobe, dim=1, largest=False).indices
        sizes = self.offsets[1:] - self.offsets[:-1]
        per_query = sizes[probes].sum(1).cpu().numpy()  # candidates of each query
        dfilter = DeviceFilter(filter, self.device)
        dist, ids = [], []
        for qs, qe in _groups(per_query, self.max_candidates):
            d, i = self._scan(q[qs:qe], probes[qs:qe], k, dfilter)
            dist.append(d)
            ids.append(i)
        width = max([0, *(d.shape[1] for d in dist)])  # groups may find fewer than k
        return (torch.cat([_pad(d, width, math.inf) for d in dist]),
                torch.cat([_pad(i, width, -1) for i in ids]))

    def _scan(self, q: torch.Tensor, probes: torch.Tensor, k: int, dfilter: DeviceFilter,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances to every entry of each query's probed lists; the k smallest."""
        a, nprobe = probes.shape
        lut = self._tables(q, probes).reshape(-1)  # (a * nprobe * M * ksub,)
        m, ksub = self.codebooks.shape[:2]
        lists = probes.reshape(-1)  # pair p = query p // nprobe, probe p % nprobe
        lens = self.offsets[lists + 1] - self.offsets[lists]
        pair = torch.repeat_interleave(torch.arange(len(lists), device=self.device), lens)
        first = torch.cumsum(lens, 0) - lens  # each pair's first candidate
        at = torch.arange(len(pair), device=self.device)
        pos = self.offsets[lists][pair] + at - first[pair]  # row in codes / ids
        base = pair * (m * ksub)
        codes = self.codes[pos]  # (T, M): one gather of the candidates' codes
        dist = torch.zeros(len(pair), device=self.device)
        for j in range(m):  # one sub-quantizer at a time keeps the int64 index at (T,)
            dist += lut[base + j * ksub + codes[:, j].long()]
        ids = self.ids[pos]
        banned = dfilter.excludes(ids)
        if banned is not None:
            dist.masked_fill_(banned, math.inf)
        # lay each query's candidates out in one padded row, then take the top k
        query = pair // nprobe
        per_query = lens.view(a, nprobe).sum(1)
        col = at - (torch.cumsum(per_query, 0) - per_query)[query]
        width = int(per_query.max()) if a else 0
        rows_d = torch.full((a, width), math.inf, device=self.device)
        rows_i = torch.full((a, width), -1, dtype=torch.int64, device=self.device)
        rows_d[query, col] = dist
        rows_i[query, col] = ids
        top = RunningTopK(a, k, self.device)
        top.push(rows_d, rows_i)
        return top.tensors()


def _code_dtype(nbits: int) -> torch.dtype:
    return torch.uint8 if nbits <= 8 else torch.int32


def _candidates(device: torch.device) -> int:
    return CUDA_CANDIDATES if device.type == "cuda" else CPU_CANDIDATES


def _groups(per_query: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive query ranges [s, e) whose candidate counts sum to at most `budget`
    (a single query over budget forms its own group)."""
    out, start, total = [], 0, 0
    for i, n in enumerate(per_query.tolist()):
        if i > start and total + n > budget:
            out.append((start, i))
            start, total = i, 0
        total += n
    if start < len(per_query):
        out.append((start, len(per_query)))
    return out


def _pad(x: torch.Tensor, width: int, fill: float) -> torch.Tensor:
    """(a, w) -> (a, width) with `fill` on the right."""
    if x.shape[1] == width:
        return x
    pad = torch.full((len(x), width - x.shape[1]), fill, dtype=x.dtype, device=x.device)
    return torch.cat([x, pad], 1)


class TorchIvfPqIndex(KnnIndex):
    """The datastore backend: a FaissIndex (IVF-PQ) searched with torch on `device`.

    faiss trains, adds, removes and saves the index file; the tensors are read out of it
    at the first search after a change. With `faiss_gpu`, unfiltered searches go to
    faiss-gpu instead (FaissIndex clones itself to the GPU) and filtered ones stay here
    (FaissIndex would run them on the CPU, where its IDSelector works).
    """

    def __init__(self, inner: FaissIndex, device: str = "cpu", faiss_gpu: bool = False,
                 ) -> None:
        self.inner = inner
        self.device = torch.device(device)
        self.faiss_gpu = faiss_gpu
        self._tensors: IvfPq | None = None

    @property
    def files(self) -> tuple[str, ...]:
        return self.inner.files

    @property
    def nprobe(self) -> int:
        return self.inner.nprobe

    def set_nprobe(self, nprobe: int) -> None:
        self.inner.set_nprobe(nprobe)

    def __len__(self) -> int:
        return len(self.inner)

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        self.inner.add(keys, ids)
        self._tensors = None

    def remove(self, starts: np.ndarray, ends: np.ndarray) -> None:
        self.inner.remove(starts, ends)
        self._tensors = None

    def save(self) -> None:
        self.inner.save()

    def tensors(self) -> IvfPq:
        """The index as tensors on the device, read out of faiss at most once per change."""
        if self._tensors is None:
            self._tensors = IvfPq.from_faiss(self.inner.index, self.device)
        return self._tensors

    def search(self, queries: np.ndarray, k: int, filter: EntryFilter | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        if self.faiss_gpu and (filter is None or filter.is_empty):
            return self.inner.search(queries, k)
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        dist, ids = self.tensors().search_tensor(q, k, self.nprobe, filter)
        return to_numpy(dist, ids, k)
