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

Decoding is incremental (`SiloConfig.kv_cache`, on by default) in the modes without RIC:
a state's first step reads its rows whole (the new states of a step in one right-padded
pass) and keeps their keys/values, later steps feed one token per row, the rows of all
states of a plan in one pass over their left-padded, masked caches. RIC modes (whose
passages change the context) and rows longer than the context (whose window slides)
re-read the context at every step.

Per-request settings live in `SiloOptions` (mode, k, lam, knn_temperature,
license_classes, attribution, RIC parameters; unset k/lam/tau take the datastore's
tuned defaults) and the caller's `AccessScope`. Every kNN and BM25 search of a request
goes through the datastore's one entry filter built from these two, so a filtered
request sees exactly what a datastore without the excluded documents would show.
With `attribution` off no provenance is looked up at all.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datastore.document import LicenseClass
from datastore.errors import InvalidInputError
from datastore.filter import AccessScope, SearchFilter
from datastore.table import CLASS_CODES
from silo.attribution import (
    Attribution,
    DocumentInfo,
    Neighbour,
    PassageRef,
    TokenProvenance,
    attribute,
)
from silo.encoder import window_starts
from silo.knnlm import KnnParams, interpolate, knn_log_probs, target_neighbour_mass
from silo.ric import (
    Passage,
    RicParams,
    chunk_starts,
    ensemble,
    query_ids,
    replug_log_weights,
    with_passage,
)
from silo.tuning import TargetScores, read_defaults

MODES = ("parametric", "knnlm", "ric", "knnlm+ric")
PASSAGE_CACHE = 65_536  # tokenized RIC blocks kept in memory


@dataclass(frozen=True)
class SiloOptions:
    """Per-request SILO settings; None takes the datastore's tuned default."""

    mode: str = "knnlm"
    k: int | None = None
    lam: float | None = None
    knn_temperature: float | None = None
    license_classes: frozenset[LicenseClass] | None = None  # None: every class
    attribution: bool = False
    ric: RicParams = field(default_factory=RicParams)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        # KnnParams validates the values that are set
        KnnParams(self.k or 1, 0.0 if self.lam is None else self.lam,
                  self.knn_temperature or 1.0)

    @property
    def uses_knn(self) -> bool:
        return self.mode in ("knnlm", "knnlm+ric")

    @property
    def uses_ric(self) -> bool:
        return self.mode in ("ric", "knnlm+ric")


def _check_ids(ids: Sequence[int], name: str) -> None:
    if not all(isinstance(t, int) and t >= 0 for t in ids):
        raise ValueError(f"{name} must be non-negative token ids")


@dataclass(frozen=True)
class ScoreRequest:
    """Score every token of `prompt_ids` given the ones before it."""

    prompt_ids: tuple[int, ...]
    top_logprobs: int = 0  # N most likely tokens per position (0: none)
    options: SiloOptions = field(default_factory=SiloOptions)
    scope: AccessScope = field(default_factory=AccessScope)

    def __post_init__(self) -> None:
        _check_ids(self.prompt_ids, "prompt_ids")
        if self.top_logprobs < 0:
            raise ValueError(f"top_logprobs must be >= 0, got {self.top_logprobs}")


