"""`silo eval`: perplexity per domain with SILO's sliding-window protocol.

Each document is scored as EOS + its tokens, so every token of the document is
predicted (the first from the EOS that separates documents in training). Windows hold
`window` tokens and advance by `stride`; the first window scores all its tokens, each
later one only the tokens past the previous window's end, so every token is scored
exactly once with at least `window - stride` tokens of context where the document
allows it. Perplexity of a domain = exp(total NLL / total scored tokens).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from datastore.document import Document
from silo.config import EvalConfig


@dataclass(frozen=True)
class Window:
    """Token ids to feed, and how many of the last targets to score.

    `ids` has n+1 tokens: positions 0..n-1 are input, 1..n are targets; the last
    `scored` targets count."""

    ids: tuple[int, ...]
    scored: int


def sliding_windows(ids: Sequence[int], window: int, stride: int) -> Iterator[Window]:
    """Windows over a sequence whose first token is context only (EOS); every later
    token is scored exactly once."""
    n = len(ids) - 1  # number of targets
    end = 0  # targets [0, end) are scored so far
    while end < n:
        new_end = min(n, window if end == 0 else end + stride)
        start = max(0, new_end - window)
        yield Window(ids=tuple(ids[start : new_end + 1]), scored=new_end - end)
        end = new_end


@dataclass(frozen=True)
class DomainResult:
    domain: str
    documents: int
    tokens: int
    nll: float  # total, nats

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")


@torch.inference_mode()
def score_windows(
    model: PreTrainedModel,
    windows: Sequence[Window],
    batch_size: int,
    pad_id: int = 0,
    progress: bool = False,
) -> tuple[float, int]:
    """(total NLL in nats, scored tokens) over `windows`, batched with right padding
    (causal attention means padding after a row's end cannot change its logits)."""
    device = next(model.parameters()).device
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].ids))
    total, count = 0.0, 0
    chunks = range(0, len(order), batch_size)
    for b in tqdm(chunks, desc="scoring", unit="batch", disable=not progress):
        rows = [windows[i] for i in order[b : b + batch_size]]
        width = max(len(r.ids) for r in rows) - 1
        inputs = torch.full((len(rows), width), pad_id, dtype=torch.long)
        targets = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            n = len(r.ids) - 1
            inputs[j, :n] = torch.tensor(r.ids[:-1])
            targets[j, n - r.scored : n] = torch.tensor(r.ids[n - r.scored + 1 :])
            mask[j, :n] = 1
        logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device)).logits
        nll = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            targets.to(device).reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total += nll.item()
        count += int((targets != -100).sum())
    return total, count


def document_ids(doc: Document, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = tokenizer.eos_token_id
    assert eos is not None, "tokenizer needs an EOS token"
    return [eos, *tokenizer(doc.text, add_special_tokens=False)["input_ids"]]


def evaluate_domains(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    docs: Iterable[Document],
    cfg: EvalConfig,
    max_tokens_per_domain: int | None = None,
    progress: bool = False,
) -> list[DomainResult]:
    """Perplexity of each `source` among `docs` (sorted by name)."""
    by_domain: dict[str, list[Window]] = {}
    counts: dict[str, int] = {}
    budget: dict[str, int] = {}
    for doc in docs:
        used = budget.get(doc.source, 0)
        if max_tokens_per_domain is not None and used >= max_tokens_per_domain:
            continue
        ids = document_ids(doc, tokenizer)
        if max_tokens_per_domain is not None:
            ids = ids[: max_tokens_per_domain - used + 1]
        if len(ids) < 2:
            continue
        budget[doc.source] = used + len(ids) - 1
        counts[doc.source] = counts.get(doc.source, 0) + 1
        by_domain.setdefault(doc.source, []).extend(sliding_windows(ids, cfg.window, cfg.stride))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results = []
    for domain in sorted(by_domain):
        nll, n = score_windows(model, by_domain[domain], cfg.batch_size, pad, progress)
        results.append(DomainResult(domain, counts[domain], n, nll))
    return results
