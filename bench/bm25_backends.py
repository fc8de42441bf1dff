"""Compare the BM25 backends: how far their top-k agree, and how fast each is.

Corpus: docstrings of the Python standard library on this machine (real English, PSF
licence, always present), cut into passages of at most 128 whitespace tokens
overlapping by 16. Queries: 12-word spans of random passages with every third word
dropped, so that they match several passages partly.

    python bench/bm25_backends.py --docs 500 --queries 300
    python bench/bm25_backends.py --docs 5000 --queries 300

Prints a markdown table; figures for docs/BENCHMARKS.md come from it.
"""

from __future__ import annotations

import argparse
import ast
import random
import re
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from datastore.blocks import Block, split_blocks
from datastore.bm25.base import BM25Index
from datastore.bm25.factory import create_bm25

T = TypeVar("T")


def stdlib_docstrings(limit: int, seed: int) -> list[tuple[str, str]]:
    """Up to `limit` (doc_id, text) pairs: stdlib docstrings of >= 200 characters."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                text = ast.get_docstring(node)
                if text and len(text) >= 200:
                    name = getattr(node, "name", "")
                    docs.append((f"{path.relative_to(root)}:{name}", text))
    random.Random(seed).shuffle(docs)
    return docs[:limit]


def to_blocks(docs: list[tuple[str, str]]) -> list[Block]:
    blocks: list[Block] = []
    for doc_id, text in docs:
        offsets = [m.span() for m in re.finditer(r"\S+", text)]
        for start, end in split_blocks(text, offsets, max_tokens=128, overlap=16):
            blocks.append(Block(len(blocks), doc_id, text[start:end], start, end))
    return blocks


def make_queries(blocks: list[Block], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    queries: list[str] = []
    while len(queries) < n:
        words = rng.choice(blocks).text.split()
        a = rng.randrange(max(len(words) - 12, 1))
        queries.append(" ".join(w for j, w in enumerate(words[a : a + 12]) if j % 3 != 2))
    return queries


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """fn(*args) and the seconds it took."""
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def allowed_in(docs: set[str]) -> Callable[[str], bool]:
    """A new allow(doc_id) function object over `docs`."""
    return lambda doc_id: doc_id in docs


def run_backend(
    name: str, blocks: list[Block], queries: list[str], k: int, folder: Path
) -> dict[str, Any]:
    index: BM25Index
    index, t_create = timed(create_bm25, name, folder / name)
    _, t_add = timed(index.add, blocks)
    _, t_first = timed(index.search, "warm up the index", k)  # bm25s builds lazily here
    for q in queries:  # untimed pass: the JVM compiles Lucene's hot paths on first use
        index.search(q, k)
    results, t_search = timed(lambda: [index.search(q, k) for q in queries])
    _, t_batch = timed(index.batch_search, queries, k)
    allowed = {b.doc_id for b in blocks[::2]}
    _, t_filtered = timed(lambda: [index.search(q, k, allowed.__contains__) for q in queries])
    # A new filter object per query: bm25s then works out the allowed blocks each time.
    _, t_cold = timed(lambda: [index.search(q, k, allowed_in(allowed)) for q in queries])
    index.close()
    return {
        "build_s": t_create + t_add + t_first,
        "ms_per_query": 1000 * t_search / len(queries),
        "ms_per_query_batch": 1000 * t_batch / len(queries),
        "ms_per_query_filtered": 1000 * t_filtered / len(queries),
        "ms_per_query_filtered_cold": 1000 * t_cold / len(queries),
        "hits": [[h.block_id for h in hs] for hs in results],
    }


def agreement(a: list[list[int]], b: list[list[int]], k: int) -> dict[str, float]:
    """Mean top-k overlap |A & B| / k, share of identical top-1 and of identical lists."""
    n = len(a)
    return {
        "overlap": sum(len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)) / n,
        "top1": sum(bool(x) and bool(y) and x[0] == y[0] for x, y in zip(a, b, strict=True)) / n,
        "identical": sum(x == y for x, y in zip(a, b, strict=True)) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", nargs="+", default=["bm25s", "lucene"])
    args = parser.parse_args()

    docs = stdlib_docstrings(args.docs, args.seed)
    blocks = to_blocks(docs)
    queries = make_queries(blocks, args.queries, args.seed + 1)
    print(f"{len(docs)} documents, {len(blocks)} passages, {len(queries)} queries, k={args.k}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {b: run_backend(b, blocks, queries, args.k, Path(tmp)) for b in args.backends}
    print(
        "\n| backend | build (s) | ms/query | ms/query (batch) | ms/query (filter 50%) "
        "| ms/query (filter 50%, new filter each query) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in runs.items():
        print(
            f"| {name} | {r['build_s']:.2f} | {r['ms_per_query']:.3f} | "
            f"{r['ms_per_query_batch']:.3f} | {r['ms_per_query_filtered']:.3f} | "
            f"{r['ms_per_query_filtered_cold']:.3f} |"
        )
    names = list(runs)
    for x, y in zip(names, names[1:], strict=False):
        agree = agreement(runs[x]["hits"], runs[y]["hits"], args.k)
        ratio = runs[y]["ms_per_query"] / runs[x]["ms_per_query"]
        print(
            f"\n{x} vs {y}: top-{args.k} overlap {agree['overlap']:.3f}, "
            f"same top-1 {agree['top1']:.3f}, identical top-{args.k} {agree['identical']:.3f}; "
            f"{y} takes {ratio:.1f}x the time per query of {x}"
        )


if __name__ == "__main__":
    main()
