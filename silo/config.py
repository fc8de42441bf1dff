"""Typed configuration: Llama model presets and the training config read from TOML.

Presets are built from a config with no download. Sizes below are with the default
8192-token vocabulary and tied input/output embeddings.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from datastore.errors import InvalidInputError


@dataclass(frozen=True)
class ModelPreset:
    """Shape of a Llama decoder."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_length: int
    num_kv_heads: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value <= 0:
                raise InvalidInputError(f"{f.name} must be positive, got {value}")
        if self.hidden_size % self.num_heads:
            raise InvalidInputError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )


PRESETS: dict[str, ModelPreset] = {
    # ~0.1M parameters with a 512 vocabulary: for tests, trains in seconds.
    "tiny": ModelPreset(
        hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_length=128
    ),
    # ~1.7M parameters: small-scale experiments (minutes on a CPU).
    "mini": ModelPreset(
        hidden_size=128, num_layers=4, num_heads=4, intermediate_size=344, max_length=512
    ),
    # ~5M parameters: the shipped default, trainable on two CPU cores in about an hour.
    "small": ModelPreset(
        hidden_size=256, num_layers=4, num_heads=4, intermediate_size=688, max_length=512
    ),
    # ~34M parameters: a GPU-sized model (the scale of the reproduction in docs/).
    "base": ModelPreset(
        hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1376, max_length=1024
    ),
    # ~300M parameters: for a real accelerator budget.
    "large": ModelPreset(
        hidden_size=1024,
        num_layers=24,
        num_heads=16,
        intermediate_size=2816,
        max_length=2048,
        num_kv_heads=8,
    ),
}


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise InvalidInputError(f"model.preset: unknown preset {name!r}; choose from "
                                f"{sorted(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class TrainConfig:
    """Everything `silo train` needs; read with `TrainConfig.from_toml`."""

    preset: str = "small"
    corpus: tuple[str, ...] = ("data/corpus",)
    policy: str = "pd,sw"  # licence classes the weights may be trained on
    vocab_size: int = 8192
    tokenizer: str | None = None  # a saved tokenizer folder; trained from the corpus if None
    seq_len: int = 512
    batch_size: int = 16
    grad_accum: int = 1
    max_tokens: int = 7_000_000  # training budget, in tokens
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_tokens: int = 200_000
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 200  # optimizer steps
    eval_tokens: int = 65_536  # validation tokens per periodic evaluation
    checkpoint_every: int = 200
    valid_frac: float = 0.01
    test_frac: float = 0.01
    seed: int = 0
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU

    def __post_init__(self) -> None:
        get_preset(self.preset)
        for name in (
            "vocab_size",
            "seq_len",
            "batch_size",
            "grad_accum",
            "max_tokens",
            "eval_every",
            "checkpoint_every",
            "eval_tokens",
        ):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.min_lr <= self.lr:
            raise InvalidInputError(f"min_lr must be in (0, lr], got {self.min_lr}")
        if self.seq_len > get_preset(self.preset).max_length:
            raise InvalidInputError(
                f"seq_len {self.seq_len} exceeds the {self.preset} preset's "
                f"max_length {get_preset(self.preset).max_length}"
            )
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise InvalidInputError(f"dtype must be auto, fp32 or bf16, got {self.dtype!r}")
        if not self.corpus:
            raise InvalidInputError("corpus must name at least one file or folder")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len

    @property
    def total_steps(self) -> int:
        return max(1, self.max_tokens // self.tokens_per_step)

    @classmethod
    def from_toml(cls, path: Path, **overrides: Any) -> TrainConfig:
        """Read a config; keys may sit at top level or under [model], [data], [train]."""
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
        flat: dict[str, Any] = {}
        for key, value in raw.items():
            if isinstance(value, dict):
                flat.update(value)
            else:
                flat[key] = value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise InvalidInputError(f"{path}: unknown config keys {unknown}")
        flat.update({k: v for k, v in overrides.items() if v is not None})
        if "corpus" in flat:
            flat["corpus"] = tuple(
                [flat["corpus"]] if isinstance(flat["corpus"], str) else flat["corpus"]
            )
        return cls(**flat)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["corpus"] = list(self.corpus)
        return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class EvalConfig:
    """Sliding-window perplexity: windows of `window` tokens advancing by `stride`; every
    window after the first scores only its last `stride` tokens (SILO: 1024 and 512)."""

    window: int = 512
    stride: int = 256
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.window <= 0:
            raise InvalidInputError(f"window must be positive, got {self.window}")
        if not 0 < self.stride <= self.window:
            raise InvalidInputError(f"stride must be in (0, window], got {self.stride}")
        if self.batch_size <= 0:
            raise InvalidInputError(f"batch_size must be positive, got {self.batch_size}")
