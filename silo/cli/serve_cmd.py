"""`silo serve`: run the HTTP service with uvicorn.

With no arguments it serves the shipped default model (`models/silo-small`) with a
default datastore: a copyleft subset of the shipped corpus (FOLDOC), built once into
the cache folder with a progress bar, then reused (start within seconds), and a
reference index over the model's own training text that its relevance weight is
measured from (silo.relevance), built and reused alike. The app is
handed to uvicorn by its import string, so `silo` never imports `server`.
"""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from datastore.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from datastore.config import DatastoreConfig
    from silo.model import LoadedLM

APP = "server.app:create_app"
CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus" / "foldoc.jsonl.gz"
DEFAULT_DOCUMENTS = 3000  # FOLDOC entries in the default datastore: a first start in minutes
# held-out validation tokens per domain the default is tuned on: FOLDOC's for k, lambda,
# tau, and with the other domains' for the relevance weight. At 4,096 the Python docs'
# validation text was one or two files, and a weight from the context's distance tuned on
# it came out 3-15% worse than the LM on their test text (docs/BENCHMARKS.md, "Relevance
# weight"); FOLDOC's held-out validation split holds about 10,700
TUNE_TOKENS = 16384
# the default's k: the smallest within this share of the best perplexity (collecting k
# results is a large part of a fast-scan search; README, "Retune after a reindex")
K_TOLERANCE = 0.015
# how much worse than the LM alone the default may make validation text outside FOLDOC:
# a quarter of the 1% it is held to on test text, since the Python docs' test split
# came out 3-4% above their validation split at 1% (docs/BENCHMARKS.md, "Relevance weight")
RELEVANCE_TOLERANCE = 0.0025
# and each validation document of such text (of 256 tokens or more) at most 1% worse: a
# weight from the context's distance treats a document alike all through, and the Python
# docs' test split came out 1.0-2.4% worse at the pooled bound alone (docs/BENCHMARKS.md)
DOCUMENT_TOLERANCE = 0.01
# text the default datastore does not cover (public domain and permissive: the pd+sw
# validation split), on which its relevance weight is tuned to leave the LM alone
OFF_DOMAIN = tuple(CORPUS.parent / f"{name}.jsonl.gz" for name in ("kjv", "wordnet", "pydoc"))
# the default reference (silo.relevance): the first training documents of each source the
# shipped model was trained on (the pd+sw train split), about 2M tokens. The Python docs
# are about computing, as FOLDOC is, and land as near its keys; measured from their
# distance to the LM's own text they stop looking like FOLDOC (docs/BENCHMARKS.md)
REFERENCE = {"kjv": 300, "wordnet": 3000, "pydoc": 120, "stdlib": 120, "jargon": 600,
             "devil": 300, "elements": 100}
# the reference is probed more coarsely than the datastore: it gives one distance, not
# the neighbours that vote, and at nprobe 2 the margin kept FOLDOC's gain (100.3% against
# 100.6% at 8) with the other domains as near the LM, at half the search's cost
# (docs/BENCHMARKS.md, "The margin to the LM's own text")
REFERENCE_NPROBE = 2


def check_model_dir(model: Path) -> None:
    """Fail before the server starts (one line, no traceback) when `model` is not a
    model folder, rather than in the app's start-up inside uvicorn."""
    if not model.is_dir():
        raise NotFoundError(f"{model}: no such model folder")
    if not (model / "config.json").is_file():
        raise NotFoundError(f"{model}: not a model folder (no config.json; expected the "
                            "save_pretrained layout)")


def check_datastore_dir(folder: Path) -> None:
    """The same for a datastore: its folder and a readable manifest."""
    from datastore.manifest import read_manifest

    if not folder.is_dir():
        raise NotFoundError(f"{folder}: no such datastore folder")
    read_manifest(folder)  # CorruptDatastoreError naming the file


def check_reference(datastore: Path | str | None) -> None:
    """Fail before the server starts when the datastore's weight is measured from a
    reference and none is set (the server would refuse to start, inside uvicorn)."""
    from silo.tuning import needs_reference

    if datastore and not os.environ.get("SILO_REFERENCE") and needs_reference(Path(datastore)):
        raise NotFoundError(f"{datastore}: its relevance weight is measured from the "
                            "distance to a reference index of the model's own text; give "
                            "it with --reference (or SILO_REFERENCE)")


