"""The faiss search alone on real kNN-LM queries: its cost against k, and faiss's
fast-scan `qbs2` (queries scanned together per list), for one or more datastores.

The queries are the LM-head inputs of the scored tokens of a domain's test documents,
captured by scoring them once (untimed). Each index is then searched with those queries,
in calls of `--chunk` queries (as scoring calls it), under the store's opt-out filter,
one thread; every setting is timed in `--rounds` interleaved rounds and the figure is the
median. For fast-scan indexes the results at each `qbs2` are compared with faiss's
default (11): the ids and distances must be identical.

    OMP_NUM_THREADS=1 python bench/fastscan_search.py --datastore runs/silo_table/full \\
        --datastore runs/silo_table/full-fs
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from silo_speed import ints  # bench/ is on the path when run as a script

from datastore.store.datastore import Datastore
from silo.corpus.jsonl import read_corpus, split_of
from silo.evaluate import domain_sequences
from silo.lm import ScoreRequest, SiloConfig, SiloLM, SiloOptions
from silo.model import load_lm


def capture_queries(lm: SiloLM, seqs: Sequence[Sequence[int]]) -> np.ndarray:
    """(n, dim) float32: the kNN queries of scoring `seqs` (one per predicted token)."""
    store = lm.datastore
    assert store is not None
    seen: list[np.ndarray] = []
    search = store.knn_search

    def record(q: np.ndarray, k: int, f: Any = None) -> tuple[np.ndarray, np.ndarray]:
        seen.append(np.array(q, np.float32))
        return search(q, k, f)

    store.knn_search = record  # type: ignore[method-assign]
    try:
        lm.score([ScoreRequest(s, options=SiloOptions("knnlm", k=16, pointers=0))
                  for s in seqs])
    finally:
        del store.knn_search
    return np.concatenate(seen)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/silo-small"))
    ap.add_argument("--datastore", type=Path, action="append", required=True)
    ap.add_argument("--corpus-dir", type=Path, default=Path("data/corpus"))
    ap.add_argument("--domain", default="gcide")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--ks", type=ints, default=[16, 1024, 2048, 3072, 4096])
    ap.add_argument("--qbs2", type=ints, default=[11, 2], help="fast-scan settings to time")
    ap.add_argument("--chunk", type=int, default=1024, help="queries per search call")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=Path("runs/fastscan_search.json"))
    args = ap.parse_args(argv)

    loaded = load_lm(args.model)
    stores = [Datastore.open(p, loaded.fingerprint, verify=False) for p in args.datastore]
    lm = SiloLM(loaded.model, loaded.tokenizer, stores[0], SiloConfig(batch_size=16))
    test = (d for d in read_corpus([args.corpus_dir / f"{args.domain}.jsonl.gz"])
            if split_of(d.doc_id) == "test")
    queries = capture_queries(lm, domain_sequences(test, lm.encode, lm.eos_id,
                                                   args.tokens)[args.domain])
    settings: list[tuple[Datastore, int, int]] = []
    for store in stores:
        fast = isinstance(store.index.index, faiss.IndexIVFFastScan)  # type: ignore[union-attr]
        settings += [(store, k, q) for k in args.ks for q in (args.qbs2 if fast else [0])]
    times: dict[int, list[float]] = {i: [] for i in range(len(settings))}
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for _ in range(args.rounds):
        for i, (store, k, qbs2) in enumerate(settings):
            index: Any = store.index.index  # type: ignore[union-attr]
            if qbs2:
                index.qbs2 = qbs2
            f = store.entry_filter()
            t0 = time.perf_counter()
            out = [store.index.search(queries[a:a + args.chunk], k, f)  # type: ignore[union-attr]
                   for a in range(0, len(queries), args.chunk)]
            times[i].append(time.perf_counter() - t0)
            results[i] = (np.concatenate([d for d, _ in out]), np.concatenate([j for _, j in out]))
    rows = []
    for i, (store, k, qbs2) in enumerate(settings):
        row: dict[str, Any] = {"datastore": str(store.folder), "backend": store.config.backend,
                               "k": k, "nprobe": store.config.nprobe, "qbs2": qbs2 or None,
                               "ms_per_query": 1000 * float(np.median(times[i])) / len(queries)}
        default = next((j for j, s in enumerate(settings)
                        if s[0] is store and s[1] == k and s[2] == 11), None)
        if qbs2 and default is not None:
            row["same_as_qbs2_11"] = bool(
                np.array_equal(results[i][1], results[default][1])
                and np.array_equal(results[i][0], results[default][0]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"queries": len(queries), "chunk": args.chunk,
                                     "domain": args.domain, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
