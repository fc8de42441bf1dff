"""`silo tokenizer train`, `silo train`, `silo eval`, `silo generate`: the parametric LM
from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from datastore.errors import SiloError
from silo.cli.console import console, out
from silo.cli.corpus_cmd import CorpusArg, PolicyOpt

ModelOpt = Annotated[Path, typer.Option(help="A model folder (save_pretrained layout).")]


def _default_model() -> Path:
    from silo.model import DEFAULT_MODEL

    return DEFAULT_MODEL


def tokenizer_train(
    paths: CorpusArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Tokenizer folder.")],
    vocab_size: int = 8192,
    policy: PolicyOpt = "pd,sw",
) -> None:
    """Train a byte-level BPE tokenizer (HF format) on the corpus's train split."""
    from datastore.document import parse_policy
    from silo.corpus.jsonl import read_corpus, split_of
    from silo.tokenizer import train_tokenizer

    docs = (
        d.text
        for d in read_corpus(paths, parse_policy(policy) if policy else None)
        if split_of(d.doc_id) == "train"
    )
    tok = train_tokenizer(docs, vocab_size, out_dir)
    console.print(f"{len(tok)} tokens -> {out_dir}")


def train_cmd(
    config: Annotated[Path, typer.Option(help="A training config (TOML), see configs/.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Where the model is saved.")],
    resume: Annotated[bool, typer.Option(help="Continue from out/checkpoint if present.")] = True,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...; auto if unset.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Override the token budget.")] = None,
) -> None:
    """Train a Llama preset on licence-filtered text; saves with save_pretrained."""
    from silo.config import TrainConfig
    from silo.train import train

    cfg = TrainConfig.from_toml(config, max_tokens=max_tokens)
    summary = train(cfg, out_dir, resume=resume, device=device)
    history = summary["history"]
    last = history[-1] if isinstance(history, list) and history else {}
    console.print(
        f"saved {out_dir} after {summary['tokens']:,} tokens; "
        f"valid ppl {last.get('valid_ppl', float('nan')):.2f}"
    )


def eval_cmd(
    paths: CorpusArg,
    model: ModelOpt = Path(""),
    split: Annotated[str, typer.Option(help="train, valid, test or all.")] = "valid",
    policy: PolicyOpt = None,
    window: int = 512,
    stride: int = 256,
    batch_size: int = 8,
    max_tokens: Annotated[int | None, typer.Option(help="Tokens per domain at most.")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write results here.")
    ] = None,
) -> None:
    """Perplexity per domain (source) with sliding windows, as in SILO."""
    from datastore.document import parse_policy
    from silo.config import EvalConfig
    from silo.corpus.jsonl import SPLITS, read_corpus, split_of
    from silo.evaluate import evaluate_domains
    from silo.model import load_lm

    if split not in (*SPLITS, "all"):
        raise SiloError(f"--split must be one of {', '.join(SPLITS)} or all, got {split!r}")
    lm = load_lm(model if str(model) else _default_model())
    cfg = EvalConfig(window=min(window, lm.max_length), stride=stride, batch_size=batch_size)
    docs = (
        d
        for d in read_corpus(paths, parse_policy(policy) if policy else None)
        if split == "all" or split_of(d.doc_id) == split
    )
    results = evaluate_domains(lm.model, lm.tokenizer, docs, cfg, max_tokens, progress=True)
    table = Table("domain", "documents", "tokens", "perplexity")
    for r in results:
        table.add_row(r.domain, f"{r.documents:,}", f"{r.tokens:,}", f"{r.perplexity:.2f}")
    out.print(table)
    if json_out is not None:
        json_out.write_text(
            json.dumps(
                [
                    {
                        "domain": r.domain,
                        "documents": r.documents,
                        "tokens": r.tokens,
                        "perplexity": r.perplexity,
                    }
                    for r in results
                ],
                indent=2,
            )
        )


def generate_cmd(
    prompt: Annotated[str, typer.Argument(help="Text to continue.")],
    model: ModelOpt = Path(""),
    max_tokens: int = 64,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
) -> None:
    """Continue a prompt with the parametric LM alone."""
    import torch

    from silo.model import load_lm

    lm = load_lm(model if str(model) else _default_model())
    torch.manual_seed(seed)
    prompt_ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[lm.tokenizer.eos_token_id, *prompt_ids]])
    gen = lm.model.generate(  # type: ignore[operator]
        ids,
        max_new_tokens=max_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_p=top_p,
        pad_token_id=lm.tokenizer.pad_token_id,
    )
    text = lm.tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
    out.print(prompt + str(text))
