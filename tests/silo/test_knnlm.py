"""kNN-LM math against hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from silo.knnlm import (
    KnnParams,
    interpolate,
    knn_log_probs,
    mixed_log_probs,
    nearest_distance,
    neighbour_log_weights,
    relevance_of,
    target_log_probs,
    target_neighbour_mass,
)

# d = (0, ln 3) at tau = 1: softmax(-d) = (3/4, 1/4)
D = torch.tensor([[0.0, math.log(3.0)]])


def test_knn_distribution_sums_the_softmax_weights_of_each_value() -> None:
    got = knn_log_probs(D, torch.tensor([[2, 0]]), vocab_size=4, temperature=1.0).exp()
    torch.testing.assert_close(got, torch.tensor([[0.25, 0.0, 0.75, 0.0]]))
    same = knn_log_probs(D, torch.tensor([[1, 1]]), vocab_size=3, temperature=1.0).exp()
    torch.testing.assert_close(same, torch.tensor([[0.0, 1.0, 0.0]]))


def test_temperature_scales_the_distances() -> None:
    # tau = 2 halves the logit gap: weights (sqrt 3, 1) / (sqrt 3 + 1)
    got = knn_log_probs(D, torch.tensor([[0, 1]]), vocab_size=2, temperature=2.0).exp()
    r = math.sqrt(3.0)
    torch.testing.assert_close(got, torch.tensor([[r / (r + 1), 1 / (r + 1)]]))


def test_padding_takes_no_part_and_an_empty_row_has_no_distribution() -> None:
    d = torch.tensor([[0.0, math.log(3.0), 0.0], [1.0, 2.0, 3.0]])
    v = torch.tensor([[2, 0, -1], [-1, -1, -1]])
    lw = neighbour_log_weights(d, v, 1.0)
    torch.testing.assert_close(lw[0].exp(), torch.tensor([0.75, 0.25, 0.0]))
    assert torch.isneginf(lw[1]).all()
    lp = knn_log_probs(d, v, vocab_size=3, temperature=1.0)
    torch.testing.assert_close(lp[0].exp(), torch.tensor([0.25, 0.0, 0.75]))
    assert torch.isneginf(lp[1]).all()


def test_interpolation_by_hand_and_lambda_zero_is_the_lm_exactly() -> None:
    lm = torch.tensor([[0.5, 0.25, 0.25]]).log()
    knn = knn_log_probs(D, torch.tensor([[1, 1]]), vocab_size=3, temperature=1.0)
    mixed = interpolate(lm, knn, 0.5).exp()
    torch.testing.assert_close(mixed, torch.tensor([[0.25, 0.625, 0.125]]))
    assert torch.equal(interpolate(lm, knn, 0.0), lm)
    torch.testing.assert_close(interpolate(lm, knn, 1.0).exp(), knn.exp())
    torch.testing.assert_close(mixed.sum(), torch.tensor(1.0))


def test_rows_without_neighbours_keep_the_lm_distribution() -> None:
    lm = torch.tensor([[0.5, 0.5], [0.9, 0.1]]).log()
    knn = torch.tensor([[0.0, 1.0], [0.0, 0.0]]).log()
    got = interpolate(lm, knn, 0.3, has_neighbours=torch.tensor([True, False]))
    torch.testing.assert_close(got.exp(), torch.tensor([[0.35, 0.65], [0.9, 0.1]]))


def test_target_mass_is_each_neighbours_share_of_the_target() -> None:
    v = torch.tensor([[2, 0]])
    mass = target_neighbour_mass(D, v, torch.tensor([2]), 1.0)
    torch.testing.assert_close(mass, torch.tensor([[0.75, 0.0]]))
    p = knn_log_probs(D, v, vocab_size=3, temperature=1.0).exp()
    torch.testing.assert_close(mass.sum(1), p[:, 2])


def test_params_are_validated_naming_the_field() -> None:
    with pytest.raises(ValueError, match="lam"):
        KnnParams(lam=1.5)
    with pytest.raises(ValueError, match="temperature"):
        KnnParams(temperature=0.0)
    with pytest.raises(ValueError, match="k must"):
        KnnParams(k=0)
    with pytest.raises(ValueError, match="relevance must"):
        KnnParams(relevance=math.inf)
    with pytest.raises(ValueError, match="relevance_temperature"):
        KnnParams(relevance=1.0, relevance_temperature=0.0)


def test_the_relevance_weight_is_a_sigmoid_of_the_nearest_valid_distance() -> None:
    d = torch.tensor([[3.0, 1.0, 0.5], [2.0, 4.0, 0.0], [1.0, 1.0, 1.0]])
    v = torch.tensor([[1, 2, -1], [5, 5, 5], [-1, -1, -1]])  # row 0: 0.5 is padding
    assert nearest_distance(d, v).tolist() == [1.0, 0.0, math.inf]
    w = relevance_of(nearest_distance(d, v), d0=1.0, temperature=0.5).float()
    torch.testing.assert_close(w, torch.tensor([0.5, 1 / (1 + math.exp(-2.0)), 0.0]))
    params = KnnParams(lam=0.4, relevance=1.0, relevance_temperature=0.5)
    torch.testing.assert_close(params.row_lam(d, v), 0.4 * w)
    assert KnnParams(lam=0.4).row_lam(d, v) == 0.4  # off: one weight everywhere


def test_a_weight_per_row_mixes_each_row_at_its_own_weight() -> None:
    lm = torch.tensor([[0.5, 0.25, 0.25]] * 3).log()
    knn = torch.tensor([[0.0, 1.0, 0.0]] * 3).log()
    lam = torch.tensor([0.5, 0.0, 1.0])
    got = interpolate(lm, knn, lam)
    torch.testing.assert_close(got[0], interpolate(lm[:1], knn[:1], 0.5)[0])
    assert torch.equal(got[1], lm[1])  # weight 0: the LM's row bit for bit
    assert torch.equal(got[2], knn[2])
    # the same weight on every row is the scalar path
    same = interpolate(lm, knn, torch.full((3,), 0.3))
    torch.testing.assert_close(same, interpolate(lm, knn, 0.3), atol=1e-7, rtol=0)
    has = torch.tensor([True, True, False])
    assert torch.equal(interpolate(lm, knn, torch.full((3,), 0.3), has)[2], lm[2])
    targets = torch.tensor([1, 1, 0])
    d, v = torch.tensor([[0.0]] * 3), torch.tensor([[1], [1], [1]])
    at = target_log_probs(lm.gather(1, targets[:, None])[:, 0], d, v, targets, lam, 1.0)
    torch.testing.assert_close(at, got.gather(1, targets[:, None])[:, 0])


@st.composite
def neighbours(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, k) distances (0, huge, denormal, equal) and values with -1 padding."""
    n, k = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    d = draw(st.lists(st.one_of(st.floats(0.0, 3e38), st.sampled_from([0.0, 1e-45, 1e30])),
                      min_size=n * k, max_size=n * k))
    v = draw(st.lists(st.integers(-1, 7), min_size=n * k, max_size=n * k))
    return torch.tensor(d, dtype=torch.float32).reshape(n, k), torch.tensor(v).reshape(n, k)


