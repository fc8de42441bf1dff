"""Tests for datastore.bm25_bm25s: the analyser and the top-n selection."""

from __future__ import annotations

import numpy as np
import pytest

from datastore.bm25_bm25s import analyze, top_positive


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
