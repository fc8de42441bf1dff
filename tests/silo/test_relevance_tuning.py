"""Tuning the relevance weight on synthetic scores: far text left to the LM, near text
keeping the gain, the context's distance where one position's is not enough, and the
margin to the reference where the datastore's distance is not."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from silo.relevance_tuning import relevance_grid, tune_relevance
from silo.tuning import (
    GridPoint,
    TargetScores,
    context_distances,
    mixed_logprob,
    nearest_distances,
)


def _synthetic(n: int, near: float, helpful: bool, seed: int) -> TargetScores:
    """n tokens with p_LM(target) = 0.1 and 8 neighbours at distance about `near`, all of
    them voting for the target (`helpful`) or for another token."""
    rng = np.random.default_rng(seed)
    d = np.sort(near + rng.uniform(0.0, 1.0, (n, 8)), axis=1).astype(np.float32)
    targets = rng.integers(0, 50, n)
    values = np.repeat((targets if helpful else targets + 1)[:, None], 8, axis=1)
    return TargetScores(np.full(n, np.log(0.1)), d, values, targets)


def test_relevance_tuning_leaves_far_text_to_the_lm_and_keeps_the_gain_near() -> None:
    own = {"a": _synthetic(400, 0.0, True, 0)}
    off = {"x": _synthetic(400, 5.0, False, 1), "y": _synthetic(300, 3.0, False, 2)}
    best = GridPoint(8, 0.5, 1.0, 0.0)
    report = tune_relevance(own, off, best, (0.25, 0.5, 0.9), tolerance=0.01)
    assert report.feasible
    c = report.choice
    assert c.relevance is not None and (c.k, c.temperature) == (8, 1.0)
    for name in ("off:x", "off:y"):  # one weight everywhere hurts; weighted it does not
        assert report.uniform[name] > 1.5 * report.parametric[name]
        assert report.weighted[name] <= 1.01 * report.parametric[name]
    # near text keeps (here more than) the gain: lam is tuned again with the weight, and
    # 0.9 beats the grid's 0.5 once far text no longer pays for it (ppl 10 alone,
    # 1 / (0.05 + 0.5) = 1.82 at one weight, 1 / (0.01 + 0.9) = 1.10 at w = 1)
    assert 1.1 < report.weighted["own:a"] < 0.7 * report.uniform["own:a"]
    assert c.lam == 0.9
    # the report's figures are what SiloLM's mixture gives at the chosen parameters
    for name, scores in {**{f"own:{k}": v for k, v in own.items()},
                         **{f"off:{k}": v for k, v in off.items()}}.items():
        got = float(np.exp(-mixed_logprob(scores, c.params).mean()))
        assert got == pytest.approx(report.weighted[name], rel=1e-6)  # w in float32
    assert c.perplexity == pytest.approx(report.weighted["own:a"])
    nearest = nearest_distances(off["x"], 8)
    assert (nearest >= 5.0).all() and len(relevance_grid(nearest)) == 19 * 6
    with pytest.raises(ValueError, match="outside"):
        tune_relevance(own, {}, best)


def test_when_no_setting_is_within_the_tolerance_the_closest_is_taken() -> None:
    same = _synthetic(200, 0.0, False, 3)  # off-domain text as near as the own domain's
    report = tune_relevance({"a": _synthetic(200, 0.0, True, 4)}, {"x": same},
                            GridPoint(8, 0.5, 1.0, 0.0), (0.1, 0.5), tolerance=0.0)
    assert not report.feasible
    worst = report.weighted["off:x"] / report.parametric["off:x"]
    assert 1.0 < worst < report.uniform["off:x"] / report.parametric["off:x"]




def _noisy(seqs: int, length: int, centre: float, helpful: bool, seed: int,
           ) -> TargetScores:
    """Sequences whose tokens' nearest distances scatter widely around `centre` (one
    position's distance says little; a sequence's average says much), 8 neighbours all
    voting for the target (`helpful`) or for another token."""
    rng = np.random.default_rng(seed)
    n = seqs * length
    near = centre + rng.uniform(-2.0, 2.0, n)
    d = (near[:, None] + np.linspace(0.0, 0.5, 8)[None, :]).astype(np.float32)
    targets = rng.integers(0, 50, n)
    values = np.repeat((targets if helpful else targets + 1)[:, None], 8, axis=1)
    first = np.zeros(n, dtype=bool)
    first[::length] = True
    return TargetScores(np.full(n, np.log(0.1)), d, values, targets, first)


def test_the_context_distance_keeps_more_of_the_gain_where_one_position_cannot_tell() -> None:
    own = {"a": _noisy(20, 60, 3.0, True, 0)}
    off = {"x": _noisy(20, 60, 5.0, False, 1)}
    best = GridPoint(8, 0.5, 1.0, 0.0)
    alone = tune_relevance(own, off, best, (0.5, 0.9), tolerance=0.01, decays=(0.0,))
    context = tune_relevance(own, off, best, (0.5, 0.9), tolerance=0.01)
    assert alone.feasible and context.feasible
    assert alone.choice.relevance_decay == 0.0 and context.choice.relevance_decay > 0.0
    # within the same bound on the far text, the near text is much better off
    assert context.weighted["off:x"] <= 1.01 * context.parametric["off:x"]
    assert context.weighted["own:a"] < 0.8 * alone.weighted["own:a"]
    # the figures are those of the mixture at the chosen parameters, sequence by sequence
    for name, scores in (("own:a", own["a"]), ("off:x", off["x"])):
        got = float(np.exp(-mixed_logprob(scores, context.choice.params).mean()))
        assert got == pytest.approx(context.weighted[name], rel=1e-6)


def _joined(*parts: TargetScores) -> TargetScores:
    """The sequences of several scores, one after another."""
    return TargetScores(*(np.concatenate([getattr(p, f) for p in parts])
                          for f in ("lm_logprob", "distances", "values", "targets", "first")))


def _worst_document(scores: TargetScores, params: GridPoint) -> float:
    """The largest perplexity ratio to the LM over documents of 256 tokens or more,
    written out."""
    mixed = mixed_logprob(scores, params.params)
    starts = [*np.flatnonzero(scores.starts), len(mixed)]
    ratios = [np.exp(scores.lm_logprob[a:b].mean() - mixed[a:b].mean())
              for a, b in zip(starts, starts[1:], strict=False) if b - a >= 256]
    return float(max(ratios, default=1.0))


def test_a_document_tolerance_holds_every_long_document_to_it() -> None:
    own = {"a": _noisy(20, 60, 3.0, True, 0)}
    # far documents, one nearer the own domain all through but not helped by it, and
    # short ones as near as the own domain, which are not held to the document bound
    off = {"x": _joined(_noisy(10, 300, 7.0, False, 1), _noisy(1, 300, 4.0, False, 2),
                        _noisy(4, 40, 3.0, False, 3))}
    best = GridPoint(8, 0.5, 1.0, 0.0)
    pooled = tune_relevance(own, off, best, (0.5, 0.9), tolerance=0.05)
    held = tune_relevance(own, off, best, (0.5, 0.9), tolerance=0.05, document_tolerance=0.01)
    assert pooled.feasible and held.feasible
    for report in (pooled, held):
        assert report.worst_document == pytest.approx(
            _worst_document(off["x"], report.choice), rel=1e-9)
    assert pooled.worst_document > 1.01 >= held.worst_document
    # the bound costs the own domain something, and the pooled choice was the better there
    assert pooled.weighted["own:a"] < held.weighted["own:a"]


def test_the_margin_to_the_reference_tells_apart_what_the_datastore_distance_cannot() -> None:
    # off-domain text lands as near the datastore's keys as its own domain's text, but
    # much nearer the reference (the LM's own kind of text): only the margin d_1 - d_ref
    # tells them apart
    rng = np.random.default_rng(5)
    own = replace(_noisy(20, 60, 3.0, True, 0), baseline=8.0 + rng.uniform(-1, 1, 1200))
    off = replace(_noisy(20, 60, 3.0, False, 1), baseline=1.0 + rng.uniform(-1, 1, 1200))
    best = GridPoint(8, 0.5, 1.0, 0.0)
    plain = tune_relevance({"a": replace(own, baseline=None)}, {"x": replace(off, baseline=None)},
                           best, (0.5, 0.9), tolerance=0.01)
    margin = tune_relevance({"a": own}, {"x": off}, best, (0.5, 0.9), tolerance=0.01)
    assert not plain.choice.relevance_margin and margin.choice.relevance_margin
    assert margin.feasible and margin.weighted["off:x"] <= 1.01 * margin.parametric["off:x"]
    # the own domain keeps far more of its gain within the same bound
    assert margin.weighted["own:a"] < 0.8 * plain.weighted["own:a"]
    assert margin.choice.relevance is not None and margin.choice.relevance < 0  # d_1 < d_ref
    # the figures are the mixture's at the choice: its weight reads d_1 - d_ref
    for name, scores in (("own:a", own), ("off:x", off)):
        got = float(np.exp(-mixed_logprob(scores, margin.choice.params).mean()))
        assert got == pytest.approx(margin.weighted[name], rel=1e-6)
    shifted = context_distances(own, 8, margin.choice.relevance_decay, margin=True)
    want = context_distances(replace(own, distances=(own.distances - own.baseline[:, None])
                                      .astype(np.float32), baseline=None),
                             8, margin.choice.relevance_decay)
    np.testing.assert_allclose(shifted, want, rtol=1e-5)
    # without the distances to the reference a weight read from it cannot be computed
    with pytest.raises(ValueError, match="reference"):
        mixed_logprob(replace(own, baseline=None), margin.choice.params)
    with pytest.raises(ValueError, match="baseline"):
        replace(own, baseline=np.zeros(3))
