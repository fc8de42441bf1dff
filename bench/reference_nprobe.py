"""How coarsely the reference may be probed: the reference search's cost and the margin's
quality at each nprobe, on the default datastore.

The weight from the margin (silo.relevance) needs one neighbour of the reference per kNN
position; the reference is probed at the nprobe it was built with. For each nprobe this
measures the search time (16 of the FOLDOC test tokens' own queries at a time, one
thread) and tunes the weight again from the distances to the reference at that nprobe
(`silo.relevance_tuning.tune_relevance` at the default's bounds, on --tune-tokens
validation tokens per domain, as `silo serve` tunes its default) and reports the test
split: the share of FOLDOC's gain kept and KJV, WordNet and the Python docs against the
LM alone.

    SILO_CACHE_DIR=/tmp/silo-cache OMP_NUM_THREADS=1 python bench/reference_nprobe.py
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from relevance import split_domains  # noqa: E402

from silo.cli.serve_cmd import (  # noqa: E402
    DOCUMENT_TOLERANCE,
    RELEVANCE_TOLERANCE,
    TUNE_TOKENS,
    default_datastore,
    default_reference,
)
from silo.lm import SiloLM, SiloOptions  # noqa: E402
from silo.relevance_tuning import tune_relevance  # noqa: E402
from silo.tuning import GridPoint, TargetScores, mixed_logprob, perplexity  # noqa: E402

OWN = "foldoc"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/silo-small"))
    ap.add_argument("--nprobes", default="8,4,2,1")
    ap.add_argument("--tokens", type=int, default=16384, help="Test tokens per domain.")
    ap.add_argument("--tune-tokens", type=int, default=TUNE_TOKENS)
    args = ap.parse_args()
    lm = SiloLM.from_dirs(args.model, default_datastore(args.model),
                          reference_dir=default_reference(args.model))
    assert lm.reference is not None and lm.reference.index is not None
    u = lm.uniform_defaults
    best = GridPoint(u.k, u.lam, u.temperature, 0.0)
    texts = {"valid": split_domains(lm, "valid", args.tune_tokens),
             "test": split_domains(lm, "test", args.tokens)}
    plain = {s: {d: lm.target_scores(q, SiloOptions("knnlm"), u.k) for d, q in t.items()}
             for s, t in texts.items()}
    # the reference searched as a datastore: its nearest distance is d_ref
    as_store = SiloLM(lm.model, lm.tokenizer, lm.reference)
    queries = np.concatenate([lm.runner.run_groups(
        [g for _, g in lm.contexts.plain_groups(texts["test"][OWN][:8])], 16)[1].numpy()])
    print("| nprobe | ms per 16 queries | beta | lambda | d0 | FOLDOC gain kept | "
          + " | ".join(f"{d} / LM" for d in texts["test"] if d != OWN) + " |")
    print("| --- " * (5 + len(texts["test"])) + "|")
    for nprobe in (int(x) for x in args.nprobes.split(",")):
        lm.reference.index.set_nprobe(nprobe)
        started = time.perf_counter()
        for at in range(0, len(queries) - 15, 16):
            lm.reference.knn_search(queries[at:at + 16], 1)
        ms = (time.perf_counter() - started) * 1e3 / (len(queries) // 16)
        scores: dict[str, dict[str, TargetScores]] = {
            s: {d: replace(x, baseline=as_store.target_scores(texts[s][d], SiloOptions("knnlm"),
                                                              1).distances[:, 0]
                           .astype(np.float64))
                for d, x in t.items()} for s, t in plain.items()}
        valid = scores["valid"]
        c = tune_relevance({OWN: valid[OWN]}, {d: x for d, x in valid.items() if d != OWN},
                           best, tolerance=RELEVANCE_TOLERANCE,
                           document_tolerance=DOCUMENT_TOLERANCE).choice
        ppl = {d: (perplexity(x.lm_logprob), perplexity(mixed_logprob(x, best.params)),
                   perplexity(mixed_logprob(x, c.params))) for d, x in scores["test"].items()}
        alone, one, weighted = ppl[OWN]
        kept = (math.log(alone) - math.log(weighted)) / (math.log(alone) - math.log(one))
        print(f"| {nprobe} | {ms:.2f} | {c.relevance_decay:g} | {c.lam} | "
              f"{c.relevance:.0f}{'' if c.relevance_margin else ' (not the margin)'} | "
              f"{kept:.1%} | " + " | ".join(f"{ppl[d][2] / ppl[d][0]:.3f}" for d in ppl
                                            if d != OWN) + " |", flush=True)


if __name__ == "__main__":
    main()
