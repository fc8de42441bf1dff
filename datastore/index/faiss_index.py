"""faiss backends: exact Flat (under an id map), IVF-PQ and IVF-PQ fast-scan (4-bit codes
scanned with SIMD lookups), searched with IDSelectors.

The filter is applied inside faiss through an `IDSelectorBitmap` over entry ids, so
excluded entries are skipped during the scan rather than over-fetched and dropped: with
IVF the cost is one bit test per scanned code. SILO's IVF-PQ parameters are nlist 4096,
M 64, 8 bits, nprobe 8. Where faiss-gpu is installed, unfiltered searches run on the GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from datastore.config import DatastoreConfig
from datastore.errors import CorruptDatastoreError, InvalidInputError
from datastore.filter import EntryFilter, range_bitmap
from datastore.index.base import KnnIndex, pad_results
from datastore.knn import KeyValueStore

INDEX_FILE = "index.faiss"
FASTSCAN_QUERIES_PER_LIST = 2


def _new_index(config: DatastoreConfig, dim: int) -> Any:
    if config.backend == "faiss-flat":
        return faiss.IndexIDMap2(faiss.IndexFlatL2(dim))
    if dim % config.m:
        raise InvalidInputError(f"IVF-PQ: M={config.m} must divide the key dim {dim}")
    if config.backend == "faiss-ivfpq-fs":
        return faiss.IndexIVFPQFastScan(faiss.IndexFlatL2(dim), dim, config.nlist, config.m,
                                        config.nbits)
    return faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, config.nlist, config.m, config.nbits)


def _training_sample(kv: KeyValueStore, size: int, entries: np.ndarray | None = None,
                     seed: int = 0) -> np.ndarray:
    """(min(size, n), dim) float32 rows drawn evenly at random from the key file, or from
    its rows `entries` where given."""
    pool = np.arange(len(kv)) if entries is None else entries
    rows = np.sort(np.random.default_rng(seed).choice(pool, size=min(size, len(pool)),
                                                      replace=False))
    return np.asarray(kv.keys[rows], dtype=np.float32)


def _train(index: Any, config: DatastoreConfig, kv: KeyValueStore,
           entries: np.ndarray | None) -> None:
    need = max(config.nlist, 2 ** config.nbits)
    have = len(kv) if entries is None else len(entries)
    if have < need:
        raise InvalidInputError(
            f"IVF-PQ with nlist={config.nlist}, nbits={config.nbits} needs at least {need} "
            f"entries to train; the datastore has {have} (lower nlist/nbits or use "
            "faiss-flat)")
    index.train(_training_sample(kv, config.train_size, entries))


class FaissIndex(KnnIndex):
    """A faiss index file in the datastore folder, ids = entry ids."""

    files: tuple[str, ...] = (INDEX_FILE,)

    def __init__(self, index: Any, path: Path, nprobe: int) -> None:
        self.index = index
        self.path = path
        self.nprobe = nprobe
        self._gpu: Any = None
        if isinstance(index, faiss.IndexIVFFastScan):
            # queries scanned together per list (faiss's default 11): 2 was 10% faster
            # on the reproduction's store at k 3072-4096 with identical results
            # (docs/BENCHMARKS.md); not stored in the index file
            index.qbs2 = FASTSCAN_QUERIES_PER_LIST  # type: ignore[attr-defined]

    @classmethod
    def create(cls, folder: Path, config: DatastoreConfig, kv: KeyValueStore,
               trained: Path | None = None, entries: np.ndarray | None = None) -> FaissIndex:
        """An empty index; IVF-PQ is trained on a sample of `kv` (of its rows `entries`
        where given) or copied from `trained`."""
        if trained is not None:
            index = cls._read(trained)
            index.reset()  # keep the trained quantizer and codebooks, drop the vectors
        else:
            index = _new_index(config, kv.dim)
            if not index.is_trained:
                _train(index, config, kv, entries)
        return cls(index, Path(folder) / INDEX_FILE, config.nprobe)

    @classmethod
    def from_dir(cls, folder: Path, config: DatastoreConfig) -> FaissIndex:
        path = Path(folder) / INDEX_FILE
        return cls(cls._read(path), path, config.nprobe)

    @staticmethod
    def _read(path: Path) -> Any:
        if not path.exists():
            raise CorruptDatastoreError(f"{path}: missing")
        try:
            return faiss.read_index(str(path))
        except RuntimeError as e:
            raise CorruptDatastoreError(f"{path}: not a readable faiss index ({e})") from None

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def set_nprobe(self, nprobe: int) -> None:
        self.nprobe = nprobe

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(keys, dtype=np.float32),
                                np.ascontiguousarray(ids, dtype=np.int64))
        self._gpu = None

    def remove(self, starts: np.ndarray, ends: np.ndarray) -> None:
        if len(starts) == 0:
            return
        bitmap = range_bitmap(starts, ends, int(ends[-1]), inside=True)
        self.index.remove_ids(faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)))
        self._gpu = None

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        faiss.write_index(self.index, str(tmp))
        tmp.replace(self.path)  # atomic: a crash leaves the old or the new index

    def _params(self, selector: Any) -> Any:
        if isinstance(self.index, faiss.IndexIVF):
            ivf = faiss.SearchParametersIVF()
            ivf.nprobe = self.nprobe
            ivf.sel = selector  # None = no selector
            return ivf
        params = faiss.SearchParameters()
        params.sel = selector
        return params

    def _gpu_index(self) -> Any:
        """The index cloned to the GPU where faiss-gpu sees one, else None."""
        if isinstance(self.index, faiss.IndexIVFFastScan):
            return None  # fast-scan has no GPU implementation
        if self._gpu is None and hasattr(faiss, "StandardGpuResources") \
                and faiss.get_num_gpus() > 0:
            self._res = faiss.StandardGpuResources()
            self._gpu = faiss.index_cpu_to_gpu(self._res, 0, self.index)
        return self._gpu

    def search(self, queries: np.ndarray, k: int, filter: EntryFilter | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if filter is None or filter.is_empty:
            gpu = self._gpu_index()
            if gpu is not None:
                if isinstance(self.index, faiss.IndexIVF):
                    gpu.nprobe = self.nprobe
                dist, ids = gpu.search(q, k)
                return pad_results(dist, ids, k)
            dist, ids = self.index.search(q, k, params=self._params(None))
        else:
            # `filter` owns the bitmap the selector points into; it lives past this call
            dist, ids = self.index.search(q, k, params=self._params(filter.faiss_selector()))
        return pad_results(dist, ids, k)
