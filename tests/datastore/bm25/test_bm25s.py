"""Tests for datastore.bm25.bm25s: the analyser, the top-n selection, the scorer against
the bm25s library, and exact filtered search."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import bm25s
import numpy as np
import pytest

from datastore.blocks import Block
from datastore.bm25.base import BM25Config
from datastore.bm25.bm25s import BM25sIndex, analyze, bm25_scores, top_positive

# Zipf-like word pool: a few words in most blocks, many in few, so df varies widely.
POOL = [f"{c}{v}{t}" for c in "bdfgklmnprst" for v in "aeiou" for t in "mnx"]


def zipf_blocks(n_docs: int, seed: int) -> list[Block]:
    """1-4 blocks per document, 1-60 words each, block ids shuffled and sparse."""
    rng = random.Random(seed)
    weights = [1 / (r + 1) for r in range(len(POOL))]
    ids = rng.sample(range(10 * n_docs * 4), n_docs * 4)
    blocks = []
    for d in range(n_docs):
        for _ in range(rng.randint(1, 4)):
            text = " ".join(rng.choices(POOL, weights, k=rng.randint(1, 60)))
            blocks.append(Block(ids.pop(), f"doc{d}", text, 0, len(text)))
    return blocks


def random_query(rng: random.Random) -> str:
    """2-8 words, some repeated, one of them possibly unknown to every index."""
    words = rng.choices(POOL[:60], k=rng.randint(2, 8)) + ["unseenword"] * rng.randint(0, 1)
    return " ".join(words)


def ranking(index: BM25sIndex, query: str, k: int, allow: object = None) -> list[tuple[int, float]]:
    return [(h.block_id, h.score) for h in index.search(query, k, allow)]  # type: ignore[arg-type]


def assert_same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [b for b, _ in got] == [b for b, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-9, atol=0)


def test_analyze_follows_lucenes_english_chain() -> None:
    text = "The Fox's jumps over U.S.A. lazy dogs; don't e-mail 3.14 it"
    assert analyze(text) == [
        "fox", "jump", "over", "u.s.a", "lazi", "dog", "don't", "e", "mail", "3.14",
    ]
    assert analyze("the and of") == []


@pytest.mark.parametrize("n", [1, 3, 10, 50])
def test_top_positive_against_sorting_everything(n: int) -> None:
    rng = np.random.default_rng(n)
    # Few distinct values, so there are many ties; zeros never count as hits.
    scores = rng.integers(0, 5, size=40).astype(np.float32)
    block_ids = rng.permutation(1000)[:40]
    expected = sorted(
        ((int(b), float(s)) for b, s in zip(block_ids, scores, strict=True) if s > 0),
        key=lambda x: (-x[1], x[0]),
    )[:n]
    assert top_positive(scores, block_ids, n) == expected


def test_scorer_equals_the_bm25s_library(tmp_path: Path) -> None:
    config = BM25Config(k1=1.2, b=0.75)
    index = BM25sIndex.create(tmp_path / "ix", config)
    index.add(zipf_blocks(80, seed=3))
    index.search("warm", 1)  # builds the postings
    postings = index._postings
    assert postings is not None
    model = bm25s.BM25(k1=config.k1, b=config.b, method="lucene")
    model.scores = model.build_index_from_ids(
        list(range(len(index._vocab))), [index._terms[i].tolist() for i in index._blocks],
        show_progress=False,
    )
    rng = random.Random(0)
    every = index._stats(lambda doc_id: True)
    assert every.allowed is not None and every.allowed.all()
    for _ in range(30):
        ids = [index._vocab[t] for t in analyze(random_query(rng)) if t in index._vocab]
        terms, counts = np.unique(ids, return_counts=True)
        want = model.get_scores_from_ids(ids)  # float32, duplicates counted twice
        unfiltered = bm25_scores(postings, terms, counts.astype(float), index._stats(None))
        filtered = bm25_scores(postings, terms, counts.astype(float), every)
        np.testing.assert_allclose(unfiltered, want, rtol=2e-6, atol=1e-6)
        np.testing.assert_allclose(filtered, unfiltered, rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filtered_search_equals_an_index_of_only_the_allowed_blocks(
    tmp_path: Path, seed: int
) -> None:
    blocks = zipf_blocks(60, seed)
    rng = random.Random(seed)
    with BM25sIndex.create(tmp_path / "full") as full:
        full.add(blocks[: len(blocks) // 2])
        full.save()  # renumbers the vocabulary: the fresh indexes number terms otherwise
        full.add(blocks[len(blocks) // 2 :])
        for trial in range(4):
            share = rng.choice([0.1, 0.5, 0.9])
            allowed = {f"doc{d}" for d in range(60) if rng.random() < share}
            allow = allowed.__contains__
            with BM25sIndex.create(tmp_path / f"fresh{trial}") as fresh:
                fresh.add([b for b in blocks if b.doc_id in allowed])
                for _ in range(15):
                    query, k = random_query(rng), rng.choice([1, 5, 30, 500])
                    assert_same(ranking(full, query, k, allow), ranking(fresh, query, k))


def test_filtered_search_after_delete_equals_an_index_of_only_the_allowed_blocks(
    tmp_path: Path,
) -> None:
    blocks = zipf_blocks(40, seed=7)
    gone = {b.block_id for b in blocks if b.doc_id in {"doc3", "doc11"}}
    allowed = {f"doc{d}" for d in range(0, 40, 2)}
    kept = [b for b in blocks if b.block_id not in gone and b.doc_id in allowed]
    with BM25sIndex.create(tmp_path / "full") as full, \
            BM25sIndex.create(tmp_path / "fresh") as fresh:
        full.add(blocks)
        full.search("warm", 1, allowed.__contains__)  # caches a mask the delete must drop
        full.delete(gone)
        fresh.add(kept)
        rng = random.Random(1)
        for _ in range(20):
            query = random_query(rng)
            assert_same(ranking(full, query, 10, allowed.__contains__), ranking(fresh, query, 10))


class CountingFilter:
    """An allow(doc_id) bound method, like EntryFilter.allows_doc, that counts its calls."""

    def __init__(self, allowed: set[str]) -> None:
        self.allowed = allowed
        self.calls = 0

    def allows_doc(self, doc_id: str) -> bool:
        self.calls += 1
        return doc_id in self.allowed


def test_allowed_blocks_are_computed_once_per_filter_until_the_index_changes(
    tmp_path: Path,
) -> None:
    blocks = zipf_blocks(30, seed=4)
    n_docs = len({b.doc_id for b in blocks})
    with BM25sIndex.create(tmp_path / "ix") as index:
        index.add(blocks)
        flt = CountingFilter({"doc1", "doc2"})
        for query in ["bam bem", "bim", "bom bum ban"]:  # a new bound method each time
            hits = index.search(query, 50, flt.allows_doc)
            assert {h.doc_id for h in hits} <= {"doc1", "doc2"}
        assert flt.calls == n_docs  # one verdict per document, asked once
        index.add([Block(10**6, "doc-new", "quokka", 0, 6)])
        flt.allowed.add("doc-new")
        assert [h.doc_id for h in index.search("quokka", 5, flt.allows_doc)] == ["doc-new"]
        assert flt.calls == 2 * n_docs + 1


def only(doc: str) -> Callable[[str], bool]:
    return lambda doc_id: doc_id == doc


def test_a_new_filter_is_never_served_a_dead_filters_mask(tmp_path: Path) -> None:
    blocks = zipf_blocks(20, seed=5)
    with BM25sIndex.create(tmp_path / "ix") as index:
        index.add(blocks)
        for d in range(20):
            # Each closure dies after its search, so the next may reuse its address.
            hits = index.search("bam bem bim bom bum", 100, only(f"doc{d}"))
            assert {h.doc_id for h in hits} <= {f"doc{d}"}
            assert hits == index.search("bam bem bim bom bum", 100, {f"doc{d}"}.__contains__)
