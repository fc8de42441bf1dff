"""What the datastore needs from a language model, without importing one.

`datastore` never imports `silo`; the caller hands the builder an object with this
face. `silo.encoder.LMEncoder` is the real one; tests use small deterministic ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class KeyEncoder(Protocol):
    """Turns text into token ids and token ids into kNN keys."""

    @property
    def dim(self) -> int:
        """Width of one key (the LM's hidden size)."""
        ...

    @property
    def fingerprint(self) -> str:
        """Hash of model config + tokenizer + weights; keys are only valid for this model."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        ...

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span (start, end) in `text` of each token of `tokenize(text)`."""
        ...

    def encode(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Keys for each sequence: array (len(seq), dim) float32, row t = the LM's final
        hidden state after the final norm at position t (the input of the LM head).
        Sequences longer than the model's context are encoded in sliding windows."""
        ...
