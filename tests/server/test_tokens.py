"""Prompts into token ids: every shape OpenAI's API allows, each limit a clear error."""

from __future__ import annotations

import pytest

from datastore.errors import InvalidInputError
from server.settings import Settings
from server.tokens import TokenizerService


@pytest.fixture
def tokens(tiny_tokenizer: object) -> TokenizerService:
    return TokenizerService(tiny_tokenizer, 128, len(tiny_tokenizer),  # type: ignore[arg-type]
                            Settings(max_prompts=3, max_prompt_tokens=10))


def test_every_prompt_shape(tokens: TokenizerService) -> None:
    text = tokens.prompts("the earth")
    assert text == [tuple(tokens.encode("the earth"))]
    assert tokens.prompts([5, 6]) == [(5, 6)]
    assert tokens.prompts([[5, 6], [7]]) == [(5, 6), (7,)]
    assert tokens.prompts(["a", "b"]) == [tuple(tokens.encode("a")), tuple(tokens.encode("b"))]
    eos = int(tokens.tokenizer.eos_token_id)
    assert tokens.prompts("") == [(eos,)] and tokens.prompts([[]]) == [(eos,)]


@pytest.mark.parametrize(("prompt", "message"), [
    ([], "must not be empty"),
    ([[1], [2], [3], [4]], "4 prompts in one request; the limit is 3"),
    ([[1, 99999]], "prompt 0: token id 99999 is outside the vocabulary"),
    ([list(range(11))], "prompt 0 has 11 tokens; the limit is 10"),
])
def test_each_limit_is_a_clear_error(tokens: TokenizerService, prompt: object,
                                     message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        tokens.prompts(prompt)


def test_token_texts_and_the_tokenizer_routes(tokens: TokenizerService) -> None:
    ids = tokens.encode("the earth")
    assert "".join(tokens.token_text(t) for t in ids) == "the earth"
    assert tokens.tokenize("the earth", False).tokens == ids
    assert tokens.detokenize(ids).prompt == "the earth"
    with pytest.raises(InvalidInputError, match="outside the vocabulary"):
        tokens.detokenize([-1])
    info = tokens.info()
    assert info.max_model_len == 128 and info.vocab_size == len(tokens.tokenizer)
