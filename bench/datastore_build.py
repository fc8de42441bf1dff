"""Build throughput (tokens/s) against the LM forward pass alone over the same tokens.

A randomly initialised LM of the `small` preset (the shipped default's shape) encodes
a synthetic corpus through `silo.encoder.LMEncoder`. The forward passes are timed
inside the build (the encoder's `_hidden` is wrapped with a timer), so the limit and
the build are measured over exactly the same tokens, batches and windows in one run:
ratio = (tokens / build seconds) / (tokens / forward seconds). Run twice: kNN only
(faiss-flat index, no BM25/n-gram) and the full default build (with BM25 and n-gram).

    python bench/datastore_build.py --docs 300 --words 250
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from datastore.config import DatastoreConfig  # noqa: E402
from datastore.document import Document, LicenseClass  # noqa: E402
from datastore.store.datastore import Datastore  # noqa: E402
from silo.encoder import LMEncoder  # noqa: E402
from silo.model import build_lm  # noqa: E402
from silo.tokenizer import train_tokenizer  # noqa: E402

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his "
         "from at which but have an they you were her she there been one all we their "
         "river mountain library licence public domain science music history garden").split()


def corpus(n: int, words: int, seed: int = 0) -> list[Document]:
    rng = np.random.default_rng(seed)
    return [Document(f"d{i}", " ".join(rng.choice(WORDS, words)), "cc0", LicenseClass.PD,
                     "synthetic") for i in range(n)]


class TimedEncoder(LMEncoder):
    """LMEncoder that adds up the seconds spent in the LM forward pass."""

    forward_s = 0.0

    def _hidden(self, input_ids: torch.Tensor, mask: torch.Tensor) -> Any:
        start = time.perf_counter()
        out = super()._hidden(input_ids, mask)
        TimedEncoder.forward_s += time.perf_counter() - start
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--words", type=int, default=250)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    docs = corpus(args.docs, args.words)
    tok = train_tokenizer([d.text for d in docs[:50]], vocab_size=2000)
    model = build_lm(args.preset, vocab_size=len(tok))
    encoder = TimedEncoder(model, tok, "bench", model.config.max_position_embeddings,
                           batch_size=8)
    tokens = sum(len(encoder.tokenize(d.text)) for d in docs)
    root = Path(tempfile.mkdtemp())
    print(f"preset={args.preset} docs={args.docs} tokens={tokens} threads={args.threads}")
    print("| build | tokens/s (build) | tokens/s (forward alone) | ratio |")
    print("|---|---|---|---|")
    for name, text_indexes in (("kNN only (faiss-flat)", False),
                               ("full (faiss-flat + BM25 + n-gram)", True)):
        TimedEncoder.forward_s = 0.0
        config = DatastoreConfig(backend="faiss-flat", bm25=text_indexes, ngram=text_indexes,
                                 encode_batch=16)
        start = time.perf_counter()
        Datastore.build(root / name[:4], docs, encoder, config, progress=False).close()
        build_s = time.perf_counter() - start
        fwd = TimedEncoder.forward_s
        print(f"| {name} | {tokens / build_s:.0f} | {tokens / fwd:.0f} | "
              f"{fwd / build_s:.3f} |")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
