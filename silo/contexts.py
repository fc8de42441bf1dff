"""The inputs of a request's forward passes: which contexts predict which positions.

    plain windows   a sequence longer than the window is read in sliding windows; every
                    position but the last is predicted exactly once (SILO's protocol)
    RIC groups      one group per `stride` predicted positions, with the passages
                    retrieved for the context before them prepended (one input per
                    passage, ensembled with REPLUG weights)
"""

from __future__ import annotations

from collections.abc import Sequence

from silo.batch import Group, plain
from silo.encoder import window_starts
from silo.request import Plan, SiloConfig
from silo.retrieval import Retriever
from silo.ric import Passage, chunk_starts, replug_log_weights, with_passage
from silo.runner import ModelRunner


class Contexts:
    """Builds groups over a model's context and a SiloConfig's windows."""

    def __init__(self, runner: ModelRunner, eos_id: int, config: SiloConfig,
                 retriever: Retriever) -> None:
        self.runner = runner
        self.eos_id = eos_id
        self.config = config
        self.retriever = retriever

    @property
    def max_length(self) -> int:
        return self.runner.max_length

    def window(self) -> tuple[int, int]:
        window = min(self.config.window or self.max_length, self.max_length)
        return window, self.config.stride or max(1, window // 2)

    def plain_groups(self, seqs: Sequence[Sequence[int]]) -> list[tuple[int, Group]]:
        """(global index of the first predicted target, group) over sliding windows:
        every position but the last of each sequence is predicted exactly once."""
        window, stride = self.window()
        out, base = [], 0
        for seq in seqs:
            for s, e, keep in window_starts(len(seq) - 1, window, stride):
                if e > keep:
                    out.append((base + keep, plain(list(seq[s:e]), e - keep)))
            base += max(0, len(seq) - 1)
        return out

    def ric_group(self, context: Sequence[int], scored: int, passages: tuple[Passage, ...],
                  plan: Plan) -> Group:
        """The inputs predicting the last `scored` positions of `context` with `passages`
        prepended (the context alone when there is none)."""
        if not passages:
            return plain(list(context[-self.max_length:]), scored)
        inputs = [with_passage(p.ids, context, self.max_length, self.eos_id) for p in passages]
        weights = replug_log_weights([p.score for p in passages], plan.ric.weight_temperature)
        return Group(inputs, scored, weights, passages)

    def ric_groups(self, seqs: Sequence[Sequence[int]], plan: Plan,
                   ) -> list[tuple[int, Group]]:
        """One group per `stride` predicted positions, with the passages retrieved for the
        context before them."""
        out, base = [], 0
        for seq in seqs:
            for s, e in chunk_starts(len(seq) - 1, plan.ric.stride):
                passages = self.retriever.passages(seq[:s + 1], plan)
                out.append((base + s, self.ric_group(seq[:e], e - s, passages, plan)))
            base += max(0, len(seq) - 1)
        return out
