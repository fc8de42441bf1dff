"""`silo train`, `silo eval` and `silo generate` run as a user would run them."""

import json
from pathlib import Path

import pytest

from tests.silo.cli.command import silo


@pytest.mark.slow
def test_train_tiny_preset_then_eval_and_generate(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    run = silo("train", "--config", "configs/tiny.toml", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "valid ppl" in run.stderr
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(str(out)).config.model_type == "llama"

    res = tmp_path / "eval.json"
    run = silo(
        "eval",
        "data/corpus/devil.jsonl.gz",
        "--model",
        str(out),
        "--split",
        "all",
        "--window",
        "64",
        "--stride",
        "32",
        "--max-tokens",
        "300",
        "--json",
        str(res),
    )
    assert run.returncode == 0, run.stderr
    [devil] = json.loads(res.read_text())
    assert devil["domain"] == "devil" and devil["tokens"] == 300 and 1 < devil["perplexity"] < 512

    run = silo("generate", "The Devil's Dictionary", "--model", str(out), "--max-tokens", "8")
    assert run.returncode == 0 and run.stdout.startswith("The Devil's Dictionary")
