"""The parametric LM: build a Llama from a preset, load any HF causal LM from a folder,
and fingerprint it.

Nothing here downloads: `build_lm` makes a randomly initialised `LlamaForCausalLM` from
a config, and `load_lm` reads a local folder written by `save_pretrained` (ours, or a
Pythia or any other causal LM someone put there).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from datastore.errors import InvalidInputError, NotFoundError
from silo.config import get_preset

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "silo-small"


def llama_config(
    preset: str, vocab_size: int, special_ids: tuple[int | None, int | None, int | None] = (0, 1, 2)
) -> LlamaConfig:
    """A Llama config for a named preset; small models tie input and output embeddings
    (at 5M parameters the embedding table is 40% of the model)."""
    p = get_preset(preset)
    bos_id, eos_id, pad_id = special_ids
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=p.hidden_size,
        intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_layers,
        num_attention_heads=p.num_heads,
        num_key_value_heads=p.num_kv_heads or p.num_heads,
        max_position_embeddings=p.max_length,
        rms_norm_eps=1e-5,
        tie_word_embeddings=p.hidden_size < 1024,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )


def build_lm(
    preset: str,
    vocab_size: int,
    seed: int = 0,
    special_ids: tuple[int | None, int | None, int | None] = (0, 1, 2),
) -> LlamaForCausalLM:
    """A randomly initialised Llama of the given preset (deterministic for a seed);
    `special_ids` are the tokenizer's (bos, eos, pad) ids."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(preset, vocab_size, special_ids))


@dataclass
class LoadedLM:
    """A causal LM with its tokenizer, as loaded from a folder."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: Path
    fingerprint: str

    @property
    def max_length(self) -> int:
        return context_length(self.model, self.tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def context_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The model's context in tokens, from whichever field its config uses."""
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return min(int(tokenizer.model_max_length), 2048)


def fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 over config, tokenizer vocabulary and merges, and every weight tensor.
    Keys made by one model are meaningless to another, so the datastore records this."""
    h = hashlib.sha256()
    cfg = model.config.to_dict()
    for volatile in (
        "transformers_version",
        "_name_or_path",
        "torch_dtype",
        "dtype",
        "architectures",
        "use_cache",
    ):
        cfg.pop(volatile, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(
        (
            backend.to_str()
            if backend is not None
            else json.dumps(tokenizer.get_vocab(), sort_keys=True)
        ).encode()
    )
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


DTYPES = {"auto": torch.float32, "float32": torch.float32, "fp32": torch.float32,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    """A serving dtype by name, as vLLM's `--dtype` takes it; auto is float32 (the keys of
    every datastore are computed in float32)."""
    try:
        return DTYPES[name.strip().lower()]
    except KeyError:
        raise InvalidInputError(f"dtype must be one of {', '.join(DTYPES)}; got {name!r}"
                                ) from None


def load_lm(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedLM:
    """Load a causal LM and its tokenizer from a local folder, in eval mode, its weights
    cast to `dtype`. The fingerprint is that of the float32 weights whatever the dtype:
    it names the model on disk, so a datastore built in float32 serves a bfloat16 model
    of the same weights (its queries are rounded; its keys and filter are not)."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise NotFoundError(
            f"no model at {folder}: expected a folder written by "
            "save_pretrained (config.json, weights, tokenizer files)"
        )
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    weights = fingerprint(model, tokenizer)
    model.to(device=device, dtype=dtype)  # type: ignore[call-arg]
    model.eval()
    return LoadedLM(model=model, tokenizer=tokenizer, path=folder, fingerprint=weights)
