"""Several datastores in one request: one per domain (gcide, foldoc, vera), combined per
context by relevance, against each alone, one merged store, the MassiveDS merge and the
uniform combination, on each domain's test text and a mixed test set.

Stores: the first --docs train-split documents of each domain (doc-id split,
`silo.corpus.jsonl.split_of`), faiss IVF-PQ, and one merged store over all of them
built from the same keys (no second forward pass). Each store is tuned as `silo tune`
tunes it: the k, lambda, tau grid on its domain's validation text, then the relevance
weight against the validation text of the other two domains and of the pd+sw domains it
does not cover (KJV, WordNet, the Python docs), measured from the context's distance
or its margin to the reference `silo serve` builds (--reference, --no-reference), and
by default at the tolerances `silo serve` tunes its default at (0.25% pooled, 1% a
document; --relevance-tolerance, --no-document-bound), on --tune-tokens validation
tokens per domain. The merged store is tuned on all three
domains (`best_overall`). Measured on the test split, up to --tokens per domain, with
the mixtures SiloLM computes (`silo.knnlm`, `silo.combination`) over one search per
token and store:

    parametric      the LM alone
    <domain>        that domain's store alone, weighted by its relevance (and at one
                    weight everywhere: the gain on its own domain the weight keeps)
    merged          the one merged store at its tuned k, lambda, tau
    massiveds       the three stores' top k merged by raw distance (MassiveDS), one
                    kNN distribution at the merged store's parameters
    uniform         the combination with w_i = 1 / n, with either vote
                    (silo.combination: separate distributions, or one joint vote)
    weighted        the combination with each store's relevance weight, either vote
    tuned as a set  the same, tuned as `silo tune-set` tunes it on the three domains'
                    validation text (silo.set_tuning): with the separate vote alone,
                    the joint vote alone, and either vote with the pd+sw validation
                    text kept within the default's tolerances (`--off-domain`; stored
                    and served)

Besides the three domains' perplexities, each method's perplexity over the LM's on the
test split of the pd+sw text no store covers (KJV, WordNet, the Python docs).

    python bench/combination.py --docs 2000 --tokens 4096 --out runs/combination
    python bench/combination.py --ric --tokens 1024 --out runs/combination
    python bench/combination.py --speed --clients 16 --rounds 3 --out runs/combination
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from silo_table import CachedEncoder  # noqa: E402

from datastore.config import DatastoreConfig  # noqa: E402
from datastore.document import Document  # noqa: E402
from datastore.store.datastore import Datastore  # noqa: E402
from silo.corpus.jsonl import read_corpus, split_of  # noqa: E402
from silo.encoder import LMEncoder  # noqa: E402
from silo.model import load_lm  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
DOMAINS = ("gcide", "foldoc", "vera")
OFF = ("kjv", "wordnet", "pydoc")


def train_docs(name: str, n: int) -> list[Document]:
    return list(islice((d for d in read_corpus([CORPUS / f"{name}.jsonl.gz"])
                        if split_of(d.doc_id) == "train"), n))


def held_docs(name: str, split: str) -> list[Document]:
    return [d for d in read_corpus([CORPUS / f"{name}.jsonl.gz"]) if split_of(d.doc_id) == split]


def build_stores(out: Path, model: Path, docs_per_domain: int) -> dict[str, Path]:
    """One store per domain and the merged one (built once; reused when present)."""
    lm = load_lm(model)
    encoder = CachedEncoder(LMEncoder.from_loaded(lm, batch_size=16))
    config = DatastoreConfig(backend="faiss-ivfpq", nlist=512, m=64, nprobe=8, bm25=True,
                             ngram=False, encode_batch=64)
    paths, everything = {}, []
    for name in (*DOMAINS, "merged"):
        path = out / name
        paths[name] = path
        docs = everything if name == "merged" else train_docs(name, docs_per_domain)
        if name != "merged":
            everything += docs
        if (path / "manifest.json").exists() and '"ready"' in (path / "manifest.json").read_text():
            continue
        print(f"building {name}: {len(docs)} documents", flush=True)
        Datastore.build(path, docs, encoder, replace(config, name=name), progress=True).close()
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/silo-small"))
    ap.add_argument("--out", type=Path, default=Path("runs/combination"))
    ap.add_argument("--docs", type=int, default=2000, help="Train documents per domain.")
    ap.add_argument("--tokens", type=int, default=4096, help="Test tokens per domain.")
    ap.add_argument("--tune-tokens", type=int, default=16384,
                    help="Validation tokens per domain to tune on.")
    ap.add_argument("--relevance-tolerance", type=float, default=None,
                    help="Pooled off-domain bound (default: the default datastore's).")
    ap.add_argument("--no-document-bound", action="store_true",
                    help="Hold off-domain text to the pooled bound alone.")
    ap.add_argument("--reference", type=Path, default=None,
                    help="A reference index of the LM's own text the weights may be "
                         "measured from (default: the one `silo serve` builds).")
    ap.add_argument("--no-reference", action="store_true",
                    help="Measure the weights from the datastores' distances alone.")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--speed", action="store_true",
                    help="Only the served cost: three datastores against the largest alone.")
    ap.add_argument("--ric", action="store_true",
                    help="Only RIC-LM: each store alone, merged, and the two merge rules.")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    paths = build_stores(args.out, args.model, args.docs)
    if args.build_only:
        return
    if args.speed:
        speed(args, paths)
        return
    if args.ric:
        ric(args, paths)
        return
    evaluate(args, paths)


def ric(args: argparse.Namespace, paths: dict[str, Path]) -> None:
    """RIC-LM perplexity through `SiloLM.score` (top-1 block, query 32 tokens, a new
    retrieval every 4 tokens, as bench/silo_table.py): each store alone, the merged
    store, and the combination of the three with either merge rule."""
    from silo.evaluate import domain_sequences
    from silo.lm import ScoreRequest, SiloLM, SiloOptions
    from silo.ric import RicParams

    loaded = load_lm(args.model)
    lms = {n: SiloLM(loaded.model, loaded.tokenizer,
                     Datastore.open(paths[n], encoder_fingerprint=loaded.fingerprint))
           for n in (*DOMAINS, "merged")}
    base = lms["merged"]
    test = domain_sequences([d for n in DOMAINS for d in held_docs(n, "test")], base.encode,
                            base.eos_id, args.tokens)
    both = SiloLM.combine([(n, lms[n]) for n in DOMAINS])

    def nll(lm: SiloLM, seqs: list[tuple[int, ...]], options: SiloOptions) -> np.ndarray:
        res = lm.score([ScoreRequest(s, options=options) for s in seqs])
        return -np.array([x for r in res for x in r.token_logprobs[1:] if x is not None])

    settings = {"parametric": (base, SiloOptions("parametric"))}
    for n in (*DOMAINS, "merged"):
        settings[f"{n} store"] = (lms[n], SiloOptions("ric", ric=RicParams(32, 1, 4)))
    for rule in ("score", "quota"):
        settings[f"three, merged by {rule}"] = (
            both, SiloOptions("ric", ric=RicParams(32, 1, 4, merge=rule)))
    print("| RIC-LM | " + " | ".join(test) + " | mixed |")
    print("| --- " * (len(test) + 2) + "|")
    for label, (lm, options) in settings.items():
        per = {d: nll(lm, ss, options) for d, ss in test.items()}
        mixed = math.exp(np.concatenate(list(per.values())).mean())
        print(f"| {label} | " + " | ".join(f"{math.exp(v.mean()):.2f}" for v in per.values())
              + f" | {mixed:.2f} |", flush=True)


def speed(args: argparse.Namespace, paths: dict[str, Path]) -> None:
    """Served scoring requests from `clients` concurrent clients (128-token prompts of
    the domains' test text, echo with max_tokens 0), over the three datastores and over
    the largest alone, interleaved round by round in one server."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from served import serve, stop

    from datastore.manifest import read_manifest
    from silo.model import load_lm

    sizes = {n: read_manifest(paths[n]).indexed_upto for n in DOMAINS}
    largest = max(sizes, key=sizes.__getitem__)
    tok = load_lm(args.model).tokenizer
    prompts = [tok(d.text)["input_ids"][:128] for n in DOMAINS for d in held_docs(n, "test")
               if len(tok(d.text)["input_ids"]) >= 32][:args.clients * 4]
    listed = ",".join(f"{n}={paths[n]}" for n in DOMAINS)
    extra = {}
    if not args.no_reference:  # stores tuned with the margin need their reference
        from silo.cli.serve_cmd import default_reference

        extra["reference"] = args.reference or default_reference(args.model)
    proc, url = serve(args.model, paths[largest], threads=2, datastores=listed,
                      max_batch_size=16, **extra)
    try:
        def run(silo: dict[str, object]) -> float:
            def one(i: int) -> None:
                body = {"prompt": prompts[i % len(prompts)], "max_tokens": 0, "echo": True,
                        "logprobs": 0, "silo": {"mode": "knnlm", **silo}}
                r = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
                r.raise_for_status()

            n = args.clients * 4
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(one, range(n)))
            return n / (time.perf_counter() - started)

        settings = {f"{largest} alone": {"datastore": largest}, "all three": {"datastores": "all"}}
        for silo in settings.values():  # warm: open and page in every datastore
            run(silo)
        rates: dict[str, list[float]] = {k: [] for k in settings}
        for _ in range(args.rounds):
            for label, silo in settings.items():
                rates[label].append(run(silo))
        print(f"entries: {sizes}")
        for label, r in rates.items():
            print(f"{label}: requests/s per round {', '.join(f'{x:.2f}' for x in r)}")
        ratios = [a / b for a, b in zip(*rates.values(), strict=True)]
        print(f"cost of three / {largest} alone per round: "
              f"{', '.join(f'{x:.2f}x' for x in ratios)}")
    finally:
        stop(proc)


