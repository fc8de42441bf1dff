"""Tuning the relevance weight on synthetic scores: far text left to the LM, near text
keeping the gain."""

from __future__ import annotations

import numpy as np
import pytest

from silo.relevance_tuning import relevance_grid, tune_relevance
from silo.tuning import GridPoint, TargetScores, mixed_logprob, nearest_distances


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
