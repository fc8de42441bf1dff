"""Scoring: the forward pass, retrieval and the mixed next-token distributions.

The pieces every mode is made of, used by scoring (`score`, `target_scores`) and by
generation (silo.generation):

    forward pass   right-padded rows -> log-probs and the LM head's inputs (kNN queries)
    retrieval      BM25 passages for a context, through the request's filter (RIC-LM)
    groups         inputs whose predicted positions share targets: one plain window, or
                   one input per RIC passage ensembled with REPLUG weights
    chunks         a few groups' positions at a time: LM side, kNN neighbours, mixture,
                   and with attribution the provenance of each target

Datastore faults surface as `UnavailableError` (HTTP 503): a search that fails is never
replaced by an answer without the filter.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from datastore.errors import SiloError, UnavailableError
from datastore.filter import AccessScope
from datastore.table.records import CLASS_CODES
from silo.attribution import (
    Attribution,
    DocumentInfo,
    Neighbour,
    PassageRef,
    TokenProvenance,
    attribute,
)
from silo.encoder import window_starts
from silo.knnlm import interpolate, knn_log_probs, target_log_probs, target_neighbour_mass
from silo.request import Plan, ScoreRequest, ScoreResult, SiloConfig, SiloOptions
from silo.ric import (
    Passage,
    chunk_starts,
    ensemble,
    query_ids,
    replug_log_weights,
    with_passage,
)
from silo.tuning import TargetScores

PASSAGE_CACHE = 65_536  # tokenized RIC blocks kept in memory

# A test seam: called with the rows of every forward pass before the model runs, so a
# test can make one request's rows fail inside a shared batch. None in production.
RowsHook = Callable[[Sequence[Sequence[int]]], None]


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

    def part(self, a: int, b: int) -> _Chunk:
        """Positions a..b-1 of this chunk."""
        return _Chunk(self.index[a:b], self.lm[a:b],
                      None if self.distances is None else self.distances[a:b],
                      None if self.entry_ids is None else self.entry_ids[a:b],
                      None if self.values is None else self.values[a:b], self.passages[a:b])



@dataclass
class SearchCounts:
    """kNN positions served and how many of them needed a search (the others followed
    pointers); for measuring, not for control (updated without a lock)."""

    searched: int = 0
    positions: int = 0

    def count(self, searched: int, positions: int) -> None:
        self.searched += searched
        self.positions += positions


class Scoring:
    """The scoring half of `SiloLM` (silo.lm sets these attributes and the three
    methods below; this class holds what scoring and generation share)."""

    model: Any
    tokenizer: Any
    datastore: Any | None
    config: SiloConfig
    max_length: int
    vocab_size: int
    eos_id: int
    pad_id: int
    rows_hook: RowsHook | None
    searches: SearchCounts
    _special: frozenset[int]
    _passage_ids: dict[int, tuple[int, ...]]
    _hook_lock: threading.Lock
    _base_gives_head_input: bool

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def plan(self, options: SiloOptions, scope: AccessScope | None = None) -> Plan:
        raise NotImplementedError

    # ---- the forward pass ------------------------------------------------------------

    @torch.inference_mode()
    def _forward(self, rows: list[list[int]], scored: list[int],
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Right-padded batch -> per row, for its last `scored` positions: log-probs
        (s, V) float32 and the LM head's input (s, dim) float32 (the kNN query)."""
        self._check_rows(rows)
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

    def _check_rows(self, rows: Sequence[Sequence[int]]) -> None:
        if self.rows_hook is not None:
            self.rows_hook(rows)

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
        with datastore_faults("the BM25 search"):
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
        targets = np.array([t for s in seqs for t in list(s)[1:]], dtype=np.int64)
        for at in range(0, len(groups), self.config.batch_size):
            part = groups[at:at + self.config.batch_size]
            lp, hidden = self._run_groups([g for _, g in part])
            index = np.concatenate([np.arange(i, i + g.scored) for i, g in part])
            chunk = _Chunk(index, lp, passages=[g.passages for _, g in part
                                                for _ in range(g.scored)])
            if plan.uses_knn:
                q = hidden if queries is None else queries[torch.from_numpy(index)]
                if plan.knn.pointers:
                    self._search_along(chunk, q, [g.scored for _, g in part], targets, plan)
                else:
                    self._search(chunk, q, plan)
            yield chunk

    def _iter_groups(self, groups: list[tuple[int, _Group]]
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for at in range(0, len(groups), self.config.batch_size):
            yield self._run_groups([g for _, g in groups[at:at + self.config.batch_size]])

    def _search(self, chunk: _Chunk, queries: torch.Tensor, plan: Plan,
                previous: np.ndarray | None = None, tokens: np.ndarray | None = None,
                ) -> None:
        """The chunk's kNN neighbours (one row per query, in order)."""
        self._set_neighbours(chunk, *self._neighbours(queries.numpy(), plan, previous, tokens))

    def _neighbours(self, queries: np.ndarray, plan: Plan, previous: np.ndarray | None,
                    tokens: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(q, k) distances and entry ids: a search per query, or with `plan.knn.pointers`
        the successors of each query's `previous` neighbours that voted for its `tokens`
        where enough of them remain (datastore.pointers)."""
        assert self.datastore is not None
        with datastore_faults("the kNN search"):
            if not plan.knn.pointers:
                self.searches.count(len(queries), len(queries))
                return self.datastore.knn_search(queries, plan.knn.k, plan.filter)
            dist, ids, searched = self.datastore.follow(queries, previous, tokens, plan.knn.k,
                                                        plan.filter, plan.knn.pointers)
        self.searches.count(int(searched.sum()), len(queries))
        return dist, ids

    def _set_neighbours(self, chunk: _Chunk, dist: np.ndarray, ids: np.ndarray) -> None:
        assert self.datastore is not None
        with datastore_faults("the kNN search"):
            values = self.datastore.values(ids)
        chunk.distances = torch.from_numpy(dist)
        chunk.entry_ids = ids
        chunk.values = torch.from_numpy(values)

    def _search_along(self, chunk: _Chunk, queries: torch.Tensor, lengths: list[int],
                      targets: np.ndarray, plan: Plan) -> None:
        """Neighbours of a chunk whose rows are groups of consecutive positions (`lengths`
        rows each), following pointers along each group: step j takes the j-th position
        of every group at once, with the neighbours and target of position j - 1."""
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        sizes = np.asarray(lengths)
        dist = np.full((len(chunk.index), plan.knn.k), np.inf, np.float32)
        ids = np.full((len(chunk.index), plan.knn.k), -1, np.int64)
        q = queries.numpy()
        for j in range(int(sizes.max(initial=0))):
            rows = offsets[sizes > j] + j
            if j == 0:
                dist[rows], ids[rows] = self._neighbours(q[rows], plan, None, None)
            else:
                dist[rows], ids[rows] = self._neighbours(
                    q[rows], plan, ids[rows - 1], targets[chunk.index[rows - 1]])
        self._set_neighbours(chunk, dist, ids)

    def _mixed(self, chunk: _Chunk, plan: Plan) -> torch.Tensor:
        """(m, V) log-probs of the plan's mixture for the chunk's positions."""
        if chunk.values is None or chunk.distances is None:
            return chunk.lm
        knn = knn_log_probs(chunk.distances, chunk.values, self.vocab_size,
                            plan.knn.temperature)
        # a row whose neighbours all have unusable distances has no kNN distribution
        return interpolate(chunk.lm, knn, plan.knn.lam, torch.isfinite(knn).any(1))

    def _target_mixed(self, chunk: _Chunk, targets: torch.Tensor, plan: Plan) -> torch.Tensor:
        """(m,) log-probs of the plan's mixture at the chunk's targets (as `_mixed`
        gathered there)."""
        lm = chunk.lm.gather(1, targets[:, None])[:, 0]
        if chunk.values is None or chunk.distances is None:
            return lm
        return target_log_probs(lm, chunk.distances, chunk.values, targets, plan.knn.lam,
                                plan.knn.temperature)

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
            with datastore_faults("the attribution lookup"):
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
            tgt = targets[torch.from_numpy(chunk.index)]
            if not top:  # only the targets' probabilities: no (m, V) mixture
                logprob[chunk.index] = self._target_mixed(chunk, tgt, plan).double().numpy()
            else:
                mixed = self._mixed(chunk, plan)
                logprob[chunk.index] = mixed.gather(1, tgt[:, None])[:, 0].double().numpy()
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
        with datastore_faults("the attribution lookup"):
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



def _right_padded(rows: Sequence[Sequence[int]], pad_id: int,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids -> (b, t) ids padded on the right with `pad_id`, (b, t) mask."""
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask



@contextmanager
def datastore_faults(what: str) -> Iterator[None]:
    """A datastore call that fails unexpectedly is a datastore fault (503), not the
    caller's bad input and not an answer computed without it."""
    try:
        yield
    except SiloError:
        raise
    except Exception as e:
        raise UnavailableError(f"{what} failed: {type(e).__name__}: {e}") from e


def perplexity(logprobs: Sequence[float]) -> float:
    """exp(mean NLL) of token log-probs (nats)."""
    return math.exp(-sum(logprobs) / len(logprobs)) if logprobs else float("nan")
