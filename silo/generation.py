"""Batched generation: many requests stepped together, one token per step (continuous
batching), each request failing alone.

    start(requests) -> states      samplers seeded, echo prompts scored
    step(states)    -> events      one token for every live choice of every state
    finish(state)   -> result      the events collected and attributed

A step batches whatever its states ask for, whatever their plans: every input of every
live row (its plain context, one per RIC passage) goes through one set of forward passes
(silo.decoding: each over its own key/value cache where it has one), the rows of each
plan through one kNN search and one mixture, and all rows through one sampler call. Each
state samples with its own generator, so its tokens and log-probs are those of
generating it alone.

Isolation: a failure while stepping one state ends that state alone. Its exception is
kept on the state (`state.error`; the state is then finished) and the other states of
the step go on. A state's own work (its RIC retrieval, its sampled rows, provenance,
detokenising) fails it alone; when a shared call (a forward pass, a search, a mixture)
fails, every state of the step is put back as it was and stepped again in parts, by
plan and then one by one, so the failure lands on the states that cause it and the
others get exactly the tokens they would have got without it.

Where a plan measures relevance from the context (silo.relevance), each choice carries
the running sums of its context's distances: from its prompt's positions (read by the
first step's pass: silo.traces) and then one position per step, so its weights are those
scoring its text gives.

Decoding is incremental (`SiloConfig.kv_cache`, on by default) in every mode: an input
that grew by the token just sampled is fed that token alone over its cache; a RIC input
with new passages (every `stride` tokens) is fed its context over its passage's
keys/values, computed once for every input that retrieves that passage; any other is
read whole (a first step, a context longer than the model's window, which slides).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from silo.batch import Chunk
from silo.codec import Codec
from silo.contexts import Contexts
from silo.decoding import Cached, Decoder
from silo.events import completion, token_event
from silo.mixer import Mixer
from silo.relevance import Trace
from silo.request import (
    GenerationRequest,
    GenerationResult,
    Plan,
    ScoreRequest,
    ScoreResult,
    SiloConfig,
    TokenEvent,
)
from silo.retrieval import Retriever
from silo.ric import Passage, ensemble, passage_head
from silo.runner import ModelRunner
from silo.sampling import Draw, choice_seed, sample_many, sample_one
from silo.scoring import Scorer
from silo.traces import Traces


@dataclass(eq=False)
class GenerationState:
    """A running generation, advanced in place by `SiloLM.step`: per choice its row
    (prompt + new tokens), new tokens, text so far, RIC passages and events; `live` the
    choices still generating, `steps` the tokens generated per live choice so far;
    `error` what ended it early (it is then finished, with no live choice)."""

    request: GenerationRequest
    plan: Plan
    generators: list[torch.Generator]  # per choice (silo.sampling.Draw)
    rows: list[list[int]]
    new: list[list[int]]
    texts: list[str]
    passages: list[tuple[Passage, ...]]
    live: list[int]
    events: list[list[TokenEvent]]
    prompt: ScoreResult | None = None  # with echo
    steps: int = 0
    # per (choice, input: -1 the plain context, j its j-th RIC passage) the keys/values
    # of the input read last step (silo.decoding); empty before the first step
    caches: dict[tuple[int, int], Cached] = field(default_factory=dict)
    # per choice, the entry ids of its last position's neighbours (pointers follow them)
    neighbours: list[np.ndarray | None] = field(default_factory=list)
    # per choice, its context's distance sums so far (silo.relevance), where the plan
    # measures relevance from the context
    traces: list[Trace | None] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return not self.live

    def fail(self, error: BaseException) -> None:
        """End this generation with `error`; its events so far stay."""
        self.error = error
        self.live = []
        self.caches = {}


@dataclass(frozen=True)
class _Saved:
    """What a shared pass may change in a state before it fails (a state's own
    sampling and events come after every shared pass, so they are never half done)."""

    passages: list[tuple[Passage, ...]]
    caches: dict[tuple[int, int], Cached]

    @classmethod
    def of(cls, s: GenerationState) -> _Saved:
        return cls(list(s.passages), dict(s.caches))

    def restore(self, s: GenerationState) -> None:
        s.passages, s.caches = list(self.passages), dict(self.caches)


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
        self.decoder = Decoder(runner, config.batch_size)
        self.traces = Traces(retriever, scorer, runner.max_length)

    def start(self, requests: Sequence[GenerationRequest], plans: Sequence[Plan],
              ) -> list[GenerationState]:
        """A running state per request under its plan: its sampler seeded and, with
        `echo`, its prompt scored (echo prompts of equal plans in one scoring call)."""
        states = []
        for req, plan in zip(requests, plans, strict=True):
            seed = req.seed if req.seed is not None else int(torch.randint(2**31, ()).item())
            n = req.n
            trace = self.traces.at_start(plan, req.prompt_ids) if req.max_tokens else None
            states.append(GenerationState(
                req, plan, [torch.Generator().manual_seed(choice_seed(seed, i))
                            for i in range(n)],
                [list(req.prompt_ids) for _ in range(n)], [[] for _ in range(n)], [""] * n,
                [() for _ in range(n)], list(range(n)) if req.max_tokens else [],
                [[] for _ in range(n)], neighbours=[None] * n, traces=[trace] * n))
        echo = [s for s in states if s.request.echo]
        scored = self.scorer.score([ScoreRequest(s.request.prompt_ids, s.request.logprobs,
                                                 s.request.options, s.request.scope)
                                    for s in echo], [s.plan for s in echo])
        for s, res in zip(echo, scored, strict=True):
            s.prompt = res
        return states

    def step(self, states: Sequence[GenerationState]) -> list[tuple[TokenEvent, ...]]:
        """One token for every live choice of `states`, whatever their plans: one set of
        forward passes for all their inputs, one search and one mixture per plan, one
        sampler call (module docstring). Returns per state this step's events (empty
        once it is finished). A state that fails gets `error` set and ends; the others
        go on."""
        out = self._advance_isolated([s for s in states if s.live])
        return [out.get(id(s), ()) for s in states]

    def finish(self, state: GenerationState) -> GenerationResult:
        """The result of a state: per choice its events collected (and attributed)."""
        choices = [completion(i, evs, state.request, self.retriever)
                   for i, evs in enumerate(state.events)]
        return GenerationResult(tuple(choices), state.prompt)

    # ---- one step --------------------------------------------------------------------

    def _advance_isolated(self, states: list[GenerationState],
                          ) -> dict[int, tuple[TokenEvent, ...]]:
        """`_advance`; if a shared call fails, the states are put back as they were and
        stepped again in parts (by plan, then one by one), so that the failure ends only
        the states that cause it."""
        if not states:
            return {}
        saved = [_Saved.of(s) for s in states]
        try:
            return self._advance(states)
        except Exception as exc:
            for s, kept in zip(states, saved, strict=True):
                kept.restore(s)
            if len(states) == 1:
                states[0].fail(exc)
                return {}
        by_plan: dict[Plan, list[GenerationState]] = {}
        for s in states:
            by_plan.setdefault(s.plan, []).append(s)
        parts = list(by_plan.values()) if len(by_plan) > 1 else [[s] for s in states]
        out: dict[int, tuple[TokenEvent, ...]] = {}
        for part in parts:
            # one that failed on its own in the shared attempt stays failed
            out.update(self._advance_isolated([s for s in part if s.live]))
        return out

    def _advance(self, states: list[GenerationState]) -> dict[int, tuple[TokenEvent, ...]]:
        """One token for every live row of `states`: retrieval, the shared passes, a
        search and a mixture per plan, then one sampler call and the events per state.
        A state's own failure ends it alone; a failure of a shared call is raised. Per
        state id, its events."""
        ready = self._retrieve(states)
        if not ready:
            return {}
        lm, hidden, prompts = self._next_distributions(ready)
        by_plan: dict[Plan, list[int]] = {}
        for i, s in enumerate(ready):
            by_plan.setdefault(s.plan, []).append(i)
        offsets = np.cumsum([0, *(len(s.live) for s in ready)])
        mixed: list[torch.Tensor | None] = [None] * len(ready)
        chunks: list[Chunk | None] = [None] * len(ready)
        for plan, members in by_plan.items():
            rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in members])
            group = [ready[i] for i in members]
            chunk = Chunk(np.arange(len(rows)), lm[rows],
                          passages=[s.passages[r] for s in group for r in s.live])
            if plan.uses_knn:
                self._search(chunk, group, hidden[rows], plan)
            if plan.decays is not None:
                new = [x for x in group if id(x) in prompts]
                first = dict(zip(map(id, new), self.traces.from_prompts(
                    new, [prompts[id(x)] for x in new], plan), strict=True)) if new else {}
                self.traces.step(chunk, [first.get(id(x)) or x.traces[r]
                                         for x in group for r in x.live], plan)
            dist = self.mixer.mixed(chunk, plan)
            at = 0
            for i, s in zip(members, group, strict=True):
                n = len(s.live)
                chunks[i], mixed[i] = chunk.part(at, at + n), dist[at:at + n]
                at += n
        return self._commit_all(ready, [c for c in chunks if c is not None],
                                [m for m in mixed if m is not None])

    def _retrieve(self, states: list[GenerationState]) -> list[GenerationState]:
        """RIC passages for the rows of states at a retrieval step (every `stride`
        tokens); a state whose retrieval fails ends alone. The states ready to step."""
        ready = []
        for s in states:
            try:
                if s.plan.uses_ric and s.steps % s.plan.ric.stride == 0:
                    for r in s.live:
                        s.passages[r] = self.retriever.passages(s.rows[r], s.plan)
                ready.append(s)
            except Exception as exc:
                s.fail(exc)
        return ready

    def _next_distributions(self, states: list[GenerationState],
                            ) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
        """The LM (or RIC-LM) log-probs (m, V) of the next token of every live row of
        `states`, in order, and the kNN queries (m, dim): the LM-head inputs of the
        plain contexts (for a RIC plan with kNN too, whose keys were made without
        passages). Every input of every row (its plain context where it is needed, one
        per RIC passage) goes through the decoder together, each over its own cache.
        Per state id whose prompt's context distances are to be read (silo.traces), the
        LM-head inputs at every position of its prompt."""
        inputs: list[list[int]] = []
        keys: list[tuple[GenerationState, int, int]] = []  # state, row, input (-1: plain)

        prefixes: list[int] = []  # per input, its passage's share (0: none)

        def add(x: list[int], key: tuple[GenerationState, int, int], prefix: int = 0) -> int:
            inputs.append(x)
            keys.append(key)
            prefixes.append(prefix)
            return len(inputs) - 1

        rows: list[tuple[list[int], torch.Tensor, int]] = []  # inputs, weights, query
        plains: dict[int, int] = {}  # state id -> its first live row's plain input
        for s in states:
            for r in s.live:
                row = s.rows[r]
                plain_at = None
                if not s.plan.uses_ric or s.plan.uses_knn:
                    plain_at = add(row[-self.runner.max_length:], (s, r, -1))
                    plains.setdefault(id(s), plain_at)
                if not s.plan.uses_ric:
                    assert plain_at is not None
                    rows.append(([plain_at], torch.zeros(1), plain_at))
                    continue
                group = self.contexts.ric_group(row, 1, s.passages[r], s.plan)
                if group.passages:
                    at = [add(x, (s, r, j), len(passage_head(p.ids, row, self.runner.max_length,
                                                             self.contexts.eos_id)))
                          for j, (x, p) in enumerate(zip(group.inputs, group.passages,
                                                         strict=True))]
                else:  # no passage: the plain context
                    at = [plain_at if plain_at is not None
                          else add(group.inputs[0], (s, r, -1))]
                rows.append((at, group.log_weights, at[0] if plain_at is None else plain_at))
        # the prompt's positions, from the pass that reads it (a first step reads it whole)
        wanted = {plains[id(s)]: s for s in states
                  if Traces.pending(s) and id(s) in plains}
        positions: dict[int, torch.Tensor | None] = dict.fromkeys(wanted)
        keep = self.config.kv_cache
        lp, hidden, caches = self.decoder.next(
            inputs, [s.caches.get((r, j)) for s, r, j in keys], keep, prefixes, positions)
        for s in states:
            s.caches = {}
        for (s, r, j), c in zip(keys, caches, strict=True):
            if c is not None:
                s.caches[(r, j)] = c
        prompts = {}
        for i, s in wanted.items():
            got = positions[i]  # a first step reads the prompt whole, and all of it
            assert got is not None and len(got) == len(s.request.prompt_ids)
            prompts[id(s)] = got
        return (torch.cat([ensemble(lp[at][:, None], w) for at, w, _ in rows]),
                hidden[[q for _, _, q in rows]], prompts)

    def _search(self, chunk: Chunk, states: list[GenerationState], queries: torch.Tensor,
                plan: Plan) -> None:
        """The kNN neighbours of a plan's rows in one search, following pointers from
        each row's last neighbours where the plan asks for them."""
        last = None
        if plan.knn.pointers:
            last = np.full((len(queries), plan.knn.k), -1, np.int64)
            previous = [s.neighbours[r] for s in states for r in s.live]
            for i, prev in enumerate(previous):
                if prev is not None:
                    last[i, :len(prev)] = prev
        tokens = np.array([s.rows[r][-1] for s in states for r in s.live], dtype=np.int64)
        self.retriever.search(chunk, queries, plan, last, tokens)

    def _commit_all(self, states: list[GenerationState], chunks: list[Chunk],
                    mixed: list[torch.Tensor]) -> dict[int, tuple[TokenEvent, ...]]:
        """Sample every state's rows in one sampler call (each with its own generator;
        if the call fails, state by state), then each state's tokens and events; a
        state whose own part fails ends alone."""
        draws, at = [], 0
        for s in states:
            n = len(s.live)
            draws.append(Draw(at, at + n, s.request.temperature, s.request.top_p,
                              tuple(s.generators[r] for r in s.live)))
            at += n
        tokens: list[torch.Tensor | Exception]
        try:
            tokens = list(sample_many(torch.cat(mixed), draws))
        except Exception:
            tokens = []
            for m, s in zip(mixed, states, strict=True):
                try:
                    tokens.append(sample_alone(m, s))
                except Exception as exc:
                    tokens.append(exc)
        out = {}
        for s, chunk, m, t in zip(states, chunks, mixed, tokens, strict=True):
            try:
                if isinstance(t, Exception):
                    raise t
                out[id(s)] = self._commit(s, chunk, m, t)
            except Exception as exc:
                s.fail(exc)
        return out

    # ---- a state's own work ----------------------------------------------------------

    def _commit(self, s: GenerationState, chunk: Chunk, mixed: torch.Tensor,
                tokens: torch.Tensor) -> tuple[TokenEvent, ...]:
        """Append a state's sampled tokens (one per live row, drawn from its (n, V)
        mixture) and their events; everything that can fail happens before the state is
        touched."""
        plan = s.plan
        provs = self.retriever.provenance(chunk, tokens, plan) if plan.attribution else None
        texts = list(s.texts)
        events = []
        for i, r in enumerate(s.live):
            token = int(tokens[i])
            events.append(token_event(self.codec, r, token, mixed[i], [*s.new[r], token], texts,
                                      s.request, s.steps, None if provs is None else provs[i]))
        for i, (r, ev) in enumerate(zip(s.live, events, strict=True)):
            if chunk.entry_ids is not None:
                s.neighbours[r] = chunk.entry_ids[i]
            if chunk.trace is not None:
                s.traces[r] = Trace(chunk.trace[0][i], chunk.trace[1][i])
            s.rows[r].append(ev.token_id)
            s.new[r].append(ev.token_id)
            s.events[r].append(ev)
        s.texts = texts
        s.live = [r for r, ev in zip(s.live, events, strict=True) if ev.finish_reason is None]
        s.steps += 1
        return tuple(events)


def sample_alone(mixed: torch.Tensor, s: GenerationState) -> torch.Tensor:
    """A state's rows sampled by themselves (when the batch's sampler call failed)."""
    return sample_one(mixed, Draw(0, len(s.live), s.request.temperature, s.request.top_p,
                                  tuple(s.generators[r] for r in s.live)))
