"""The sampling rules: total over every temperature and top_p, by property and by hand."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from silo.sampling import GREEDY_BELOW, Draw, nucleus_weights, sample, sample_many

TINY = sys.float_info.min * sys.float_info.epsilon  # the smallest positive float (denormal)
extreme_floats = st.one_of(
    st.sampled_from([TINY, sys.float_info.min, 1e-300, 1e-30, GREEDY_BELOW / 2, GREEDY_BELOW,
                     1e-3, 0.5, 1.0, 2.0]),
    st.floats(min_value=TINY, max_value=2.0, allow_nan=False, allow_infinity=False))
top_ps = st.one_of(st.sampled_from([TINY, 1e-300, 1e-9, 0.5, 0.999999, 1.0]),
                   st.floats(min_value=TINY, max_value=1.0, allow_nan=False))


@st.composite
def log_prob_rows(draw: st.DrawFn) -> torch.Tensor:
    """(m, V) log-probs with extreme shapes: near-one-hot, flat, -inf holes, underflow."""
    m, v = draw(st.integers(1, 4)), draw(st.integers(1, 40))
    logits = torch.tensor(draw(st.lists(
        st.one_of(st.floats(-1e4, 50.0), st.just(-math.inf), st.just(-1e30)),
        min_size=m * v, max_size=m * v)), dtype=torch.float32).reshape(m, v)
    logits[:, draw(st.integers(0, v - 1))] = draw(st.floats(-100.0, 50.0))  # one finite
    return torch.log_softmax(logits, dim=1)


@settings(max_examples=300, deadline=None, derandomize=True)  # the same cases on every run
@given(log_prob_rows(), extreme_floats, top_ps, st.integers(0, 2**31))
def test_sampling_always_returns_a_token_the_distribution_allows(
        lp: torch.Tensor, temperature: float, top_p: float, seed: int) -> None:
    tokens = sample(lp, temperature, top_p, torch.Generator().manual_seed(seed))
    assert tokens.shape == (lp.shape[0],)
    chosen = lp.gather(1, tokens[:, None])[:, 0]
    assert torch.isfinite(chosen).all()  # never a token of probability 0
    if temperature < GREEDY_BELOW:
        assert torch.equal(tokens, lp.argmax(dim=1))


@settings(max_examples=300, deadline=None, derandomize=True)  # the same cases on every run
@given(log_prob_rows(), extreme_floats, top_ps)
def test_nucleus_weights_are_a_valid_unnormalised_distribution(
        lp: torch.Tensor, temperature: float, top_p: float) -> None:
    if temperature < GREEDY_BELOW:
        temperature = GREEDY_BELOW
    scaled = lp / temperature  # what the sampler ranks (division may merge near-ties)
    w = nucleus_weights(scaled, top_p)
    assert torch.isfinite(w).all() and (w >= 0).all() and (w <= 1).all()
    assert (w.gather(1, scaled.argmax(dim=1, keepdim=True)) == 1).all()  # the top token stays
    assert ((w > 0) <= torch.isfinite(lp)).all()  # nothing outside the support


def test_top_p_keeps_the_smallest_set_reaching_the_mass_by_hand() -> None:
    lp = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert (nucleus_weights(lp, 0.75) > 0).tolist() == [[True, True, False, False]]
    assert (nucleus_weights(lp, 0.8) > 0).tolist() == [[True, True, False, False]]
    assert (nucleus_weights(lp, 0.81) > 0).tolist() == [[True, True, True, False]]
    assert (nucleus_weights(lp, 1e-300) > 0).tolist() == [[True, False, False, False]]
    assert (nucleus_weights(lp, 1.0) > 0).all()


def test_denormal_temperature_is_greedy_and_seeded_draws_repeat() -> None:
    lp = torch.log_softmax(torch.randn(3, 50, generator=torch.Generator().manual_seed(0)), 1)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sample(lp, 1e-300, 1.0, gen), lp.argmax(1))
    a = sample(lp, 1.0, 0.9, torch.Generator().manual_seed(3))
    b = sample(lp, 1.0, 0.9, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_a_row_without_a_finite_log_prob_or_with_a_nan_is_an_error_not_a_token() -> None:
    lp = torch.full((1, 5), -math.inf)
    with pytest.raises(ValueError, match="no finite log-probability"):
        sample(lp, 1.0, 1.0, torch.Generator())
    lp = torch.tensor([[-1.0, float("nan"), -2.0]])
    with pytest.raises(ValueError, match="nan"):
        sample(lp, 1.0, 1.0, torch.Generator())


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.tuples(log_prob_rows(), extreme_floats, top_ps, st.integers(0, 2**31)),
                min_size=1, max_size=5))
def test_a_batch_of_draws_samples_what_each_draw_samples_alone(
        cases: list[tuple[torch.Tensor, float, float, int]]) -> None:
    width = max(lp.shape[1] for lp, *_ in cases)  # rows padded with -inf to one vocabulary
    rows = [torch.nn.functional.pad(lp, (0, width - lp.shape[1]), value=-math.inf)
            for lp, *_ in cases]
    draws, at = [], 0
    for (lp, t, p, seed), _ in zip(cases, rows, strict=True):
        draws.append(Draw(at, at + len(lp), t, p, tuple(torch.Generator().manual_seed(seed + i)
                                                       for i in range(len(lp)))))
        at += len(lp)
    together = sample_many(torch.cat(rows), draws)
    for (lp, t, p, seed), row, got in zip(cases, rows, together, strict=True):
        alone = sample_many(row, [Draw(0, len(lp), t, p, tuple(
            torch.Generator().manual_seed(seed + i) for i in range(len(lp))))])[0]
        assert isinstance(got, torch.Tensor) and isinstance(alone, torch.Tensor)
        assert torch.equal(got, alone)


def test_one_bad_draw_in_a_batch_fails_alone() -> None:
    good = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0]]), dim=1)
    bad = torch.tensor([[-1.0, float("nan"), -2.0]])
    gens = [torch.Generator().manual_seed(3) for _ in range(3)]
    out = sample_many(torch.cat([good, bad, good]),
                      [Draw(i, i + 1, 1.0, 1.0, (gens[i],)) for i in range(3)])
    assert isinstance(out[1], ValueError) and "nan" in str(out[1])
    first = sample(good, 1.0, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(out[0], first) and torch.equal(out[2], first)
    nan_t = sample_many(good, [Draw(0, 1, float("nan"), 1.0, (gens[0],))])[0]
    assert isinstance(nan_t, RuntimeError) and "temperature nan" in str(nan_t)


def test_draws_follow_the_distribution_and_never_pick_a_token_without_weight() -> None:
    p = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    lp = p.log()[None].expand(20_000, -1).contiguous()
    gen = torch.Generator().manual_seed(0)
    tokens = sample(lp, 1.0, 1.0, gen)
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    assert freq[1] == 0 and freq[4] == 0
    # 20,000 draws: the standard error of a share near 0.5 is 0.0035
    assert torch.allclose(freq, p, atol=0.02), freq
    # top_p 0.75 keeps the tokens whose mass ranked above is below 0.75: 0.5 and 0.3
    nucleus = torch.bincount(sample(lp, 1.0, 0.75, gen), minlength=5).float() / len(lp)
    assert nucleus[3] == 0 and torch.allclose(nucleus[[0, 2]], torch.tensor([0.625, 0.375]),
                                              atol=0.02)
