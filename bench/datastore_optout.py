"""Opt-out latency until it takes effect, for datastores of 1e5, 1e6 and 1e7 entries.

For each size: build a synthetic store (exact backend: no index to train; the opt-out
path never touches the index), then time `optout(doc_ids=[one doc])` (tombstone in one
fsync'd SQLite transaction + filter swap: after it returns every search excludes the
document; the warm filters are carried over, their bitmaps patched, before it
returns), an opt-out by source (a tenth of the store), the one-off cost of building
the IDSelectorBitmap over all entries on a cold start, and what the next filtered
search still pays after the opt-outs. For comparison, faiss's own `remove_ids` of one document
from an IVF index of the same size (faiss issue #1021: 400 ms at 300M entries).

    python bench/datastore_optout.py --sizes 1e5,1e6,1e7
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
from datastore.store.datastore import Datastore  # noqa: E402

TOKENS_PER_DOC = 101  # 100 entries per document
DIM = 32


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _ivf_remove_ms(store: Datastore) -> float:
    """faiss remove_ids of one document's 100 ids from an IVF-Flat over the same keys."""
    n = len(store.kv)
    quantizer = faiss.IndexFlatL2(DIM)
    index = faiss.IndexIVFFlat(quantizer, DIM, 256)
    index.train(np.asarray(store.kv.keys[:20_000], np.float32))
    for s in range(0, n, 1 << 20):
        e = min(n, s + (1 << 20))
        index.add_with_ids(np.asarray(store.kv.keys[s:e], np.float32), np.arange(s, e))
    start = time.perf_counter()
    index.remove_ids(faiss.IDSelectorRange(5000, 5100))
    return time.perf_counter() - start


def run(size: int, root: Path, optouts: int) -> dict[str, str]:
    n_docs = size // (TOKENS_PER_DOC - 1)
    t0 = time.perf_counter()
    store = Datastore.build(root / f"s{size}", documents(n_docs, TOKENS_PER_DOC),
                            ClusterEncoder(DIM), DatastoreConfig(
                                backend="exact", ngram=False, bm25=False, flush_entries=1 << 20,
                                encode_batch=256, block_tokens=100_000), progress=False)
    build_s = time.perf_counter() - t0
    start = time.perf_counter()
    _ = store.entry_filter().allow_bitmap  # a first filtered search builds the bitmap once
    cold_bitmap = time.perf_counter() - start
    rng = np.random.default_rng(0)
    single = []
    for doc in rng.choice(n_docs, size=optouts, replace=False):
        start = time.perf_counter()
        store.optout(doc_ids=[f"d{doc}"])  # includes carrying the warm filter over
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    receipt = store.optout(source="src3")
    by_source = time.perf_counter() - start
    start = time.perf_counter()
    _ = store.entry_filter().allow_bitmap  # what the next filtered search still pays
    after = time.perf_counter() - start
    row = {"entries": f"{len(store.kv):.0e}", "build_s": f"{build_s:.1f}",
           "optout_1doc_median_ms": _ms(statistics.median(single)),
           "optout_1doc_max_ms": _ms(max(single)),
           "optout_source_ms": _ms(by_source), "source_docs": str(len(receipt.doc_ids)),
           "cold_bitmap_ms": _ms(cold_bitmap), "next_search_extra_ms": _ms(after),
           "faiss_ivf_remove_ids_ms": _ms(_ivf_remove_ms(store))}
    store.close()
    shutil.rmtree(root / f"s{size}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e5,1e6,1e7")
    parser.add_argument("--optouts", type=int, default=20)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (disk)")
    parser.add_argument("--threads", type=int, default=1,
                        help="faiss/torch threads (1: steady timings on a shared machine)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(dir=args.dir))
    rows = [run(int(float(s)), root, args.optouts) for s in args.sizes.split(",")]
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(row.values()) + " |")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
