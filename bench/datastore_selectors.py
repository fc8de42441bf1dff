"""Which faiss IDSelector applies the entry filter cheapest, on IVF-PQ and Flat.

The filter excludes whole documents, i.e. ranges of entry ids. Candidates: a bitmap
over all ids (IDSelectorBitmap, what `EntryFilter.faiss_selector` builds), the
excluded ids in a hash set (IDSelectorNot(IDSelectorBatch)), and the allowed ids in a
hash set (IDSelectorBatch). Reported: time to build the selector, ms/query of a
200-query batch search, and the same without a selector.

    python bench/datastore_selectors.py --entries 200000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from datastore.filter import range_bitmap  # noqa: E402


def _time(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n, d = args.entries, args.dim
    keys = (rng.standard_normal((64, d)) * 2)[rng.integers(0, 64, n)] + rng.standard_normal(
        (n, d))
    keys = keys.astype(np.float32)
    queries = keys[rng.choice(n, 200)] + 0.5 * rng.standard_normal((200, d)).astype(np.float32)
    # documents of 100 entries; every other one excluded (a policy hiding half the store)
    starts = np.arange(0, n, 200, dtype=np.int64)
    ends = np.minimum(starts + 100, n)
    excluded = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
    allowed = np.setdiff1d(np.arange(n), excluded)
    ivf = faiss.IndexIVFPQ(faiss.IndexFlatL2(d), d, 1024, 16, 8)
    ivf.train(keys[:50_000])
    ivf.add(keys)
    flat = faiss.IndexFlatL2(d)
    flat.add(keys)
    print(f"entries={n} dim={d} excluded={len(excluded)} in {len(starts)} ranges "
          f"threads={args.threads}")
    print("| index | selector | build ms | ms/query |")
    print("|---|---|---|---|")
    selectors: list[tuple[str, Callable[[], Any]]] = [
        ("none", lambda: (None, None)),
        ("IDSelectorBitmap", lambda: (
            (bm := range_bitmap(starts, ends, n, inside=False)),
            faiss.IDSelectorBitmap(len(bm), faiss.swig_ptr(bm)))),
        ("Not(Batch(excluded))", lambda: (None, faiss.IDSelectorNot(
            faiss.IDSelectorBatch(len(excluded), faiss.swig_ptr(excluded))))),
        ("Batch(allowed)", lambda: (None, faiss.IDSelectorBatch(
            len(allowed), faiss.swig_ptr(allowed)))),
    ]
    for name, index in (("IVF-PQ nprobe 8", ivf), ("Flat", flat)):
        for sel_name, make in selectors:
            (keep, sel), build_ms = _time(make)
            params = faiss.SearchParametersIVF() if name.startswith("IVF") else \
                faiss.SearchParameters()
            if name.startswith("IVF"):
                params.nprobe = 8
            params.sel = sel
            index.search(queries[:5], 16, params=params)
            _, ms = _time(lambda index=index, params=params: index.search(
                queries, 16, params=params))
            print(f"| {name} | {sel_name} | {build_ms:.2f} | {ms / len(queries):.3f} |")
            del keep


if __name__ == "__main__":
    main()
