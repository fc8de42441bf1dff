"""The torch backends (the GPU path) against faiss on synthetic keys: torch-exact equals
faiss-flat, torch IVF-PQ equals faiss IVF-PQ at the same nprobe, both under the
equivalence guarantee. Each runs on CPU; the CUDA variants need a CUDA device."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from datastore.config import DatastoreConfig
from datastore.errors import UnavailableError
from datastore.index import torch_ivfpq
from datastore.index.factory import create_index
from datastore.index.faiss_index import FaissIndex
from datastore.index.torch_exact import TorchExactIndex
from datastore.index.torch_ivfpq import IvfPq, TorchIvfPqIndex, _unpack_codes
from datastore.knn import KeyValueStore
from datastore.store.datastore import Datastore
from tests.datastore.index.test_backends import _filter, _queries, _store
from tests.datastore.store import test_datastore as store_tests
from tests.datastore.synthetic import SyntheticEncoder, corpus

NEEDS_CUDA = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = pytest.param("cuda", marks=NEEDS_CUDA)
DEVICES = ["cpu", CUDA]
IVF = {"nlist": 16, "m": 8, "nprobe": 4}


def _tol(device: str) -> float:
    """Relative distance tolerance: fp32 on CPU; fp16 queries on a GPU."""
    return 1e-5 if device == "cpu" else 2e-3


def _assert_same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray],
                 rtol: float) -> None:
    """Equal distances within rtol, and the same neighbours wherever no tie straddles the
    k-th place: a hit clearly inside one top k is in the other (faiss and torch order
    equal distances differently, and fp16 moves near-equal ones)."""
    np.testing.assert_allclose(got[0], want[0], rtol=rtol, atol=rtol)
    for gd, gi, wd, wi in zip(got[0], got[1], want[0], want[1], strict=True):
        finite = wd[np.isfinite(wd)]
        if len(finite) == 0:
            continue
        cutoff = finite.max() - 8 * rtol * (1 + finite.max())
        assert set(wi[wd < cutoff].tolist()) <= set(gi.tolist())
        assert set(gi[gd < cutoff].tolist()) <= set(wi.tolist())


def _faiss_built(folder: Path, kv: KeyValueStore, backend: str, **kw: int) -> FaissIndex:
    index = create_index(DatastoreConfig(backend=backend, **kw), folder, kv)  # type: ignore[arg-type]
    assert isinstance(index, FaissIndex)
    index.add(np.asarray(kv.keys, np.float32), np.arange(len(kv)))
    return index


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("removed_every", [0, 2, 7])
def test_torch_exact_equals_faiss_flat(tmp_path: Path, device: str, removed_every: int) -> None:
    kv = _store(tmp_path)
    flat = _faiss_built(tmp_path, kv, "faiss-flat")
    f = _filter(len(kv), 13, removed_every) if removed_every else None
    for tile in (None, 500):  # the default tile, and tiles narrower than k
        index = TorchExactIndex.from_store(kv, device)
        index.tile_elems = tile or index.tile_elems
        got = index.search(_queries(), 600 if tile else 10, f)
        want = flat.search(_queries(), 600 if tile else 10, f)
        _assert_same(got, want, _tol(device))
        if f is not None:
            assert not f.excludes(got[1]).any()


def test_torch_exact_pads_when_the_filter_leaves_fewer_than_k(tmp_path: Path) -> None:
    kv = _store(tmp_path, n=40)
    f = _filter(len(kv), 4, 2)  # half the documents removed: 20 entries left
    dist, ids = TorchExactIndex.from_store(kv).search(_queries(3), 25, f)
    assert (ids[:, :20] >= 0).all() and (ids[:, 20:] == -1).all()
    assert np.isinf(dist[:, 20:]).all() and not f.excludes(ids[:, :20]).any()


def test_torch_exact_sees_rows_added_after_it_was_opened(tmp_path: Path) -> None:
    kv = _store(tmp_path, n=100)
    index = TorchExactIndex.from_store(kv)
    key = np.full((1, kv.dim), 50.0)
    kv.append(key, np.zeros(1), np.zeros(1))
    _, ids = index.search(key.astype(np.float32), 1)
    assert ids[0, 0] == 100
    kv.append(np.zeros((50, kv.dim)), np.zeros(50), np.zeros(50))
    threads = [threading.Thread(target=index.search, args=(_queries(2), 3)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(index.keys) == len(index.rows[1]) == len(kv)  # rows copied in once


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nbits", [8, 6])
@pytest.mark.parametrize("removed_every", [0, 3])
def test_torch_ivfpq_equals_faiss_ivfpq(tmp_path: Path, device: str, nbits: int,
                                        removed_every: int,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch_ivfpq, "UNPACK_ROWS", 700)  # codes unpacked in several slices
    kv = _store(tmp_path)
    inner = _faiss_built(tmp_path, kv, "faiss-ivfpq", nbits=nbits, **IVF)
    f = _filter(len(kv), 13, removed_every) if removed_every else None
    index = TorchIvfPqIndex(inner, device)
    for nprobe in (1, 4, 16):
        index.set_nprobe(nprobe)
        got = index.search(_queries(), 10, f)
        want = inner.search(_queries(), 10, f)
        _assert_same(got, want, max(_tol(device), 1e-5))
        if f is not None:
            assert not f.excludes(got[1]).any()
    index.tensors().max_candidates = 300  # many small query groups: same answer
    index.set_nprobe(4)
    _assert_same(index.search(_queries(), 10, f), inner.search(_queries(), 10, f), 1e-5)


def test_torch_ivfpq_reads_changes_made_through_faiss(tmp_path: Path) -> None:
    kv = _store(tmp_path)
    index = TorchIvfPqIndex(_faiss_built(tmp_path, kv, "faiss-ivfpq", **IVF))
    f = _filter(len(kv), 13, 3)
    index.search(_queries(), 10)  # tensors read
    index.remove(f.starts, f.ends)
    assert len(index.tensors()) == len(kv) - f.n_excluded_entries
    _, ids = index.search(_queries(), 10)
    assert not f.excludes(ids).any()


def test_torch_encoding_equals_faiss(tmp_path: Path) -> None:
    """`encode` + `from_codes` (how the benchmark fills a store on the GPU) give the
    lists and codes faiss gives, so searches agree."""
    kv = _store(tmp_path)
    inner = _faiss_built(tmp_path, kv, "faiss-ivfpq", **IVF)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(inner.index))
    keys = np.asarray(kv.keys, np.float32)
    ref = IvfPq.from_faiss(inner.index)
    lists, codes = ref.encode(torch.from_numpy(keys))
    want_lists = ivf.quantizer.assign(keys, 1)[:, 0]
    residuals = keys - ivf.quantizer.reconstruct_n(0, ivf.nlist)[want_lists]
    want_codes = _unpack_codes(ivf.pq.compute_codes(residuals), ivf.pq.M, ivf.pq.nbits)
    assert (lists.numpy() == want_lists).mean() > 0.999  # ties aside
    same = lists.numpy() == want_lists
    assert (codes.numpy()[same] == want_codes[same]).mean() > 0.999
    rebuilt = IvfPq.from_codes(ref, lists, codes, torch.arange(len(keys)))
    q = torch.from_numpy(_queries())
    got = rebuilt.search_tensor(q, 10, 4)
    want = ref.search_tensor(q, 10, 4)
    _assert_same((got[0].numpy(), got[1].numpy()), (want[0].numpy(), want[1].numpy()), 1e-4)


def test_device_setting_selects_the_gpu_path(tmp_path: Path) -> None:
    kv = _store(tmp_path, n=300)
    assert isinstance(create_index(DatastoreConfig(backend="torch-exact"), tmp_path, kv),
                      TorchExactIndex)
    ivf = DatastoreConfig(backend="torch-ivfpq", nlist=4, m=4, nbits=4)
    assert isinstance(create_index(ivf, tmp_path, kv), TorchIvfPqIndex)
    with pytest.raises(ValueError, match="device"):
        DatastoreConfig(device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("backend", ["exact", "torch-exact", "faiss-ivfpq", "torch-ivfpq"])
def test_cuda_asked_for_without_a_device_is_a_clear_error(tmp_path: Path, backend: str,
                                                          ) -> None:
    kv = _store(tmp_path, n=300)
    config = DatastoreConfig(backend=backend, device="cuda", nlist=4, m=4, nbits=4)
    with pytest.raises(UnavailableError, match="no CUDA device"):
        create_index(config, tmp_path, kv)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_setting_selects_the_gpu_path(tmp_path: Path) -> None:
    kv = _store(tmp_path)
    exact = create_index(DatastoreConfig(backend="exact", device="cuda"), tmp_path, kv)
    assert isinstance(exact, TorchExactIndex) and exact.keys.dtype == torch.float16
    ivf = create_index(DatastoreConfig(backend="faiss-ivfpq", device="cuda", **IVF),
                       tmp_path, kv)
    assert isinstance(ivf, TorchIvfPqIndex) and ivf.device.type == "cuda"


def _located(store: Datastore, ids: np.ndarray) -> np.ndarray:
    """entry ids (q, k) -> the same shape of 'doc_id:position' (ids differ between stores)."""
    out = np.full(ids.shape, "", dtype=object)
    for r, row in enumerate(ids):
        for c, info in enumerate(store.entry_info([i for i in row.tolist() if i >= 0])):
            out[r, c] = f"{info.doc_id}:{info.position}"
    return out


@pytest.mark.parametrize(("backend", "device"), [
    ("torch-exact", "cpu"), ("torch-ivfpq", "cpu"),
    *(pytest.param(b, "cuda", marks=NEEDS_CUDA)
      for b in ("torch-exact", "torch-ivfpq", "exact", "faiss-ivfpq"))])
def test_filtered_store_equals_store_without_excluded_documents(
        tmp_path: Path, backend: str, device: str) -> None:
    """The equivalence guarantee on the GPU path: a filtered search of the full store
    equals the search of a store built without the excluded documents (same trained
    quantizer for IVF-PQ). On CUDA also through `exact` and `faiss-ivfpq`, which the
    device setting sends there (faiss-gpu for unfiltered searches where installed)."""
    docs = corpus(60, seed=1)
    full = store_tests._build(tmp_path / "full", docs, backend, device=device, bm25=False,
                              ngram=False)
    removed = {"doc-3", "doc-17", "doc-40"}
    full.optout(doc_ids=sorted(removed))
    trained = tmp_path / "full" / "index.faiss" if backend.endswith("ivfpq") else None
    rng = np.random.default_rng(0)
    for trial in range(3):
        request = store_tests._random_filter(rng)
        kept = [d for d in docs if store_tests._allowed(d, request, removed)]
        reduced = Datastore.build(tmp_path / f"reduced{trial}", kept, SyntheticEncoder(),
                                  replace(full.config), progress=False, trained_index=trained)
        queries = store_tests._queries(full, 12, seed=trial)
        got, want = full.knn_search(queries, 8, request), reduced.knn_search(queries, 8)
        rtol = _tol(device)
        _assert_same((got[0], _located(full, got[1])), (want[0], _located(reduced, want[1])),
                     rtol)
        excluded = {d.doc_id for d in docs} - {d.doc_id for d in kept}
        hits = {h.split(":")[0] for h in _located(full, got[1]).ravel() if h}
        assert not hits & excluded
        reduced.close()

