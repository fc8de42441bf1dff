"""Served scoring under load: tokens per second of 16 concurrent scoring requests,
parametric against kNN-LM, with any model folder and datastores.

    OMP_NUM_THREADS=1 python bench/scoring_load.py --model MODEL --datastore STORE \
        [--datastore OTHER ...] [--corpus data/corpus/foldoc.jsonl.gz --skip 3000]
        [--tokens 400] [--logprobs 1] [--rounds 3] [--dtype float32 --dtype bfloat16]

The server is its own process per datastore (bench/served.py; one torch thread). The
texts are 16 documents of the corpus past the first `--skip` (not in a datastore built
from those), each cut to `--tokens` tokens; every client sends one as a scoring request
(`echo`, `max_tokens` 0, `logprobs`), all 16 at once, in each mode; modes interleaved
over `--rounds` rounds, medians, and kNN-LM against parametric within the run. Each
`--dtype` (SILO_DTYPE) is its own server, for every datastore.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from served import serve, stop  # noqa: E402

from silo.corpus.jsonl import read_corpus  # noqa: E402

CLIENTS = 16


def _texts(model: Path, corpus: Path, skip: int, tokens: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    out = []
    for doc in islice(read_corpus([corpus]), skip, None):
        ids = tok(doc.text, add_special_tokens=False)["input_ids"]
        if len(ids) >= tokens:
            out.append(list(ids[:tokens]))
        if len(out) == CLIENTS:
            return out
    raise SystemExit(f"{corpus}: fewer than {CLIENTS} documents of {tokens} tokens")


def _round(url: str, texts: list[list[int]], mode: str, logprobs: int) -> float:
    """Scored tokens per second of the texts sent at once, one client each."""
    made = [httpx.Client(base_url=url, timeout=600) for _ in texts]

    def one(i: int) -> None:
        made[i].post("/v1/completions", json={
            "prompt": texts[i], "max_tokens": 0, "echo": True, "logprobs": logprobs,
            "silo": {"mode": mode}}).raise_for_status()
    try:
        t = time.perf_counter()
        with ThreadPoolExecutor(len(texts)) as pool:
            list(pool.map(one, range(len(texts))))
        return sum(len(x) - 1 for x in texts) / (time.perf_counter() - t)
    finally:
        for c in made:
            c.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--datastore", type=Path, action="append", required=True)
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus/foldoc.jsonl.gz"))
    ap.add_argument("--skip", type=int, default=3000)
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--logprobs", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", action="append", default=None,
                    help="float32 (default), bfloat16 or float16; repeat for several")
    args = ap.parse_args()
    texts = _texts(args.model, args.corpus, args.skip, args.tokens)
    print(f"model {args.model}; {CLIENTS} concurrent requests of {args.tokens} tokens, "
          f"logprobs {args.logprobs}, {args.rounds} rounds, medians")
    print("| datastore | dtype | parametric tokens/s | kNN-LM tokens/s | kNN-LM / parametric |")
    print("|---|---|---:|---:|---:|")
    for store in args.datastore:
        for dtype in args.dtype or ["float32"]:
            p, k = _rates(args, store, dtype, texts)
            print(f"| {store} | {dtype} | {p:,.0f} | {k:,.0f} | {k / p:.2f}x |", flush=True)


def _rates(args: argparse.Namespace, store: Path, dtype: str,
           texts: list[list[int]]) -> tuple[float, float]:
    """Median parametric and kNN-LM tokens/s of one server, modes interleaved."""
    rates: dict[str, list[float]] = {"parametric": [], "knnlm": []}
    proc, url = serve(args.model, store, 1, 4 * CLIENTS * (args.rounds + 1) + 10,
                      torch_threads=1, dtype=dtype)
    try:
        _round(url, texts[:2], "knnlm", args.logprobs)  # warm up
        for _ in range(args.rounds):
            for mode in rates:
                rates[mode].append(_round(url, texts, mode, args.logprobs))
    finally:
        stop(proc)
    p, k = (statistics.median(v) for v in rates.values())
    return p, k


if __name__ == "__main__":
    main()
