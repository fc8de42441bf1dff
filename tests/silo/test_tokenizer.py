from pathlib import Path

import pytest
from transformers import AutoTokenizer

from silo.tokenizer import train_tokenizer

SAMPLES = [
    "  Leading spaces and\ttabs\n",
    "ünïcödé 日本語 🙂",
    "def f(x):\n    return x**2",
    "",
    "A" * 300,
    "The quick brown fox.",
]


def test_roundtrip_and_hf_loading(tmp_path: Path, tiny_tokenizer) -> None:
    tiny_tokenizer.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in SAMPLES:
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        assert ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert loaded.decode(ids) == text
    assert loaded.eos_token == "<|eos|>" and loaded.pad_token_id is not None


def test_offsets_cover_the_text(tiny_tokenizer) -> None:
    text = "In the beginning, ünïcode."
    enc = tiny_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = enc["offset_mapping"]
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    # No gaps and in order; bytes of one multi-byte character share that character's span.
    pairs = list(zip(spans, spans[1:], strict=False))
    assert all(b[0] >= a[0] and b[0] <= a[1] for a, b in pairs)


def test_vocab_size_is_respected_and_validated() -> None:
    tok = train_tokenizer(["abc abd abe"] * 50, vocab_size=270)
    assert len(tok) <= 270
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["x"], vocab_size=100)
