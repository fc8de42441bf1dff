"""`silo train`: pretrain a Llama preset on the licence-filtered corpus.

AdamW with linear warmup and cosine decay, gradient accumulation, bf16 autocast on GPU,
periodic validation perplexity, checkpoint and resume. Batches are random windows whose
offsets depend only on (seed, step), so a resumed run sees exactly the batches an
uninterrupted one would. The result is written with `save_pretrained`, so any Hugging
Face tool loads it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from datastore.document import parse_policy
from datastore.errors import InvalidInputError
from silo.config import TrainConfig
from silo.corpus.jsonl import ReadReport, corpus_files, dedup, read_corpus, split_of
from silo.evaluate import Window, score_windows
from silo.model import build_lm
from silo.tokenizer import train_tokenizer
from silo.tokens import cached_stream

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
STATE = "trainer_state.json"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate before optimizer step `step` (0-based): linear warmup, then cosine
    from `lr` down to `min_lr` at the last step."""
    warmup = max(1, cfg.warmup_tokens // cfg.tokens_per_step)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, cfg.total_steps - warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def sample_batch(
    stream: np.ndarray, seq_len: int, batch_size: int, seed: tuple[int, ...]
) -> torch.Tensor:
    """(batch_size, seq_len + 1) int64 windows at offsets drawn from `seed`."""
    if len(stream) <= seq_len + 1:
        raise InvalidInputError(
            f"training stream has {len(stream)} tokens, fewer than seq_len + 2 = {seq_len + 2}"
        )
    rng = np.random.default_rng(list(seed))
    starts = rng.integers(0, len(stream) - seq_len - 1, size=batch_size)
    return torch.from_numpy(
        np.stack([stream[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    )


@torch.inference_mode()
def stream_nll(
    model: PreTrainedModel, stream: np.ndarray, seq_len: int, max_tokens: int, batch_size: int = 8
) -> float:
    """Mean next-token NLL over consecutive non-overlapping windows of the first
    `max_tokens` tokens of `stream` (a quick validation figure, not the eval protocol)."""
    n = min(len(stream) - 1, max_tokens) // seq_len
    if n == 0:
        return float("nan")
    flat = np.asarray(stream[: n * seq_len + 1]).tolist()
    windows = [Window(tuple(flat[j * seq_len : (j + 1) * seq_len + 1]), seq_len) for j in range(n)]
    total, count = score_windows(model, windows, batch_size)
    return total / count


@dataclass
class Streams:
    train: np.ndarray
    valid: np.ndarray
    report: ReadReport


def prepare_data(
    cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase | None, cache_dir: Path
) -> tuple[PreTrainedTokenizerBase, Streams]:
    """Read the corpus under the licence policy, dedup, split by id, train the tokenizer
    on the train split if none is given, and tokenize train and valid."""
    policy = parse_policy(cfg.policy)
    report = ReadReport()
    docs = list(dedup(read_corpus([Path(p) for p in cfg.corpus], policy, report=report)))
    if not docs:
        raise InvalidInputError(f"no documents with licence classes {cfg.policy} in "
                                f"{list(cfg.corpus)}")
    parts = {
        s: [d for d in docs if split_of(d.doc_id, cfg.valid_frac, cfg.test_frac) == s]
        for s in ("train", "valid")
    }
    if tokenizer is None:
        log.info("training a %d-token BPE on %d documents", cfg.vocab_size, len(parts["train"]))
        tokenizer = train_tokenizer((d.text for d in parts["train"]), cfg.vocab_size)
    files = [
        (str(f), f.stat().st_size, f.stat().st_mtime_ns)
        for f in corpus_files([Path(p) for p in cfg.corpus])
    ]
    key = {
        "files": files,
        "policy": cfg.policy,
        "valid": cfg.valid_frac,
        "test": cfg.test_frac,
        "tokenizer": tokenizer.backend_tokenizer.to_str(),
    }
    streams = {
        s: cached_stream(cache_dir, {**key, "split": s}, parts[s], tokenizer, s) for s in parts
    }
    return tokenizer, Streams(streams["train"], streams["valid"], report)


def _optimizer(model: PreTrainedModel, cfg: TrainConfig) -> torch.optim.AdamW:
    # No weight decay on norms and biases (1-D parameters), as is usual for transformers.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )


def _autocast(device: torch.device, cfg: TrainConfig) -> torch.autocast:
    use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


def save_checkpoint(
    out: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    opt: torch.optim.Optimizer,
    step: int,
    history: list[dict[str, float]],
) -> None:
    """Write model, tokenizer, optimizer and step to out/checkpoint atomically (tmp + rename)."""
    tmp = out / (CHECKPOINT + ".tmp")
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / STATE).write_text(json.dumps({"step": step, "history": history}))
    final = out / CHECKPOINT
    if final.exists():
        old = out / (CHECKPOINT + ".old")
        final.replace(old)
        tmp.replace(final)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        tmp.replace(final)


def train(
    cfg: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    device: str | None = None,
    cache_dir: Path | None = None,
    on_eval: Callable[[int, float], None] | None = None,
) -> dict[str, object]:
    """Train `cfg.preset` on `cfg.corpus` and save it to `out`; return the run summary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    step, history = 0, []
    tokenizer: PreTrainedTokenizerBase | None = None
    if resume and (ckpt / STATE).exists():
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
    elif cfg.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    tok, data = prepare_data(cfg, tokenizer, cache_dir or out / "cache")
    model: PreTrainedModel
    if resume and (ckpt / STATE).exists():
        model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32)
        state = json.loads((ckpt / STATE).read_text())
        step, history = state["step"], state["history"]
        log.info("resuming from step %d", step)
    else:
        specials = (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        model = build_lm(cfg.preset, len(tok), seed=cfg.seed, special_ids=specials)
    model.to(dev)  # type: ignore[arg-type]
    model.train()
    opt = _optimizer(model, cfg)
    if step and (ckpt / "optimizer.pt").exists():
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=dev))
    started, tokens_seen, last_ppl = time.perf_counter(), 0, float("nan")
    bar = tqdm(total=cfg.total_steps, initial=step, desc="training", unit="step")
    while step < cfg.total_steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            batch = sample_batch(
                data.train, cfg.seq_len, cfg.batch_size, (cfg.seed, step, micro)
            ).to(dev)
            with _autocast(dev, cfg):
                logits = model(input_ids=batch[:, :-1]).logits
            # Every one of the seq_len positions is scored against the next token.
            loss = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1)
            )
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.item() / cfg.grad_accum
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += cfg.tokens_per_step
        rate = tokens_seen / (time.perf_counter() - started)
        record: dict[str, float] = {"step": step, "loss": loss_sum, "tokens_per_s": rate}
        if step % cfg.eval_every == 0 or step == cfg.total_steps:
            model.eval()
            with _autocast(dev, cfg):
                vnll = stream_nll(model, data.valid, cfg.seq_len, cfg.eval_tokens)
            model.train()
            record["valid_ppl"] = math.exp(vnll)
            if on_eval is not None:
                on_eval(step, record["valid_ppl"])
        history.append(record)
        last_ppl = record.get("valid_ppl", last_ppl)
        bar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{rate:,.0f}", valid_ppl=f"{last_ppl:.1f}")
        bar.update(1)
        if step % cfg.checkpoint_every == 0 and step < cfg.total_steps:
            save_checkpoint(out, model, tok, opt, step, history)
    bar.close()
    model.eval()
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    summary: dict[str, object] = {
        "config": cfg.to_dict(),
        "steps": step,
        "tokens": step * cfg.tokens_per_step,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens_available": int(len(data.train)),
        "valid_tokens": int(len(data.valid)),
        "skipped_lines": data.report.skipped,
        "history": [h for h in history if "valid_ppl" in h],
    }
    (out / "silo_train.json").write_text(json.dumps(summary, indent=2))
    return summary
