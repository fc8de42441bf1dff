"""The tokenizer service: prompts into token ids (checked against the vocabulary and the
prompt limit), token texts for logprobs, and vLLM's tokenizer endpoints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datastore.errors import InvalidInputError
from server.protocol import DetokenizeResponse, TokenizeResponse, TokenizerInfo
from server.settings import Settings


class TokenizerService:
    """One model's tokenizer, as the service's requests use it."""

    def __init__(self, tokenizer: Any, max_length: int, vocab_size: int,
                 settings: Settings) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.vocab_size = vocab_size
        self.max_prompts = settings.max_prompts
        self.max_prompt_tokens = settings.max_prompt_tokens or max_length
        self._texts: dict[int, str] = {}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def text(self, ids: Sequence[int]) -> str:
        """The text of token ids, special tokens left out (an echoed prompt)."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def token_text(self, token_id: int) -> str:
        """One token's text, cached: logprobs name every token of a response, and the
        tokenizer's `decode` costs microseconds a call."""
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = str(self.tokenizer.decode([token_id]))
        return text

    def _check_ids(self, ids: Sequence[int], what: str) -> None:
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidInputError(f"{what}token id {bad[0]} is outside the vocabulary "
                                    f"[0, {self.vocab_size})")

    def prompts(self, prompt: Any) -> list[tuple[int, ...]]:
        """A request's prompt as token-id sequences; an empty one becomes [EOS]."""
        if isinstance(prompt, str):
            items: list[Any] = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            items = [prompt]
        else:
            items = list(prompt)
        if not items:
            raise InvalidInputError("prompt must not be empty")
        if len(items) > self.max_prompts:
            raise InvalidInputError(f"{len(items)} prompts in one request; the limit is "
                                    f"{self.max_prompts}")
        out = []
        for i, item in enumerate(items):
            ids = self.encode(item) if isinstance(item, str) else list(item)
            self._check_ids(ids, f"prompt {i}: ")
            if len(ids) > self.max_prompt_tokens:
                raise InvalidInputError(f"prompt {i} has {len(ids)} tokens; the limit is "
                                        f"{self.max_prompt_tokens}")
            out.append(tuple(ids) or (int(self.tokenizer.eos_token_id),))
        return out

    # ---- vLLM's tokenizer endpoints --------------------------------------------------

    def info(self) -> TokenizerInfo:
        t = self.tokenizer
        return TokenizerInfo(
            tokenizer_class=type(t).__name__, model_max_length=self.max_length,
            max_model_len=self.max_length, vocab_size=self.vocab_size,
            eos_token=t.eos_token, bos_token=t.bos_token, pad_token=t.pad_token,
            unk_token=t.unk_token, eos_token_id=t.eos_token_id,
            bos_token_id=t.bos_token_id)

    def tokenize(self, prompt: str, add_special_tokens: bool) -> TokenizeResponse:
        ids = self.encode(prompt, add_special_tokens)
        return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=self.max_length)

    def detokenize(self, tokens: list[int]) -> DetokenizeResponse:
        self._check_ids(tokens, "")
        return DetokenizeResponse(prompt=str(self.tokenizer.decode(tokens)))
