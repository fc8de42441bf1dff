"""Scoring: the log-probability of every token of a prompt given the ones before it,
under a request's plan, with the top-N alternatives and attribution where asked.

Positions are served a few groups at a time (`chunks`): the forward passes (plain
windows, or one input per RIC passage), then for kNN-LM the neighbours of each position
(searched, or with pointers followed along each group, on a search thread while the
next groups go through the model), then the mixture. Without top
logprobs the mixture is computed at the targets only, with no (m, V) tensor. Where the
plan measures relevance from the context (silo.relevance), each chunk's context distances
are carried on from the positions before it, in order, as the chunks come.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import torch

from silo.attribution import TokenProvenance
from silo.batch import Chunk, Group
from silo.combination import member_nearest
from silo.contexts import Contexts
from silo.mixer import Mixer
from silo.relevance import Trace, smooth
from silo.request import Plan, ScoreRequest, ScoreResult, SiloConfig
from silo.retrieval import Retriever
from silo.runner import ModelRunner
from silo.tuning import TargetScores

# a scored batch that fits one forward pass is cut into this many passes: its kNN searches
# then overlap the next passes, and on CPU four 4-row passes of 400 tokens took 0.8-0.9x
# the time of one 16-row pass even without a search (docs/BENCHMARKS.md, "Served scoring
# at 2.7M entries")
SCORE_PARTS = 4


def sequence_starts(seqs: Sequence[Sequence[int]]) -> np.ndarray:
    """(n,) bool over the predicted positions of `seqs` in order: the first of each
    sequence."""
    sizes = np.array([max(0, len(s) - 1) for s in seqs], dtype=np.int64)
    first = np.zeros(int(sizes.sum()), dtype=bool)
    first[np.concatenate([[0], np.cumsum(sizes)[:-1]])[sizes > 0]] = True
    return first


class ContextDistances:
    """The context distances of the predicted positions of `seqs` (silo.relevance),
    set on their chunks in order (`apply`); `trace` the sums after the last one."""

    def __init__(self, seqs: Sequence[Sequence[int]], plan: Plan) -> None:
        assert plan.decays is not None
        self.decays = plan.decays
        self.members = plan.stores
        self.first = sequence_starts(seqs)
        self.trace = Trace.empty(len(self.decays))

    def apply(self, chunk: Chunk) -> Chunk:
        """Set the chunk's context distances; its rows follow the last chunk's."""
        assert chunk.distances is not None and chunk.values is not None
        nearest = member_nearest(chunk.distances, chunk.values, self.members,
                                 chunk.baseline).numpy()
        r, self.trace = smooth(nearest, self.first[chunk.index], self.decays, self.trace)
        chunk.context = torch.from_numpy(r)
        return chunk


class Scorer:
    """Scores prompts with the parts SiloLM shares with generation."""

    def __init__(self, runner: ModelRunner, retriever: Retriever, mixer: Mixer,
                 contexts: Contexts, config: SiloConfig) -> None:
        self.runner = runner
        self.retriever = retriever
        self.mixer = mixer
        self.contexts = contexts
        self.config = config
        self._searcher: ThreadPoolExecutor | None = None

    def score(self, requests: Sequence[ScoreRequest], plans: Sequence[Plan],
              ) -> list[ScoreResult]:
        """Score each request's prompt under its plan; requests of equal plans share
        batches."""
        results: list[ScoreResult | None] = [None] * len(requests)
        by_plan: dict[Plan, list[int]] = {}
        for i, plan in enumerate(plans):
            by_plan.setdefault(plan, []).append(i)
        for plan, members in by_plan.items():
            top = max(requests[i].top_logprobs for i in members)
            scored = self._score_ids([requests[i].prompt_ids for i in members], plan, top)
            for i, res in zip(members, scored, strict=True):
                n = requests[i].top_logprobs
                tops = None if res.top_logprobs is None or n == 0 else tuple(
                    None if t is None else dict(list(t.items())[:n]) for t in res.top_logprobs)
                results[i] = replace(res, top_logprobs=tops)
        return [r for r in results if r is not None]

    def target_scores(self, seqs: Sequence[Sequence[int]], plan: Plan, k: int,
                      ) -> TargetScores:
        """For hyperparameter search, over every predicted token of `seqs` in order: the
        LM side's log-prob of the target (parametric, or RIC-LM in the ric modes) and its
        k nearest neighbours (k = 0: no search), and where the plan reads the reference
        each token's distance to it."""
        targets = torch.tensor([t for s in seqs for t in list(s)[1:]], dtype=torch.long)
        lp = np.zeros(len(targets), np.float64)
        dist = np.full((len(targets), k), np.inf, np.float32)
        vals = np.full((len(targets), k), -1, np.int64)
        base = np.full(len(targets), np.inf) if plan.reads_reference else None
        for chunk in self.chunks(seqs, plan):
            tgt = targets[torch.from_numpy(chunk.index)]
            lp[chunk.index] = chunk.lm.gather(1, tgt[:, None])[:, 0].double().numpy()
            if chunk.distances is not None and chunk.values is not None:
                dist[chunk.index] = chunk.distances.numpy()
                vals[chunk.index] = chunk.values.numpy()
            if base is not None and chunk.baseline is not None:
                base[chunk.index] = chunk.baseline.numpy()
        return TargetScores(lp, dist, vals, targets.numpy(), sequence_starts(seqs), base)

    def context_trace(self, seq: Sequence[int], plan: Plan) -> Trace:
        """The context distances' running sums over the predicted positions of `seq`
        (silo.relevance): where generation after `seq` starts from."""
        context = ContextDistances([seq], plan)
        for _ in self.chunks([seq], plan, context):
            pass
        return context.trace

    # ---- distributions over sequences ------------------------------------------------

    def chunks(self, seqs: Sequence[Sequence[int]], plan: Plan,
               context: ContextDistances | None = None) -> Iterator[Chunk]:
        """The LM side and the kNN neighbours of every predicted position, a few groups at
        a time (so (m, V) tensors stay small). A part's kNN search runs on the search
        thread while the next part's forward pass runs here; a batch that fits one pass is
        cut into `SCORE_PARTS` parts. Where the plan measures relevance from the context,
        each chunk carries its context distances (`context`, a new one when None)."""
        if context is None and plan.decays is not None:
            context = ContextDistances(seqs, plan)
        queries = None
        if plan.uses_knn and plan.uses_ric:  # kNN queries come from the plain context
            plain = [h for _, h in self._iter_groups(self.contexts.plain_groups(seqs))]
            queries = torch.cat(plain) if plain else None
        groups = self.contexts.ric_groups(seqs, plan) if plan.uses_ric \
            else self.contexts.plain_groups(seqs)
        targets = np.array([t for s in seqs for t in list(s)[1:]], dtype=np.int64)
        size = self.config.batch_size
        if len(groups) <= size:
            size = max(1, math.ceil(len(groups) / SCORE_PARTS))
        searching: tuple[Chunk, Future[None]] | None = None
        for at in range(0, len(groups), size):
            part = groups[at:at + size]
            lp, hidden = self.runner.run_groups([g for _, g in part], self.config.batch_size)
            index = np.concatenate([np.arange(i, i + g.scored) for i, g in part])
            chunk = Chunk(index, lp, passages=[g.passages for _, g in part
                                               for _ in range(g.scored)])
            if not plan.uses_knn:
                yield chunk
                continue
            q = hidden if queries is None else queries[torch.from_numpy(index)]
            lengths = [g.scored for _, g in part]
            found = self._search_thread().submit(self._search, chunk, q, lengths, targets, plan)
            if searching is not None:
                yield self._ready(*searching, context)
            searching = chunk, found
        if searching is not None:
            yield self._ready(*searching, context)

    @staticmethod
    def _ready(chunk: Chunk, search: Future[None], context: ContextDistances | None,
               ) -> Chunk:
        """A chunk once its search is done, with its context distances where asked."""
        search.result()  # the search's exception, if any, raised here
        return chunk if context is None else context.apply(chunk)

    def _search(self, chunk: Chunk, queries: torch.Tensor, lengths: list[int],
                targets: np.ndarray, plan: Plan) -> None:
        """A chunk's neighbours, searched or with pointers followed (on the search thread)."""
        if plan.knn.pointers:
            self._search_along(chunk, queries, lengths, targets, plan)
        else:
            self.retriever.search(chunk, queries, plan)

    def _search_thread(self) -> ThreadPoolExecutor:
        """One thread for the searches, with the torch threads of the thread that made it
        (torch's thread count is per thread; the model thread's is configured)."""
        if self._searcher is None:
            self._searcher = ThreadPoolExecutor(
                1, thread_name_prefix="silo-score-search", initializer=torch.set_num_threads,
                initargs=(torch.get_num_threads(),))
        return self._searcher

    def _iter_groups(self, groups: list[tuple[int, Group]],
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = self.config.batch_size
        for at in range(0, len(groups), size):
            yield self.runner.run_groups([g for _, g in groups[at:at + size]], size)

    def _search_along(self, chunk: Chunk, queries: torch.Tensor, lengths: list[int],
                      targets: np.ndarray, plan: Plan) -> None:
        """Neighbours of a chunk whose rows are groups of consecutive positions (`lengths`
        rows each), following pointers along each group: step j takes the j-th position
        of every group at once, with the neighbours and target of position j - 1."""
        baseline = self.retriever.baseline_beside(queries, plan)  # meanwhile
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        sizes = np.asarray(lengths)
        dist = np.full((len(chunk.index), plan.knn.k), np.inf, np.float32)
        ids = np.full((len(chunk.index), plan.knn.k), -1, np.int64)
        q = queries.numpy()
        for j in range(int(sizes.max(initial=0))):
            rows = offsets[sizes > j] + j
            if j == 0:
                dist[rows], ids[rows] = self.retriever.neighbours(q[rows], plan)
            else:
                dist[rows], ids[rows] = self.retriever.neighbours(
                    q[rows], plan, ids[rows - 1], targets[chunk.index[rows - 1]])
        self.retriever.attach(chunk, dist, ids, baseline)

    # ---- one group of requests ------------------------------------------------------------

    def _score_ids(self, seqs: Sequence[Sequence[int]], plan: Plan, top: int,
                   ) -> list[ScoreResult]:
        n_pred = [max(0, len(s) - 1) for s in seqs]
        starts = np.concatenate([[0], np.cumsum(n_pred)]).astype(np.int64)
        targets = torch.tensor([t for s in seqs for t in list(s)[1:]], dtype=torch.long)
        logprob = np.zeros(len(targets), np.float64)
        tops: list[dict[int, float]] = [{} for _ in range(len(targets))]
        provs: list[TokenProvenance] = [TokenProvenance() for _ in range(len(targets))]
        for chunk in self.chunks(seqs, plan):
            tgt = targets[torch.from_numpy(chunk.index)]
            # the targets' probabilities, and the top N, without the (m, V) mixture
            logprob[chunk.index] = self.mixer.at_targets(chunk, tgt, plan).double().numpy()
            if top:
                values, ids = self.mixer.top(chunk, plan, top)
                for row, i in enumerate(chunk.index.tolist()):
                    tops[i] = dict(zip(ids[row].tolist(), values[row].tolist(), strict=True))
            if plan.attribution:
                for i, p in zip(chunk.index.tolist(),
                                self.retriever.provenance(chunk, tgt, plan), strict=True):
                    provs[i] = p
        return [self._result(seq, logprob[a:b], tops[a:b] if top else None,
                             provs[a:b] if plan.attribution else None)
                for seq, a, b in zip(seqs, starts[:-1].tolist(), starts[1:].tolist(),
                                     strict=True)]

    def _result(self, seq: Sequence[int], logprob: np.ndarray,
                tops: list[dict[int, float]] | None,
                provs: list[TokenProvenance] | None) -> ScoreResult:
        lead: tuple[None, ...] = (None,) if seq else ()
        attribution = None
        if provs is not None and len(seq) > 1:
            attribution = self.retriever.attribution(list(seq[1:]), provs)
        return ScoreResult(
            tokens=tuple(seq), token_logprobs=lead + tuple(float(x) for x in logprob),
            top_logprobs=None if tops is None else lead + tuple(tops),
            provenance=None if provs is None else lead + tuple(provs),
            attribution=attribution)


def perplexity(logprobs: Sequence[float]) -> float:
    """exp(mean NLL) of token log-probs (nats)."""
    return math.exp(-sum(logprobs) / len(logprobs)) if logprobs else float("nan")
