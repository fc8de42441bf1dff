"""SiloLM speed: scoring throughput per mode against parametric, and per-token generation
latency, all measured in one run so the ratios hold.

The datastore is the reproduction's (bench/silo_table.py: faiss IVF-PQ, tuned k, lam,
tau and pointer threshold stored with it). Measured: parametric; kNN-LM with the tuned
full search (a search at every token); with pointers (datastore.pointers) at a few
thresholds, and batched wider; and cheaper searches: a lower nprobe, k 256, IVF-PQ
without precomputed tables (to show what they give), each also with pointers. Each row
reports the share of tokens that needed a search and the perplexity change against the
tuned full search on the same tokens. With --flat-tokens the script also builds an
exact (faiss-flat) copy from the same stored keys, with no forward pass, and measures
kNN-LM over it on fewer tokens (a rate is a rate; exact search at this size is slow).
With --other the script also measures a copy of the datastore whose index was rebuilt
another way (`silo datastore reindex`, e.g. IVF-PQ fast-scan) and tuned on its own
(`silo tune`): its tuned full search, and cheaper searches over it, against the same
parametric and full-search rows.

    OMP_NUM_THREADS=1 python bench/silo_speed.py --model models/silo-small \
        --datastore runs/silo_table/full [--other runs/silo_table/full-fs]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from silo_table import load_domains  # bench/ is on the path when run as a script

from datastore.config import DatastoreConfig
from datastore.document import Document
from datastore.store.datastore import Datastore
from silo.corpus.jsonl import read_corpus, split_of
from silo.evaluate import domain_sequences
from silo.lm import (
    GenerationRequest,
    ScoreRequest,
    SiloConfig,
    SiloLM,
    SiloOptions,
    perplexity,
)
from silo.model import load_lm
from silo.ric import RicParams


class StoredKeys:
    """A KeyEncoder that returns the keys another datastore already holds for a
    document (found by its token ids), so a second index needs no forward pass."""

    def __init__(self, source: Datastore, tokenizer: Any, fingerprint: str,
                 docs: Sequence[Document]) -> None:
        self.source, self.tokenizer = source, tokenizer
        self.dim, self.fingerprint = source.kv.dim, fingerprint
        snap = source.snapshot
        self._rows = {tuple(self.tokenize(d.text)): snap.row_of[d.doc_id] for d in docs}

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(s), int(e)) for s, e in enc["offset_mapping"]]

    def encode(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        snap, out = self.source.snapshot, []
        for ids in batch:
            row = self._rows[tuple(ids)]
            keys = np.zeros((len(ids), self.dim), np.float32)  # the last row has no entry
            start, end = int(snap.entry_start[row]), int(snap.entry_end[row])
            keys[: end - start] = np.asarray(self.source.kv.keys[start:end], np.float32)
            out.append(keys)
        return out


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall-clock seconds of `repeat` calls (the first also warms caches), and the
    last call's result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result  # best of `repeat`; rounds in main() take the median


@dataclass(frozen=True)
class Case:
    """One measured variant: the model (its batch size), the options, the scored
    sequences and the index's search-time settings."""

    name: str
    model: SiloLM
    options: SiloOptions
    seqs: list[tuple[int, ...]]
    nprobe: int
    precomputed: bool = True  # IVF-PQ's precomputed distance tables (faiss default)


def set_search(store: Datastore, nprobe: int, precomputed: bool) -> None:
    """Search-time settings of the store's faiss index (no effect on faiss-flat)."""
    store.index.nprobe = nprobe  # type: ignore[union-attr]
    ivf: Any = ivf_of(store.index.index)  # type: ignore[union-attr]
    if isinstance(ivf, faiss.IndexIVFPQ):
        # 1: use the tables read_index computed; -1: recompute each list's table per query
        ivf.use_precomputed_table = 1 if precomputed else -1


