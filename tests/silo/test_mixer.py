"""The mixer at the targets equals the full mixture gathered there, and a chunk without
neighbours is the LM side unchanged."""

from __future__ import annotations

import numpy as np
import torch

from datastore.filter import SearchFilter
from silo.batch import Chunk
from silo.knnlm import KnnParams
from silo.mixer import Mixer
from silo.mode import Mode
from silo.request import Plan
from silo.ric import RicParams

V = 50


def _plan(lam: float, tau: float) -> Plan:
    return Plan(Mode.KNNLM, KnnParams(k=6, lam=lam, temperature=tau), RicParams(),
                SearchFilter(), False)


def _chunk(seed: int) -> Chunk:
    g = torch.Generator().manual_seed(seed)
    lm = torch.log_softmax(torch.randn(8, V, generator=g), -1)
    values = torch.randint(0, V, (8, 6), generator=g)
    values[2] = -1  # a position with no allowed neighbour keeps the LM's distribution
    values[5, 3:] = -1
    return Chunk(np.arange(8), lm, torch.rand(8, 6, generator=g) * 10, None, values)


def test_at_targets_equals_the_mixture_gathered() -> None:
    mixer = Mixer(V)
    for seed, (lam, tau) in enumerate([(0.3, 1.0), (0.9, 0.05), (1.0, 20.0), (0.0, 1.0)]):
        chunk = _chunk(seed)
        targets = chunk.values[:, 0].clamp(min=0)  # type: ignore[index]
        full = mixer.mixed(chunk, _plan(lam, tau)).gather(1, targets[:, None])[:, 0]
        torch.testing.assert_close(mixer.at_targets(chunk, targets, _plan(lam, tau)), full,
                                   atol=1e-5, rtol=0)
        assert torch.equal(mixer.mixed(chunk, _plan(lam, tau))[2], chunk.lm[2])


def test_without_neighbours_the_lm_side_is_the_answer() -> None:
    chunk = _chunk(0)
    bare = Chunk(chunk.index, chunk.lm)
    assert Mixer(V).mixed(bare, _plan(0.5, 1.0)) is bare.lm