@dataclass(frozen=True)
class ScoreResult:
    """Per token of the prompt: its log-prob (None for the first), the top-N (token id
    -> log-prob; None for the first, or when not asked), and with attribution on the
    provenance of each token (None for the first) and the per-sentence attribution."""

    tokens: tuple[int, ...]
    token_logprobs: tuple[float | None, ...]
    top_logprobs: tuple[dict[int, float] | None, ...] | None = None
    provenance: tuple[TokenProvenance | None, ...] | None = None
    attribution: Attribution | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """Continue `prompt_ids` n times. temperature 0 is greedy decoding."""

    prompt_ids: tuple[int, ...]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int = 0  # top-N per generated token
    echo: bool = False  # also score the prompt
    options: SiloOptions = field(default_factory=SiloOptions)
    scope: AccessScope = field(default_factory=AccessScope)

    def __post_init__(self) -> None:
        _check_ids(self.prompt_ids, "prompt_ids")
        if not self.prompt_ids:
            raise ValueError("prompt_ids must hold at least one token")
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")
        if any(not s for s in self.stop):
            raise ValueError("stop sequences must be non-empty strings")


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of choice `choice`, as streamed."""

    choice: int
    token_id: int
    text: str  # text this token adds ("" while a multi-byte character is incomplete)
    logprob: float
    top_logprobs: dict[int, float] | None
    provenance: TokenProvenance | None
    finish_reason: str | None  # set on a choice's last event: "stop" or "length"


@dataclass(frozen=True)
class Completion:
    index: int
    token_ids: tuple[int, ...]
    text: str  # cut before a stop sequence
    token_logprobs: tuple[float, ...]
    top_logprobs: tuple[dict[int, float], ...] | None
    finish_reason: str
    provenance: tuple[TokenProvenance, ...] | None = None
    attribution: Attribution | None = None


@dataclass(frozen=True)
class GenerationResult:
    choices: tuple[Completion, ...]
    prompt: ScoreResult | None = None  # with echo


@dataclass(frozen=True)
class SiloConfig:
    """Batching and the scoring windows (defaults: the model's context, half overlap)."""

    batch_size: int = 8  # sequences per forward pass
    window: int | None = None
    stride: int | None = None
    kv_cache: bool = True  # incremental decoding (off: every step re-reads the context)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.window is not None and self.window < 2:
            raise ValueError(f"window must be >= 2, got {self.window}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")


@dataclass(frozen=True)
class Plan:
    """A request's options resolved against the datastore: what to compute."""

    mode: str
    knn: KnnParams
    ric: RicParams
    filter: SearchFilter
    attribution: bool

    @property
    def uses_knn(self) -> bool:
        return self.mode in ("knnlm", "knnlm+ric") and self.knn.lam > 0

    @property
    def uses_ric(self) -> bool:
        return self.mode in ("ric", "knnlm+ric")


@dataclass(eq=False)
class GenerationState:
    """A running generation, advanced in place by `SiloLM.step`: per choice its row
    (prompt + new tokens), new tokens, text so far, RIC passages and events; `live` the
    choices still generating, `steps` the tokens generated per live choice so far."""

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
    # keys/values of every token but the last of the rows `cache_rows` (in that order):
    # per layer (rows, kv_heads, length, head_dim) each; None before the first step, in
    # RIC modes and once the rows outgrow the context
    cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    cache_rows: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return not self.live


@dataclass
class _Group:
    """Inputs (one per RIC passage, one without) whose last `scored` positions predict
    the same targets; their distributions are ensembled with `log_weights`."""

    inputs: list[list[int]]
    scored: int
    log_weights: torch.Tensor
    passages: tuple[Passage, ...] = ()


@dataclass
class _Chunk:
    """Distributions for m predicted positions: global target index (m,), the LM (or
    RIC-LM) log-probs (m, V), and the kNN neighbours (m, k) when the plan uses them."""

    index: np.ndarray
    lm: torch.Tensor
    distances: torch.Tensor | None = None
    entry_ids: np.ndarray | None = None
    values: torch.Tensor | None = None
    passages: list[tuple[Passage, ...]] = field(default_factory=list)


class SiloLM:
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
        self._base_gives_head_input = False
        self._base_gives_head_input = self._probe_base_model()

    @classmethod
    def from_dirs(cls, model_dir: Path, datastore_dir: Path | None = None,
                  device: str = "cpu", config: SiloConfig | None = None) -> SiloLM:
        """Load the LM and open its datastore (whose keys must come from this LM)."""
        from datastore.store import Datastore
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
                        options.knn_temperature or d.temperature)
        return Plan(options.mode, knn, options.ric,
                     SearchFilter(options.license_classes, scope or AccessScope()),
                     options.attribution)

    # ---- the forward pass ------------------------------------------------------------

    @torch.inference_mode()
    def _forward(self, rows: list[list[int]], scored: list[int],
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Right-padded batch -> per row, for its last `scored` positions: log-probs
        (s, V) float32 and the LM head's input (s, dim) float32 (the kNN query)."""
        ids, mask = _right_padded(rows, self.pad_id)
        device = next(self.model.parameters()).device
        hidden, logits, _ = self._head_input_and_logits(ids.to(device), mask.to(device))
        lp = torch.log_softmax(logits.float(), dim=-1).cpu()
        hidden = hidden.float().cpu()
        out_lp, out_h = [], []
        for i, (r, s) in enumerate(zip(rows, scored, strict=True)):
            out_lp.append(lp[i, len(r) - s:len(r)])
            out_h.append(hidden[i, len(r) - s:len(r)])
        return out_lp, out_h

    @torch.inference_mode()
    def _probe_base_model(self) -> bool:
        """Is the base model's last hidden state exactly what the LM head reads?"""
        device = next(self.model.parameters()).device
        probe = (torch.arange(1, 9)[None] % self.vocab_size).to(device)
        hidden, logits, _ = self._head_input_and_logits(probe, torch.ones_like(probe))
        base = self.model.base_model(input_ids=probe).last_hidden_state
        return bool(torch.allclose(base, hidden, atol=1e-5)
                    and torch.allclose(self.model.get_output_embeddings()(base), logits,
                                       atol=1e-4, rtol=1e-4))

    def _head_input_and_logits(self, ids: torch.Tensor, mask: torch.Tensor, **extra: Any,
                               ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(b, t) -> the LM head's input (b, t, dim) and the logits (b, t, V). Where the
        base model's output is that input (Llama, GPT-NeoX, GPT-2), no hook is needed;
        otherwise a forward pre-hook captures it, one caller at a time (a hook on the
        shared model would see other threads' passes). `extra` goes to the model (a key/
        value cache, positions); the third result is the model's cache (None unless asked)."""
        head = self.model.get_output_embeddings()
        if self._base_gives_head_input:
            out = self.model.base_model(input_ids=ids, attention_mask=mask, **extra)
            return out.last_hidden_state, head(out.last_hidden_state), out.get("cache")
        captured: list[torch.Tensor] = []
        with self._hook_lock:
            hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
            try:
                out = self.model(input_ids=ids, attention_mask=mask, **extra)
            finally:
                hook.remove()
        return captured[0], out.logits, out.get("cache")

    def _run_groups(self, groups: list[_Group]) -> tuple[torch.Tensor, torch.Tensor]:
        """All groups' predicted positions, in order: ensembled log-probs (m, V) and the
        first input's LM-head inputs (m, dim)."""
        flat = [(g, x) for g in groups for x in g.inputs]
        lps: list[torch.Tensor] = []
        hs: list[torch.Tensor] = []
        # longest first in each forward pass would pad less, but order keeps it simple
        for at in range(0, len(flat), self.config.batch_size):
            part = flat[at:at + self.config.batch_size]
            lp, h = self._forward([x for _, x in part], [g.scored for g, _ in part])
            lps += lp
            hs += h
        out_lp, out_h, i = [], [], 0
        for g in groups:
            n = len(g.inputs)
            out_lp.append(ensemble(torch.stack(lps[i:i + n]), g.log_weights))
            out_h.append(hs[i])
            i += n
        return torch.cat(out_lp), torch.cat(out_h)

    # ---- retrieval -------------------------------------------------------------------

    def _retrieve(self, context: Sequence[int], plan: Plan) -> tuple[Passage, ...]:
        """Top-k BM25 passages for the context's last q tokens, through the filter."""
        assert self.datastore is not None
        q = query_ids(context, plan.ric.query_tokens, self._special)
        text = self.decode(q).strip()
        if not text:
            return ()
        hits = self.datastore.bm25_search(text, plan.ric.k, plan.filter)
        out = []
        for h in hits:
            ids = self._passage_ids.get(h.block_id)
            if ids is None:
                ids = tuple(self.encode(h.text))
                if len(self._passage_ids) >= PASSAGE_CACHE:
                    self._passage_ids.clear()
                self._passage_ids[h.block_id] = ids
            out.append(Passage(h.block_id, h.doc_id, float(h.score), h.text, ids))
        return tuple(out)

    def _ric_group(self, context: Sequence[int], scored: int, passages: tuple[Passage, ...],
                   plan: Plan) -> _Group:
        if not passages:
            return _Group([list(context[-self.max_length:])], scored, torch.zeros(1))
        inputs = [with_passage(p.ids, context, self.max_length, self.eos_id) for p in passages]
        weights = replug_log_weights([p.score for p in passages], plan.ric.weight_temperature)
        return _Group(inputs, scored, weights, passages)

    # ---- distributions over sequences ------------------------------------------------

    def _window(self) -> tuple[int, int]:
        window = min(self.config.window or self.max_length, self.max_length)
        return window, self.config.stride or max(1, window // 2)

    def _plain_groups(self, seqs: Sequence[Sequence[int]]) -> list[tuple[int, _Group]]:
        """(global index of the first predicted target, group) over sliding windows:
        every position but the last of each sequence is predicted exactly once."""
        window, stride = self._window()
        out, base = [], 0
        for seq in seqs:
            for s, e, keep in window_starts(len(seq) - 1, window, stride):
                if e > keep:
                    out.append((base + keep, _Group([list(seq[s:e])], e - keep, torch.zeros(1))))
            base += max(0, len(seq) - 1)
        return out

    def _ric_groups(self, seqs: Sequence[Sequence[int]], plan: Plan,
                    ) -> list[tuple[int, _Group]]:
        """One group per `stride` predicted positions, with the passages retrieved for the
        context before them."""
        out, base = [], 0
        for seq in seqs:
            for s, e in chunk_starts(len(seq) - 1, plan.ric.stride):
                passages = self._retrieve(seq[:s + 1], plan)
                out.append((base + s, self._ric_group(seq[:e], e - s, passages, plan)))
            base += max(0, len(seq) - 1)
        return out

    def _chunks(self, seqs: Sequence[Sequence[int]], plan: Plan) -> Iterator[_Chunk]:
        """The LM side and the kNN neighbours of every predicted position, a few groups at
        a time (so (m, V) tensors stay small)."""
        queries = None
        if plan.uses_knn and plan.uses_ric:  # kNN queries come from the plain context
            plain = [h for _, h in self._iter_groups(self._plain_groups(seqs))]
            queries = torch.cat(plain) if plain else None
        groups = self._ric_groups(seqs, plan) if plan.uses_ric else self._plain_groups(seqs)
        for at in range(0, len(groups), self.config.batch_size):
            part = groups[at:at + self.config.batch_size]
            lp, hidden = self._run_groups([g for _, g in part])
            index = np.concatenate([np.arange(i, i + g.scored) for i, g in part])
            chunk = _Chunk(index, lp, passages=[g.passages for _, g in part
                                                for _ in range(g.scored)])
            if plan.uses_knn:
                q = hidden if queries is None else queries[torch.from_numpy(index)]
                self._search(chunk, q, plan)
            yield chunk

    def _iter_groups(self, groups: list[tuple[int, _Group]]
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for at in range(0, len(groups), self.config.batch_size):
            yield self._run_groups([g for _, g in groups[at:at + self.config.batch_size]])

    def _search(self, chunk: _Chunk, queries: torch.Tensor, plan: Plan) -> None:
        assert self.datastore is not None
        dist, ids = self.datastore.knn_search(queries.numpy(), plan.knn.k, plan.filter)
        chunk.distances = torch.from_numpy(dist)
        chunk.entry_ids = ids
        chunk.values = torch.from_numpy(self.datastore.values(ids).astype(np.int64))

    def _mixed(self, chunk: _Chunk, plan: Plan) -> torch.Tensor:
        """(m, V) log-probs of the plan's mixture for the chunk's positions."""
        if chunk.values is None or chunk.distances is None:
            return chunk.lm
        knn = knn_log_probs(chunk.distances, chunk.values, self.vocab_size,
                            plan.knn.temperature)
        return interpolate(chunk.lm, knn, plan.knn.lam, (chunk.values >= 0).any(1))

    def _provenance(self, chunk: _Chunk, targets: torch.Tensor, plan: Plan,
                    ) -> list[TokenProvenance]:
        """Per position: the neighbours that voted for the target, with lam * mass, best
        first, and the RIC passages in context."""
        out = []
        neighbours: list[tuple[Neighbour, ...]] = [() for _ in range(len(targets))]
        if chunk.values is not None and chunk.distances is not None:
            assert self.datastore is not None and chunk.entry_ids is not None
            mass = plan.knn.lam * target_neighbour_mass(chunk.distances, chunk.values,
                                                        targets, plan.knn.temperature)
            snap = self.datastore.snapshot
            rows = snap.rows_of_entries(chunk.entry_ids)
            for i, j in zip(*np.nonzero(mass.numpy() > 0), strict=True):
                neighbours[i] += (Neighbour(int(chunk.entry_ids[i, j]),
                                            snap.doc_ids[int(rows[i, j])],
                                            float(chunk.distances[i, j]), float(mass[i, j])),)
        for i in range(len(targets)):
            ranked = tuple(sorted(neighbours[i], key=lambda n: -n.contribution))
            refs = tuple(PassageRef(p.block_id, p.doc_id, p.score, p.text)
                         for p in chunk.passages[i])
            out.append(TokenProvenance(ranked, refs))
        return out

    # ---- scoring ---------------------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Score each request's prompt; requests with equal options share batches."""
        results: list[ScoreResult | None] = [None] * len(requests)
        by_plan: dict[tuple[SiloOptions, AccessScope], list[int]] = {}
        for i, r in enumerate(requests):
            by_plan.setdefault((r.options, r.scope), []).append(i)
        for (options, scope), members in by_plan.items():
            plan = self.plan(options, scope)
            top = max(requests[i].top_logprobs for i in members)
            scored = self._score_ids([requests[i].prompt_ids for i in members], plan, top)
            for i, res in zip(members, scored, strict=True):
                n = requests[i].top_logprobs
                tops = None if res.top_logprobs is None or n == 0 else tuple(
                    None if t is None else dict(list(t.items())[:n]) for t in res.top_logprobs)
                results[i] = replace(res, top_logprobs=tops)
        return [r for r in results if r is not None]

    def _score_ids(self, seqs: Sequence[Sequence[int]], plan: Plan, top: int,
                   ) -> list[ScoreResult]:
        n_pred = [max(0, len(s) - 1) for s in seqs]
        starts = np.concatenate([[0], np.cumsum(n_pred)]).astype(np.int64)
        targets = torch.tensor([t for s in seqs for t in list(s)[1:]], dtype=torch.long)
        logprob = np.zeros(len(targets), np.float64)
        tops: list[dict[int, float]] = [{} for _ in range(len(targets))]
        provs: list[TokenProvenance] = [TokenProvenance() for _ in range(len(targets))]
        for chunk in self._chunks(seqs, plan):
            mixed = self._mixed(chunk, plan)
            tgt = targets[torch.from_numpy(chunk.index)]
            logprob[chunk.index] = mixed.gather(1, tgt[:, None])[:, 0].double().numpy()
            if top:
                values, ids = mixed.topk(min(top, mixed.shape[1]), dim=1)
                for row, i in enumerate(chunk.index.tolist()):
                    tops[i] = dict(zip(ids[row].tolist(), values[row].tolist(), strict=True))
            if plan.attribution:
                for i, p in zip(chunk.index.tolist(), self._provenance(chunk, tgt, plan),
                                strict=True):
                    provs[i] = p
        return [self._score_result(seq, logprob[a:b], tops[a:b] if top else None,
                                   provs[a:b] if plan.attribution else None)
                for seq, a, b in zip(seqs, starts[:-1].tolist(), starts[1:].tolist(),
                                     strict=True)]

    def _score_result(self, seq: Sequence[int], logprob: np.ndarray,
                      tops: list[dict[int, float]] | None,
                      provs: list[TokenProvenance] | None) -> ScoreResult:
        lead: tuple[None, ...] = (None,) if seq else ()
        attribution = None
        if provs is not None and len(seq) > 1:
            attribution = self._attribute(list(seq[1:]), provs)
        return ScoreResult(
            tokens=tuple(seq), token_logprobs=lead + tuple(float(x) for x in logprob),
            top_logprobs=None if tops is None else lead + tuple(tops),
            provenance=None if provs is None else lead + tuple(provs),
            attribution=attribution)

    def _attribute(self, ids: Sequence[int], provs: Sequence[TokenProvenance]) -> Attribution:
        """Per-sentence attribution of the text of `ids` (one provenance per id)."""
        ends, text = [], ""
        for i in range(len(ids)):
            text = self.decode(ids[:i + 1])  # quadratic, but only on attribution's path
            ends.append(len(text))
        return attribute(text, ends, provs, self._describe)

    def _describe(self, doc_id: str, entry_id: int | None) -> DocumentInfo:
        assert self.datastore is not None
        snap = self.datastore.snapshot
        row = snap.row_of[doc_id]
        info = None if entry_id is None else self.datastore.entry_info([entry_id])[0]
        return DocumentInfo(snap.sources[snap.source_code[row]],
                            CLASS_CODES[int(snap.class_code[row])].value,
                            None if info is None else info.snippet)

    # ---- the pieces tuning needs -----------------------------------------------------

    def target_scores(self, seqs: Sequence[Sequence[int]], options: SiloOptions,
                      k: int, scope: AccessScope | None = None) -> TargetScores:
        """For hyperparameter search, over every predicted token of `seqs` in order: the
        LM side's log-prob of the target (parametric, or RIC-LM in the ric modes) and its
        k nearest neighbours (queries as in `options.mode`; k = 0: no search)."""
        plan = self.plan(replace(options, lam=1.0 if k else 0.0, k=k or None), scope)
        targets = torch.tensor([t for s in seqs for t in list(s)[1:]], dtype=torch.long)
        lp = np.zeros(len(targets), np.float64)
        dist = np.full((len(targets), k), np.inf, np.float32)
        vals = np.full((len(targets), k), -1, np.int64)
        for chunk in self._chunks(seqs, plan):
            tgt = targets[torch.from_numpy(chunk.index)]
            lp[chunk.index] = chunk.lm.gather(1, tgt[:, None])[:, 0].double().numpy()
            if chunk.distances is not None and chunk.values is not None:
                dist[chunk.index] = chunk.distances.numpy()
                vals[chunk.index] = chunk.values.numpy()
        return TargetScores(lp, dist, vals, targets.numpy())

    # ---- generation ------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate all choices (see `generate_stream`) and collect them."""
        (state,) = self.start([request])
        while not state.finished:
            self.step([state])
        return self.finish(state)

    def generate_stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        """Generate `n` continuations together, one batched step per token; yields each
        token as soon as it is chosen."""
        (state,) = self.start([replace(request, echo=False)])
        while not state.finished:
            yield from self.step([state])[0]

    def start(self, requests: Sequence[GenerationRequest]) -> list[GenerationState]:
        """A running state per request: its plan resolved (InvalidInputError when the
        datastore cannot serve it), its sampler seeded and, with `echo`, its prompt
        scored (echo prompts of equal options in one `score` call)."""
        states = []
        for req in requests:
            plan = self.plan(req.options, req.scope)
            seed = req.seed if req.seed is not None else int(torch.randint(2**31, ()).item())
            n = req.n
            states.append(GenerationState(
                req, plan, torch.Generator().manual_seed(seed),
                [list(req.prompt_ids) for _ in range(n)], [[] for _ in range(n)], [""] * n,
                [() for _ in range(n)], list(range(n)) if req.max_tokens else [],
                [[] for _ in range(n)]))
        echo = [s for s in states if s.request.echo]
        scored = self.score([ScoreRequest(s.request.prompt_ids, s.request.logprobs,
                                          s.request.options, s.request.scope) for s in echo])
        for s, res in zip(echo, scored, strict=True):
            s.prompt = res
        return states

    def step(self, states: Sequence[GenerationState]) -> list[tuple[TokenEvent, ...]]:
        """One token for every live choice of `states`: the rows of states with equal
        plans go through shared forward passes (continuous batching), then each state
        samples its own rows with its own generator, so the tokens are those of stepping
        it alone. Returns per state this step's events (empty once it is finished)."""
        by_plan: dict[Plan, list[GenerationState]] = {}
        for s in states:
            if s.live:
                by_plan.setdefault(s.plan, []).append(s)
        out: dict[int, tuple[TokenEvent, ...]] = {}
        for plan, group in by_plan.items():
            for s, events in zip(group, self._advance(group, plan), strict=True):
                out[id(s)] = events
        return [out.get(id(s), ()) for s in states]

    def finish(self, state: GenerationState) -> GenerationResult:
        """The result of a state: per choice its events collected (and attributed)."""
        choices = [self._completion(i, evs, state.request)
                   for i, evs in enumerate(state.events)]
        return GenerationResult(tuple(choices), state.prompt)

    def _advance(self, states: list[GenerationState], plan: Plan,
                 ) -> list[tuple[TokenEvent, ...]]:
        rows: list[list[int]] = []
        passages: list[tuple[Passage, ...]] = []
        for s in states:
            for r in s.live:
                if plan.uses_ric and s.steps % plan.ric.stride == 0:
                    s.passages[r] = self._retrieve(s.rows[r], plan)
                rows.append(s.rows[r])
                passages.append(s.passages[r])
        chunk = self._step(rows, list(range(len(rows))), passages, plan,
                           None if plan.uses_ric else states)
        mixed = self._mixed(chunk, plan)
        picked, at = [], 0
        for s in states:
            picked.append(_sample(mixed[at:at + len(s.live)], s.request.temperature,
                                  s.request.top_p, s.generator))
            at += len(s.live)
        tokens = torch.cat(picked)
        provs = self._provenance(chunk, tokens, plan) if plan.attribution else None
        out, at = [], 0
        for s in states:
            events, still = [], []
            for r in s.live:
                token = int(tokens[at])
                s.rows[r].append(token)
                s.new[r].append(token)
                ev = self._event(r, token, mixed[at], s.new[r], s.texts, s.request, s.steps,
                                 None if provs is None else provs[at])
                s.events[r].append(ev)
                events.append(ev)
                if ev.finish_reason is None:
                    still.append(r)
                at += 1
            s.live = still
            s.steps += 1
            out.append(tuple(events))
        return out

    def _completion(self, index: int, events: list[TokenEvent],
                    request: GenerationRequest) -> Completion:
        ids = [e.token_id for e in events]
        text = "".join(e.text for e in events)
        provs = tuple(e.provenance for e in events if e.provenance is not None)
        attribution = None
        if request.options.attribution and ids:
            attribution = self._attribute(ids, provs)
        return Completion(
            index, tuple(ids), text, tuple(e.logprob for e in events),
            tuple(e.top_logprobs or {} for e in events) if request.logprobs else None,
            events[-1].finish_reason or "length" if events else "length",
            provs if request.options.attribution else None, attribution)

    def _step(self, rows: list[list[int]], live: list[int],
              passages: list[tuple[Passage, ...]], plan: Plan,
              states: list[GenerationState] | None = None) -> _Chunk:
        """Next-token distributions (and neighbours) of the live rows; with `states`
        (whose live rows are `rows`, in order) incrementally, through their caches."""
        plain = [_Group([rows[r][-self.max_length:]], 1, torch.zeros(1)) for r in live]
        groups = [self._ric_group(rows[r], 1, passages[r], plan) for r in live] \
            if plan.uses_ric else plain
        if states is not None and self.config.kv_cache:
            lp, hidden = self._next_token(states)
        else:
            lp, hidden = self._run_groups(groups)
        chunk = _Chunk(np.arange(len(live)), lp, passages=[passages[r] for r in live]
                       if plan.uses_ric else [() for _ in live])
        if plan.uses_knn:
            queries = self._run_groups(plain)[1] if plan.uses_ric else hidden
            self._search(chunk, queries, plan)
        return chunk

    def _next_token(self, states: list[GenerationState]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs (m, V) and LM-head inputs (m, dim) of the next token of every live
        row of `states`, in order. A state's first step reads its rows whole (all new
        states in one pass) and keeps their keys/values; later steps feed only each
        row's last token, the rows of all cached states in one pass (caches left-padded
        to a common length, masked). Rows longer than the context slide their window,
        which a cache cannot follow: those are read whole at every step."""
        lps: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        cached, fresh = [], []
        for s in states:
            length = len(s.rows[s.live[0]])  # the live rows of a state advance together
            if s.cache is not None and length <= self.max_length:
                cached.append(s)
                continue
            rows = [s.rows[r][-self.max_length:] for r in s.live]
            if length > self.max_length:
                s.cache = None
                row_lp, row_h = self._forward(rows, [1] * len(rows))
                lps[id(s)] = torch.cat(row_lp), torch.cat(row_h)
            else:
                fresh.append(s)
        for group, step in ((fresh, self._prefill), (cached, self._decode)):
            for part in _batches(group, self.config.batch_size):
                lp, h = step(part)
                at = 0
                for s in part:
                    lps[id(s)] = lp[at:at + len(s.live)], h[at:at + len(s.live)]
                    at += len(s.live)
        return (torch.cat([lps[id(s)][0] for s in states]),
                torch.cat([lps[id(s)][1] for s in states]))

    @torch.inference_mode()
    def _prefill(self, states: list[GenerationState]) -> tuple[torch.Tensor, torch.Tensor]:
        """Read the live rows of `states` whole in one right-padded pass and keep each
        state's cache (a causal model's first L positions ignore the padding after
        them); the last real position's log-probs (m, V) and LM-head inputs (m, dim)."""
        device = next(self.model.parameters()).device
        rows = [s.rows[r] for s in states for r in s.live]
        ids, mask = _right_padded(rows, self.pad_id)
        hidden, logits, cache = self._head_input_and_logits(ids.to(device), mask.to(device),
                                                            use_cache=True)
        last = torch.tensor([len(r) - 1 for r in rows], device=device)
        picked = torch.arange(len(rows), device=device)
        at = 0
        for s in states:
            n, length = len(s.live), len(s.rows[s.live[0]])
            s.cache = [(layer.keys[at:at + n, :, :length], layer.values[at:at + n, :, :length])
                       for layer in cache.layers]
            s.cache_rows = list(s.live)
            at += n
        return (torch.log_softmax(logits[picked, last].float(), dim=-1).cpu(),
                hidden[picked, last].float().cpu())

    @torch.inference_mode()
    def _decode(self, states: list[GenerationState]) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per live row of the cached `states` in one pass: (m, V), (m, dim)."""
        from transformers import DynamicCache

        device = next(self.model.parameters()).device
        lengths, tokens, layers = [], [], []
        for s in states:
            assert s.cache is not None
            keep = [s.cache_rows.index(r) for r in s.live]  # finished choices drop out
            if keep != list(range(len(s.cache_rows))):
                index = torch.tensor(keep, device=device)
                s.cache = [(k.index_select(0, index), v.index_select(0, index))
                           for k, v in s.cache]
            lengths += [s.cache[0][0].shape[2]] * len(s.live)
            tokens += [s.rows[r][-1] for r in s.live]
            layers.append(s.cache)
        width = max(lengths)
        past = [tuple(torch.cat([torch.nn.functional.pad(c[i][j], (0, 0, width - c[i][j]
                                                                   .shape[2], 0))
                                 for c in layers]) for j in (0, 1))
                for i in range(len(layers[0]))]
        mask = torch.zeros((len(tokens), width + 1), dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, width - n:] = 1
        hidden, logits, cache = self._head_input_and_logits(
            torch.tensor(tokens, device=device)[:, None], mask.to(device),
            position_ids=torch.tensor(lengths, device=device)[:, None],
            cache=DynamicCache(past), use_cache=True)
        at = 0
        for s in states:
            n, length = len(s.live), lengths[at]
            s.cache = [(layer.keys[at:at + n, :, width - length:],
                        layer.values[at:at + n, :, width - length:])
                       for layer in cache.layers]
            s.cache_rows = list(s.live)
            at += n
        return (torch.log_softmax(logits[:, -1].float(), dim=-1).cpu(),
                hidden[:, -1].float().cpu())

    def _event(self, choice: int, token: int, dist: torch.Tensor, new: list[int],
               texts: list[str], request: GenerationRequest, step: int,
               provenance: TokenProvenance | None) -> TokenEvent:
        """The event for a chosen token, cutting the text at a stop sequence."""
        full = self.decode(new)
        finish = None
        if full.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more
            full = texts[choice]
        cut = min((full.find(s) for s in request.stop if s in full), default=-1)
        if cut >= 0:
            full, finish = full[:cut], "stop"
        elif step == request.max_tokens - 1 or token == self.eos_id:
            finish = "stop" if token == self.eos_id else "length"
        delta = full[len(texts[choice]):] if full.startswith(texts[choice]) else ""
        texts[choice] = full
        top = None
        if request.logprobs:
            values, ids = dist.topk(min(request.logprobs, dist.shape[0]))
            top = dict(zip(ids.tolist(), values.tolist(), strict=True))
        return TokenEvent(choice, token, delta, float(dist[token]), top, provenance, finish)


def _right_padded(rows: Sequence[Sequence[int]], pad_id: int,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids -> (b, t) ids padded on the right with `pad_id`, (b, t) mask."""
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


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


def _sample(log_probs: torch.Tensor, temperature: float, top_p: float,
            gen: torch.Generator) -> torch.Tensor:
    """(m, V) log-probs -> (m,) token ids: argmax at temperature 0, else a draw from
    softmax(log p / T) restricted to the smallest set of mass >= top_p."""
    if temperature == 0:
        return log_probs.argmax(dim=1)
    probs = torch.softmax(log_probs / temperature, dim=1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=1, descending=True)
        before = sorted_p.cumsum(1) - sorted_p  # mass of the tokens ranked above
        sorted_p = torch.where(before < top_p, sorted_p, torch.zeros_like(sorted_p))
        probs = torch.zeros_like(probs).scatter(1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]


def perplexity(logprobs: Sequence[float]) -> float:
    """exp(mean NLL) of token log-probs (nats)."""
    return math.exp(-sum(logprobs) / len(logprobs)) if logprobs else float("nan")
