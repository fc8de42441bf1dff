from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM

from datastore.errors import InvalidInputError, NotFoundError
from silo.config import PRESETS, ModelPreset
from silo.model import build_lm, fingerprint, load_lm, parse_dtype


def test_presets_build_llama_with_expected_shape() -> None:
    model = build_lm("tiny", 300)
    assert model.config.model_type == "llama"
    assert model.config.hidden_size == PRESETS["tiny"].hidden_size
    with pytest.raises(ValueError, match="unknown preset"):
        build_lm("gigantic", 300)
    with pytest.raises(ValueError, match="num_heads"):
        ModelPreset(hidden_size=30, num_layers=1, num_heads=4, intermediate_size=8, max_length=8)


def test_save_and_load_give_identical_logits(tmp_path: Path, tiny_lm, tiny_tokenizer) -> None:
    tiny_lm.save_pretrained(str(tmp_path))
    tiny_tokenizer.save_pretrained(str(tmp_path))
    ids = torch.tensor([tiny_tokenizer("And God said", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        before = tiny_lm(input_ids=ids).logits
    lm = load_lm(tmp_path)
    with torch.no_grad():
        after = lm.model(input_ids=ids).logits
    assert torch.equal(before, after)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    with torch.no_grad():
        assert torch.equal(before, hf(input_ids=ids).logits)
    assert lm.max_length == PRESETS["tiny"].max_length
    assert lm.fingerprint == fingerprint(tiny_lm, tiny_tokenizer)


def test_fingerprint_changes_with_weights(tiny_tokenizer) -> None:
    a, b = (
        build_lm("tiny", len(tiny_tokenizer), seed=0),
        build_lm("tiny", len(tiny_tokenizer), seed=1),
    )
    assert fingerprint(a, tiny_tokenizer) == fingerprint(
        build_lm("tiny", len(tiny_tokenizer)), tiny_tokenizer
    )
    assert fingerprint(a, tiny_tokenizer) != fingerprint(b, tiny_tokenizer)


def test_any_hf_causal_lm_loads_through_the_same_code(tmp_path: Path, tiny_tokenizer) -> None:
    # A Pythia-architecture model (GPT-NeoX), as someone would drop into a folder.
    cfg = GPTNeoXConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    GPTNeoXForCausalLM(cfg).save_pretrained(str(tmp_path))
    tiny_tokenizer.save_pretrained(str(tmp_path))
    lm = load_lm(tmp_path)
    assert lm.model.config.model_type == "gpt_neox" and lm.max_length == 64


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no model at"):
        load_lm(tmp_path / "absent")


def test_a_model_served_in_bfloat16_keeps_the_float32_fingerprint(
        tmp_path: Path, tiny_lm, tiny_tokenizer) -> None:
    tiny_lm.save_pretrained(str(tmp_path))
    tiny_tokenizer.save_pretrained(str(tmp_path))
    full = load_lm(tmp_path)
    half = load_lm(tmp_path, dtype=parse_dtype("bfloat16"))
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    # the fingerprint names the weights on disk: a float32-built datastore opens for both
    assert half.fingerprint == full.fingerprint
    ids = torch.tensor([tiny_tokenizer("And God said", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        a = full.model(input_ids=ids).logits
        b = half.model(input_ids=ids).logits.float()
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=0.1)


def test_dtype_names() -> None:
    assert parse_dtype("auto") is torch.float32
    assert parse_dtype("BF16") is torch.bfloat16 and parse_dtype("half") is torch.float16
    with pytest.raises(InvalidInputError, match="dtype must be one of"):
        parse_dtype("int4")