def cache_dir() -> Path:
    return Path(os.environ.get("SILO_CACHE_DIR", Path.home() / ".cache" / "silo"))


def index_config(name: str, lm: LoadedLM, text: bool = True, nprobe: int = 8,
                 ) -> DatastoreConfig:
    """The default's index: IVF-PQ fast-scan (4-bit codes, one dimension per
    sub-quantizer) searches several times faster than 8-bit IVF-PQ at the same recall;
    exact search keeps only about a fifth of the parametric speed (docs/BENCHMARKS.md,
    "Default datastore"). Without `text`, no BM25 or n-gram index (a reference is only
    searched by its keys)."""
    from datastore.config import DatastoreConfig

    return DatastoreConfig(backend="faiss-ivfpq-fs", name=name, nlist=1024,
                           m=lm.model.get_output_embeddings().weight.shape[1], nbits=4,
                           nprobe=nprobe, bm25=text, ngram=text)


def is_built(folder: Path) -> bool:
    manifest = folder / "manifest.json"
    return manifest.exists() and '"ready"' in manifest.read_text()


def default_reference(model: Path) -> Path:
    """The reference index for `model` (the default model's own training text), built on
    first use; the relevance weight of the default datastore is measured from it."""
    from datastore.store.datastore import Datastore
    from silo.corpus.jsonl import read_corpus, split_of
    from silo.encoder import LMEncoder
    from silo.model import load_lm

    lm = load_lm(model)
    folder = cache_dir() / "references" / f"pdsw-ivfpq-fs-{lm.fingerprint[:12]}"
    if not is_built(folder):
        files = {n: CORPUS.parent / f"{n}.jsonl.gz" for n in REFERENCE}
        missing = [str(p) for p in files.values() if not p.exists()]
        if missing:
            raise NotFoundError(f"no corpus at {', '.join(missing)} to build the default "
                                "reference from")
        typer.echo(f"building the reference index of the model's own text in {folder} "
                   "(once)", err=True)
        docs = (d for name, n in REFERENCE.items()
                for d in islice((d for d in read_corpus([files[name]])
                                 if split_of(d.doc_id) == "train"), n))
        Datastore.build(folder, docs, LMEncoder.from_loaded(lm),
                        index_config("reference", lm, text=False, nprobe=REFERENCE_NPROBE),
                        progress=True).close()
    return folder


def default_datastore(model: Path) -> Path:
    """The default datastore for `model`, built on first use (keys belong to one model,
    so the folder is named after the model's fingerprint)."""
    from datastore.store.datastore import Datastore
    from silo.corpus.jsonl import read_corpus
    from silo.encoder import LMEncoder
    from silo.model import load_lm
    from silo.tuning import has_relevance

    lm = load_lm(model)
    # the name says the index: a cache built with another one is not reused, but rebuilt
    folder = cache_dir() / "datastores" / f"foldoc-ivfpq-fs-{lm.fingerprint[:12]}"
    if not is_built(folder):
        if not CORPUS.exists():
            raise NotFoundError(f"no corpus at {CORPUS} to build the default datastore from")
        typer.echo(f"building the default datastore in {folder} (once)", err=True)
        docs = islice(read_corpus([CORPUS]), DEFAULT_DOCUMENTS)
        Datastore.build(folder, docs, LMEncoder.from_loaded(lm), index_config("foldoc", lm),
                        progress=True).close()
    reference = default_reference(model)
    # also after a start cut short while tuning, and for defaults tuned before the
    # relevance weight (or its reference) existed
    if not has_relevance(folder):
        typer.echo("tuning kNN-LM's k, lambda, tau and relevance weight for the default "
                   "datastore (once)", err=True)
        tune_default(folder, model, reference)
    return folder


