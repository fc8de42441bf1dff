"""What one pass over a few positions carries, shared by scoring and generation.

    Group   the inputs (one per RIC passage, or one without) whose last `scored`
            positions predict the same targets; their distributions are ensembled
    Chunk   the distributions of m predicted positions: the LM (or RIC-LM) side, the kNN
            neighbours where the plan uses them, the passages in context
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from silo.ric import Passage


@dataclass
class Group:
    """Inputs whose last `scored` positions predict the same targets; their
    distributions are ensembled with `log_weights` (REPLUG)."""

    inputs: list[list[int]]
    scored: int
    log_weights: torch.Tensor
    passages: tuple[Passage, ...] = ()


def plain(context: list[int], scored: int) -> Group:
    """One input, no passage."""
    return Group([context], scored, torch.zeros(1))


@dataclass
class Chunk:
    """Distributions for m predicted positions: global target index (m,), the LM (or
    RIC-LM) log-probs (m, V), and the kNN neighbours (m, k) when the plan uses them.
    Where the plan measures relevance from the context (silo.relevance), `context`
    (m, M) float64 is each row's context distance per datastore, and in generation
    `trace` each row's running sums (num, den) after this position; where a weight is
    measured from the reference, `baseline` (m,) float64 each row's distance to it."""

    index: np.ndarray
    lm: torch.Tensor
    distances: torch.Tensor | None = None
    entry_ids: np.ndarray | None = None
    values: torch.Tensor | None = None
    passages: list[tuple[Passage, ...]] = field(default_factory=list)
    context: torch.Tensor | None = None
    trace: tuple[np.ndarray, np.ndarray] | None = None
    baseline: torch.Tensor | None = None

    def part(self, a: int, b: int) -> Chunk:
        """Positions a..b-1 of this chunk."""
        return Chunk(self.index[a:b], self.lm[a:b],
                     None if self.distances is None else self.distances[a:b],
                     None if self.entry_ids is None else self.entry_ids[a:b],
                     None if self.values is None else self.values[a:b], self.passages[a:b],
                     None if self.context is None else self.context[a:b],
                     None if self.trace is None else (self.trace[0][a:b], self.trace[1][a:b]),
                     None if self.baseline is None else self.baseline[a:b])

    def context_of(self, i: int) -> torch.Tensor | None:
        """Datastore i's column of `context` (m,), or None."""
        return None if self.context is None else self.context[:, i]
