"""The LM as the datastore's key encoder: token ids -> final hidden states.

`LMEncoder` implements `datastore.encoder.KeyEncoder` over any HF causal LM. A key is the
input of the LM head at position t: for Llama (and GPT-NeoX, GPT-2) that is the base
model's `last_hidden_state`, which already has the final norm applied. At construction
a one-sequence probe checks that `lm_head(last_hidden_state)` reproduces the model's
logits; for an architecture where it does not, the encoder instead captures the LM
head's input with a forward pre-hook (costlier: it computes the logits too).

Sequences longer than the context are encoded in sliding windows: each window after
the first keeps only its last `stride` positions, so every key sees at least
`max_length - stride` tokens of left context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from datastore.errors import InvalidInputError


def window_starts(length: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows covering `length` tokens: (start, end, keep_from) with the positions
    [keep_from, end) taken from the window [start, end). Every position is kept once."""
    if length <= window:
        return [(0, length, 0)]
    out = [(0, window, 0)]
    kept = window
    while kept < length:
        end = min(kept + stride, length)
        out.append((max(0, end - window), end, kept))
        kept = end
    return out


class LMEncoder:
    """KeyEncoder over a causal LM and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, fingerprint: str, max_length: int,
                 batch_size: int = 8, stride: int | None = None) -> None:
        if max_length < 2:
            raise InvalidInputError(f"max_length must be >= 2, got {max_length}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self._fingerprint = fingerprint
        self.max_length = max_length
        self.stride = stride or max(1, max_length // 2)
        if not 1 <= self.stride <= max_length:
            raise InvalidInputError(f"stride must be in [1, max_length], got {self.stride}")
        self.batch_size = batch_size
        self.pad_id = 0 if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id)
        self._base = self._base_model_gives_head_input()

    @classmethod
    def from_loaded(cls, lm: Any, batch_size: int = 8) -> LMEncoder:
        """From `silo.model.load_lm(...)`'s result (model, tokenizer, fingerprint)."""
        return cls(lm.model, lm.tokenizer, lm.fingerprint, lm.max_length, batch_size)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return self.tokenize_with_offsets(text)[1]

    def tokenize_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and their character spans in one tokenizer pass (the builder uses
        it when an encoder offers it)."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [(int(s), int(e)) for s, e in enc["offset_mapping"]]

    @torch.inference_mode()
    def _base_model_gives_head_input(self) -> bool:
        """Does lm_head(base_model(x).last_hidden_state) equal the model's logits?"""
        x = torch.arange(1, 9, device=self.device)[None] % int(self.model.config.vocab_size)
        logits = self.model(input_ids=x).logits
        hidden = self.model.base_model(input_ids=x).last_hidden_state
        head = self.model.get_output_embeddings()
        return bool(torch.allclose(head(hidden), logits, atol=1e-4, rtol=1e-4))

    @torch.inference_mode()
    def _hidden(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(b, t) ids -> (b, t, dim): the input of the LM head."""
        if self._base:
            return self.model.base_model(input_ids=input_ids,
                                         attention_mask=mask).last_hidden_state
        captured: list[torch.Tensor] = []
        hook = self.model.get_output_embeddings().register_forward_pre_hook(
            lambda _module, args: captured.append(args[0]))
        try:
            self.model(input_ids=input_ids, attention_mask=mask)
        finally:
            hook.remove()
        return captured[0]

    def encode(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Keys of each sequence: (len(seq), dim) float32."""
        out = [np.zeros((len(seq), self.dim), np.float32) for seq in batch]
        # one piece per window; longest first so each forward pass pads little
        pieces = [(i, s, e, keep) for i, seq in enumerate(batch)
                  for s, e, keep in window_starts(len(seq), self.max_length, self.stride)
                  if e > s]
        pieces.sort(key=lambda p: p[2] - p[1], reverse=True)
        for at in range(0, len(pieces), self.batch_size):
            group = pieces[at:at + self.batch_size]
            width = max(e - s for _, s, e, _ in group)
            ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, (i, s, e, _) in enumerate(group):
                ids[row, :e - s] = torch.as_tensor(list(batch[i][s:e]), dtype=torch.long)
                mask[row, :e - s] = 1
            hidden = self._hidden(ids.to(self.device), mask.to(self.device)).float().cpu()
            states = hidden.numpy()  # (b, width, dim)
            for row, (i, s, e, keep) in enumerate(group):
                out[i][keep:e] = states[row, keep - s:e - s]
        return out
