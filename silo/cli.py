"""The `silo` command line: corpus, tokenizer, train, eval, generate (and datastore).

Commands are plain typed functions registered in one place at the bottom. Library
errors are printed as one line naming what went wrong, with exit code 2 and no
traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from datastore.errors import SiloError
from silo.console import clean_errors, console, out
from silo.inference_cmd import complete, tune
from silo.serve_cmd import serve

CorpusArg = Annotated[list[Path], typer.Argument(help="Corpus JSONL(.gz) files or folders.")]
PolicyOpt = Annotated[str | None, typer.Option(help="Licence classes to keep, e.g. pd,sw.")]
ModelOpt = Annotated[Path, typer.Option(help="A model folder (save_pretrained layout).")]


def _default_model() -> Path:
    from silo.model import DEFAULT_MODEL

    return DEFAULT_MODEL


# ---------------------------------------------------------------- corpus
def corpus_build(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where to write <source>.jsonl.gz.")
    ] = Path("data/corpus"),
    sources: Annotated[
        str | None, typer.Option(help="Comma-separated sources; all if unset.")
    ] = None,
    cache: Annotated[Path, typer.Option(help="Download/unpack folder.")] = Path("cache/debian"),
) -> None:
    """Build the local licensed corpus from Debian packages (needs apt-get and dpkg-deb)."""
    from silo.corpus import write_jsonl
    from silo.debian import SOURCES, fetch_packages, source_documents

    names = list(SOURCES) if sources is None else [s.strip() for s in sources.split(",")]
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise SiloError(f"unknown sources {unknown}; choose from {', '.join(SOURCES)}")
    for name in names:
        src = SOURCES[name]
        root = fetch_packages(src.packages, cache)
        n = write_jsonl(source_documents(src, root), out_dir / f"{name}.jsonl.gz")
        console.print(f"{name}: {n} documents ({src.license}) -> {out_dir / (name + '.jsonl.gz')}")


def corpus_stats(
    paths: CorpusArg,
    policy: PolicyOpt = None,
    strict: Annotated[bool, typer.Option(help="Fail on the first bad line.")] = False,
) -> None:
    """Documents, characters and licence class per source; bad lines are counted."""
    from datastore.document import parse_policy
    from silo.corpus import ReadReport, read_corpus

    report = ReadReport()
    rows: dict[tuple[str, str, str], list[int]] = {}
    pol = parse_policy(policy) if policy else None
    for doc in read_corpus(paths, pol, strict=strict, report=report):
        row = rows.setdefault((doc.source, doc.license, doc.license_class.value), [0, 0])
        row[0] += 1
        row[1] += len(doc.text)
    table = Table("source", "license", "class", "documents", "characters")
    for (source, lic, cls), (n, chars) in sorted(rows.items()):
        table.add_row(source, lic, cls, f"{n:,}", f"{chars:,}")
    out.print(table)
    if report.total_skipped:
        console.print(f"skipped {report.total_skipped} bad lines: {report.skipped}")
        for example in report.examples:
            console.print(f"  {example}")


def corpus_split(
    paths: CorpusArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")],
    policy: PolicyOpt = None,
    valid_frac: float = 0.01,
    test_frac: float = 0.01,
) -> None:
    """Filter by licence, drop exact duplicates, and write train/valid/test JSONL.gz."""
    from datastore.document import parse_policy
    from silo.corpus import SPLITS, dedup, read_corpus, split_of, write_jsonl

    docs = list(dedup(read_corpus(paths, parse_policy(policy) if policy else None)))
    for split in SPLITS:
        part = [d for d in docs if split_of(d.doc_id, valid_frac, test_frac) == split]
        n = write_jsonl(part, out_dir / f"{split}.jsonl.gz")
        console.print(f"{split}: {n} documents")


def corpus_olc(
    config: Annotated[str, typer.Argument(help="An OLC config, e.g. pd_law.")],
    out_file: Annotated[Path, typer.Option("--out", help="JSONL(.gz) to write.")],
    repo: Annotated[
        str, typer.Option(help="Hub id or a local folder with the same layout.")
    ] = "kernelmachine/open-license-corpus",
    limit: Annotated[int | None, typer.Option(help="Stop after N rows.")] = None,
) -> None:
    """Export one Open License Corpus configuration as corpus lines."""
    from silo.corpus import write_jsonl
    from silo.olc import olc_documents

    n = write_jsonl(olc_documents(config, repo=repo, limit=limit), out_file)
    console.print(f"{config}: {n} documents -> {out_file}")


# ---------------------------------------------------------------- model
def tokenizer_train(
    paths: CorpusArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Tokenizer folder.")],
    vocab_size: int = 8192,
    policy: PolicyOpt = "pd,sw",
) -> None:
    """Train a byte-level BPE tokenizer (HF format) on the corpus's train split."""
    from datastore.document import parse_policy
    from silo.corpus import read_corpus, split_of
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
    from silo.corpus import SPLITS, read_corpus, split_of
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


# ---------------------------------------------------------------- the table
app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="SILO: an LM whose weights hold no legal risk, plus an opt-out datastore.",
)
corpus_app = typer.Typer(no_args_is_help=True, help="Build, inspect and split corpora.")
tokenizer_app = typer.Typer(no_args_is_help=True, help="Train tokenizers.")
from silo.datastore_cmd import app as datastore_app  # noqa: E402

app.add_typer(datastore_app, name="datastore")
app.add_typer(corpus_app, name="corpus")
app.add_typer(tokenizer_app, name="tokenizer")


commands: list[tuple[typer.Typer, str, Callable[..., None]]] = [
    (corpus_app, "build", corpus_build),
    (corpus_app, "stats", corpus_stats),
    (corpus_app, "split", corpus_split),
    (corpus_app, "olc", corpus_olc),
    (tokenizer_app, "train", tokenizer_train),
    (app, "train", train_cmd),
    (app, "eval", eval_cmd),
    (app, "generate", generate_cmd),
    (app, "serve", serve),
    (app, "tune", tune),
    (app, "complete", complete),
]
for group, name, fn in commands:
    group.command(name)(clean_errors(fn))


def main() -> None:
    """Entry point (the `silo` script)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
