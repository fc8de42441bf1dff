import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from silo.config import TrainConfig
from silo.corpus.jsonl import write_jsonl
from silo.train import lr_at, train


def tiny_config(corpus: Path, **kw) -> TrainConfig:
    base = TrainConfig(
        preset="tiny",
        corpus=(str(corpus),),
        policy="pd,sw,copyleft",
        vocab_size=300,
        seq_len=32,
        batch_size=4,
        max_tokens=32 * 4 * 24,
        lr=1e-2,
        min_lr=1e-3,
        warmup_tokens=32 * 4 * 2,
        eval_every=6,
        eval_tokens=256,
        checkpoint_every=6,
        valid_frac=0.2,
        test_frac=0.0,
    )
    return replace(base, **kw)


@pytest.fixture
def big_corpus(tmp_path: Path, documents) -> Path:
    # Repeat the fixture with distinct ids so both splits have text.
    docs = [replace(d, doc_id=f"{d.doc_id}-{i}") for i in range(6) for d in documents]
    path = tmp_path / "corpus.jsonl.gz"
    write_jsonl(docs, path)
    return path


def test_lr_schedule_warms_up_then_decays() -> None:
    cfg = TrainConfig(
        preset="tiny", seq_len=8, batch_size=1, max_tokens=800, lr=1.0, min_lr=0.1, warmup_tokens=80
    )
    assert cfg.total_steps == 100
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 99))


DEVIL = Path(__file__).resolve().parents[2] / "data" / "corpus" / "devil.jsonl.gz"


def test_tiny_model_trains_and_loss_falls(tmp_path: Path) -> None:
    # The Devil's Dictionary (public domain, shipped): enough text for held-out documents.
    summary = train(
        tiny_config(DEVIL, valid_frac=0.05, lr=3e-3, vocab_size=512), tmp_path / "out", device="cpu"
    )
    ppl = [h["valid_ppl"] for h in summary["history"]]
    # Uniform guessing over 512 tokens would be 512.
    assert len(ppl) == 4 and ppl[-1] < ppl[0] * 0.75 and ppl[-1] < 512 * 0.6
    saved = json.loads((tmp_path / "out" / "silo_train.json").read_text())
    assert saved["steps"] == 24 and (tmp_path / "out" / "model.safetensors").exists()


def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path, big_corpus: Path) -> None:
    cfg = tiny_config(big_corpus, max_tokens=32 * 4 * 12)
    train(cfg, tmp_path / "straight", device="cpu")

    class Interrupted(Exception):
        pass

    def stop_at_12(step: int, ppl: float) -> None:
        if step == 12:
            raise Interrupted

    with pytest.raises(Interrupted):  # dies after the step-6 checkpoint
        train(cfg, tmp_path / "resumed", device="cpu", on_eval=stop_at_12)
    assert (tmp_path / "resumed" / "checkpoint").exists()
    train(cfg, tmp_path / "resumed", device="cpu", resume=True)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seq_len"):
        TrainConfig(preset="tiny", seq_len=4096)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rate = 1\n")
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_toml(bad)
