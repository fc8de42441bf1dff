"""The context's distance (silo.relevance) against the formula written out, the
scoring (`smooth`) and generation (`advance`) paths against each other, bit for bit, and
SiloLM's scoring, attribution and generation with it against a hand-computed mixture."""

from __future__ import annotations

import math

import numpy as np
import pytest

from silo.knnlm import KnnParams
from silo.lm import GenerationRequest, ScoreRequest, SiloLM, SiloOptions
from silo.relevance import Trace, advance, context_distance, smooth
from silo.tuning import knn_target_prob, nearest_distances
from tests.silo.conftest import TEXT, prompt_ids


def _by_formula(nearest: np.ndarray, first: np.ndarray, beta: float) -> np.ndarray:
    """r_t = sum_{s <= t} beta^(t - s) d_s / sum beta^(t - s) over the finite d_s of the
    sequence so far, each sum written out (0^0 = 1)."""
    out = np.empty(len(nearest))
    start = 0
    for t in range(len(nearest)):
        if first[t]:
            start = t
        num = den = 0.0
        for s in range(start, t + 1):
            if math.isfinite(nearest[s]):
                w = beta ** (t - s)
                num += w * nearest[s]
                den += w
        out[t] = num / den if den > 0 else math.inf
    return out


def _data(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    nearest = rng.uniform(10.0, 200.0, (n, m))
    nearest[rng.random((n, m)) < 0.15] = np.inf  # positions without a neighbour
    first = rng.random(n) < 0.1
    first[0] = True
    return nearest, first


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 1.0])
def test_smooth_is_the_weighted_average_over_the_sequence_so_far(beta: float) -> None:
    nearest, first = _data(120, 2, 0)
    r, _ = smooth(nearest, first, (beta, beta))
    for j in range(2):
        np.testing.assert_allclose(r[:, j], _by_formula(nearest[:, j], first, beta),
                                   rtol=1e-12)


def test_beta_zero_is_the_position_own_distance_exactly() -> None:
    nearest, first = _data(50, 1, 1)
    r, _ = smooth(nearest, first, (0.0,))
    assert np.array_equal(r, nearest)


def test_a_sequence_without_any_neighbour_yet_is_infinitely_far() -> None:
    nearest = np.array([[np.inf], [np.inf], [4.0], [np.inf]])
    r, trace = smooth(nearest, np.array([True, False, False, False]), (0.5,))
    assert r[:, 0].tolist() == [math.inf, math.inf, 4.0, 4.0]
    assert trace.distance.tolist() == [4.0]
    assert Trace.empty(2).distance.tolist() == [math.inf, math.inf]


def test_members_decay_at_their_own_rates() -> None:
    nearest, first = _data(60, 2, 2)
    r, _ = smooth(nearest, first, (0.0, 0.8))
    assert np.array_equal(r[:, 0], nearest[:, 0])
    np.testing.assert_allclose(r[:, 1], _by_formula(nearest[:, 1], first, 0.8), rtol=1e-12)


def test_carrying_the_trace_across_chunks_equals_one_pass() -> None:
    nearest, first = _data(90, 2, 3)
    whole, end = smooth(nearest, first, (0.9, 0.5))
    parts, trace = [], None
    for a, b in ((0, 7), (7, 40), (40, 41), (41, 90)):
        r, trace = smooth(nearest[a:b], first[a:b], (0.9, 0.5), trace)
        parts.append(r)
    assert np.array_equal(np.concatenate(parts), whole)
    assert trace is not None
    assert np.array_equal(trace.num, end.num) and np.array_equal(trace.den, end.den)


def test_stepping_rows_one_position_at_a_time_equals_smoothing_them() -> None:
    # generation advances each sequence one position per step, several sequences side
    # by side; scoring smooths the positions of a sequence in order: the same bits
    decays = (0.95, 0.7)
    seqs = [_data(30, 2, 10 + i)[0] for i in range(3)]
    num, den = np.zeros((3, 2)), np.zeros((3, 2))
    stepped = [[] for _ in seqs]
    for t in range(30):
        num, den = advance(num, den, np.stack([s[t] for s in seqs]), decays)
        for i, r in enumerate(context_distance(num, den)):
            stepped[i].append(r)
    for i, s in enumerate(seqs):
        first = np.zeros(30, dtype=bool)
        first[0] = True
        r, trace = smooth(s, first, decays)
        assert np.array_equal(np.array(stepped[i]), r)
        assert np.array_equal(trace.num, num[i]) and np.array_equal(trace.den, den[i])


# ---- through SiloLM ------------------------------------------------------------------


def _lp(lm: SiloLM, options: SiloOptions, ids: tuple[int, ...]) -> np.ndarray:
    res = lm.score([ScoreRequest(ids, options=options)])[0]
    return np.array(res.token_logprobs[1:], dtype=np.float64)


