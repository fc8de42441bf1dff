"""Pointers (datastore.pointers) against a brute-force reference and under the filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datastore.config import DatastoreConfig
from datastore.filter import SearchFilter
from datastore.pointers import exact_distances, nearest, successors
from datastore.store.datastore import Datastore
from tests.datastore.synthetic import SyntheticEncoder, corpus

CONFIG = DatastoreConfig(backend="exact", ngram=False, bm25=False)


@pytest.fixture
def built(tmp_path: Path) -> tuple[Datastore, SyntheticEncoder, list]:
    enc = SyntheticEncoder()
    docs = corpus(12, seed=1)
    return Datastore.build(tmp_path / "s", docs, enc, CONFIG, progress=False), enc, docs


def test_successors_follow_only_agreeing_neighbours_within_their_document(built) -> None:
    store, _, _ = built
    snap, values = store.snapshot, np.asarray(store.kv.values)
    first_end = int(snap.entry_end[0])
    prev = np.array([[0, 1, first_end - 1, -1]])
    tokens = np.array([values[0]])
    got = successors(store.entry_filter(), values, prev, tokens)[0]
    want = [1 if values[0] == values[0] else -1, 2 if values[1] == values[0] else -1,
            -1, -1]  # the last entry of a document has no successor; -1 stays -1
    assert got.tolist() == want
    store.optout(doc_ids=[snap.doc_ids[0]])
    assert (successors(store.entry_filter(), values, prev, tokens) == -1).all()


def test_exact_distances_and_nearest_match_a_brute_force_reference(built) -> None:
    store, _, _ = built
    keys = np.asarray(store.kv.keys, dtype=np.float32)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((3, keys.shape[1])).astype(np.float32)
    ids = np.array([[0, 5, -1], [7, 2, 3], [-1, -1, 4]])
    d = exact_distances(store.kv.keys, q, ids)
    for i in range(3):
        for j in range(3):
            want = np.inf if ids[i, j] < 0 else ((keys[ids[i, j]] - q[i]) ** 2).sum()
            assert d[i, j] == pytest.approx(want, rel=1e-5)
    dist, got = nearest(d, ids, 4)
    assert got.shape == (3, 4) and (dist[:, :-1] <= dist[:, 1:]).all()
    assert set(got[2].tolist()) == {4, -1}


def test_follow_searches_where_too_few_pointers_remain(built) -> None:
    store, _, _ = built
    rng = np.random.default_rng(1)
    q = rng.standard_normal((4, store.kv.dim)).astype(np.float32)
    d0, i0 = store.knn_search(q, 5)
    dist, ids, searched = store.follow(q, None, None, 5, None, 1)  # nothing to follow
    assert searched.all() and np.array_equal(ids, i0) and np.allclose(dist, d0)
    values = np.asarray(store.kv.values)
    prev, tokens = i0, values[i0[:, 0]]  # the nearest neighbour's token came next
    dist, ids, searched = store.follow(q, prev, tokens, 5, None, 1)
    assert not searched.any()  # each row has at least its nearest's successor
    assert (ids[:, 0] >= 0).all()
    _, _, searched = store.follow(q, prev, tokens, 5, None, 10**6)  # never enough
    assert searched.all()


def test_followed_results_equal_a_store_that_never_held_the_excluded(tmp_path: Path) -> None:
    enc = SyntheticEncoder()
    docs = corpus(12, seed=2)
    full = Datastore.build(tmp_path / "full", docs, enc, CONFIG, progress=False)
    drop = {docs[1].doc_id, docs[4].doc_id}
    reduced = Datastore.build(tmp_path / "reduced", [d for d in docs if d.doc_id not in drop],
                              enc, CONFIG, progress=False)
    full.optout(doc_ids=sorted(drop))
    rng = np.random.default_rng(3)
    q = rng.standard_normal((6, full.kv.dim)).astype(np.float32)
    flt = SearchFilter()

    def docpos(store: Datastore, ids: np.ndarray) -> list:
        rows = store.snapshot.rows_of_entries(ids)
        return [[None if e < 0 else (store.snapshot.doc_ids[r],
                                     int(e - store.snapshot.entry_start[r]))
                 for e, r in zip(a, b, strict=True)] for a, b in zip(ids, rows, strict=True)]

    (_, ia), (_, ib) = full.knn_search(q, 6, flt), reduced.knn_search(q, 6)
    ta, tb = np.asarray(full.kv.values)[ia[:, 0]], np.asarray(reduced.kv.values)[ib[:, 0]]
    fa = full.follow(q, ia, ta, 6, flt, 2)
    fb = reduced.follow(q, ib, tb, 6, None, 2)
    assert np.array_equal(fa[2], fb[2])
    assert docpos(full, fa[1]) == docpos(reduced, fb[1])
    np.testing.assert_allclose(fa[0], fb[0], rtol=1e-5)
    named = {x[0] for row in docpos(full, fa[1]) for x in row if x}
    assert named and not named & drop