def evaluate(args: argparse.Namespace, paths: dict[str, Path]) -> None:

    from silo.cli.serve_cmd import DOCUMENT_TOLERANCE, RELEVANCE_TOLERANCE
    from silo.combination import VOTES

    pooled = RELEVANCE_TOLERANCE if args.relevance_tolerance is None else args.relevance_tolerance
    per_doc = None if args.no_document_bound else DOCUMENT_TOLERANCE
    from silo.evaluate import domain_sequences
    from silo.knnlm import KnnParams
    from silo.lm import SiloLM, SiloOptions
    from silo.set_tuning import choose, combined_logprob, write_set
    from silo.tuning import (
        Grid,
        TargetScores,
        mixed_logprob,
        tune_for,
        write_defaults,
    )

    loaded = load_lm(args.model)
    base = SiloLM(loaded.model, loaded.tokenizer)
    reference = None
    if not args.no_reference:
        from silo.cli.serve_cmd import default_reference

        reference = Datastore.open(args.reference or default_reference(args.model),
                                   encoder_fingerprint=loaded.fingerprint)

    def open_lm(path: Path) -> SiloLM:  # one model and reference for all, as served
        return SiloLM(loaded.model, loaded.tokenizer,
                      Datastore.open(path, encoder_fingerprint=loaded.fingerprint),
                      reference=reference)

    def seqs(names: Sequence[str], split: str, tokens: int) -> dict[str, list[tuple[int, ...]]]:
        docs = [d for n in names for d in held_docs(n, split)]
        return domain_sequences(docs, base.encode, base.eos_id, tokens)

    valid = seqs((*DOMAINS, *OFF), "valid", args.tune_tokens)
    test = seqs(DOMAINS, "test", args.tokens)
    test_off = seqs(OFF, "test", args.tokens)
    tuned: dict[str, KnnParams] = {}
    for name in (*DOMAINS, "merged"):
        lm = open_lm(paths[name])
        own = {d: valid[d] for d in (DOMAINS if name == "merged" else (name,))}
        off = None if name == "merged" else {d: s for d, s in valid.items() if d != name}
        best, points, report = tune_for(lm, own, off, Grid(), 0.0, pooled, per_doc)
        write_defaults(paths[name], best, {d: p[0] for d, p in points.items()},
                       note="bench/combination.py",
                       uniform=report.uniform_point if report else None)
        tuned[name] = best.params
        print(f"{name}: k={best.k} lambda={best.lam} tau={best.temperature:g} "
              f"relevance={best.relevance} T={best.relevance_temperature:g} "
              f"decay={best.relevance_decay:g} margin={best.relevance_margin}", flush=True)
    lms = {n: open_lm(paths[n]) for n in (*DOMAINS, "merged")}
    scores: dict[tuple[str, str], TargetScores] = {}
    for n, lm in lms.items():
        for d, ss in {**test, **test_off}.items():
            scores[(n, d)] = lm.target_scores(ss, SiloOptions("knnlm"), tuned[n].k,
                                              reference=tuned[n].margin)
    members = [tuned[n] for n in DOMAINS]
    plain = [KnnParams(p.k, p.lam, p.temperature) for p in members]
    # the combination tuned as a set on the validation text of its domains, as
    # `silo tune-set` tunes it (silo.set_tuning): with either vote, with both, and with
    # both keeping the pd+sw text within 1% of the LM (`silo tune-set --off-domain`)
    held = {d: [lms[n].target_scores(valid[d], SiloOptions("knnlm"), tuned[n].k,
                                     reference=tuned[n].margin)
                for n in DOMAINS] for d in (*DOMAINS, *OFF)}
    on = {d: held[d] for d in DOMAINS}
    sets = {"separate": choose(on, members, votes=("separate",)),
            "joint": choose(on, members, votes=("joint",)),
            "off": choose(on, members, {d: held[d] for d in OFF}, pooled,
                          document_tolerance=per_doc)}
    for label, rep in sets.items():
        print(f"tuned as a set ({label}): vote {rep.vote}, " + ", ".join(
            f"{n} lambda {p.lam} d0 {p.relevance:.0f} T {p.relevance_temperature:.0f} "
            f"decay {p.relevance_decay:g}{' margin' if p.relevance_margin else ''}"
            for n, p in zip(DOMAINS, rep.members, strict=True))
            + "".join(f", {d} {r:.3f}" for d, r in rep.off.items()), flush=True)
    as_set = list(sets["off"].members)

    def combined(d: str, params: Sequence[KnnParams], vote: str) -> np.ndarray:
        return combined_logprob([scores[(n, d)] for n in DOMAINS], params, vote)

    rows: dict[str, dict[str, np.ndarray]] = {}
    for d in (*test, *test_off):
        lm_side = scores[(DOMAINS[0], d)].lm_logprob
        out = {"parametric": lm_side}
        for n in (*DOMAINS, "merged"):
            out[n] = mixed_logprob(scores[(n, d)], tuned[n])
        for n in DOMAINS:  # at the grid's best without the weight, for the gain it keeps
            out[f"{n}, one weight"] = mixed_logprob(scores[(n, d)], lms[n].uniform_defaults)
        m = tuned["merged"]
        dist = np.concatenate([scores[(n, d)].distances for n in DOMAINS], 1)
        vals = np.concatenate([scores[(n, d)].values for n in DOMAINS], 1)
        order = np.argsort(np.where(vals >= 0, dist, np.inf), axis=1, kind="stable")[:, :m.k]
        merged_by_distance = TargetScores(lm_side, np.take_along_axis(dist, order, 1),
                                          np.take_along_axis(vals, order, 1),
                                          scores[(DOMAINS[0], d)].targets)
        out["massiveds"] = mixed_logprob(merged_by_distance, KnnParams(m.k, m.lam,
                                                                       m.temperature))
        for vote in VOTES[::-1]:
            out[f"uniform, {vote}"] = combined(d, plain, vote)
            out[f"weighted, {vote}"] = combined(d, members, vote)
        for label, rep in sets.items():
            out[f"tuned as a set, {label}"] = combined(d, rep.members, rep.vote)
        rows[d] = out
    methods = list(next(iter(rows.values())))
    print("| method | " + " | ".join(test) + " | mixed | "
          + " | ".join(f"{d} / LM" for d in test_off) + " |")
    print("| --- " * (len(test) + len(test_off) + 2) + "|")
    for meth in methods:
        ppl = [math.exp(-rows[d][meth].mean()) for d in test]
        mixed = math.exp(-np.concatenate([rows[d][meth] for d in test]).mean())
        ratio = [math.exp(rows[d]["parametric"].mean() - rows[d][meth].mean())
                 for d in test_off]
        print(f"| {meth} | " + " | ".join(f"{p:.2f}" for p in ppl) + f" | {mixed:.2f} | "
              + " | ".join(f"{r:.3f}" for r in ratio) + " |", flush=True)
    for n in DOMAINS:  # each store's weight against one weight, on its own domain
        lm_, one, w = (-rows[n][m].mean() for m in ("parametric", f"{n}, one weight", n))
        print(f"{n} store: the weight keeps {(lm_ - w) / (lm_ - one):.1%} of the gain of "
              "one weight everywhere on its own test text")
    # the served path: SiloLM.combine scoring the mixed test set equals the table's row
    both = SiloLM.combine([(n, lms[n]) for n in DOMAINS])
    from silo.lm import ScoreRequest

    def served(lm: SiloLM) -> np.ndarray:
        return np.array([x for d in test for r in lm.score(
            [ScoreRequest(s, options=SiloOptions("knnlm")) for s in test[d]])
            for x in r.token_logprobs[1:] if x is not None])

    for label, lm in ((f"weighted, {both.set_vote}", both), ("tuned as a set, off", None)):
        if lm is None:  # stored as `silo tune-set` stores it, then combined again
            for n, p in zip(DOMAINS, as_set, strict=True):
                write_set(paths[n], DOMAINS, p, sets["off"].vote)
            lm = SiloLM.combine([(n, open_lm(paths[n])) for n in DOMAINS])
        table = np.concatenate([rows[d][label] for d in test])
        got = served(lm)
        print(f"served {label} vs table: {len(got)} tokens, max |diff| "
              f"{np.abs(got - table).max():.2e}")
    # per split: the tokens scored and each method's summed NLL over them (nats), for
    # bench/three_domains.py to set the oracle and the reference beside
    json.dump({d: {"tokens": len(r["parametric"]),
                   "nll": {k: float(-v.sum()) for k, v in r.items()}} for d, r in rows.items()},
              open(args.out / "results.json", "w"), indent=2)


if __name__ == "__main__":
    main()
