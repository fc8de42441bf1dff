"""The equivalence guarantee for BM25 at the Datastore facade: `bm25_search` under a
filter (licence policy, access scope, opt-out) returns the same passages with the same
scores as a datastore built from only the documents the filter allows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from datastore.config import DatastoreConfig
from datastore.document import Document
from datastore.filter import AccessScope, SearchFilter
from datastore.store.datastore import Datastore
from tests.datastore.synthetic import CLASSES, WORDS, SyntheticEncoder, corpus

# both document tables: SQLite in the folder, and PostgreSQL
pytestmark = pytest.mark.usefixtures("table_backend")
CONFIG = DatastoreConfig(backend="exact", block_tokens=8, block_overlap=2, encode_batch=8)


def build(path: Path, docs: list[Document]) -> Datastore:
    return Datastore.build(path, docs, SyntheticEncoder(), CONFIG, progress=False)


def random_filter(rng: np.random.Generator) -> SearchFilter:
    policy = frozenset(c for c in CLASSES if rng.random() < 0.6) or frozenset({CLASSES[0]})
    sources = frozenset(s for s in ("news", "books", "code") if rng.random() < 0.7)
    return SearchFilter(policy=policy, scope=AccessScope(sources=sources or None))


def allowed(doc: Document, request: SearchFilter, removed: set[str]) -> bool:
    assert request.policy is not None
    return doc.doc_id not in removed and doc.license_class in request.policy and (
        request.scope.sources is None or doc.source in request.scope.sources)


def passages(store: Datastore, query: str, k: int, request: SearchFilter | None = None,
             ) -> list[tuple[str, int, int, float]]:
    """(doc_id, char_start, char_end, score) per hit: block ids differ between stores."""
    return [(h.doc_id, h.char_start, h.char_end, h.score)
            for h in store.bm25_search(query, k, request)]


def assert_same(got: list[tuple[str, int, int, float]],
                want: list[tuple[str, int, int, float]]) -> None:
    assert [g[:3] for g in got] == [w[:3] for w in want]
    np.testing.assert_allclose([g[3] for g in got], [w[3] for w in want], rtol=1e-9, atol=0)


def test_filtered_bm25_search_equals_store_without_excluded_documents(tmp_path: Path) -> None:
    docs = corpus(60, seed=2, max_words=30)
    removed = {"doc-5", "doc-21", "doc-44"}
    full = build(tmp_path / "full", docs)
    full.optout(doc_ids=sorted(removed))  # filtered out, not yet compacted away
    rng = np.random.default_rng(0)
    for trial in range(4):
        request = random_filter(rng)
        kept = [d for d in docs if allowed(d, request, removed)]
        reduced = build(tmp_path / f"reduced{trial}", kept)
        for _ in range(10):
            query = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 6))))
            k = int(rng.choice([1, 5, 40]))
            got = passages(full, query, k, request)
            assert_same(got, passages(reduced, query, k))
            assert {g[0] for g in got} <= {d.doc_id for d in kept}
        reduced.close()


def test_optout_alone_equals_store_without_the_document(tmp_path: Path) -> None:
    docs = corpus(20, seed=3)
    docs[7] = replace(docs[7], text="w1 w1 w1 w2 " + docs[7].text)
    full = build(tmp_path / "full", docs)
    full.optout(doc_ids=["doc-7"])
    reduced = build(tmp_path / "reduced", [d for d in docs if d.doc_id != "doc-7"])
    for query in ["w1 w2", "w3", "w1 w4 w5 w1"]:
        assert_same(passages(full, query, 10), passages(reduced, query, 10))
