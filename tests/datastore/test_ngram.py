"""Tests for datastore.ngram against a brute-force reference on synthetic text.

The reference compares the query with every document token by token (longest common
substring by dynamic programming), so it shares nothing with the suffix arrays but the
tokenizer.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from datastore.errors import ConflictError, InvalidInputError, NotFoundError
from datastore.ngram import NgramIndex, SpanMatch
from datastore.suffix import suffix_array, tokenize


def longest_common_span(q: list[int], d: list[int]) -> tuple[int, int, int]:
    """(length, query start, doc start) of the longest common token run; ties: first in
    the query, then first in the document."""
    best = (0, 0, 0)
    prev = [0] * (len(d) + 1)
    for i in range(1, len(q) + 1):
        cur = [0] * (len(d) + 1)
        for j in range(1, len(d) + 1):
            if q[i - 1] == d[j - 1]:
                cur[j] = prev[j - 1] + 1
                n, qs, ds = cur[j], i - cur[j], j - cur[j]
                if (-n, qs, ds) < (-best[0], best[1], best[2]):
                    best = (n, qs, ds)
        prev = cur
    return best


def reference(
    docs: dict[str, str], text: str, k: int, allowed: set[str] | None, min_length: int
) -> list[SpanMatch]:
    q, q_off = tokenize(text)
    found = []
    for doc_id, doc in docs.items():
        if allowed is not None and doc_id not in allowed:
            continue
        d, d_off = tokenize(doc)
        n, qs, ds = longest_common_span(q.tolist(), d.tolist())
        if n >= min_length:
            found.append(
                SpanMatch(
                    doc_id, n, int(d_off[ds, 0]), int(d_off[ds + n - 1, 1]),
                    int(q_off[qs, 0]), int(q_off[qs + n - 1, 1]),
                )
            )
    return sorted(found, key=lambda m: (-m.length, m.doc_id))[:k]


def synthetic_docs(n: int, seed: int, vocab: int = 6) -> dict[str, str]:
    """Documents over a tiny vocabulary, so that long shared spans are common."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)] + [",", "."]
    return {
        f"doc{j:03d}": " ".join(rng.choices(words, k=rng.randint(0, 60))) for j in range(n)
    }


def query_from(docs: dict[str, str], rng: random.Random) -> str:
    """A query pasting pieces of documents together, with some noise."""
    parts = []
    for _ in range(3):
        words = rng.choice(list(docs.values())).split()
        a = rng.randrange(len(words) + 1)
        parts.append(" ".join(words[a : a + rng.randint(1, 25)]))
        parts.append(rng.choice(["w0", "zz", "\n", ""]))
    return "  ".join(parts)


def test_suffix_array_against_sorting_suffixes() -> None:
    rng = np.random.default_rng(0)
    for n in [1, 2, 7, 100]:
        keys = np.append(rng.integers(0, 3, size=n - 1), 99)  # unique last key
        expected = sorted(range(n), key=lambda p: keys[p:].tolist())
        assert suffix_array(keys).tolist() == expected


def test_tokenize_words_and_punctuation_with_offsets() -> None:
    text = "Don't  stop,\nnow!"
    hashes, offsets = tokenize(text)
    assert [text[a:b] for a, b in offsets] == ["Don", "'", "t", "stop", ",", "now", "!"]
    assert hashes[0] == tokenize("Don")[0][0] != tokenize("don")[0][0]  # case-sensitive