@settings(max_examples=300, deadline=None, derandomize=True)  # the same cases on every run
@given(neighbours(),
       st.one_of(st.sampled_from([5e-324, 1e-300, 1e-30, 1.0, 1e6]), st.floats(1e-300, 1e6)),
       st.one_of(st.sampled_from([0.0, 1.0, 1e-300]), st.floats(0.0, 1.0)))
def test_the_mixture_is_a_distribution_for_extreme_distances_and_temperatures(
        nb: tuple[torch.Tensor, torch.Tensor], tau: float, lam: float) -> None:
    d, v = nb
    lm = torch.log_softmax(torch.arange(8.0).repeat(d.shape[0], 1), dim=1)
    knn = knn_log_probs(d, v, 8, tau)
    has = (v >= 0).any(1)
    assert torch.allclose(knn[has].logsumexp(1), torch.zeros(int(has.sum())), atol=1e-5)
    mixed = interpolate(lm, knn, lam, has)
    assert not torch.isnan(mixed).any()
    assert torch.allclose(mixed.logsumexp(1), torch.zeros(d.shape[0]), atol=1e-5)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(neighbours(),
       st.one_of(st.sampled_from([5e-324, 1e-300, 1e-30, 1.0, 1e6]), st.floats(1e-300, 1e6)),
       st.one_of(st.sampled_from([0.0, 1.0, 1e-300]), st.floats(0.0, 1.0)),
       st.integers(0, 7))
def test_the_mixture_at_the_target_equals_the_full_mixture_there(
        nb: tuple[torch.Tensor, torch.Tensor], tau: float, lam: float, target: int) -> None:
    """Scoring without top logprobs computes the mixture at the targets only."""
    d, v = nb
    lm = torch.log_softmax(torch.arange(8.0).repeat(d.shape[0], 1), dim=1)
    targets = (torch.arange(d.shape[0]) + target) % 8
    knn = knn_log_probs(d, v, 8, tau)
    want = interpolate(lm, knn, lam, torch.isfinite(knn).any(1)).gather(1, targets[:, None])
    got = target_log_probs(lm.gather(1, targets[:, None])[:, 0], d, v, targets, lam, tau)
    torch.testing.assert_close(got, want[:, 0], atol=1e-6, rtol=1e-5)


def test_a_vanishing_temperature_is_a_vote_of_the_nearest_neighbours() -> None:
    d, v = torch.tensor([[2.0, 1.0, 1.0, 3.0]]), torch.tensor([[0, 1, 2, 3]])
    w = neighbour_log_weights(d, v, 1e-300).exp()
    assert torch.allclose(w, torch.tensor([[0.0, 0.5, 0.5, 0.0]]))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(1, 5), st.integers(1, 12), st.integers(1, 30), st.integers(0, 2**31),
       st.sampled_from(["scalar", "rows", "zero", "one"]), st.sampled_from([0.5, 2.0, 80.0]))
def test_the_mixture_at_the_neighbours_tokens_is_the_full_interpolation(
        n: int, k: int, vocab: int, seed: int, lam_kind: str, tau: float) -> None:
    g = torch.Generator().manual_seed(seed)
    lm = torch.log_softmax(torch.randn(n, vocab, generator=g) * 3, dim=1)
    dist = torch.rand(n, k, generator=g) * 200
    values = torch.randint(-1, vocab, (n, k), generator=g)  # -1: padding, repeats
    values[0] = -1  # a row with no neighbour
    lam: float | torch.Tensor = {"scalar": 0.6, "zero": 0.0, "one": 1.0,
                                 "rows": torch.rand(n, generator=g) * (torch.rand(
                                     n, generator=g) > 0.3)}[lam_kind]
    knn = knn_log_probs(dist, values, vocab, tau)
    want = interpolate(lm, knn, lam, torch.isfinite(knn).any(1))
    got = mixed_log_probs(lm, dist, values, lam, tau)
    assert torch.equal(torch.isinf(got), torch.isinf(want))  # the same tokens ruled out
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
