"""The mixer: a chunk's next-token distribution under its request's plan, from the LM
side and the kNN neighbours (the math is silo.knnlm's)."""

from __future__ import annotations

import torch

from silo.batch import Chunk
from silo.combination import combined_log_probs, combined_target_log_probs
from silo.knnlm import mixed_log_probs, target_log_probs
from silo.request import Plan
from silo.top import mixture_top

# the candidates-only top (silo.top) is used once the vocabulary is this many times the
# candidates (k neighbours + n): at 8 times it measured 0.9x the full mixture, at 48
# times 4.6x (bench/top_logprobs.py)
CANDIDATES_PAY = 16


class Mixer:
    """Mixtures over a vocabulary of `vocab_size` tokens."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def mixed(self, chunk: Chunk, plan: Plan) -> torch.Tensor:
        """(m, V) log-probs of the plan's mixture for the chunk's positions."""
        if chunk.values is None or chunk.distances is None:
            return chunk.lm
        if plan.members:  # several datastores
            return combined_log_probs(chunk.lm, chunk.distances, chunk.values, plan.members,
                                      self.vocab_size, plan.vote, chunk.context)
        # computed at the neighbours' tokens (the (m, V) interpolation, float rounding aside)
        return mixed_log_probs(chunk.lm, chunk.distances, chunk.values,
                               plan.knn.row_lam(chunk.distances, chunk.values,
                                                chunk.context_of(0)),
                               plan.knn.temperature)

    def at_targets(self, chunk: Chunk, targets: torch.Tensor, plan: Plan) -> torch.Tensor:
        """(m,) log-probs of the plan's mixture at the chunk's targets (as `mixed`
        gathered there, without the (m, V) mixture)."""
        lm = chunk.lm.gather(1, targets[:, None])[:, 0]
        if chunk.values is None or chunk.distances is None:
            return lm
        if plan.members:
            return combined_target_log_probs(lm, chunk.distances, chunk.values, targets,
                                             plan.members, plan.vote, chunk.context)
        return target_log_probs(lm, chunk.distances, chunk.values, targets,
                                plan.knn.row_lam(chunk.distances, chunk.values,
                                                 chunk.context_of(0)),
                                plan.knn.temperature)

    def top(self, chunk: Chunk, plan: Plan, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, n) log-probs and ids of the mixture's n most likely tokens per position
        (as `mixed(...).topk(n)`, from the candidates alone: silo.top)."""
        if chunk.values is None or chunk.distances is None:
            values, ids = chunk.lm.topk(min(n, chunk.lm.shape[1]), dim=1)
            return values, ids
        if self.vocab_size < CANDIDATES_PAY * (chunk.values.shape[1] + n):
            # a small vocabulary: the whole mixture is as cheap (docs/BENCHMARKS.md)
            values, ids = self.mixed(chunk, plan).topk(min(n, self.vocab_size), dim=1)
            return values, ids
        return mixture_top(chunk.lm, chunk.distances, chunk.values, plan, n, chunk.context)
