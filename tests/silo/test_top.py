"""The exact top logprobs of a mixture against the full (n, V) mixture."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from datastore.filter import SearchFilter
from silo.batch import Chunk
from silo.knnlm import KnnParams
from silo.mixer import Mixer
from silo.mode import Mode
from silo.request import Plan
from silo.ric import RicParams
from silo.top import mixture_top, voted_mass

V = 40


def _plan(knn: KnnParams, members: tuple[KnnParams, ...] = (), vote: str = "joint") -> Plan:
    return Plan(Mode.KNNLM, knn, RicParams(), SearchFilter(), False, members,
                tuple(f"s{i}" for i in range(len(members))), vote)


def test_voted_mass_sums_the_weights_of_each_token() -> None:
    d = torch.tensor([[0.0, 0.0, 0.0, 5.0]])
    v = torch.tensor([[3, 1, 3, -1]])
    mass = voted_mass(d, v, 1.0, torch.tensor([[3, 1, 7, 0]]))
    torch.testing.assert_close(mass, torch.tensor([[2 / 3, 1 / 3, 0.0, 0.0]],
                                                  dtype=torch.float64))


@st.composite
def cases(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Plan, int]:
    m, k = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    seed = draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    lm = torch.log_softmax(torch.randn(m, V, generator=g) * 3, dim=1)
    d = torch.rand(m, k, generator=g) * 10
    v = torch.randint(-1, 6, (m, k), generator=g)  # few tokens: many votes share one
    if draw(st.booleans()):
        v[0] = -1  # a row without neighbours
    lam = draw(st.sampled_from([0.0, 0.3, 0.9, 1.0]))
    if draw(st.booleans()):  # two datastores side by side
        half = k // 2 or 1
        members = (KnnParams(half, lam, 2.0, relevance=draw(st.sampled_from([None, 4.0]))),
                   KnnParams(k - half, 0.5, 0.5, relevance=4.0)) if k > 1 else ()
        if members and members[0].relevance is None:
            members = (members[0], KnnParams(k - half, 0.5, 0.5))
        plan = _plan(KnnParams(k, max(lam, 0.5), 1.0), members,
                     draw(st.sampled_from(["joint", "separate"])))
    else:
        plan = _plan(KnnParams(k, lam, 2.0, relevance=draw(st.sampled_from([None, 3.0]))))
    return lm, d, v, plan, draw(st.integers(1, 6))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(cases())
def test_the_top_tokens_are_those_of_the_full_mixture(
        case: tuple[torch.Tensor, torch.Tensor, torch.Tensor, Plan, int]) -> None:
    lm, d, v, plan, n = case
    full = Mixer(V).mixed(Chunk(torch.arange(len(lm)).numpy(), lm, d, None, v), plan)
    want_vals, want_ids = full.topk(n, dim=1)
    got_vals, got_ids = mixture_top(lm, d, v, plan, n)
    torch.testing.assert_close(got_vals, want_vals, atol=1e-5, rtol=1e-5)
    # the same tokens, wherever their log-probs are not tied
    gathered = full.gather(1, got_ids)
    torch.testing.assert_close(gathered, want_vals, atol=1e-5, rtol=1e-5)
    # probability-0 tokens (lambda 1, fewer voted tokens than n) are -inf in both
    assert all(len(set(row)) == n for row in got_ids.tolist())


def test_the_mixer_takes_either_path_to_the_same_top() -> None:
    g = torch.Generator().manual_seed(1)
    lm = torch.log_softmax(torch.randn(3, 4096, generator=g) * 3, dim=1)
    d, v = torch.rand(3, 8, generator=g) * 5, torch.randint(-1, 50, (3, 8), generator=g)
    plan = _plan(KnnParams(8, 0.6, 2.0, relevance=3.0))
    chunk = Chunk(torch.arange(3).numpy(), lm, d, None, v)
    wide = Mixer(4096).top(chunk, plan, 2)  # 4096 >= 16 * (8 + 2): candidates only
    small = Mixer(4096).mixed(chunk, plan).topk(2, dim=1)
    torch.testing.assert_close(wide[0], small.values, atol=1e-5, rtol=1e-5)
    assert torch.equal(wide[1], small.indices)
