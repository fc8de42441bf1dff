"""SiloLM: the parametric LM combined with its datastore, for scoring and generation.

One object, four modes (`SiloOptions.mode`):

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
        one token for every live choice of every state; rows of states with equal plans
        share forward passes, each state samples with its own generator, so the tokens
        and log-probs are those of generating it alone. Per state, this step's events.
    state.finished -> bool;  lm.finish(state) -> GenerationResult

A failure while stepping one state ends that state alone (`state.error`), and the other
states of the step go on with exactly the tokens they would have got without it.

The concepts live one per module; this one is the facade that joins them:

    silo.request     the request and result types (re-exported here)
    silo.scoring     the forward pass, retrieval, mixed distributions, `score`
    silo.generation  batched generation with per-request isolation
    silo.sampling    the sampling rules (total over every temperature and top_p)

Per-request settings live in `SiloOptions` (mode, k, lam, knn_temperature,
license_classes, attribution, RIC parameters; unset k/lam/tau take the datastore's
tuned defaults) and the caller's `AccessScope`. Every kNN and BM25 search of a request
goes through the datastore's one entry filter built from these two, so a filtered
request sees exactly what a datastore without the excluded documents would show.
With `attribution` off no provenance is looked up at all.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datastore.errors import InvalidInputError
from datastore.filter import AccessScope, SearchFilter
from silo.generation import Generation, GenerationState
from silo.knnlm import KnnParams
from silo.request import (
    MODES,
    Completion,
    GenerationRequest,
    GenerationResult,
    Plan,
    ScoreRequest,
    ScoreResult,
    SiloConfig,
    SiloOptions,
    TokenEvent,
)
from silo.scoring import RowsHook, SearchCounts, perplexity
from silo.tuning import read_defaults

__all__ = [
    "MODES", "Completion", "GenerationRequest", "GenerationResult", "GenerationState",
    "Plan", "ScoreRequest", "ScoreResult", "SiloConfig", "SiloLM", "SiloOptions",
    "TokenEvent", "perplexity",
]


class SiloLM(Generation):
    """A causal LM plus (optionally) its datastore; see the module docstring."""

    def __init__(self, model: Any, tokenizer: Any, datastore: Any | None = None,
                 config: SiloConfig | None = None, defaults: KnnParams | None = None) -> None:
        from silo.model import context_length

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.datastore = datastore
        self.config = config or SiloConfig()
        self.max_length = context_length(model, tokenizer)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        stored = read_defaults(datastore.folder) if datastore is not None else None
        self.defaults = defaults or stored or KnnParams()
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = 0 if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id)
        self._special = frozenset(int(i) for i in tokenizer.all_special_ids)
        self._passage_ids: dict[int, tuple[int, ...]] = {}  # block id -> tokens, bounded
        self._hook_lock = threading.Lock()
        self.rows_hook: RowsHook | None = None  # a test seam (silo.scoring.RowsHook)
        self.searches = SearchCounts()
        self._base_gives_head_input = False
        self._base_gives_head_input = self._probe_base_model()

    @classmethod
    def from_dirs(cls, model_dir: Path, datastore_dir: Path | None = None,
                  device: str = "cpu", config: SiloConfig | None = None) -> SiloLM:
        """Load the LM and open its datastore (whose keys must come from this LM)."""
        from datastore.store.datastore import Datastore
        from silo.model import load_lm

        lm = load_lm(model_dir, device=device)
        store = None if datastore_dir is None else Datastore.open(
            datastore_dir, encoder_fingerprint=lm.fingerprint)
        return cls(lm.model, lm.tokenizer, store, config)

    # ---- tokenizer -------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    # ---- planning --------------------------------------------------------------------

    def plan(self, options: SiloOptions, scope: AccessScope | None = None) -> Plan:
        """Resolve options against the datastore's defaults; a mode that needs the
        datastore without one is an InvalidInputError."""
        if options.mode != "parametric" and self.datastore is None:
            raise InvalidInputError(f"mode {options.mode!r} needs a datastore; none is open")
        if options.uses_ric and self.datastore is not None and self.datastore.bm25 is None:
            raise InvalidInputError(f"mode {options.mode!r} needs the datastore's BM25 index")
        d = self.defaults
        knn = KnnParams(options.k or d.k, d.lam if options.lam is None else options.lam,
                        options.knn_temperature or d.temperature,
                        d.pointers if options.pointers is None else options.pointers)
        return Plan(options.mode, knn, options.ric,
                     SearchFilter(options.license_classes, scope or AccessScope()),
                     options.attribution)