@pytest.mark.parametrize("seed", range(4))
def test_longest_matches_against_brute_force(tmp_path: Path, seed: int) -> None:
    docs = synthetic_docs(40, seed)
    index = NgramIndex.create(tmp_path / "ng")
    rng = random.Random(seed)
    items = list(docs.items())
    for j, (doc_id, text) in enumerate(items):
        index.add(doc_id, text)
        if j in (29, 30):  # lookups between adds make segments: 30 docs, then 10
            index.longest_matches("w1 w2", k=1, min_length=1)
    assert len(index._segments) > 1
    allowed = {d for d in docs if rng.random() < 0.5}
    for _ in range(8):
        text = query_from(docs, rng)
        for k, min_length in [(1, 1), (5, 3), (40, 2), (10, 8)]:
            assert index.longest_matches(text, k, min_length=min_length) == reference(
                docs, text, k, None, min_length
            )
            got = index.longest_matches(text, k, allow=allowed.__contains__, min_length=min_length)
            assert got == reference(docs, text, k, allowed, min_length)


def test_offsets_point_at_the_shared_span(tmp_path: Path) -> None:
    index = NgramIndex.create(tmp_path / "ng")
    doc = "Prologue. It was the best of times, it was the worst of times. Epilogue."
    index.add("dickens", doc)
    index.add("other", "the best of friends")
    query = "As they say:  it was the worst of times,   it was"
    (m,) = index.longest_matches(query, k=5, min_length=5)
    # "," in the query and "." in the document end the span.
    assert (m.doc_id, m.length) == ("dickens", 6)
    assert doc[m.doc_start : m.doc_end] == "it was the worst of times"
    assert query[m.query_start : m.query_end] == "it was the worst of times"


def test_delete_is_physical_and_save_reopen_round_trips(tmp_path: Path) -> None:
    docs = synthetic_docs(30, seed=7)
    index = NgramIndex.create(tmp_path / "ng")
    for doc_id, text in docs.items():
        index.add(doc_id, text)
    index.add("secret", "Quorble zyxwvut marmalade passage, never to be seen again")
    index.save()
    secret_hash = tokenize("Quorble")[0].tobytes()

    def files_holding(needle: bytes) -> list[str]:
        return [f.name for f in (tmp_path / "ng").iterdir() if needle in f.read_bytes()]

    secret_id = "secr".encode("utf-32-le")  # how numpy stores the doc id
    assert files_holding(secret_hash) and files_holding(secret_id)  # positive controls
    gone = {"doc003", "doc011", "secret", "not-there"}
    index.delete(gone)
    index.save()
    kept = {d: t for d, t in docs.items() if d not in gone}
    reopened = NgramIndex.from_dir(tmp_path / "ng")
    assert len(reopened) == len(kept) == len(index)
    rng = random.Random(3)
    for _ in range(5):
        text = query_from(docs, rng)
        expected = reference(kept, text, 10, None, 2)
        assert index.longest_matches(text, 10, min_length=2) == expected
        assert reopened.longest_matches(text, 10, min_length=2) == expected
    assert reopened.longest_matches("Quorble zyxwvut marmalade passage", 3, min_length=1) == []
    # No file still holds the deleted document's tokens or id.
    assert files_holding(secret_hash) == []
    assert files_holding(secret_id) == []
    # Adding again after a reopen works and stays incremental.
    reopened.add("secret", "Quorble zyxwvut marmalade")
    assert [m.doc_id for m in reopened.longest_matches("zyxwvut marmalade", 3, min_length=2)] == [
        "secret"
    ]


def test_bad_input_gives_library_errors(tmp_path: Path) -> None:
    index = NgramIndex.create(tmp_path / "ng")
    index.add("a", "one two three")
    with pytest.raises(ConflictError, match="'a'"):
        index.add("a", "again")
    with pytest.raises(InvalidInputError, match="doc_id"):
        index.add("", "text")
    with pytest.raises(InvalidInputError, match="k must"):
        index.longest_matches("one two", k=0)
    with pytest.raises(InvalidInputError, match="min_length"):
        index.longest_matches("one two", min_length=0)
    with pytest.raises(ConflictError, match="not an empty folder"):
        NgramIndex.create(tmp_path / "ng")
    with pytest.raises(NotFoundError, match="no n-gram index"):
        NgramIndex.from_dir(tmp_path / "absent")
    assert index.longest_matches("", k=3, min_length=1) == []
