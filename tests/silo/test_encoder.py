"""LMEncoder: keys are the LM head's input, windows and batching change nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from silo.encoder import LMEncoder, window_starts

TEXTS = ["the cat sat on the mat", "a dog ran far away from home", "public domain text"] * 5


@pytest.fixture(scope="module")
def encoder() -> LMEncoder:
    from silo.model import build_lm
    from silo.tokenizer import train_tokenizer

    tok = train_tokenizer(TEXTS, vocab_size=300)
    model = build_lm("tiny", vocab_size=len(tok), seed=0)
    return LMEncoder(model, tok, "tiny-test", max_length=16, batch_size=3, stride=4)


def _logits(enc: LMEncoder, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return enc.model(input_ids=torch.tensor([ids])).logits[0]


def test_keys_are_the_input_of_the_lm_head_after_the_final_norm(encoder: LMEncoder) -> None:
    ids = encoder.tokenize(TEXTS[1])
    keys = encoder.encode([ids])[0]
    assert keys.shape == (len(ids), encoder.dim) and keys.dtype == np.float32
    head = encoder.model.get_output_embeddings()
    with torch.inference_mode():
        np.testing.assert_allclose(head(torch.from_numpy(keys)), _logits(encoder, ids),
                                   atol=1e-4)
    # post-norm: keys are the final RMSNorm's output, not the last layer's
    norm = encoder.model.model.norm
    seen: list[torch.Tensor] = []
    hook = norm.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        encoder.encode([ids])
    finally:
        hook.remove()
    with torch.inference_mode():
        np.testing.assert_allclose(norm(seen[0])[0], keys, atol=1e-5)
    assert not np.allclose(seen[0][0].numpy(), keys, atol=1e-2)
    assert encoder._base is True


def test_hook_path_gives_the_same_keys(encoder: LMEncoder) -> None:
    ids = [encoder.tokenize(t) for t in TEXTS[:3]]
    via_base = encoder.encode(ids)
    encoder._base = False
    try:
        via_hook = encoder.encode(ids)
    finally:
        encoder._base = True
    for a, b in zip(via_base, via_hook, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_batching_and_padding_do_not_change_keys(encoder: LMEncoder) -> None:
    ids = [encoder.tokenize(t) for t in TEXTS[:5]]
    together = encoder.encode(ids)
    for seq, keys in zip(ids, together, strict=True):
        np.testing.assert_allclose(encoder.encode([seq])[0], keys, atol=1e-5)


def test_long_sequences_are_encoded_in_sliding_windows(encoder: LMEncoder) -> None:
    ids = encoder.tokenize(" ".join(TEXTS))
    assert len(ids) > 3 * encoder.max_length
    keys = encoder.encode([ids])[0]
    head = encoder.model.get_output_embeddings()
    for start, end, keep in window_starts(len(ids), encoder.max_length, encoder.stride):
        with torch.inference_mode():
            want = _logits(encoder, ids[start:end])[keep - start:]
            np.testing.assert_allclose(head(torch.from_numpy(keys[keep:end])), want, atol=1e-4)


def test_window_starts_cover_every_position_once() -> None:
    for length in (1, 5, 16, 17, 100):
        covered = [p for _, e, keep in window_starts(length, 16, 5) for p in range(keep, e)]
        assert covered == list(range(length))
        assert all(e - s <= 16 for s, e, _ in window_starts(length, 16, 5))


def test_offsets_match_tokens(encoder: LMEncoder) -> None:
    text = "the cat sat"
    ids, offsets = encoder.tokenize(text), encoder.token_offsets(text)
    assert len(ids) == len(offsets)
    assert "".join(text[s:e] for s, e in offsets) == text
