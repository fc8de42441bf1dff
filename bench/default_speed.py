"""kNN-LM scoring speed at the default datastore size, against the parametric LM.

The default datastore is what `silo serve` builds on first start (the first 3000 FOLDOC
documents with the shipped `models/silo-small`). This compares its faiss-flat and
faiss IVF-PQ indexes on FOLDOC test documents that are not in the datastore, in one
run (interleaved rounds, medians), so the ratios hold.

    OMP_NUM_THREADS=1 python bench/default_speed.py --flat DIR --ivfpq DIR
"""

from __future__ import annotations

import argparse
import time
from itertools import islice
from pathlib import Path

import numpy as np

from datastore.store.datastore import Datastore
from silo.cli.serve_cmd import CORPUS, DEFAULT_DOCUMENTS
from silo.corpus.jsonl import read_corpus, split_of
from silo.evaluate import domain_sequences
from silo.lm import ScoreRequest, SiloConfig, SiloLM, SiloOptions, perplexity
from silo.model import load_lm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=Path("models/silo-small"))
    ap.add_argument("--flat", type=Path, required=True, help="faiss-flat default datastore")
    ap.add_argument("--ivfpq", type=Path, required=True, help="faiss-ivfpq, same documents")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    loaded = load_lm(args.model)
    stores = {n: Datastore.open(p, loaded.fingerprint, verify=False)
              for n, p in (("flat", args.flat), ("ivfpq", args.ivfpq))}
    lms = {n: SiloLM(loaded.model, loaded.tokenizer, s, SiloConfig(batch_size=16))
           for n, s in stores.items()}
    held_out = islice(read_corpus([CORPUS]), DEFAULT_DOCUMENTS, None)  # not in the store
    docs = (d for d in held_out if split_of(d.doc_id) == "test")
    lm = lms["flat"]
    seqs = domain_sequences(docs, lm.encode, lm.eos_id, args.tokens)["foldoc"]
    used = sum(len(s) - 1 for s in seqs)
    cases = [("parametric", "flat", SiloOptions("parametric"), None),
             ("knnlm, faiss-flat, k 1024", "flat", SiloOptions("knnlm", k=1024), None),
             ("knnlm, IVF-PQ, k 1024, nprobe 8", "ivfpq", SiloOptions("knnlm", k=1024), 8),
             ("knnlm, IVF-PQ, k 256, nprobe 4", "ivfpq", SiloOptions("knnlm", k=256), 4)]
    seconds: dict[str, list[float]] = {c[0]: [] for c in cases}
    ppl: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, which, opts, nprobe in cases:
            if nprobe is not None:
                stores[which].index.nprobe = nprobe  # type: ignore[union-attr]
            start = time.perf_counter()
            res = lms[which].score([ScoreRequest(s, options=opts) for s in seqs])
            seconds[name].append(time.perf_counter() - start)
            ppl[name] = perplexity([x for r in res for x in r.token_logprobs[1:]])
    base = used / float(np.median(seconds["parametric"]))
    print(f"entries: {len(stores['flat'].kv):,}; scored tokens: {used:,}; "
          f"defaults: {lms['flat'].defaults}")
    print("| mode | tokens/s | x parametric | perplexity |\n|---|---:|---:|---:|")
    for name, *_ in cases:
        rate = used / float(np.median(seconds[name]))
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f} | {ppl[name]:.1f} |")


if __name__ == "__main__":
    main()
