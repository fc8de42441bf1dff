"""An exploratory relevance signal: the datastore's distance against the distance to the
LM's own kind of text, on the default datastore.

The weight from the context's distance (silo.relevance) cannot tell the Python docs from
FOLDOC well: both are about computing, so their queries land as near FOLDOC's keys. What
tells them apart is that the Python docs are the LM's own kind of text (the pd+sw split it
was trained on) and FOLDOC is not. So measure the datastore's nearest distance d_1 from
the query's nearest distance d_ref to a reference index over the LM's training text:
the margin d_1 - d_ref, averaged over the context as before. Since a kNN distribution is
the same for distances shifted by one amount per row, shifting each row's neighbour
distances by -d_ref gives scores on which `silo.relevance_tuning.tune_relevance` and
`silo.tuning.mixed_logprob` compute exactly this weight; nothing else changes. The
reference reads nothing of the datastore beyond its filtered search, so the equivalence
guarantee would hold for it.

Builds the reference once (--reference; the first pd+sw train documents of each source:
KJV, WordNet, the Python docs, the standard library, Jargon, Devil, Elements, IVF-PQ
fast-scan), scores the held-out validation and test text of FOLDOC and of KJV, WordNet
and the Python docs against the default datastore and the reference, tunes the weight
both ways at the default's bounds (0.25% pooled, 1% a document) and reports the test
split.

    SILO_CACHE_DIR=/tmp/silo-cache python bench/relevance_margin.py --reference runs/ref
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from relevance import split_domains  # noqa: E402

from datastore.config import DatastoreConfig  # noqa: E402
from datastore.store.datastore import Datastore  # noqa: E402
from silo.cli.serve_cmd import (  # noqa: E402
    DOCUMENT_TOLERANCE,
    RELEVANCE_TOLERANCE,
    TUNE_TOKENS,
    default_datastore,
)
from silo.corpus.jsonl import read_corpus, split_of  # noqa: E402
from silo.encoder import LMEncoder  # noqa: E402
from silo.lm import SiloLM, SiloOptions  # noqa: E402
from silo.model import LoadedLM, load_lm  # noqa: E402
from silo.relevance_tuning import tune_relevance  # noqa: E402
from silo.tuning import GridPoint, TargetScores, mixed_logprob, nearest_distances  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
# train documents per source in the reference (about 2M tokens; the split the LM saw)
REFERENCE = {"kjv": 300, "wordnet": 3000, "pydoc": 120, "stdlib": 120, "jargon": 600,
             "devil": 300, "elements": 100}
OWN = "foldoc"


def build_reference(folder: Path, lm: LoadedLM) -> None:
    """The reference index over the LM's own training text (once)."""
    if (folder / "manifest.json").exists() and '"ready"' in (folder / "manifest.json").read_text():
        return
    docs = [d for name, n in REFERENCE.items()
            for d in islice((d for d in read_corpus([CORPUS / f"{name}.jsonl.gz"])
                             if split_of(d.doc_id) == "train"), n)]
    config = DatastoreConfig(backend="faiss-ivfpq-fs", name="reference", nlist=1024,
                             m=lm.model.get_output_embeddings().weight.shape[1], nbits=4,
                             nprobe=8, bm25=False, ngram=False)
    Datastore.build(folder, docs, LMEncoder.from_loaded(lm), config, progress=True).close()


def margin(scores: TargetScores, reference: TargetScores) -> TargetScores:
    """`scores` with each row's neighbour distances measured from its nearest distance
    to the reference (the same kNN distribution; d_1 becomes d_1 - d_ref)."""
    shift = nearest_distances(reference, reference.distances.shape[1])
    shift = np.where(np.isfinite(shift), shift, 0.0)  # (every row has a reference neighbour)
    return replace(scores, distances=(scores.distances - shift[:, None]).astype("float32"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/silo-small"))
    ap.add_argument("--reference", type=Path, default=Path("runs/reference"))
    ap.add_argument("--tokens", type=int, default=16384, help="Test tokens per domain.")
    ap.add_argument("--tune-tokens", type=int, default=TUNE_TOKENS)
    args = ap.parse_args()
    loaded = load_lm(args.model)
    lm = SiloLM(loaded.model, loaded.tokenizer, Datastore.open(
        default_datastore(args.model), encoder_fingerprint=loaded.fingerprint))
    build_reference(args.reference, loaded)
    ref = SiloLM(loaded.model, loaded.tokenizer,
                 Datastore.open(args.reference, encoder_fingerprint=loaded.fingerprint))
    u = lm.uniform_defaults
    best = GridPoint(u.k, u.lam, u.temperature, 0.0)
    texts = {"valid": split_domains(lm, "valid", args.tune_tokens),
             "test": split_domains(lm, "test", args.tokens)}
    plain = {s: {d: lm.target_scores(q, SiloOptions("knnlm"), u.k) for d, q in t.items()}
             for s, t in texts.items()}
    near = {s: {d: ref.target_scores(q, SiloOptions("knnlm", lam=0.5), 16)
                for d, q in t.items()} for s, t in texts.items()}
    signals = {"the datastore's distance": plain,
               "its margin to the LM's own text": {s: {d: margin(x, near[s][d])
                                                       for d, x in t.items()}
                                                   for s, t in plain.items()}}
    print("| weight from | beta | lambda | d0 | T | FOLDOC ppl | gain kept | "
          + " | ".join(f"{d} / LM" for d in texts["test"] if d != OWN) + " |")
    print("| --- " * (6 + len(texts["test"])) + "|")
    for label, scores in signals.items():
        valid = scores["valid"]
        c = tune_relevance({OWN: valid[OWN]}, {d: s for d, s in valid.items() if d != OWN},
                           best, tolerance=RELEVANCE_TOLERANCE,
                           document_tolerance=DOCUMENT_TOLERANCE).choice
        ppl = {d: (math.exp(-s.lm_logprob.mean()),
                   math.exp(-mixed_logprob(s, best.params).mean()),
                   math.exp(-mixed_logprob(s, c.params).mean()))
               for d, s in scores["test"].items()}
        alone, one, weighted = ppl[OWN]
        kept = (math.log(alone) - math.log(weighted)) / (math.log(alone) - math.log(one))
        print(f"| {label} | {c.relevance_decay:g} | {c.lam} | {c.relevance:.0f} | "
              f"{c.relevance_temperature:.0f} | {weighted:.1f} | {kept:.1%} | "
              + " | ".join(f"{ppl[d][2] / ppl[d][0]:.3f}" for d in ppl if d != OWN) + " |",
              flush=True)


if __name__ == "__main__":
    main()