def _by_hand(full: SiloLM, ids: tuple[int, ...], params: KnnParams) -> np.ndarray:
    """log((1 - lam w) p_LM + lam w p_kNN) per token of `ids`, w from the context's
    distance written out."""
    scores = full.target_scores([ids], SiloOptions("knnlm"), params.k)
    near = nearest_distances(scores, params.k)
    first = np.zeros(len(near), dtype=bool)
    first[0] = True
    r = _by_formula(near, first, params.relevance_decay)
    assert params.relevance is not None
    w = 1.0 / (1.0 + np.exp((r - params.relevance) / params.relevance_temperature))
    lam = params.lam * w
    p_lm = np.exp(_lp(full, SiloOptions("parametric"), ids))
    p_knn = knn_target_prob(scores, params.k, params.temperature)
    return np.log((1 - lam) * p_lm + lam * p_knn)


@pytest.fixture(scope="module")
def context_lm(full: SiloLM) -> tuple[SiloLM, KnnParams]:
    """`full` with a relevance weight measured from the context's distance."""
    ids = prompt_ids(full)
    near = nearest_distances(full.target_scores([ids], SiloOptions("knnlm"), 5), 5)
    params = KnnParams(5, 0.6, 3.0, relevance=float(np.median(near)),
                       relevance_temperature=float(near.std()) or 1.0, relevance_decay=0.8)
    return SiloLM(full.model, full.tokenizer, full.datastore, full.config, params), params


def test_scoring_weighs_each_token_by_its_context_distance(
        full: SiloLM, context_lm: tuple[SiloLM, KnnParams]) -> None:
    lm, params = context_lm
    ids = prompt_ids(full, TEXT + " " + TEXT)  # sliding windows: the context spans chunks
    opts = SiloOptions("knnlm", attribution=True)
    res = lm.score([ScoreRequest(ids, options=opts)])[0]
    got = np.array(res.token_logprobs[1:], float)
    want = _by_hand(full, ids, params)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # not the weight of each position alone
    alone = _by_hand(full, ids, KnnParams(5, 0.6, 3.0, params.relevance,
                                          params.relevance_temperature))
    assert np.abs(got - alone).max() > 1e-3
    # attribution: each token's contributions are lam w times its kNN mass
    p_lm = np.exp(_lp(full, SiloOptions("parametric"), ids))
    w_lam = (np.exp(got) - p_lm) / (knn_target_prob(
        full.target_scores([ids], SiloOptions("knnlm"), 5), 5, 3.0) - p_lm)
    assert res.provenance is not None
    for i, prov in enumerate(res.provenance[1:]):
        assert prov is not None
        mass = sum(n.contribution for n in prov.neighbours)
        assert np.exp(got[i]) == pytest.approx((1 - w_lam[i]) * p_lm[i] + mass, abs=1e-5)
    # sequences scored together each start their own context
    a, b = prompt_ids(full, "Light."), ids
    together = lm.score([ScoreRequest(s, options=opts) for s in (a, b)])
    np.testing.assert_allclose(np.array(together[1].token_logprobs[1:], float), got,
                               atol=1e-5)
    np.testing.assert_allclose(np.array(together[0].token_logprobs[1:], float),
                               _by_hand(full, a, params), atol=1e-5)
    # a request that turns the weight off gets the one weight, as before
    plain = SiloOptions("knnlm", relevance=False)
    assert lm.plan(plain).decays is None and lm.plan(opts).decays == (0.8,)


def test_generation_carries_the_context_distance_from_the_prompt_on(
        full: SiloLM, context_lm: tuple[SiloLM, KnnParams]) -> None:
    lm, _ = context_lm
    ids = prompt_ids(full, TEXT)
    opts = SiloOptions("knnlm")
    # no scored prompt position, and several; the prompt's positions read by the first
    # step, and (following pointers along the prompt) scored at start
    for prompt, pointers in ((ids[:1], 0), (ids[:7], 0), (ids[:12], 2)):
        o = SiloOptions("knnlm", pointers=pointers)
        assert lm.generator.traces.at_first_step(lm.plan(o), prompt) == (pointers == 0)
        gen = lm.generate(GenerationRequest(prompt, max_tokens=6, temperature=0, options=o))
        (choice,) = gen.choices
        again = _lp(lm, o, prompt + choice.token_ids)[len(prompt) - 1:]
        np.testing.assert_allclose(again, choice.token_logprobs, atol=1e-4)
    # several states and choices stepped together: each row its own context
    requests = [GenerationRequest(ids[:7], max_tokens=5, temperature=1.0, n=2, seed=3,
                                  options=opts),
                GenerationRequest(ids[3:9], max_tokens=4, temperature=0, options=opts)]
    states = lm.start(requests)
    while not all(s.finished for s in states):
        lm.step(states)
    for req, state in zip(requests, states, strict=True):
        alone = lm.generate(req)
        got = lm.finish(state)
        for c, want in zip(got.choices, alone.choices, strict=True):
            assert c.token_ids == want.token_ids
            np.testing.assert_allclose(c.token_logprobs, want.token_logprobs, atol=1e-5)
            scored = _lp(lm, opts, req.prompt_ids + c.token_ids)[len(req.prompt_ids) - 1:]
            np.testing.assert_allclose(scored, c.token_logprobs, atol=1e-4)