def ivf_of(index: Any) -> Any:
    """The IVF index inside `index` as its own class (IndexIVFPQ), or None."""
    ivf = faiss.try_extract_index_ivf(index)
    return None if ivf is None else faiss.downcast_index(ivf)


def precomputed_tables(index: Any) -> dict[str, int]:
    """Whether IVF-PQ's precomputed tables are on as the index was read, and their size."""
    ivf = ivf_of(index)
    if not hasattr(ivf, "use_precomputed_table"):
        return {}
    return {"use_precomputed_table_after_read": int(ivf.use_precomputed_table),
            "precomputed_table_floats": int(ivf.precomputed_table.size())}


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def other_cases(lm: SiloLM, seqs: list[tuple[int, ...]], ks: Sequence[int],
                nprobes: Sequence[int], pointers: Sequence[int]) -> list[Case]:
    """The tuned full search over the reindexed store (its own tuned k, lam and tau),
    the same at other k, then cheaper searches: fewer probes, and pointers."""
    assert lm.datastore is not None
    name, probe = lm.datastore.config.backend, lm.datastore.config.nprobe
    knn = SiloOptions("knnlm", pointers=0)
    cases = [Case(f"knnlm, {name}, tuned search (k {lm.defaults.k})", lm, knn, seqs, probe)]
    cases += [Case(f"knnlm, {name}, k {k}", lm, SiloOptions("knnlm", k=k, pointers=0), seqs,
                   probe) for k in ks if k != lm.defaults.k]
    cases += [Case(f"knnlm, {name}, nprobe {n}", lm, knn, seqs, n) for n in nprobes]
    cases += [Case(f"knnlm, {name}, pointers {m}", lm, SiloOptions("knnlm", pointers=m), seqs,
                   probe) for m in pointers]
    return cases


def cases_for(args: argparse.Namespace, lm: SiloLM, lm_big: SiloLM, lm_flat: SiloLM | None,
              seqs: list[tuple[int, ...]], few: list[tuple[int, ...]], tuned_probe: int,
              ) -> list[Case]:
    """Parametric, tuned full search, the pointer thresholds, and cheaper searches (with
    and without pointers) that trade some perplexity or Python overhead for speed."""
    knn, m = SiloOptions("knnlm", pointers=0), lm.defaults.pointers or args.pointers[0]
    cases = [Case("parametric", lm, SiloOptions("parametric"), seqs, tuned_probe),
             Case("knnlm, tuned full search", lm, knn, seqs, tuned_probe),
             Case("knnlm, full search, no precomputed tables", lm, knn, seqs, tuned_probe,
                  precomputed=False)]
    cases += [Case(f"knnlm, pointers {p}", lm, SiloOptions("knnlm", pointers=p), seqs,
                   tuned_probe) for p in args.pointers]
    cases.append(Case(f"knnlm, pointers {m}, no precomputed tables", lm,
                      SiloOptions("knnlm", pointers=m), seqs, tuned_probe, precomputed=False))
    cases.append(Case(f"knnlm, pointers {m}, batch {lm_big.config.batch_size}", lm_big,
                      SiloOptions("knnlm", pointers=m), seqs, tuned_probe))
    for nprobe in args.nprobes:
        cases.append(Case(f"knnlm, nprobe {nprobe}", lm, knn, seqs, nprobe))
        cases.append(Case(f"knnlm, pointers {m}, nprobe {nprobe}", lm,
                          SiloOptions("knnlm", pointers=m), seqs, nprobe))
    cases.append(Case("knnlm, k 256", lm, SiloOptions("knnlm", k=256, pointers=0), seqs,
                      tuned_probe))
    cases.append(Case(f"knnlm, k 256, pointers {m}", lm,
                      SiloOptions("knnlm", k=256, pointers=m), seqs, tuned_probe))
    if args.nprobes:
        low = min(args.nprobes)
        cases.append(Case(f"knnlm, k 256, pointers {m}, nprobe {low}", lm,
                          SiloOptions("knnlm", k=256, pointers=m), seqs, low))
    if lm_flat is not None:
        cases.append(Case("knnlm, exact search", lm_flat, knn, few, tuned_probe))
    if args.ric:
        ric = RicParams(query_tokens=32, k=1, stride=4)
        cases.append(Case("ric", lm, SiloOptions("ric", ric=ric), seqs, tuned_probe))
        cases.append(Case("knnlm+ric, tuned full search", lm,
                          SiloOptions("knnlm+ric", ric=ric, pointers=0), seqs, tuned_probe))
    return cases


