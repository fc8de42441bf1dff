"""Bits per byte on held-out text: the licensed LM alone and with its datastore (kNN-LM),
against a reference model with another tokenizer (SmolLM2-135M, web-trained), as SILO's
Table 4 sets Pythia beside its model. Perplexities of different tokenizers do not
compare; bits per byte of the same text do.

    python bench/bits_per_byte.py --corpus data/corpus/gcide.jsonl.gz \
        --datastore runs/gcide25k-fs --reference SMOLLM2_DIR [--docs 100] [--chars 2000]

The texts are the last `--docs` test-split documents of the corpus (so none is in a
datastore built from its train split), each cut to `--chars` characters at a space.
Every model scores the same texts after its own start token (`<|endoftext|>` where the
vocabulary has it, else BOS, else EOS), through
`SiloLM.score` with its sliding windows; bits per byte = the summed -log2 p of every
token of the text over its UTF-8 bytes.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from silo.corpus.jsonl import read_corpus, split_of  # noqa: E402

if TYPE_CHECKING:
    from silo.lm import SiloLM
    from silo.request import SiloOptions

# SmolLM2's document separator in pretraining (its GGUF names <|im_start|> as BOS)
SEPARATOR = "<|endoftext|>"


def texts_of(corpus: Path, docs: int, chars: int) -> list[str]:
    """The last `docs` test-split documents, each cut to about `chars` characters."""
    out = [d.text for d in read_corpus([corpus]) if split_of(d.doc_id) == "test"]
    cut = [t if len(t) <= chars else t[:chars].rsplit(" ", 1)[0] for t in out[-docs:]]
    return [t for t in cut if t.strip()]


def bits_per_byte(model: Path, datastore: Path | None, mode: str, texts: list[str],
                  k: int | None = None, lam: float | None = None,
                  index_reference: Path | None = None) -> float:
    from silo.lm import SiloLM
    from silo.request import SiloOptions

    lm = SiloLM.from_dirs(model, datastore, reference_dir=index_reference)
    nats = nats_of(lm, texts, SiloOptions(mode=mode, k=k, lam=lam))
    return nats / math.log(2) / sum(len(t.encode()) for t in texts)


def start_token(tok: Any) -> int:
    """The token a document follows: `<|endoftext|>` where the vocabulary has it, else
    BOS, else EOS."""
    start = tok.get_vocab().get(SEPARATOR, tok.bos_token_id)
    return tok.eos_token_id if start is None else int(start)


def nats_of(lm: SiloLM, texts: list[str], options: SiloOptions) -> float:
    """The summed -ln p of every token of each text, after the model's start token."""
    from silo.request import ScoreRequest

    start = start_token(lm.tokenizer)
    requests = [ScoreRequest((start, *lm.encode(t)), options=options) for t in texts]
    nats = 0.0
    for at in range(0, len(requests), 16):
        for res in lm.score(requests[at:at + 16]):
            nats -= sum(lp for lp in res.token_logprobs[1:] if lp is not None)
    return nats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    ap.add_argument("--datastore", type=Path, default=None)
    ap.add_argument("--reference", type=Path, default=None,
                    help="another model folder, scored alone (e.g. SmolLM2-135M)")
    ap.add_argument("--index-reference", type=Path, default=None,
                    help="the reference index of the model's own text, for a datastore "
                         "whose relevance weight is measured from it (silo tune --reference)")
    ap.add_argument("--k", type=int, default=None, help="kNN-LM's k; default: the tuned one")
    ap.add_argument("--lam", type=float, default=None, help="kNN-LM's lambda; default: tuned")
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--chars", type=int, default=2000)
    args = ap.parse_args()

    from silo.model import DEFAULT_MODEL

    model = args.model or DEFAULT_MODEL
    texts = texts_of(args.corpus, args.docs, args.chars)
    size = sum(len(t.encode()) for t in texts)
    print(f"{args.corpus.name}: {len(texts)} test documents, {size:,} bytes")
    rows = [(f"{model.name}, parametric", model, None, "parametric")]
    if args.datastore is not None:
        given = ", ".join(f"{n} {v}" for n, v in (("k", args.k), ("lambda", args.lam))
                          if v is not None)
        rows.append((f"{model.name}, kNN-LM ({args.datastore.name}{', ' if given else ''}"
                     f"{given})", model, args.datastore, "knnlm"))
    if args.reference is not None:
        rows.append((f"{args.reference.name}, parametric", args.reference, None, "parametric"))
    print("| model | bits per byte |\n|---|---:|")
    for name, folder, store, mode in rows:
        bpb = bits_per_byte(folder, store, mode, texts, args.k if store else None,
                            args.lam if store else None,
                            args.index_reference if store else None)
        print(f"| {name} | {bpb:.3f} |", flush=True)


if __name__ == "__main__":
    main()
