"""kNN search latency and recall per backend, unfiltered and filtered, and bytes/entry.

One synthetic corpus (clustered keys, see datastore_synthetic.py) is built once per
backend with the same deterministic encoder, so entry ids agree across stores and
recall@k is measured against the exact backend. "filtered" is the licence policy
pd,sw,by (half the documents excluded), applied natively by each backend (mask in
exact, IDSelectorBitmap in faiss, an expression in Milvus).

    python bench/datastore_search.py --entries 200000 --dim 64
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from datastore_synthetic import ClusterEncoder, documents  # noqa: E402

from datastore.config import DatastoreConfig  # noqa: E402
from datastore.document import PERMISSIVE  # noqa: E402
from datastore.filter import SearchFilter  # noqa: E402
from datastore.store.datastore import Datastore  # noqa: E402

TOKENS_PER_DOC = 101


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want,
                                                                          strict=True)]))


def _timed(store: Datastore, q: np.ndarray, k: int, request: SearchFilter | None,
           ) -> tuple[np.ndarray, float, float]:
    """(ids of the batch search, ms/query batched, median ms of single-query calls)."""
    store.knn_search(q[:2], k, request)  # warm: filter, bitmap, caches
    start = time.perf_counter()
    _, ids = store.knn_search(q, k, request)
    batched = (time.perf_counter() - start) / len(q) * 1e3
    single = []
    for row in q[:30]:
        start = time.perf_counter()
        store.knn_search(row[None], k, request)
        single.append((time.perf_counter() - start) * 1e3)
    return ids, batched, statistics.median(single)


def _bytes(folder: Path, entries: int) -> tuple[float, float]:
    """(disk bytes/entry of keys+values+index, RAM bytes/entry of what search holds)."""
    kv = sum((folder / n).stat().st_size for n in ("keys.f16", "values.i32", "charpos.i32"))
    index = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()
                and (p.name == "index.faiss" or "milvus.db" in p.parts))
    ram = index if index else (folder / "keys.f16").stat().st_size  # exact: mmapped keys
    return (kv + index) / entries, ram / entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--backends", default="exact,faiss-flat,faiss-ivfpq,milvus")
    parser.add_argument("--threads", type=int, default=1,
                        help="faiss/torch threads (1: steady timings on a shared machine)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp())
    n_docs = args.entries // (TOKENS_PER_DOC - 1)
    ivf = {"nlist": 1024, "m": 16, "nbits": 8, "nprobe": 8}
    policy = SearchFilter(policy=PERMISSIVE)
    reference: dict[str, np.ndarray] = {}
    rows = []
    for backend in args.backends.split(","):
        config = DatastoreConfig(backend=backend, ngram=False, bm25=False, encode_batch=256,
                                 **ivf)  # type: ignore[arg-type]
        start = time.perf_counter()
        store = Datastore.build(root / backend, documents(n_docs, TOKENS_PER_DOC),
                                ClusterEncoder(args.dim), config, progress=False)
        build_s = time.perf_counter() - start
        rng = np.random.default_rng(1)
        keys = np.asarray(store.kv.keys[rng.choice(len(store.kv), args.queries)], np.float32)
        q = keys + 0.5 * rng.standard_normal(keys.shape).astype(np.float32)
        for name, request in (("none", None), ("pd,sw,by", policy)):
            ids, batched, single = _timed(store, q, args.k, request)
            reference.setdefault(name, ids)
            disk, ram = _bytes(root / backend, len(store.kv))
            rows.append([backend, name, f"{build_s:.1f}", f"{batched:.3f}", f"{single:.2f}",
                         f"{_recall(ids, reference[name]):.3f}", f"{disk:.0f}", f"{ram:.0f}"])
        store.close()
        shutil.rmtree(root / backend)
    print(f"entries={n_docs * (TOKENS_PER_DOC - 1)} dim={args.dim} k={args.k} "
          f"queries={args.queries} ivfpq={ivf}")
    print("| backend | filter | build s | ms/query (batch) | ms/query (single) | "
          f"recall@{args.k} vs exact | disk B/entry | RAM B/entry |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
