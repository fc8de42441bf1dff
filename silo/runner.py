"""The causal LM, run: forward passes over right-padded rows, the LM head's inputs (the
kNN queries), the REPLUG ensemble over a group's inputs, and the key/value cache of
incremental decoding.

Any Hugging Face causal LM runs here. Where the base model's last hidden state is exactly
what the LM head reads (Llama, GPT-NeoX, GPT-2; checked by a probe at construction), the
base model runs and the head is applied to its output; otherwise a forward pre-hook on the
head captures its input, one caller at a time (a hook on the shared model would see other
threads' passes).

`rows_hook` is a test seam: called with the rows of every forward pass before the model
runs, so a test can make one request's rows fail inside a shared batch. None in
production.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from silo.batch import Group
from silo.ric import ensemble

RowsHook = Callable[[Sequence[Sequence[int]]], None]
# keys/values of a run of rows: per layer (rows, kv_heads, length, head_dim) each
Cache = list[tuple[torch.Tensor, torch.Tensor]]


def right_padded(rows: Sequence[Sequence[int]], pad_id: int,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids -> (b, t) ids padded on the right with `pad_id`, (b, t) mask."""
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


class ModelRunner:
    """One causal LM, shared read-only by concurrent callers."""

    def __init__(self, model: Any, tokenizer: Any, pad_id: int) -> None:
        from silo.model import context_length

        self.model = model.eval()
        self.max_length = context_length(model, tokenizer)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.pad_id = pad_id
        self.rows_hook: RowsHook | None = None
        self._hook_lock = threading.Lock()
        self.base_gives_head_input = False
        self.base_gives_head_input = self._probe_base_model()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_rows(self, rows: Sequence[Sequence[int]]) -> None:
        if self.rows_hook is not None:
            self.rows_hook(rows)

    @torch.inference_mode()
    def _probe_base_model(self) -> bool:
        """Is the base model's last hidden state exactly what the LM head reads?"""
        probe = (torch.arange(1, 9)[None] % self.vocab_size).to(self.device)
        hidden, logits, _ = self.head_input_and_logits(probe, torch.ones_like(probe))
        base = self.model.base_model(input_ids=probe).last_hidden_state
        return bool(torch.allclose(base, hidden, atol=1e-5)
                    and torch.allclose(self.model.get_output_embeddings()(base), logits,
                                       atol=1e-4, rtol=1e-4))

    def head_input_and_logits(self, ids: torch.Tensor, mask: torch.Tensor, **extra: Any,
                              ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(b, t) -> the LM head's input (b, t, dim) and the logits (b, t, V). `extra`
        goes to the model (a key/value cache, positions); the third result is the model's
        cache (None unless asked)."""
        head = self.model.get_output_embeddings()
        if self.base_gives_head_input:
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

    @torch.inference_mode()
    def forward(self, rows: list[list[int]], scored: list[int],
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Right-padded batch -> per row, for its last `scored` positions: log-probs
        (s, V) float32 and the LM head's input (s, dim) float32 (the kNN query)."""
        self.check_rows(rows)
        ids, mask = right_padded(rows, self.pad_id)
        hidden, logits, _ = self.head_input_and_logits(ids.to(self.device),
                                                       mask.to(self.device))
        # the distribution at the scored positions only: a RIC input predicts its last
        # few positions from a long context, and log-softmax over all of them was most of
        # its cost
        picked = torch.cat([torch.arange(i * ids.shape[1] + len(r) - s, i * ids.shape[1]
                                         + len(r)) for i, (r, s) in enumerate(
                                             zip(rows, scored, strict=True))]).to(self.device)
        lp = torch.log_softmax(logits.flatten(0, 1)[picked].float(), dim=-1).cpu()
        hidden = hidden.flatten(0, 1)[picked].float().cpu()
        sizes = list(scored)
        return list(lp.split(sizes)), list(hidden.split(sizes))

    def run_groups(self, groups: list[Group], batch_size: int,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """All groups' predicted positions, in order: ensembled log-probs (m, V) and the
        first input's LM-head inputs (m, dim)."""
        flat = [(g, x) for g in groups for x in g.inputs]
        lps: list[torch.Tensor] = []
        hs: list[torch.Tensor] = []
        # longest first in each forward pass would pad less, but order keeps it simple
        for at in range(0, len(flat), batch_size):
            part = flat[at:at + batch_size]
            lp, h = self.forward([x for _, x in part], [g.scored for g, _ in part])
            lps += lp
            hs += h
        out_lp, out_h, i = [], [], 0
        for g in groups:
            n = len(g.inputs)
            out_lp.append(ensemble(torch.stack(lps[i:i + n]), g.log_weights))
            out_h.append(hs[i])
            i += n
        return torch.cat(out_lp), torch.cat(out_h)

    # ---- incremental decoding ------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, runs: list[list[list[int]]],
                positions: list[torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, list[Cache]]:
        """Read runs of rows (the rows of one run have equal lengths) whole in one
        right-padded pass (a causal model's first L positions ignore the padding after
        them): the last real position's log-probs (m, V) and LM-head inputs (m, dim) of
        every row in order, and each run's cache. With `positions`, each row's LM-head
        inputs at all its positions (L, dim) float32 are appended to it (the pass
        computes them anyway)."""
        rows = [r for run in runs for r in run]
        self.check_rows(rows)
        ids, mask = right_padded(rows, self.pad_id)
        device = self.device
        hidden, logits, cache = self.head_input_and_logits(ids.to(device), mask.to(device),
                                                           use_cache=True)
        last = torch.tensor([len(r) - 1 for r in rows], device=device)
        picked = torch.arange(len(rows), device=device)
        caches, at = [], 0
        for run in runs:
            n, length = len(run), len(run[0])
            caches.append([(layer.keys[at:at + n, :, :length],
                            layer.values[at:at + n, :, :length]) for layer in cache.layers])
            at += n
        if positions is not None:
            positions.extend(hidden[i, :len(r)].float().cpu() for i, r in enumerate(rows))
        return (torch.log_softmax(logits[picked, last].float(), dim=-1).cpu(),
                hidden[picked, last].float().cpu(), caches)

    @torch.inference_mode()
    def decode(self, runs: list[list[list[int]]], caches: list[Cache],
               ) -> tuple[torch.Tensor, torch.Tensor, list[Cache]]:
        """The tokens of every row of each run past its cache (the last token, after a
        step; the context after a cached RIC passage) in one pass, each run over its
        cache of the tokens before (caches left-padded to a common length, the new
        tokens right-padded, both masked): the last position's log-probs (m, V) and
        LM-head inputs (m, dim) of every row, and each run's cache grown by its tokens.
        The rows of a run have equal lengths."""
        from transformers import DynamicCache

        self.check_rows([r for run in runs for r in run])
        device = self.device
        lengths = [c[0][0].shape[2] for c in caches for _ in range(c[0][0].shape[0])]
        rows = [r for run in runs for r in run]
        new = [list(r[n:]) for r, n in zip(rows, lengths, strict=True)]
        assert all(new), "a row to decode needs a token past its cache"
        width, fed = max(lengths), max(len(t) for t in new)
        past = [(_left_padded([c[i][0] for c in caches], width),
                 _left_padded([c[i][1] for c in caches], width))
                for i in range(len(caches[0]))]
        ids, tail = right_padded(new, self.pad_id)
        mask = torch.zeros((len(rows), width + fed), dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, width - n:width] = 1
        mask[:, width:] = tail
        positions = torch.tensor(lengths)[:, None] + torch.arange(fed)[None]
        hidden, logits, cache = self.head_input_and_logits(
            ids.to(device), mask.to(device), position_ids=positions.to(device),
            cache=DynamicCache(past), use_cache=True)
        last = torch.tensor([len(t) - 1 for t in new], device=device)
        picked = torch.arange(len(rows), device=device)
        grown, at = [], 0
        for run in runs:
            n, length, added = len(run), lengths[at], len(new[at])
            grown.append([(layer.keys[at:at + n, :, width - length:width + added],
                           layer.values[at:at + n, :, width - length:width + added])
                          for layer in cache.layers])
            at += n
        return (torch.log_softmax(logits[picked, last].float(), dim=-1).cpu(),
                hidden[picked, last].float().cpu(), grown)


def _left_padded(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    """Per-run (rows, heads, length, dim) tensors as one (all rows, heads, width, dim),
    each left-padded with zeros: one copy of each into a buffer (padding then
    concatenating copied twice, and strided slices copy slowly)."""
    first = parts[0]
    rows = sum(p.shape[0] for p in parts)
    out = first.new_zeros((rows, first.shape[1], width, first.shape[3]))
    at = 0
    for p in parts:
        out[at:at + p.shape[0], :, width - p.shape[2]:].copy_(p)
        at += p.shape[0]
    return out
