"""`silo corpus build|stats|split|olc`: the licensed corpus from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from datastore.errors import SiloError
from silo.cli.console import console, out

CorpusArg = Annotated[list[Path], typer.Argument(help="Corpus JSONL(.gz) files or folders.")]
PolicyOpt = Annotated[str | None, typer.Option(help="Licence classes to keep, e.g. pd,sw.")]


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
    from silo.corpus.debian import SOURCES, fetch_packages, source_documents
    from silo.corpus.jsonl import write_jsonl

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
    from silo.corpus.jsonl import ReadReport, read_corpus

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
    from silo.corpus.jsonl import SPLITS, dedup, read_corpus, split_of, write_jsonl

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
    from silo.corpus.jsonl import write_jsonl
    from silo.corpus.olc import olc_documents

    n = write_jsonl(olc_documents(config, repo=repo, limit=limit), out_file)
    console.print(f"{config}: {n} documents -> {out_file}")
