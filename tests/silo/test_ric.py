"""RIC-LM pieces: the query, the context budget, REPLUG weights, retrieval chunks."""

from __future__ import annotations

import math

import pytest
import torch

from silo.ric import (
    RicParams,
    chunk_starts,
    ensemble,
    passage_budget,
    query_ids,
    replug_log_weights,
    with_passage,
)

EOS = 1


def test_query_is_the_last_q_tokens_without_specials() -> None:
    assert query_ids([EOS, 5, 6, 7, 8], 3, frozenset({EOS})) == [6, 7, 8]
    assert query_ids([EOS, 5, 6], 3, frozenset({EOS})) == [5, 6]
    assert query_ids([EOS], 32, frozenset({EOS})) == []


def test_passage_is_prepended_within_the_budget() -> None:
    # a document start's EOS separates passage and context
    assert with_passage([10, 11], [EOS, 5, 6], 16, EOS) == [10, 11, EOS, 5, 6]
    # mid-document context: an EOS is inserted
    assert with_passage([10, 11], [5, 6], 16, EOS) == [10, 11, EOS, 5, 6]
    # passage cut to a quarter of the window (3 tokens + EOS of 16), context keeps its end
    long = list(range(100, 120))
    got = with_passage(long, list(range(20, 40)), 16, EOS)
    assert passage_budget(16) == 4 and len(got) == 16
    assert got[:4] == [100, 101, 102, EOS] and got[4:] == list(range(28, 40))
    assert with_passage([], [5, 6, 7], 2, EOS) == [6, 7]


def test_replug_weights_and_ensemble_by_hand() -> None:
    w = replug_log_weights([math.log(3.0), 0.0], temperature=1.0)
    torch.testing.assert_close(w.exp(), torch.tensor([0.75, 0.25]))
    p = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]).clamp(min=1e-30).log()  # (2, 1, 2)
    torch.testing.assert_close(ensemble(p, w).exp(), torch.tensor([[0.75, 0.25]]))
    single = torch.randn(1, 3, 4).log_softmax(-1)
    assert torch.equal(ensemble(single, torch.zeros(1)), single[0])


def test_chunks_cover_every_prediction_once() -> None:
    assert chunk_starts(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_starts(0, 4) == []


def test_params_are_validated_naming_the_field() -> None:
    with pytest.raises(ValueError, match="query_tokens"):
        RicParams(query_tokens=0)
    with pytest.raises(ValueError, match="weight_temperature"):
        RicParams(weight_temperature=0.0)
