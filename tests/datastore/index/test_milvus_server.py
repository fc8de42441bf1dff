"""The kNN index on a Milvus server: the equivalence guarantee (opt-out and licence
policy equal a store that never held the documents, FLAT), a constant-size filter,
replicas that see each other's adds and opt-outs at once, and ANN recall."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from datastore.config import DatastoreConfig
from datastore.document import Document, LicenseClass
from datastore.filter import SearchFilter
from datastore.index.milvus_server import _expression, public_uri
from datastore.store.datastore import Datastore
from datastore.table.factory import DATABASE_ENV
from tests.datastore.synthetic import SyntheticEncoder, corpus


def _build(path: Path, docs: list[Document], uri: str, kind: str = "FLAT") -> Datastore:
    config = DatastoreConfig(backend="milvus", milvus_uri=uri, milvus_index=kind, nlist=16,
                             m=4, nbits=8, nprobe=16, flush_entries=256, encode_batch=8)
    return Datastore.build(path, docs, SyntheticEncoder(), config, progress=False)


def _located(store: Datastore, ids: np.ndarray) -> list[list[tuple[str, int]]]:
    return [[(e.doc_id, e.position) for e in store.entry_info([i for i in row if i >= 0])]
            for row in ids.tolist()]


def _queries(store: Datastore, n: int = 12) -> np.ndarray:
    rng = np.random.default_rng(1)
    rows = rng.choice(len(store.kv), size=n, replace=False)
    return (np.asarray(store.kv.keys[rows], np.float32)
            + 0.05 * rng.standard_normal((n, store.kv.dim))).astype(np.float32)


def test_optout_and_policy_equal_a_store_that_never_held_the_documents(
        tmp_path: Path, milvus_uri: str) -> None:
    docs = corpus(40, seed=2)
    gone = {"doc-3", "doc-11", "doc-25"}
    with _build(tmp_path / "full", docs, milvus_uri) as full, \
            _build(tmp_path / "never", [d for d in docs if d.doc_id not in gone],
                   milvus_uri) as never:
        manifest = json.loads((tmp_path / "full" / "manifest.json").read_text())
        assert manifest["index_location"]["uri"] == milvus_uri
        q = _queries(full)
        full.optout(doc_ids=sorted(gone))
        d_full, i_full = full.knn_search(q, 6)
        d_never, i_never = never.knn_search(q, 6)
        np.testing.assert_allclose(d_full, d_never, rtol=1e-5)
        assert _located(full, i_full) == _located(never, i_never)
        policy = SearchFilter(policy=frozenset({LicenseClass.PD, LicenseClass.SW}))
        allowed = [d for d in docs if d.doc_id not in gone
                   and d.license_class in policy.policy]  # type: ignore[operator]
        with _build(tmp_path / "pol", allowed, milvus_uri) as only:
            d_pol, i_pol = full.knn_search(q, 6, policy)
            d_only, i_only = only.knn_search(q, 6)
            np.testing.assert_allclose(d_pol, d_only, rtol=1e-5)
            assert _located(full, i_pol) == _located(only, i_only)


def test_the_filter_expression_does_not_grow_with_optouts(tmp_path: Path,
                                                          milvus_uri: str) -> None:
    with _build(tmp_path / "ds", corpus(30, seed=4), milvus_uri) as store:
        policy = SearchFilter(policy=frozenset({LicenseClass.PD}))
        before = _expression(store.entry_filter(policy), ())
        for i in range(0, 20, 2):
            store.optout(doc_ids=[f"doc-{i}"])
        after = _expression(store.entry_filter(policy), store.view.pending)
        assert store.view.pending == ()  # every delete is behind the fence
        assert after is not None and before is not None
        assert len(after) <= len(before) + 8 and "doc_row" not in after


def test_replicas_see_each_others_adds_and_optouts_at_once(
        tmp_path: Path, milvus_uri: str, pg_database: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATABASE_ENV, pg_database)
    docs = corpus(30, seed=6)
    _build(tmp_path / "a", docs[:20], milvus_uri).close()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with Datastore.open(tmp_path / "a") as a, Datastore.open(tmp_path / "b") as b:
        a.add_documents(docs[20:], SyntheticEncoder())
        q = np.asarray(a.kv.keys[-5:], np.float32)  # keys of the added documents
        d_a, i_a = a.knn_search(q, 3)
        d_b, i_b = b.knn_search(q, 3)  # b pulls the added key rows from the index
        assert len(b.kv) == len(a.kv) and np.array_equal(i_a, i_b)
        assert np.array_equal(b.values(i_b), a.values(i_a))
        added = docs[25]  # b's BM25 and n-gram indexes took the documents a added
        assert added.doc_id in {h.doc_id for h in b.bm25_search(added.text, 5)}
        assert added.doc_id in {m.doc_id for m in b.verbatim(added.text, 5)}
        victim = _located(b, i_b)[0][0][0]
        assert victim in {d.doc_id for d in docs[20:]}
        b.optout(doc_ids=[victim])
        _, i_after = a.knn_search(q, 3)
        assert victim not in {doc for row in _located(a, i_after) for doc, _ in row}


@pytest.mark.parametrize("kind", ["HNSW", "IVF_PQ"])
def test_ann_indexes_reach_a_high_recall(tmp_path: Path, milvus_uri: str, kind: str,
                                         ) -> None:
    docs = corpus(120, seed=8)
    with _build(tmp_path / "ann", docs, milvus_uri, kind) as ann, \
            _build(tmp_path / "flat", docs, milvus_uri) as flat:
        q = _queries(flat, 20)
        _, exact = flat.knn_search(q, 5)
        _, found = ann.knn_search(q, 5)
        recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact, found, strict=True)])
        assert recall >= (0.9 if kind == "HNSW" else 0.5), recall


def test_uris_lose_their_credentials_before_the_manifest() -> None:
    assert public_uri("http://root:Milvus@db.example:19530") == "http://db.example:19530"
    assert public_uri("https://db.example/") == "https://db.example/"
