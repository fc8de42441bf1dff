"""Every kNN backend against a numpy brute-force reference, with and without filters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datastore.config import DatastoreConfig
from datastore.filter import EntryFilter
from datastore.index.factory import create_index, open_index
from datastore.knn import KeyValueStore
from datastore.table.records import snapshot_of

DIM = 16


def _store(folder: Path, n: int = 3000, seed: int = 0) -> KeyValueStore:
    """Clustered fp16 keys, so IVF has structure to find."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, DIM)) * 3
    keys = centers[rng.integers(0, 20, n)] + rng.standard_normal((n, DIM))
    kv = KeyValueStore(folder, DIM)
    kv.append(keys, np.arange(n), np.zeros(n))
    return kv


def _filter(n: int, doc_len: int, removed_every: int) -> EntryFilter:
    """Documents of `doc_len` entries; every `removed_every`-th one removed."""
    starts = np.arange(0, n, doc_len)
    ends = np.minimum(starts + doc_len, n)
    k = len(starts)
    ranges = np.stack([starts, ends, np.arange(k), np.arange(1, k + 1)], 1)
    removed = np.arange(k) % removed_every == 0
    snap = snapshot_of([f"d{i}" for i in range(k)], ["pd"] * k, ["s"] * k, removed, ranges)
    return EntryFilter(snap, snap.removed)


def _brute(kv: KeyValueStore, q: np.ndarray, k: int, f: EntryFilter | None,
           ) -> tuple[np.ndarray, np.ndarray]:
    keys = np.asarray(kv.keys, np.float64)
    d = ((q[:, None, :].astype(np.float64) - keys[None]) ** 2).sum(-1)
    if f is not None:
        d[:, f.excludes(np.arange(len(keys)))] = np.inf
    ids = np.argsort(d, 1, kind="stable")[:, :k]
    return np.take_along_axis(d, ids, 1), ids


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want,
                                                                          strict=True)]))


def _queries(n: int = 20) -> np.ndarray:
    return (np.random.default_rng(9).standard_normal((n, DIM)) * 3).astype(np.float32)


def _built(tmp_path: Path, backend: str, **kw: int):  # type: ignore[no-untyped-def]
    tmp_path.mkdir(parents=True, exist_ok=True)
    kv = _store(tmp_path)
    config = DatastoreConfig(backend=backend, **kw)  # type: ignore[arg-type]
    index = create_index(config, tmp_path, kv)
    index.add(np.asarray(kv.keys, np.float32), np.arange(len(kv)))
    index.save()
    return kv, config, index


@pytest.mark.parametrize("backend", ["exact", "faiss-flat"])
@pytest.mark.parametrize("removed_every", [0, 2, 7])
def test_exact_backends_equal_brute_force(tmp_path: Path, backend: str,
                                          removed_every: int) -> None:
    kv, config, _ = _built(tmp_path, backend)
    index = open_index(config, tmp_path, kv)  # the saved one
    f = _filter(len(kv), 13, removed_every) if removed_every else None
    dist, ids = index.search(_queries(), 10, f)
    want_d, want_i = _brute(kv, _queries(), 10, f)
    np.testing.assert_allclose(dist, want_d, rtol=1e-4, atol=1e-3)
    assert _recall(ids, want_i) > 0.99  # ties aside, the same neighbours
    if f is not None:
        assert not f.excludes(ids).any()


@pytest.mark.parametrize(("backend", "m", "nbits"), [("faiss-ivfpq", 8, 6),
                                                     ("faiss-ivfpq-fs", 16, 4)])
def test_ivfpq_recall_and_filter(tmp_path: Path, backend: str, m: int, nbits: int) -> None:
    kv, config, built = _built(tmp_path, backend, nlist=16, m=m, nbits=nbits, nprobe=4)
    index = open_index(config, tmp_path, kv)  # the saved one
    f = _filter(len(kv), 13, 3)
    _, want = _brute(kv, _queries(), 10, f)
    dist, ids = index.search(_queries(), 10, f)
    assert not f.excludes(ids).any()
    assert _recall(ids, want) > 0.5  # PQ with 6- or 4-bit codes on 16-d keys: approximate
    assert (np.diff(dist, axis=1) >= 0).all()  # ascending, as every backend returns them
    index.remove(f.starts, f.ends)
    assert len(index) == len(kv) - f.n_excluded_entries
    _, after = index.search(_queries(), 10)  # removed physically: no filter needed
    assert not f.excludes(after).any()


def test_fastscan_finds_what_plain_ivfpq_finds_at_the_same_code_size(tmp_path: Path) -> None:
    """4-bit fast-scan codes with one dimension per sub-quantizer against 8-bit codes with
    two: the same bytes per entry, and about the same neighbours."""
    _, _, plain = _built(tmp_path / "plain", "faiss-ivfpq", nlist=16, m=8, nbits=8, nprobe=16)
    kv, _, fast = _built(tmp_path / "fast", "faiss-ivfpq-fs", nlist=16, m=16, nbits=4,
                         nprobe=16)
    _, want = _brute(kv, _queries(), 10, None)
    assert _recall(fast.search(_queries(), 10)[1], want) >= \
        _recall(plain.search(_queries(), 10)[1], want) - 0.1


def test_fastscan_config_is_checked() -> None:
    with pytest.raises(ValueError, match="nbits must be 4"):
        DatastoreConfig(backend="faiss-ivfpq-fs", nbits=8)
    with pytest.raises(ValueError, match="CPU index"):
        DatastoreConfig(backend="faiss-ivfpq-fs", nbits=4, device="cuda")


def test_index_too_small_to_train_is_a_clear_error(tmp_path: Path) -> None:
    from datastore.errors import InvalidInputError

    kv = _store(tmp_path, n=100)
    with pytest.raises(InvalidInputError, match="nlist=4096"):
        create_index(DatastoreConfig(backend="faiss-ivfpq", m=4), tmp_path, kv)
    with pytest.raises(InvalidInputError, match="M=5"):
        create_index(DatastoreConfig(backend="faiss-ivfpq", m=5), tmp_path, kv)


@pytest.mark.slow
def test_milvus_lite_equals_brute_force_and_deletes(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    kv, config, index = _built(tmp_path, "milvus")
    f = _filter(len(kv), 13, 4)
    dist, ids = index.search(_queries(), 10, f)
    want_d, want_i = _brute(kv, _queries(), 10, f)
    np.testing.assert_allclose(dist, want_d, rtol=1e-3, atol=1e-2)
    assert _recall(ids, want_i) > 0.99
    index.remove(f.starts[:3], f.ends[:3])
    removed = int((f.ends[:3] - f.starts[:3]).sum())
    assert len(index) == len(kv) - removed
    index.close()  # type: ignore[attr-defined]
    reopened = open_index(config, tmp_path, kv)  # load_collection after reopening
    assert len(reopened) == len(kv) - removed
    _, again = reopened.search(_queries(), 10, f)
    assert _recall(again, want_i) > 0.99
