"""The context's distances of running generations (silo.relevance), step by step.

A plan that measures relevance from the context needs, for each choice, the running
sums over its prompt's positions and every token since. The prompt's positions are read
at the first step from the pass that reads the prompt anyway (silo.decoding's
`positions`), all new generations of a plan in one search; each step then adds its
position to each choice's sums. Where the first step cannot give them (a plan that
follows pointers, whose neighbours along the prompt depend on the tokens before; a prompt
longer than the model's window, read in sliding windows), the prompt is scored at start
as scoring scores it (Scorer.context_trace). Either way a generated token's weights are
those scoring its text gives.

The new sums are kept on the chunk until the state commits its token (silo.generation),
so a step that fails leaves them as they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from silo.batch import Chunk
from silo.combination import member_nearest
from silo.relevance import Trace, advance, context_distance, smooth
from silo.request import Plan

if TYPE_CHECKING:
    from silo.generation import GenerationState
    from silo.retrieval import Retriever
    from silo.scoring import Scorer


class Traces:
    """The context's distances of the generations a Generator steps."""

    def __init__(self, retriever: Retriever, scorer: Scorer, max_length: int) -> None:
        self.retriever = retriever
        self.scorer = scorer
        self.max_length = max_length

    def at_first_step(self, plan: Plan, prompt: Sequence[int]) -> bool:
        """Whether the prompt's positions come from the first step's pass (else they are
        scored at start: `at_start`)."""
        return not plan.knn.pointers and len(prompt) <= self.max_length

    def at_start(self, plan: Plan, prompt: Sequence[int]) -> Trace | None:
        """The prompt's sums where the first step cannot give them; None otherwise (and
        for a plan that does not measure relevance from the context)."""
        if plan.decays is None or self.at_first_step(plan, prompt):
            return None
        return self.scorer.context_trace(prompt, plan)

    @staticmethod
    def pending(s: GenerationState) -> bool:
        """Whether a state's prompt positions are still to be read (its first step)."""
        return (s.plan.decays is not None and s.steps == 0
                and s.traces[0] is None and len(s.request.prompt_ids) > 1)

    def from_prompts(self, states: Sequence[GenerationState],
                     positions: Sequence[torch.Tensor], plan: Plan) -> list[Trace]:
        """The sums over each state's prompt, from the LM-head inputs of the prompt's
        positions (len, dim) each (the last is the first step's own query, not the
        prompt's): the positions of all the states in one search."""
        assert plan.decays is not None
        queries = [p[:-1] for p in positions]
        sizes = [len(q) for q in queries]
        # a carrier for the neighbours alone (no distribution is mixed from it)
        chunk = Chunk(np.arange(sum(sizes)), torch.empty(sum(sizes), 0))
        self.retriever.search(chunk, torch.cat(queries), plan)
        assert chunk.distances is not None and chunk.values is not None
        nearest = member_nearest(chunk.distances, chunk.values,
                                 plan.stores, chunk.baseline).numpy()
        out, at = [], 0
        for n in sizes:
            first = np.zeros(n, dtype=bool)
            first[:1] = True
            out.append(smooth(nearest[at:at + n], first, plan.decays)[1])
            at += n
        return out

    @staticmethod
    def step(chunk: Chunk, rows: Sequence[Trace | None], plan: Plan) -> None:
        """The chunk's context distances: each row's sums (`rows`, None: none yet) one
        position on, kept on the chunk until its state commits."""
        assert plan.decays is not None
        assert chunk.distances is not None and chunk.values is not None
        nearest = member_nearest(chunk.distances, chunk.values, plan.stores, chunk.baseline)
        before = [t or Trace.empty(len(plan.decays)) for t in rows]
        num, den = advance(np.stack([t.num for t in before]), np.stack([t.den for t in before]),
                           nearest.numpy(), plan.decays)
        chunk.context = torch.from_numpy(context_distance(num, den))
        chunk.trace = num, den