def tune_default(folder: Path, model: Path, reference: Path) -> None:
    """Tune k, lambda and tau on FOLDOC validation documents that are not in the store,
    and the relevance weight (measured from the context's distance, and its margin to the
    `reference`: silo.relevance) on validation text of other domains, and store them with
    it, so clients that know nothing of SILO get tuned kNN-LM that leaves text outside
    FOLDOC to the LM."""
    from silo.corpus.jsonl import read_corpus, split_of
    from silo.evaluate import domain_sequences
    from silo.lm import SiloLM
    from silo.tuning import Grid, tune_for, write_defaults

    lm = SiloLM.from_dirs(model, folder, reference_dir=reference)
    held_out = islice(read_corpus([CORPUS]), DEFAULT_DOCUMENTS, None)  # not in the store
    docs = (d for d in held_out if split_of(d.doc_id) == "valid")
    seqs = domain_sequences(docs, lm.encode, lm.eos_id, TUNE_TOKENS)
    others = (d for d in read_corpus([p for p in OFF_DOMAIN if p.exists()])
              if split_of(d.doc_id) == "valid")
    off = domain_sequences(others, lm.encode, lm.eos_id, TUNE_TOKENS)
    best, points, report = tune_for(lm, seqs, off, Grid(), K_TOLERANCE, RELEVANCE_TOLERANCE,
                                    DOCUMENT_TOLERANCE)
    used = {d: sum(len(s) - 1 for s in ss) for d, ss in {**seqs, **off}.items()}
    write_defaults(folder, best, {d: p[0] for d, p in points.items()},
                   note=f"tuned at first start on held-out validation tokens {used}",
                   uniform=report.uniform_point if report else None)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    model: Annotated[Path | None, typer.Option(
        help="Model folder (save_pretrained layout); default: the shipped models/silo-small."
    )] = None,
    datastore: Annotated[Path | None, typer.Option(
        help="Datastore folder; default: a FOLDOC datastore built once into the cache."
    )] = None,
    no_datastore: Annotated[bool, typer.Option(
        "--no-datastore", help="Serve the parametric LM alone (answers within seconds).")
    ] = False,
    reference: Annotated[Path | None, typer.Option(
        help="A reference index over the model's own text (SILO_REFERENCE), for datastores "
             "whose relevance weight is measured from it; default: with the default "
             "datastore, its reference, built once into the cache.")] = None,
    dtype: Annotated[str | None, typer.Option(
        help="The model's dtype: auto (float32), float32, bfloat16 or float16 "
             "(SILO_DTYPE); bfloat16 pays only on CPUs with AVX512-BF16 or AMX, or a GPU."
    )] = None,
) -> None:
    """Serve the OpenAI-compatible API, the admin API and the page."""
    import uvicorn

    from silo.model import DEFAULT_MODEL, parse_dtype

    model = model or Path(os.environ.get("SILO_MODEL", DEFAULT_MODEL))
    check_model_dir(model)
    dtype = dtype or os.environ.get("SILO_DTYPE")
    if dtype is not None:  # a bad name, given or in the environment, fails here
        parse_dtype(dtype)  # (before any datastore is built), not in the server's start
        os.environ["SILO_DTYPE"] = dtype
    if no_datastore:
        if datastore is not None:
            raise InvalidInputError("--datastore and --no-datastore exclude each other")
        os.environ.pop("SILO_DATASTORE", None)  # requests default to parametric then
    else:
        if datastore is None and not os.environ.get("SILO_DATASTORE"):
            datastore = default_datastore(model)
            if reference is None and not os.environ.get("SILO_REFERENCE"):
                reference = default_reference(model)
        check_datastore_dir(datastore or Path(os.environ["SILO_DATASTORE"]))
    if reference is not None:
        check_datastore_dir(reference)
        os.environ["SILO_REFERENCE"] = str(reference)
    check_reference(datastore or os.environ.get("SILO_DATASTORE"))
    os.environ["SILO_MODEL"] = str(model)
    # torch's threads spinning on every core starve the event loop of the one it needs
    # (on 2 cores a 32-token completion took 1.0 s with two threads, 0.16 s with one)
    os.environ.setdefault("SILO_TORCH_THREADS", str(max(1, len(os.sched_getaffinity(0)) - 1)))
    if datastore is not None:
        os.environ["SILO_DATASTORE"] = str(datastore)
    uvicorn.run(APP, factory=True, host=host, port=port, log_level="info")
