"""Which kNN backend a datastore's config names, created or opened (datastore.index.base
has the face they all show).

    exact        brute force in torch over the key file: the reference for tests
    faiss-flat   faiss IndexFlatL2 under an id map
    faiss-ivfpq  faiss IndexIVFPQ (nlist, M, nbits, nprobe)
    faiss-ivfpq-fs  faiss IndexIVFPQFastScan: 4-bit codes scanned with SIMD (CPU only)
    milvus       a Milvus collection (milvus-lite in the folder, or a server)
    torch-exact  brute force in torch over keys held on the device, in bounded tiles
    torch-ivfpq  the faiss IVF-PQ index file, searched by torch on the device

The config's `device` picks the GPU path: with "cuda", `exact` is `torch-exact` (fp16
keys on the GPU) and `faiss-ivfpq` searches on the GPU: faiss-gpu where it is installed
(unfiltered searches; filtered ones need an IDSelector, which faiss-gpu lacks), the torch
IVF-PQ otherwise. Both torch backends also run on CPU, where they are tested.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datastore.config import DatastoreConfig
from datastore.errors import UnavailableError
from datastore.index.base import KnnIndex
from datastore.knn import KeyValueStore


def _on_gpu(config: DatastoreConfig) -> bool:
    """Does the config ask for CUDA? An error where it does and none is here."""
    if not config.device.startswith("cuda"):
        return False
    import torch

    if not torch.cuda.is_available():
        raise UnavailableError(f"the datastore's device is {config.device!r} but no CUDA "
                               "device is available here (set device to cpu)")
    return True


def _torch_exact(config: DatastoreConfig, kv: KeyValueStore) -> KnnIndex | None:
    """The exact backend the config asks for, or None when it asks for another."""
    if config.backend == "exact" and not _on_gpu(config):
        from datastore.index.exact import ExactIndex

        return ExactIndex(kv, config.device)
    if config.backend in ("exact", "torch-exact"):
        _on_gpu(config)  # fails clearly where CUDA is asked for and absent
        from datastore.index.torch_exact import TorchExactIndex

        return TorchExactIndex.from_store(kv, config.device)
    return None


def _ivfpq_on_torch(config: DatastoreConfig) -> tuple[bool, bool]:
    """(search IVF-PQ with torch, hand unfiltered searches to faiss-gpu)."""
    if config.backend == "torch-ivfpq":
        _on_gpu(config)  # fails clearly where CUDA is asked for and absent
        return True, False
    if config.backend == "faiss-ivfpq" and _on_gpu(config):
        from datastore.index.torch_ivfpq import faiss_has_gpu

        return True, faiss_has_gpu()
    return False, False


def create_index(config: DatastoreConfig, folder: Path, kv: KeyValueStore,
                 trained: Path | None = None, entries: np.ndarray | None = None) -> KnnIndex:
    """A new, empty (but trained, where training applies) index for `kv`'s keys.

    `trained` names an existing faiss index file whose trained quantizer is reused, so
    two datastores share one codebook (the equivalence guarantee for IVF-PQ). `entries`
    limits IVF-PQ training to those key rows (the others are erased or opted out).
    """
    return _index(config, folder, kv, create=True, trained=trained, entries=entries)


def open_index(config: DatastoreConfig, folder: Path, kv: KeyValueStore) -> KnnIndex:
    """The index of an existing datastore folder."""
    return _index(config, folder, kv, create=False)


def _index(config: DatastoreConfig, folder: Path, kv: KeyValueStore, create: bool,
           trained: Path | None = None, entries: np.ndarray | None = None) -> KnnIndex:
    exact = _torch_exact(config, kv)
    if exact is not None:
        return exact
    if config.backend == "milvus" and config.shares_index:
        from datastore.index.milvus_server import MilvusServerIndex

        return (MilvusServerIndex.create(folder, config, kv.dim) if create
                else MilvusServerIndex.from_dir(folder, config, kv.dim))
    if config.backend == "milvus":
        from datastore.index.milvus import MilvusIndex

        return (MilvusIndex.create(folder, config, kv.dim) if create
                else MilvusIndex.from_dir(folder, config, kv.dim))
    from datastore.index.faiss_index import FaissIndex

    use_torch, faiss_gpu = _ivfpq_on_torch(config)
    inner = (FaissIndex.create(folder, config, kv, trained, entries) if create
             else FaissIndex.from_dir(folder, config))
    if use_torch:
        from datastore.index.torch_ivfpq import TorchIvfPqIndex

        return TorchIvfPqIndex(inner, config.device, faiss_gpu)
    return inner
