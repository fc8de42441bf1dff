"""The relevance weight on the default datastore: held-out text inside and outside its
domain, with the datastore at one weight everywhere and weighted by relevance.

Scores the test split of FOLDOC (documents past the ones the default datastore holds)
and of the pd+sw domains the datastore does not cover (KJV, WordNet, the Python docs)
through `SiloLM.score`, the path the server takes: the LM alone, kNN-LM at the tuned
lambda everywhere (`relevance` off) and kNN-LM with the tuned relevance weight (the
default). Reports NLL per token, perplexity, the ratio to the LM alone, and on the
datastore's own domain the share of the one-weight gain the weight keeps (in log
perplexity). Then the greedy continuation of a prompt outside the domain, both ways.

With --tolerances, the trade-off: for each tolerance the weight is tuned again on the
validation split (`silo.relevance_tuning.tune_relevance` at the stored k and tau, from the
grid's one-weight lambda; --tune-tokens per domain, as the default is tuned) and measured
on the test split (`silo.tuning.mixed_logprob`, the mixture SiloLM computes, on one
k-neighbour search per token): with the weight from each position alone (decay 0), from
the context's distance (the decay tuned too, silo.relevance), and from the context's
distance with each off-domain validation document also held within 1%, and from the
context's distance measured from the distance to the reference as well (the default:
silo.relevance; the tuner picks either way of measuring it).

The reference: the Python docs are about computing, as FOLDOC is, so their queries land
as near FOLDOC's keys as FOLDOC's own do, and no weight from the datastore's distance
alone tells the two apart well. What does is that the Python docs are the LM's own kind
of text (the pd+sw split it was trained on) and FOLDOC is not: the margin d_1 - d_ref
between the datastore's distance and the distance to a reference index over that text.

    SILO_CACHE_DIR=... python bench/relevance.py --tokens 4096 --tolerances 0,0.01,0.05
    python bench/relevance.py --datastore STORE --reference REF --model MODEL --tokens 4096
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from silo.cli.serve_cmd import (  # noqa: E402
    CORPUS,
    DEFAULT_DOCUMENTS,
    DOCUMENT_TOLERANCE,
    OFF_DOMAIN,
    TUNE_TOKENS,
)
from silo.corpus.jsonl import read_corpus, split_of  # noqa: E402
from silo.evaluate import domain_sequences  # noqa: E402
from silo.lm import GenerationRequest, ScoreRequest, SiloLM, SiloOptions  # noqa: E402
from silo.relevance_tuning import RELEVANCE_DECAYS, tune_relevance  # noqa: E402
from silo.tuning import GridPoint, mixed_logprob, perplexity  # noqa: E402

PROMPT = "The Lord said unto Moses,"


def nll(lm: SiloLM, seqs: list[tuple[int, ...]], options: SiloOptions) -> tuple[float, int]:
    """Total NLL (nats) and the number of tokens scored."""
    total, n = 0.0, 0
    for res in lm.score([ScoreRequest(s, options=options) for s in seqs]):
        lps = [x for x in res.token_logprobs[1:] if x is not None]
        total -= sum(lps)
        n += len(lps)
    return total, n


def split_domains(lm: SiloLM, split: str, tokens: int) -> dict[str, list[tuple[int, ...]]]:
    """Token sequences of FOLDOC past the default datastore's documents, then of the
    domains it does not cover, from one split."""
    own = (doc for doc in islice(read_corpus([CORPUS]), DEFAULT_DOCUMENTS, None)
           if split_of(doc.doc_id) == split)
    others = (doc for doc in read_corpus([p for p in OFF_DOMAIN if p.exists()])
              if split_of(doc.doc_id) == split)
    return {**domain_sequences(own, lm.encode, lm.eos_id, tokens),
            **domain_sequences(others, lm.encode, lm.eos_id, tokens)}


def trade_off(lm: SiloLM, test: dict[str, list[tuple[int, ...]]], tune_tokens: int,
              tolerances: list[float]) -> None:
    """The weight tuned again on validation text at each tolerance, measured on `test`:
    from each position alone, and from the context's distance."""
    valid = split_domains(lm, "valid", tune_tokens)
    u = lm.uniform_defaults
    k = u.k
    reference = lm.reference is not None
    scores = {split: {d: lm.target_scores(s, SiloOptions("knnlm"), k, reference=reference)
                      for d, s in doms.items()}
              for split, doms in (("valid", valid), ("test", test))}
    alone = {split: {d: replace(s, baseline=None) for d, s in doms.items()}
             for split, doms in scores.items()}  # the datastore's distance alone
    own = "foldoc"
    best = GridPoint(k, u.lam, u.temperature, 0.0)
    print(f"validation tokens: { {d: len(s.targets) for d, s in scores['valid'].items()} }")
    print("| tolerance | weight from | decay | lambda | d0 | T | FOLDOC ppl (LM, one weight, "
          "weighted) | gain kept | " + " | ".join(f"{d} / LM" for d in test if d != own) + " |")
    print("| --- " * (8 + len(test) - 1) + "|")
    variants = [("the position", alone, (0.0,), None),
                ("the context", alone, RELEVANCE_DECAYS, None),
                ("the context, each document", alone, RELEVANCE_DECAYS, DOCUMENT_TOLERANCE)]
    if reference:
        variants.append(("the context or its margin to the reference, each document",
                         scores, RELEVANCE_DECAYS, DOCUMENT_TOLERANCE))
    for tol in tolerances:
        for label, sc, decays, per_doc in variants:
            report = tune_relevance({own: sc["valid"][own]},
                                    {d: s for d, s in sc["valid"].items() if d != own},
                                    best, tolerance=tol, decays=decays,
                                    document_tolerance=per_doc)
            c = report.choice
            ppl = {d: (perplexity(s.lm_logprob), perplexity(mixed_logprob(s, best.params)),
                       perplexity(mixed_logprob(s, c.params)))
                   for d, s in sc["test"].items()}
            if c.relevance_margin:
                label += " (the margin)"
            lm_, one, w = ppl[own]
            kept = (math.log(lm_) - math.log(w)) / (math.log(lm_) - math.log(one))
            print(f"| {tol:g} | {label} | {c.relevance_decay:g} | {c.lam} | "
                  f"{c.relevance:.0f} | {c.relevance_temperature:.0f} | "
                  f"{lm_:.1f}, {one:.1f}, {w:.1f} | {kept:.1%} | "
                  + " | ".join(f"{ppl[d][2] / ppl[d][0]:.3f}" for d in test if d != own)
                  + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/silo-small"))
    ap.add_argument("--datastore", type=Path, default=None,
                    help="A datastore folder; default: the one `silo serve` builds.")
    ap.add_argument("--reference", type=Path, default=None,
                    help="A reference index (default: with the default datastore, the one "
                         "`silo serve` builds).")
    ap.add_argument("--tokens", type=int, default=4096, help="Test tokens per domain.")
    ap.add_argument("--split", default="test")
    ap.add_argument("--tolerances", default="",
                    help="Comma-separated tolerances to tune the weight at again.")
    ap.add_argument("--tune-tokens", type=int, default=TUNE_TOKENS,
                    help="Validation tokens per domain to tune the weight on again.")
    args = ap.parse_args()
    if args.datastore is None:
        from silo.cli.serve_cmd import default_datastore, default_reference

        args.datastore = default_datastore(args.model)
        args.reference = args.reference or default_reference(args.model)
    lm = SiloLM.from_dirs(args.model, args.datastore, reference_dir=args.reference)
    d = lm.defaults
    print(f"datastore {args.datastore}: k={d.k} lambda={d.lam} tau={d.temperature:g} "
          f"relevance d0={d.relevance} T={d.relevance_temperature:g} "
          f"decay={d.relevance_decay:g} margin={d.relevance_margin}")
    domains = split_domains(lm, args.split, args.tokens)
    settings = {"LM alone": SiloOptions("parametric"),
                "one weight": SiloOptions("knnlm", relevance=False),
                "weighted": SiloOptions("knnlm")}
    print("| domain | tokens | LM alone | one weight | weighted | one weight / LM | "
          "weighted / LM | gain kept |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, seqs in domains.items():
        got = {k: nll(lm, seqs, o) for k, o in settings.items()}
        n = got["LM alone"][1]
        per = {k: v[0] / v[1] for k, v in got.items()}
        ppl = {k: math.exp(v) for k, v in per.items()}
        gain = per["LM alone"] - per["one weight"]
        kept = f"{(per['LM alone'] - per['weighted']) / gain:.1%}" if gain > 0 else "-"
        print(f"| {name} | {n} | " + " | ".join(
            f"{per[k]:.3f} ({ppl[k]:.1f})" for k in settings) +
            f" | {ppl['one weight'] / ppl['LM alone']:.3f} | "
            f"{ppl['weighted'] / ppl['LM alone']:.3f} | {kept} |", flush=True)
    if args.tolerances:
        trade_off(lm, domains, args.tune_tokens,
                  [float(t) for t in args.tolerances.split(",")])
    ids = (lm.eos_id, *lm.encode(PROMPT))
    for label, options in settings.items():
        res = lm.generate(GenerationRequest(ids, max_tokens=24, temperature=0,
                                            options=options))
        print(f"{label}: {PROMPT!r} -> {res.choices[0].text!r}")


if __name__ == "__main__":
    main()
