"""SiloLM: the parametric LM combined with its datastore, for scoring and generation.

One object, four modes (`SiloOptions.mode`, silo.request.Mode):

    parametric   the LM alone
    knnlm        p = (1 - lam) p_LM + lam p_kNN; queries are the LM head's inputs
    ric          BM25 passages prepended to the context (silo.ric); top-1, or REPLUG over k
    knnlm+ric    the RIC-LM distribution interpolated with p_kNN, whose queries come from
                 the plain context (the datastore keys were made without passages)

Public API (frozen dataclasses in, frozen dataclasses out; thread-safe for concurrent
callers, who share the model and the datastore read-only):

    lm = SiloLM.from_dirs(model_dir, datastore_dir)          # or SiloLM(model, tokenizer, store)
    lm.tokenizer, lm.encode(text) -> list[int], lm.decode(ids) -> str, lm.max_length
    lm.defaults -> KnnParams                                  # the datastore's tuned k, lam, tau
    lm.score(requests: Sequence[ScoreRequest]) -> list[ScoreResult]
        token log-probs of every prompt token given the ones before it (None for the
        first, as lm-evaluation-harness expects with echo), top-N per position, and
        with `attribution` on, per-token provenance and per-sentence attribution.
        Requests are batched together (grouped by their options).
    lm.generate_stream(request: GenerationRequest) -> Iterator[TokenEvent]
        one event per generated token, choices interleaved; the last event of a choice
        carries its finish_reason ("stop" or "length").
    lm.generate(request) -> GenerationResult
        the stream collected: per choice the tokens, text, log-probs, finish reason,
        provenance and attribution; with `echo` also the prompt's ScoreResult.

Batched generation, for a server that steps many requests together (continuous
batching); `generate` is `start`, `step` until finished, `finish` of one request:

    lm.start(requests: Sequence[GenerationRequest]) -> list[GenerationState]
        plans resolved, samplers seeded, echo prompts scored; a state is finished at once
        when max_tokens is 0.
    lm.step(states: Sequence[GenerationState]) -> list[tuple[TokenEvent, ...]]
        one token for every live choice of every state; the rows of all states share
        forward passes (whatever their modes), the rows of each plan one search and one
        mixture, and each state samples with its own generator, so the tokens and
        log-probs are those of generating it alone. Per state, this step's events.
    state.finished -> bool;  lm.finish(state) -> GenerationResult

A failure while stepping one state ends that state alone (`state.error`), and the other
states of the step go on with exactly the tokens they would have got without it.

SiloLM is made of parts, one concept per module, that scoring and generation share:

    runner     silo.runner      the model: forward passes, LM-head inputs, KV cache
    retriever  silo.retrieval   the datastore: passages, neighbours, provenance
    mixer      silo.mixer       the next-token mixture under a plan (silo.knnlm's math)
    contexts   silo.contexts    the inputs: sliding windows, RIC passages prepended
    scorer     silo.scoring     `score` and what tuning needs
    generator  silo.generation  batched generation with per-request isolation

and the request and result types of silo.request (re-exported here). A request's plan is
resolved once (`plan`): a request that carries one (`plan=`) is served under it.

Per-request settings live in `SiloOptions` (mode, k, lam, knn_temperature, relevance,
license_classes, attribution, RIC parameters; unset k/lam/tau take the datastore's
tuned defaults, and the tuned relevance weight applies unless `relevance` is off) and
the caller's `AccessScope`. Every kNN and BM25 search of a request
goes through the datastore's one entry filter built from these two, so a filtered
request sees exactly what a datastore without the excluded documents would show.
With `attribution` off no provenance is looked up at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from datastore.errors import InvalidInputError
from datastore.filter import AccessScope, SearchFilter
from datastore.store.datastore import Datastore
from silo.codec import Codec
from silo.combination import DEFAULT_VOTE, default_vote
from silo.contexts import Contexts
from silo.generation import GenerationState, Generator
from silo.knnlm import KnnParams
from silo.mixer import Mixer
from silo.request import (
    MODES,
    Completion,
    GenerationRequest,
    GenerationResult,
    Mode,
    Plan,
    ScoreRequest,
    ScoreResult,
    SiloConfig,
    SiloOptions,
    TokenEvent,
)
from silo.retrieval import Retriever, SearchCounts
from silo.retrieval_combined import CombinedRetriever
from silo.runner import ModelRunner, RowsHook
from silo.scoring import Scorer, perplexity
from silo.set_tuning import read_set
from silo.tuning import TargetScores, read_defaults

__all__ = [
    "MODES", "Completion", "GenerationRequest", "GenerationResult", "GenerationState",
    "Mode", "Plan", "ScoreRequest", "ScoreResult", "SiloConfig", "SiloLM", "SiloOptions",
    "TokenEvent", "perplexity",
]


class SiloLM:
    """A causal LM plus (optionally) its datastore; see the module docstring."""

    def __init__(self, model: Any, tokenizer: Any, datastore: Datastore | None = None,
                 config: SiloConfig | None = None, defaults: KnnParams | None = None,
                 reference: Datastore | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.datastore = datastore
        self.config = config or SiloConfig()
        stored = read_defaults(datastore.folder) if datastore is not None else None
        self.defaults = defaults or stored or KnnParams()
        if self.defaults.margin and reference is None:
            where = f"datastore {datastore.folder}" if datastore is not None else "the datastore"
            raise InvalidInputError(
                f"{where} measures its relevance weight from the distance to a reference "
                "index of the LM's own text (relevance_margin); open it with one "
                "(SILO_REFERENCE, --reference) or tune it again without")
        # for a request that turns the relevance weight off: the best without it
        plain = (read_defaults(datastore.folder, relevance=False)
                 if datastore is not None and defaults is None else None)
        self.uniform_defaults = plain or replace(self.defaults, relevance=None,
                                                 relevance_temperature=1.0,
                                                 relevance_decay=0.0)
        self.codec = Codec(tokenizer)
        self.eos_id, self.pad_id = self.codec.eos_id, self.codec.pad_id
        self.runner = ModelRunner(model, tokenizer, self.codec.pad_id)
        self.members: tuple[tuple[str, SiloLM], ...] = ()  # over several datastores
        self.set_defaults: tuple[KnnParams | None, ...] = ()
        self.set_vote = DEFAULT_VOTE
        self._assemble(Retriever(datastore, self.codec, reference))

    def _assemble(self, retriever: Retriever) -> None:
        self.retriever = retriever
        self.mixer = Mixer(self.runner.vocab_size)
        self.contexts = Contexts(self.runner, self.eos_id, self.config,
                                 self.retriever)
        self.scorer = Scorer(self.runner, self.retriever, self.mixer, self.contexts,
                             self.config)
        self.generator = Generator(self.runner, self.retriever, self.mixer, self.contexts,
                                   self.scorer, self.codec, self.config)

    @classmethod
    def from_dirs(cls, model_dir: Path, datastore_dir: Path | None = None,
                  device: str = "cpu", config: SiloConfig | None = None,
                  reference_dir: Path | None = None) -> SiloLM:
        """Load the LM and open its datastore and reference (whose keys must come from
        this LM)."""
        from silo.model import load_lm

        lm = load_lm(model_dir, device=device)
        store, reference = (None if d is None else Datastore.open(
            d, encoder_fingerprint=lm.fingerprint) for d in (datastore_dir, reference_dir))
        return cls(lm.model, lm.tokenizer, store, config, reference=reference)

    @classmethod
    def combine(cls, members: Sequence[tuple[str, SiloLM]]) -> SiloLM:
        """One SiloLM over several datastores (silo.combination): the named members'
        datastores, each at its own tuned k, lambda, tau and relevance weight, mixed per
        context. The members share one model; each keeps its own SiloLM for requests
        that name it alone."""
        if len(members) < 2:
            raise InvalidInputError("a combination needs at least two datastores")
        first = members[0][1]
        for name, m in members:
            if m.datastore is None:
                raise InvalidInputError(f"{name!r} has no datastore to combine")
            if m.model is not first.model:
                raise InvalidInputError(f"{name!r} is served by another model; a "
                                        "combination needs datastores of one model")
            if m.reference is not first.reference:
                raise InvalidInputError(f"{name!r} is served with another reference index; "
                                        "a combination measures its weights from one")
        lm = cls(first.model, first.tokenizer, None, first.config, reference=first.reference)
        lm.members = tuple(members)
        names = [n for n, _ in members]
        # the set's own tuning, where `silo tune-set` stored one (silo.set_tuning)
        stored = [read_set(m.datastore.folder, names)  # type: ignore[union-attr]
                  for _, m in members]
        lm.set_defaults = tuple(None if s is None else s[0] for s in stored)
        if lm.reference is None and any(d is not None and d.margin for d in lm.set_defaults):
            raise InvalidInputError(f"the set {', '.join(names)} was tuned with weights "
                                    "measured from a reference index; none is open")
        votes = {s[1] for s in stored if s is not None}
        if len(votes) == 1 and None not in lm.set_defaults:
            lm.set_vote = votes.pop()
        else:
            lm.set_vote = default_vote([d or m.defaults for d, (_, m)
                                        in zip(lm.set_defaults, members, strict=True)])
        lm._assemble(CombinedRetriever([(n, m.retriever) for n, m in members], lm.codec))
        return lm

    @property
    def max_length(self) -> int:
        return self.runner.max_length

    @property
    def vocab_size(self) -> int:
        return self.runner.vocab_size

    @property
    def searches(self) -> SearchCounts:
        return self.retriever.searches

    @property
    def rows_hook(self) -> RowsHook | None:
        """A test seam (silo.runner): sees the rows of every forward pass first."""
        return self.runner.rows_hook

    @rows_hook.setter
    def rows_hook(self, hook: RowsHook | None) -> None:
        self.runner.rows_hook = hook

    def encode(self, text: str) -> list[int]:
        return self.codec.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.codec.decode(ids)

    # ---- planning --------------------------------------------------------------------

    def plan(self, options: SiloOptions, scope: AccessScope | None = None) -> Plan:
        """Resolve options against the datastore's defaults; a mode that needs the
        datastore without one is an InvalidInputError."""
        if self.members and options.mode is not Mode.PARAMETRIC:
            return self._combined_plan(options, scope)
        if options.mode is not Mode.PARAMETRIC and self.datastore is None:
            raise InvalidInputError(f"mode {options.mode.value!r} needs a datastore; none is "
                                    "open")
        if options.mode.uses_ric and self.datastore is not None and self.datastore.bm25 is None:
            raise InvalidInputError(f"mode {options.mode.value!r} needs the datastore's BM25 "
                                    "index")
        d = self.defaults if options.relevance else self.uniform_defaults
        knn = _resolved(d, options, d.pointers if options.pointers is None
                        else options.pointers)
        return Plan(options.mode, knn, options.ric,
                    SearchFilter(options.license_classes, scope or AccessScope()),
                    options.attribution)

    def _combined_plan(self, options: SiloOptions, scope: AccessScope | None) -> Plan:
        """Each member's plan for the options, without pointers (they follow one
        datastore's entries), side by side."""
        plans = [m.plan(replace(options, pointers=0), scope) for _, m in self.members]
        knns = tuple(_resolved(d, options, 0) if d is not None and options.relevance
                     else p.knn for p, d in zip(plans, self.set_defaults, strict=True))
        summary = KnnParams(sum(p.k for p in knns), max(p.lam for p in knns),
                            knns[0].temperature)
        return replace(plans[0], knn=summary, members=knns,
                       datastores=tuple(n for n, _ in self.members),
                       vote=self.set_vote if options.relevance else DEFAULT_VOTE)

    def _plan_of(self, request: ScoreRequest | GenerationRequest) -> Plan:
        return request.plan or self.plan(request.options, request.scope)

    # ---- scoring ---------------------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Score each request's prompt; requests of equal plans share batches."""
        return self.scorer.score(requests, [self._plan_of(r) for r in requests])

    def target_scores(self, seqs: Sequence[Sequence[int]], options: SiloOptions,
                      k: int, scope: AccessScope | None = None,
                      reference: bool = False) -> TargetScores:
        """For hyperparameter search (silo.tuning): per predicted token of `seqs`, the LM
        side's log-prob of the target and its k nearest neighbours (queries as in
        `options.mode`; k = 0: no search), and with `reference` its distance to the
        reference (TargetScores.baseline)."""
        if reference and self.reference is None:
            raise InvalidInputError("no reference index is open to measure distances to")
        plan = self.plan(replace(options, lam=1.0 if k else 0.0, k=k or None,
                                 relevance=False), scope)
        return self.scorer.target_scores(seqs, replace(plan, reference=reference), k)

    @property
    def reference(self) -> Datastore | None:
        """The reference index over the LM's own text (silo.relevance), if one is open."""
        return self.retriever.reference

    # ---- generation ------------------------------------------------------------------

    def start(self, requests: Sequence[GenerationRequest]) -> list[GenerationState]:
        """A running state per request (silo.generation): its plan resolved
        (InvalidInputError when the datastore cannot serve it). A server starts its
        requests one at a time, so that one that cannot start fails alone."""
        return self.generator.start(requests, [self._plan_of(r) for r in requests])

    def step(self, states: Sequence[GenerationState]) -> list[tuple[TokenEvent, ...]]:
        """One token for every live choice of `states` (Generator.step)."""
        return self.generator.step(states)

    def finish(self, state: GenerationState) -> GenerationResult:
        """The result of a finished state: per choice its events collected."""
        return self.generator.finish(state)

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate all choices (see `generate_stream`) and collect them."""
        (state,) = self.start([request])
        while not state.finished:
            self.step([state])
        if state.error is not None:
            raise state.error
        return self.finish(state)

    def generate_stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        """Generate `n` continuations together, one batched step per token; yields each
        token as soon as it is chosen."""
        (state,) = self.start([replace(request, echo=False)])
        while not state.finished:
            yield from self.step([state])[0]
        if state.error is not None:
            raise state.error


def _resolved(d: KnnParams, options: SiloOptions, pointers: int) -> KnnParams:
    """Tuned parameters `d` under a request's overrides (k, lambda, tau)."""
    return replace(d, k=options.k or d.k, lam=d.lam if options.lam is None else options.lam,
                   temperature=options.knn_temperature or d.temperature, pointers=pointers)
