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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from datastore.document import Document
from silo.config import EvalConfig
from silo.encoder import window_starts


@dataclass(frozen=True)
class Window:
    """Token ids to feed, and how many of the last targets to score.

    `ids` has n+1 tokens: positions 0..n-1 are input, 1..n are targets; the last
    `scored` targets count."""

    ids: tuple[int, ...]
    scored: int


def sliding_windows(ids: Sequence[int], window: int, stride: int) -> Iterator[Window]:
    """Windows over a sequence whose first token is context only (EOS); every later
    token is scored exactly once (the schedule the datastore encoder and SiloLM use)."""
    for start, end, keep in window_starts(len(ids) - 1, window, stride):
        if end > keep:  # a lone EOS has no target
            yield Window(ids=tuple(ids[start : end + 1]), scored=end - keep)


def domain_sequences(
    docs: Iterable[Document],
    encode: Callable[[str], Sequence[int]],
    eos_id: int,
    max_tokens: int | None = None,
) -> dict[str, list[tuple[int, ...]]]:
    """EOS + token ids of each document, grouped by `source` in reading order. With
    `max_tokens`, a source takes at most that many targets (its last document cut to
    fit) and later documents of a full source are not even tokenized."""
    out: dict[str, list[tuple[int, ...]]] = {}
    used: dict[str, int] = {}
    for doc in docs:
        have = used.get(doc.source, 0)
        if max_tokens is not None and have >= max_tokens:
            continue
        ids = (eos_id, *encode(doc.text))
        if max_tokens is not None:
            ids = ids[: max_tokens - have + 1]
        if len(ids) < 2:
            continue
        used[doc.source] = have + len(ids) - 1
        out.setdefault(doc.source, []).append(ids)
    return out


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


def evaluate_domains(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    docs: Iterable[Document],
    cfg: EvalConfig,
    max_tokens_per_domain: int | None = None,
    progress: bool = False,
) -> list[DomainResult]:
    """Perplexity of each `source` among `docs` (sorted by name)."""
    eos = tokenizer.eos_token_id
    assert eos is not None, "tokenizer needs an EOS token"
    by_domain = domain_sequences(
        docs,
        lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
        eos,
        max_tokens_per_domain,
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results = []
    for domain, seqs in sorted(by_domain.items()):
        windows = [w for ids in seqs for w in sliding_windows(ids, cfg.window, cfg.stride)]
        nll, n = score_windows(model, windows, cfg.batch_size, pad, progress)
        results.append(DomainResult(domain, len(seqs), n, nll))
    return results
