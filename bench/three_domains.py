"""SILO's reproduction over three held-out domains, each its own datastore, against a
fair oracle and a web-trained reference: the section "Three held-out domains, each its
own datastore" of docs/RESULTS.md.

Step one is bench/combination.py's perplexity run. It builds and tunes one store per
domain (gcide, foldoc, vera) and a merged one, and scores every method on the test
split, writing each method's summed NLL per domain to runs/combination/results.json.
This step sets beside them, on exactly the same test tokens:

- the oracle, trained from scratch on everything (the copyleft domains included) with
  the parametric LM's shape, tokenizer, schedule and token budget
  (configs/small-20m-oracle.toml), and each method's share of the parametric-to-oracle
  gap, (ppl_param - ppl_method) / (ppl_param - ppl_oracle);
- bits per byte of the same text for every method, and for a reference model with
  another tokenizer (SmolLM2-135M-Instruct, web-trained, as Pythia is in SILO's Table 4).
  Each test sequence is one document (cut to the token budget at the last); its bytes
  are the UTF-8 bytes of its tokens decoded, which the reference scores after its own
  start token.

    python bench/combination.py --docs 2000 --tokens 4096 --out runs/combination
    python bench/three_domains.py --stores runs/combination \\
        --oracle runs/silo-small-20m-oracle --reference SMOLLM2_DIR

With --results, the section replaces the one of that name in the file (or is appended).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from bits_per_byte import nats_of  # noqa: E402
from combination import DOMAINS, held_docs  # noqa: E402
from silo_table import KEPT_SECTION as HEADING  # noqa: E402
from silo_table import gap_closed, load_oracle  # noqa: E402

from datastore.manifest import read_manifest  # noqa: E402
from silo.evaluate import domain_sequences  # noqa: E402
from silo.lm import SiloLM, SiloOptions  # noqa: E402
from silo.mode import Mode  # noqa: E402
from silo.model import load_lm  # noqa: E402

# results.json's method names -> the report's, in the report's order
METHODS = {
    "parametric": "parametric",
    "gcide": "gcide store alone",
    "foldoc": "foldoc store alone",
    "vera": "vera store alone",
    "merged": "one merged store",
    "massiveds": "MassiveDS (top k of the three by raw distance)",
    "uniform, joint": "combination, uniform",
    "weighted, separate": "combination, relevance-weighted (each store's own weights, as served)",
    "tuned as a set, joint": "combination, tuned as a set",
    "tuned as a set, off": "combination, tuned as a set, pd+sw within 1% (stored, served)",
}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    results = json.loads((args.stores / "results.json").read_text())
    loaded = load_lm(args.model)
    base = SiloLM(loaded.model, loaded.tokenizer)
    oracle_lm = load_oracle(args.oracle, loaded.tokenizer)
    docs = [d for n in DOMAINS for d in held_docs(n, "test")]
    test = domain_sequences(docs, base.encode, base.eos_id, args.tokens)
    reference = SiloLM.from_dirs(args.reference) if args.reference else None
    out: dict[str, Any] = {}
    for name, seqs in test.items():
        row = results[name]
        plain = base.target_scores(seqs, SiloOptions(Mode.PARAMETRIC), 0).lm_logprob
        if len(plain) != row["tokens"] or not math.isclose(
                -plain.sum(), row["nll"]["parametric"], rel_tol=1e-4):
            raise SystemExit(f"{name}: these test tokens are not the ones in "
                             f"{args.stores / 'results.json'} (rerun bench/combination.py "
                             "with the same --tokens)")
        nll = dict(row["nll"])
        nll["oracle"] = float(-oracle_lm.target_scores(seqs, SiloOptions(Mode.PARAMETRIC),
                                                       0).lm_logprob.sum())
        texts = [str(loaded.tokenizer.decode(list(s[1:]), clean_up_tokenization_spaces=False))
                 for s in seqs]
        if reference is not None:
            nll["reference"] = nats_of(reference, texts, SiloOptions(Mode.PARAMETRIC))
        out[name] = {"tokens": row["tokens"], "bytes": sum(len(t.encode()) for t in texts),
                     "documents": len(seqs), "nll": nll}
        print(name, json.dumps(out[name]), flush=True)
    out["entries"] = {n: read_manifest(args.stores / n).indexed_upto for n in (*DOMAINS, "merged")}
    out["models"] = {"parametric": str(args.model), "oracle": str(args.oracle),
                     "reference": str(args.reference) if args.reference else None}
    (args.stores / "three_domains.json").write_text(json.dumps(out, indent=2))
    return out


def report(r: dict[str, Any]) -> list[str]:
    names = [n for n in DOMAINS if n in r]
    total = {k: sum(r[n][k] for n in names) for k in ("tokens", "bytes")}

    def ppl(method: str, name: str | None) -> float:
        if name is None:
            return math.exp(sum(r[n]["nll"][method] for n in names) / total["tokens"])
        return math.exp(r[name]["nll"][method] / r[name]["tokens"])

    def bpb(method: str, name: str | None) -> float:
        over = names if name is None else [name]
        return (sum(r[n]["nll"][method] for n in over) / math.log(2)
                / sum(r[n]["bytes"] for n in over))

    cols: list[str | None] = [*names, None]
    lines = [
        "Produced by `python bench/combination.py --docs 2000 --tokens 4096 --out "
        "runs/combination`, then `python bench/three_domains.py --stores runs/combination "
        "--reference SMOLLM2_DIR --results docs/RESULTS.md` (the protocol is in their "
        "docstrings). One datastore per domain, each of the first train-split documents of "
        "its domain (" + ", ".join(f"{n} {r['entries'][n]:,}" for n in names)
        + f" entries; the merged store {r['entries']['merged']:,}), faiss IVF-PQ, each "
        "tuned as `silo tune --off-domain` tunes it; the set tuned as `silo tune-set` "
        "tunes it on the three domains' validation text. Perplexity on the test split; "
        "the mixed set is the three together. The oracle (`" + r["models"]["oracle"]
        + "`) is trained from scratch on everything, the copyleft domains included, with "
        "the parametric LM's shape, tokenizer, schedule, seed and token budget "
        "(configs/small-20m-oracle.toml). In brackets: the share of the gap closed, "
        "(ppl_param - ppl_method) / (ppl_param - ppl_oracle).",
        "",
        "| method | " + " | ".join(f"{n} ({r[n]['tokens']:,} tokens)" for n in names)
        + f" | mixed ({total['tokens']:,}) |",
        "| --- " + "| ---: " * len(cols) + "|"]
    for method, label in [*METHODS.items(), ("oracle", "oracle (trained on everything)")]:
        cells = []
        for c in cols:
            p = ppl(method, c)
            share = gap_closed(ppl("parametric", c), p, ppl("oracle", c))
            cells.append(f"{p:.1f}" if method in ("parametric", "oracle")
                         else f"{p:.1f} ({share:.0%})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ratio = {n: ppl("oracle", n) / ppl("parametric", n) for n in names}
    above = [n for n, v in ratio.items() if v > 1 / 3]
    knn_gap = {n: gap_closed(ppl("parametric", n), ppl(n, n), ppl("oracle", n)) for n in names}
    lines += ["", "The oracle's perplexity over the parametric LM's (at most 1/3 counts as "
              "having learned the domain): " + ", ".join(f"{n} {v:.3f}" for n, v in ratio.items())
              + (f"; above 1/3 on {', '.join(above)}." if above else
                 ": it has learned every domain."),
              "Each domain's store alone closes " + ", ".join(
                  f"{v:.0%} ({n})" for n, v in knn_gap.items())
              + " of its domain's gap (goal: at least 100% on every domain).", "",
              "Bits per byte of the same text (" + ", ".join(
                  f"{n} {r[n]['bytes']:,} bytes in {r[n]['documents']} documents"
                  for n in names) + "):", "",
              "| model | " + " | ".join(names) + " | all three |",
              "| --- " + "| ---: " * len(cols) + "|"]
    rows: list[tuple[str, str | None]] = [
        ("silo-small alone", "parametric"),
        ("silo-small + its domain's store alone", None),
        ("silo-small + one merged store", "merged"),
        ("silo-small + the three stores, as served", "tuned as a set, off"),
        ("silo-small + the three stores, tuned as a set", "tuned as a set, joint"),
        ("oracle alone", "oracle")]
    if all("reference" in r[n]["nll"] for n in names):
        rows.append(("SmolLM2-135M-Instruct alone (web-trained reference)", "reference"))
    for label, key in rows:
        if key is None:  # each domain's own store; "all three": the three together
            nats = [r[n]["nll"][n] for n in names]
            rates = [nats[i] / math.log(2) / r[n]["bytes"] for i, n in enumerate(names)]
            rates.append(sum(nats) / math.log(2) / total["bytes"])
        else:
            rates = [bpb(key, c) for c in cols]
        lines.append(f"| {label} | " + " | ".join(f"{x:.3f}" for x in rates) + " |")
    if rows[-1][1] == "reference":
        best = {c: min(bpb(k, c) for k in METHODS if k != "parametric") for c in cols}
        lines += ["", "The licensed LM with the best of these datastore settings against the "
                  "reference, bits per byte: " + ", ".join(
                      f"{c or 'all three'} {best[c]:.3f} against {bpb('reference', c):.3f}"
                      for c in cols) + " (goal: at or below the reference)."]
    return lines


def write_section(path: Path, body: list[str]) -> None:
    """Replace the section under HEADING (up to the next heading of its level) with
    `body`, or append it."""
    old = path.read_text().splitlines() if path.exists() else []
    start = old.index(HEADING) if HEADING in old else len(old)
    end = next((i for i in range(start + 1, len(old)) if old[i].startswith("## ")), len(old))
    gap_before = [""] if start == len(old) and old and old[-1].strip() else []
    new = old[:start] + gap_before + [HEADING, "", *body, ""] + old[end:]
    path.write_text("\n".join(new).rstrip("\n") + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/silo-small"))
    ap.add_argument("--stores", type=Path, default=Path("runs/combination"))
    ap.add_argument("--oracle", type=Path, default=Path("runs/silo-small-20m-oracle"))
    ap.add_argument("--reference", type=Path, default=None,
                    help="a model folder with its own tokenizer (e.g. SmolLM2-135M)")
    ap.add_argument("--tokens", type=int, default=4096,
                    help="test tokens per domain: the same as bench/combination.py's")
    ap.add_argument("--results", type=Path, default=None,
                    help="write the section into this file (e.g. docs/RESULTS.md)")
    ap.add_argument("--report-only", action="store_true",
                    help="report the stores folder's three_domains.json again")
    args = ap.parse_args(argv)
    if args.report_only:
        r = json.loads((args.stores / "three_domains.json").read_text())
    else:
        r = measure(args)
    lines = report(r)
    print("\n".join(lines))
    if args.results is not None:
        write_section(args.results, lines)


if __name__ == "__main__":
    main()
