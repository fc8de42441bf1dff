"""Text and token ids, as SiloLM reads and writes them with a Hugging Face tokenizer.

Encoding adds no special tokens (a document's start is marked by the EOS the caller puts
before it, as in training); decoding drops special tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Codec:
    """A tokenizer's ids and texts, and the special ids SiloLM needs."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = 0 if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id)
        self.special = frozenset(int(i) for i in tokenizer.all_special_ids)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))
