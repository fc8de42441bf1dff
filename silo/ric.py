"""RIC-LM (retrieval in context, In-Context RALM): BM25 passages prepended to the context.

Every `stride` tokens the last `query_tokens` tokens of the context (In-Context RALM uses
32) are decoded and sent to the datastore's BM25 search, through the request's entry
filter like every other search. The top passage (SILO uses the top-1 block) is prepended,
separated from the context by EOS, within the model's context budget: the passage keeps
at most a quarter of the window and the context keeps its most recent tokens.

With k > 1 the top-k passages are used REPLUG-style: the LM runs once per passage and
the next-token distributions are averaged with weights softmax(BM25 score / weight_temperature).

Over several datastores each is searched through the same filter and the passages are
merged (`merge_passages`): by BM25 score across them, or k from each (a quota).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from datastore.errors import InvalidInputError

MERGES = ("score", "quota")


@dataclass(frozen=True)
class RicParams:
    """query_tokens q, passages k (k > 1 ensembles), retrieval every `stride` tokens."""

    query_tokens: int = 32
    k: int = 1
    stride: int = 16
    weight_temperature: float = 1.0  # REPLUG: softmax temperature over BM25 scores
    # over several datastores: "quota" (the k best of each, ensembled together; the
    # better in docs/BENCHMARKS.md) or "score" (the k best by BM25 score across them)
    merge: str = "quota"

    def __post_init__(self) -> None:
        if self.merge not in MERGES:
            raise InvalidInputError(f"merge must be one of {', '.join(MERGES)}, got "
                                    f"{self.merge!r}")
        for name in ("query_tokens", "k", "stride"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.weight_temperature > 0:
            raise InvalidInputError(f"weight_temperature must be > 0, got "
                                    f"{self.weight_temperature}")


@dataclass(frozen=True)
class Passage:
    """A retrieved RIC block: where it comes from, its BM25 score and its tokens."""

    block_id: int
    doc_id: str
    score: float
    text: str
    ids: tuple[int, ...]
    datastore: str | None = None  # over several datastores: the one it came from


def query_ids(context: Sequence[int], query_tokens: int, special: frozenset[int]) -> list[int]:
    """The last `query_tokens` tokens of the context that are not special tokens."""
    return [t for t in context[-query_tokens:] if t not in special]


def passage_budget(max_length: int) -> int:
    """Tokens a prepended passage may take: a quarter of the window, so the context
    keeps three quarters (a 512-token window leaves 384 for the context)."""
    return max(1, max_length // 4)


def with_passage(passage: Sequence[int], context: Sequence[int], max_length: int,
                 eos_id: int) -> list[int]:
    """passage + EOS + context, cut to `max_length`: the passage to its first
    `passage_budget` tokens, the context to its most recent tokens. The context's own
    leading EOS (a document start) doubles as the separator."""
    if not passage:
        return list(context[-max_length:])
    head = passage_head(passage, context, max_length, eos_id)
    keep = max_length - len(head)
    return head + list(context[-keep:])


def passage_head(passage: Sequence[int], context: Sequence[int], max_length: int,
                 eos_id: int) -> list[int]:
    """What `with_passage` puts before the context: the passage cut to its budget, and
    the EOS that separates them unless the context's own leading EOS does. It depends on
    the context only through that EOS and its length, so inputs with the same passage
    mostly share it, and its keys/values (silo.decoding)."""
    head = list(passage[:passage_budget(max_length) - 1])
    if not context or context[0] != eos_id or len(context) > max_length - len(head):
        head.append(eos_id)
    return head


def replug_log_weights(scores: Sequence[float], temperature: float) -> torch.Tensor:
    """(k,) BM25 scores -> (k,) float32 log softmax(score / temperature)."""
    s = torch.tensor(list(scores), dtype=torch.float32) / temperature
    return torch.log_softmax(s, dim=0)


def ensemble(log_probs: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """REPLUG: log sum_i w_i p_i. log_probs (k, n, V), log_weights (k,) -> (n, V)."""
    if log_probs.shape[0] == 1:
        return log_probs[0]
    return torch.logsumexp(log_probs + log_weights[:, None, None], dim=0)


def chunk_starts(n_predictions: int, stride: int) -> list[tuple[int, int]]:
    """Prediction positions [0, n) in chunks of `stride`: (start, end) pairs. Each chunk
    is predicted under one retrieval, made from the context before the chunk's first
    predicted token."""
    return [(s, min(n_predictions, s + stride)) for s in range(0, n_predictions, stride)]


def merge_passages(found: Sequence[tuple[Passage, ...]], k: int, rule: str,
                   ) -> tuple[Passage, ...]:
    """Several datastores' passages for one query (each best first) as one list: "score",
    the k best by BM25 score across all (ties to the earlier datastore); "quota", the k
    best of each, ranked by score."""
    pool = [p for hits in found for p in (hits if rule == "score" else hits[:k])]
    ranked = sorted(pool, key=lambda p: -p.score)  # stable: ties keep datastore order
    return tuple(ranked[:k] if rule == "score" else ranked)
