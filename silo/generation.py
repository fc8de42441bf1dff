"""Batched generation: many requests stepped together, one token per step (continuous
batching), each request failing alone.

    start(requests) -> states      samplers seeded, echo prompts scored
    step(states)    -> events      one token for every live choice of every state
    finish(state)   -> result      the events collected and attributed

Rows of states with equal plans share forward passes; each state samples with its own
generator, so its tokens and log-probs are those of generating it alone.

Isolation: a failure while stepping one state ends that state alone. Its exception is
kept on the state (`state.error`; the state is then finished) and the other states of
the step go on. Per-state work (retrieval, sampling, provenance, detokenising) is done
state by state; when a shared forward pass or search fails, every state of that pass is
put back as it was and stepped alone, so the failure lands on the states that cause it
and the others get exactly the tokens they would have got without it.

Decoding is incremental (`SiloConfig.kv_cache`, on by default) in the modes without RIC:
a state's first step reads its rows whole (the new states of a step in one right-padded
pass) and keeps their keys/values; later steps feed one token per row, the rows of all
states of a plan in one pass over their left-padded, masked caches (silo.runner). RIC
modes (whose passages change the context) and rows longer than the context (whose window
slides) re-read the context at every step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from silo.attribution import TokenProvenance
from silo.batch import Chunk, plain
from silo.codec import Codec
from silo.contexts import Contexts
from silo.mixer import Mixer
from silo.request import (
    Completion,
    GenerationRequest,
    GenerationResult,
    Plan,
    ScoreRequest,
    ScoreResult,
    SiloConfig,
    TokenEvent,
)
from silo.retrieval import Retriever
from silo.ric import Passage
from silo.runner import Cache, ModelRunner
from silo.sampling import sample
from silo.scoring import Scorer


@dataclass(eq=False)
class GenerationState:
    """A running generation, advanced in place by `SiloLM.step`: per choice its row
    (prompt + new tokens), new tokens, text so far, RIC passages and events; `live` the
    choices still generating, `steps` the tokens generated per live choice so far;
    `error` what ended it early (it is then finished, with no live choice)."""

    request: GenerationRequest
    plan: Plan
    generator: torch.Generator
    rows: list[list[int]]
    new: list[list[int]]
    texts: list[str]
    passages: list[tuple[Passage, ...]]
    live: list[int]
    events: list[list[TokenEvent]]
    prompt: ScoreResult | None = None  # with echo
    steps: int = 0
    # keys/values of every token but the last of the rows `cache_rows` (in that order);
    # None before the first step, in RIC modes and once the rows outgrow the context
    cache: Cache | None = None
    cache_rows: list[int] = field(default_factory=list)
    # per choice, the entry ids of its last position's neighbours (pointers follow them)
    neighbours: list[np.ndarray | None] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return not self.live

    def fail(self, error: BaseException) -> None:
        """End this generation with `error`; its events so far stay."""
        self.error = error
        self.live = []
        self.cache = None

    def live_rows(self) -> list[list[int]]:
        return [self.rows[r] for r in self.live]


@dataclass(frozen=True)
class _Saved:
    """What a shared pass may change in a state before it fails (a state's own
    sampling and events come after every shared pass, so they are never half done)."""

    passages: list[tuple[Passage, ...]]
    cache: Cache | None
    cache_rows: list[int]

    @classmethod
    def of(cls, s: GenerationState) -> _Saved:
        return cls(list(s.passages), s.cache, list(s.cache_rows))

    def restore(self, s: GenerationState) -> None:
        s.passages, s.cache, s.cache_rows = list(self.passages), self.cache, list(self.cache_rows)


class Generator:
    """Generates with the parts SiloLM shares with scoring (see the module docstring)."""

    def __init__(self, runner: ModelRunner, retriever: Retriever, mixer: Mixer,
                 contexts: Contexts, scorer: Scorer, codec: Codec, config: SiloConfig,
                 ) -> None:
        self.runner = runner
        self.retriever = retriever
        self.mixer = mixer
        self.contexts = contexts
        self.scorer = scorer
        self.codec = codec
        self.config = config

    def start(self, requests: Sequence[GenerationRequest], plans: Sequence[Plan],
              ) -> list[GenerationState]:
        """A running state per request under its plan: its sampler seeded and, with
        `echo`, its prompt scored (echo prompts of equal plans in one scoring call)."""
        states = []
        for req, plan in zip(requests, plans, strict=True):
            seed = req.seed if req.seed is not None else int(torch.randint(2**31, ()).item())
            n = req.n
            states.append(GenerationState(
                req, plan, torch.Generator().manual_seed(seed),
                [list(req.prompt_ids) for _ in range(n)], [[] for _ in range(n)], [""] * n,
                [() for _ in range(n)], list(range(n)) if req.max_tokens else [],
                [[] for _ in range(n)], neighbours=[None] * n))
        echo = [s for s in states if s.request.echo]
        scored = self.scorer.score([ScoreRequest(s.request.prompt_ids, s.request.logprobs,
                                                 s.request.options, s.request.scope)
                                    for s in echo], [s.plan for s in echo])
        for s, res in zip(echo, scored, strict=True):
            s.prompt = res
        return states

    def step(self, states: Sequence[GenerationState]) -> list[tuple[TokenEvent, ...]]:
        """One token for every live choice of `states`: the rows of states with equal
        plans go through shared forward passes (continuous batching), then each state
        samples its own rows with its own generator, so the tokens are those of stepping
        it alone. Returns per state this step's events (empty once it is finished). A
        state that fails gets `error` set and ends; the others go on (module docstring)."""
        by_plan: dict[Plan, list[GenerationState]] = {}
        for s in states:
            if s.live:
                by_plan.setdefault(s.plan, []).append(s)
        out: dict[int, tuple[TokenEvent, ...]] = {}
        for plan, group in by_plan.items():
            out.update(self._advance_isolated(group, plan))
        return [out.get(id(s), ()) for s in states]

    def finish(self, state: GenerationState) -> GenerationResult:
        """The result of a state: per choice its events collected (and attributed)."""
        choices = [self._completion(i, evs, state.request)
                   for i, evs in enumerate(state.events)]
        return GenerationResult(tuple(choices), state.prompt)

    # ---- one step --------------------------------------------------------------------

    def _advance_isolated(self, states: list[GenerationState], plan: Plan,
                          ) -> dict[int, tuple[TokenEvent, ...]]:
        """`_advance`; if a shared pass fails, the states are put back as they were and
        stepped one by one, so that the failure ends only the states that cause it."""
        saved = [_Saved.of(s) for s in states]
        try:
            return self._advance(states, plan)
        except Exception as exc:
            for s, kept in zip(states, saved, strict=True):
                kept.restore(s)
            if len(states) == 1:
                states[0].fail(exc)
                return {}
        out: dict[int, tuple[TokenEvent, ...]] = {}
        for s in states:
            if s.live:  # one that failed on its own in the shared attempt stays failed
                out.update(self._advance_isolated([s], plan))
        return out

    def _advance(self, states: list[GenerationState], plan: Plan,
                 ) -> dict[int, tuple[TokenEvent, ...]]:
        """One token for every live row of `states` (all of one plan): retrieval per
        state, the shared passes, then sampling and events per state. A state's own
        failure ends it alone; a failure of a shared pass is raised. Per state id, its
        events."""
        ready = []
        for s in states:
            try:
                if plan.uses_ric and s.steps % plan.ric.stride == 0:
                    for r in s.live:
                        s.passages[r] = self.retriever.passages(s.rows[r], plan)
                ready.append(s)
            except Exception as exc:
                s.fail(exc)
        if not ready:
            return {}
        chunk = self._next_distributions(ready, plan)
        mixed = self.mixer.mixed(chunk, plan)
        out, at = {}, 0
        for s in ready:
            n = len(s.live)
            try:
                out[id(s)] = self._commit(s, chunk.part(at, at + n), mixed[at:at + n], plan)
            except Exception as exc:
                s.fail(exc)
            at += n
        return out

    def _next_distributions(self, states: list[GenerationState], plan: Plan) -> Chunk:
        """Next-token distributions (and neighbours) of the live rows of `states`, in
        order: incrementally through their caches where the mode allows, following
        pointers from each row's last neighbours where the plan asks for them."""
        rows = [r for s in states for r in s.live_rows()]
        passages = [s.passages[r] for s in states for r in s.live]
        plain_groups = [plain(r[-self.runner.max_length:], 1) for r in rows]
        if plan.uses_ric:
            groups = [self.contexts.ric_group(r, 1, p, plan)
                      for r, p in zip(rows, passages, strict=True)]
            lp, hidden = self.runner.run_groups(groups, self.config.batch_size)
        elif self.config.kv_cache:
            lp, hidden = self._incremental(states)
        else:
            lp, hidden = self.runner.run_groups(plain_groups, self.config.batch_size)
        chunk = Chunk(np.arange(len(rows)), lp,
                      passages=passages if plan.uses_ric else [() for _ in rows])
        if plan.uses_knn:
            queries = self.runner.run_groups(plain_groups, self.config.batch_size)[1] \
                if plan.uses_ric else hidden
            last = None
            if plan.knn.pointers:
                last = np.full((len(rows), plan.knn.k), -1, np.int64)
                previous = [s.neighbours[r] for s in states for r in s.live]
                for i, prev in enumerate(previous):
                    if prev is not None:
                        last[i, :len(prev)] = prev
            tokens = np.array([r[-1] for r in rows], dtype=np.int64)
            self.retriever.search(chunk, queries, plan, last, tokens)
        return chunk

    def _incremental(self, states: list[GenerationState]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs (m, V) and LM-head inputs (m, dim) of the next token of every live
        row of `states`, in order. A state's first step reads its rows whole (all new
        states in one pass) and keeps their keys/values; later steps feed only each
        row's last token, the rows of all cached states in one pass. Rows longer than
        the context slide their window, which a cache cannot follow: those are read
        whole at every step."""
        out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        cached, fresh = [], []
        for s in states:
            length = len(s.rows[s.live[0]])  # the live rows of a state advance together
            if s.cache is not None and length <= self.runner.max_length:
                cached.append(s)
            elif length > self.runner.max_length:
                s.cache = None
                rows = [r[-self.runner.max_length:] for r in s.live_rows()]
                row_lp, row_h = self.runner.forward(rows, [1] * len(rows))
                out[id(s)] = torch.cat(row_lp), torch.cat(row_h)
            else:
                fresh.append(s)
        for part in _batches(fresh, self.config.batch_size):
            self._spread(part, *self.runner.prefill([s.live_rows() for s in part]), out)
        for part in _batches(cached, self.config.batch_size):
            caches = [_live_cache(s) for s in part]
            self._spread(part, *self.runner.decode([s.live_rows() for s in part], caches), out)
        return (torch.cat([out[id(s)][0] for s in states]),
                torch.cat([out[id(s)][1] for s in states]))

    @staticmethod
    def _spread(states: list[GenerationState], lp: torch.Tensor, hidden: torch.Tensor,
                caches: list[Cache], out: dict[int, tuple[torch.Tensor, torch.Tensor]],
                ) -> None:
        """One pass's results back to its states: their rows' distributions into `out`
        and each state's new cache."""
        at = 0
        for s, cache in zip(states, caches, strict=True):
            n = len(s.live)
            out[id(s)] = lp[at:at + n], hidden[at:at + n]
            s.cache, s.cache_rows = cache, list(s.live)
            at += n

    # ---- a state's own work ----------------------------------------------------------

    def _commit(self, s: GenerationState, chunk: Chunk, mixed: torch.Tensor, plan: Plan,
                ) -> tuple[TokenEvent, ...]:
        """Sample a state's rows from their (n, V) mixture, then append the tokens and
        events; everything that can fail happens before the state is touched."""
        tokens = sample(mixed, s.request.temperature, s.request.top_p, s.generator)
        provs = self.retriever.provenance(chunk, tokens, plan) if plan.attribution else None
        texts = list(s.texts)
        events = []
        for i, r in enumerate(s.live):
            token = int(tokens[i])
            events.append(self._event(r, token, mixed[i], [*s.new[r], token], texts,
                                      s.request, s.steps, None if provs is None else provs[i]))
        for i, (r, ev) in enumerate(zip(s.live, events, strict=True)):
            if chunk.entry_ids is not None:
                s.neighbours[r] = chunk.entry_ids[i]
            s.rows[r].append(ev.token_id)
            s.new[r].append(ev.token_id)
            s.events[r].append(ev)
        s.texts = texts
        s.live = [r for r, ev in zip(s.live, events, strict=True) if ev.finish_reason is None]
        s.steps += 1
        return tuple(events)

    def _event(self, choice: int, token: int, dist: torch.Tensor, new: list[int],
               texts: list[str], request: GenerationRequest, step: int,
               provenance: TokenProvenance | None) -> TokenEvent:
        """The event for a chosen token, cutting the text at a stop sequence."""
        full = self.codec.decode(new)
        finish = None
        if full.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more
            full = texts[choice]
        cut = min((full.find(s) for s in request.stop if s in full), default=-1)
        if cut >= 0:
            full, finish = full[:cut], "stop"
        elif token == self.codec.eos_id and not request.ignore_eos:
            finish = "stop"
        elif step == request.max_tokens - 1:
            finish = "length"
        delta = full[len(texts[choice]):] if full.startswith(texts[choice]) else ""
        texts[choice] = full
        top = None
        if request.logprobs:
            values, ids = dist.topk(min(request.logprobs, dist.shape[0]))
            top = dict(zip(ids.tolist(), values.tolist(), strict=True))
        return TokenEvent(choice, token, delta, float(dist[token]), top, provenance, finish)

    def _completion(self, index: int, events: list[TokenEvent],
                    request: GenerationRequest) -> Completion:
        ids = [e.token_id for e in events]
        text = "".join(e.text for e in events)
        provs = tuple(e.provenance for e in events if e.provenance is not None)
        attribution = None
        if request.options.attribution and ids:
            attribution = self.retriever.attribution(ids, provs)
        return Completion(
            index, tuple(ids), text, tuple(e.logprob for e in events),
            tuple(e.top_logprobs or {} for e in events) if request.logprobs else None,
            events[-1].finish_reason or "length" if events else "length",
            provs if request.options.attribution else None, attribution)


def _live_cache(s: GenerationState) -> Cache:
    """A state's cache without the rows of choices that finished."""
    assert s.cache is not None
    keep = [s.cache_rows.index(r) for r in s.live]
    if keep != list(range(len(s.cache_rows))):
        index = torch.tensor(keep, device=s.cache[0][0].device)
        s.cache = [(k.index_select(0, index), v.index_select(0, index)) for k, v in s.cache]
    return s.cache


def _batches(states: list[GenerationState], rows: int) -> Iterator[list[GenerationState]]:
    """Consecutive runs of states with at most `rows` live rows (at least one state)."""
    part: list[GenerationState] = []
    for s in states:
        if part and sum(len(p.live) for p in part) + len(s.live) > rows:
            yield part
            part = []
        part.append(s)
    if part:
        yield part