def measure(cases: list[Case], rounds: int, gen_tokens: int,
            prompt: tuple[int, ...]) -> list[dict[str, Any]]:
    """Rounds interleave the cases, and each figure is the median over rounds, so that
    load from other processes on the shared cores drifts onto every case alike."""
    score_s: dict[str, list[float]] = {c.name: [] for c in cases}
    gen_s: dict[str, list[float]] = {c.name: [] for c in cases}
    ppl: dict[str, float] = {}
    searched: dict[str, float] = {}
    for c in cases:  # untimed warm-up: the first calls page in the model and the indexes
        assert c.model.datastore is not None
        set_search(c.model.datastore, c.nprobe, c.precomputed)
        c.model.score([ScoreRequest(s, options=c.options) for s in c.seqs[:4]])
    for _ in range(rounds):
        for c in cases:
            assert c.model.datastore is not None
            set_search(c.model.datastore, c.nprobe, c.precomputed)
            before = (c.model.searches.searched, c.model.searches.positions)
            sec, scored = timed(partial(c.model.score, [ScoreRequest(s, options=c.options)
                                                        for s in c.seqs]))
            score_s[c.name].append(sec)
            done = c.model.searches.positions - before[1]
            searched[c.name] = (c.model.searches.searched - before[0]) / done if done else 0.0
            ppl[c.name] = perplexity([x for res in scored for x in res.token_logprobs[1:]])
            gen = GenerationRequest(prompt, max_tokens=gen_tokens, temperature=0,
                                    options=c.options)
            gen_s[c.name].append(timed(partial(c.model.generate, gen))[0])
    rows: list[dict[str, Any]] = []
    for c in cases:
        n_tokens = sum(len(s) - 1 for s in c.seqs)
        rows.append({"mode": c.name, "tokens": n_tokens, "nprobe": c.nprobe,
                     "k": c.options.k or c.model.defaults.k,
                     "score_tokens_per_s": n_tokens / float(np.median(score_s[c.name])),
                     "score_s_rounds": score_s[c.name], "perplexity": ppl[c.name],
                     "searched": searched[c.name],
                     "gen_ms_per_token": 1000 * float(np.median(gen_s[c.name])) / gen_tokens})
    base, base_gen = rows[0]["score_tokens_per_s"], rows[0]["gen_ms_per_token"]
    full = rows[1]["perplexity"]
    for r in rows:
        r["ratio"] = r["score_tokens_per_s"] / base
        r["gen_ratio"] = r["gen_ms_per_token"] / base_gen
        r["perplexity_change"] = r["perplexity"] / full - 1
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/silo-small"))
    ap.add_argument("--datastore", type=Path, default=Path("runs/silo_table/full"))
    ap.add_argument("--corpus-dir", type=Path, default=Path("data/corpus"))
    ap.add_argument("--domain", default="gcide", help="test documents to score")
    ap.add_argument("--tokens", type=int, default=4096, help="scored tokens per mode")
    ap.add_argument("--flat-tokens", type=int, default=0,
                    help="tokens scored with exact search (0: no exact case)")
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    ap.add_argument("--pointers", type=ints, default=[4, 8, 16],
                    help="pointer thresholds to measure")
    ap.add_argument("--nprobes", type=ints, default=[4, 8, 16],
                    help="cheaper nprobe values to measure")
    ap.add_argument("--big-batch", type=int, default=64,
                    help="sequences per pass for the batched pointer case")
    ap.add_argument("--ric", action="store_true", help="also measure RIC-LM modes")
    ap.add_argument("--other", type=Path, default=None,
                    help="a reindexed, retuned copy of --datastore to measure too")
    ap.add_argument("--other-ks", type=ints, default=[4096, 2048],
                    help="k values to measure on --other besides its tuned one")
    ap.add_argument("--other-nprobes", type=ints, default=[16, 24],
                    help="cheaper nprobe values to measure on --other")
    ap.add_argument("--other-pointers", type=ints, default=[32, 64],
                    help="pointer thresholds to measure on --other")
    ap.add_argument("--work", type=Path, default=Path("runs/silo_speed"))
    ap.add_argument("--json", type=Path, default=Path("runs/silo_speed/speed.json"))
    args = ap.parse_args(argv)

    loaded = load_lm(args.model)
    store = Datastore.open(args.datastore, loaded.fingerprint, verify=False)
    lm = SiloLM(loaded.model, loaded.tokenizer, store, SiloConfig(batch_size=16))
    lm_big = SiloLM(loaded.model, loaded.tokenizer, store,
                    SiloConfig(batch_size=args.big_batch), defaults=lm.defaults)
    lm_flat = None
    if args.flat_tokens:
        lm_flat = SiloLM(loaded.model, loaded.tokenizer, build_flat(args, store, loaded),
                         SiloConfig(batch_size=16), defaults=lm.defaults)
    test = (d for d in read_corpus([args.corpus_dir / f"{args.domain}.jsonl.gz"])
            if split_of(d.doc_id) == "test")
    seqs = domain_sequences(test, lm.encode, lm.eos_id, args.tokens)[args.domain]
    used = sum(len(s) - 1 for s in seqs)
    few = seqs[: max(1, len(seqs) * args.flat_tokens // max(1, used))]
    tuned_probe = store.config.nprobe
    tables = precomputed_tables(store.index.index)  # type: ignore[union-attr]
    cases = cases_for(args, lm, lm_big, lm_flat, seqs, few, tuned_probe)
    lm_other = None
    if args.other is not None:
        lm_other = SiloLM(loaded.model, loaded.tokenizer,
                          Datastore.open(args.other, loaded.fingerprint, verify=False),
                          SiloConfig(batch_size=16))
        cases += other_cases(lm_other, seqs, args.other_ks, args.other_nprobes,
                             args.other_pointers)
    rows = measure(cases, args.rounds, args.gen_tokens, seqs[0][:16])
    set_search(store, tuned_probe, True)
    out = {"entries": len(store.kv), "defaults": lm.defaults.__dict__, "domain": args.domain,
           "index": store.config.to_json(), "tables": tables,
           "torch_threads": torch.get_num_threads(), "faiss_threads": faiss.omp_get_max_threads(),
           "rows": rows}
    if lm_other is not None:
        other = lm_other.datastore
        assert other is not None
        out["other"] = {"path": str(args.other), "index": other.config.to_json(),
                        "entries_indexed": len(other.index),  # type: ignore[arg-type]
                        "defaults": lm_other.defaults.__dict__}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def build_flat(args: argparse.Namespace, store: Datastore, loaded: Any) -> Datastore:
    """An exact (faiss-flat) datastore with the same documents and keys as `store`."""
    path = args.work / "flat"
    if (path / "manifest.json").exists():
        return Datastore.open(path, loaded.fingerprint, verify=False)
    table = json.loads((args.datastore.parent / "results.json").read_text())
    docs, _ = load_domains(args.corpus_dir, list(table["every"]), table["every"])
    enc = StoredKeys(store, loaded.tokenizer, loaded.fingerprint, docs)
    config = DatastoreConfig(backend="faiss-flat", bm25=False, ngram=False,
                             encode_batch=256, flush_entries=262_144)
    return Datastore.build(path, docs, enc, config, progress=True)


if __name__ == "__main__":
    main()
