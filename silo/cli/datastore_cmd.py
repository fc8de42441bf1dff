"""`silo datastore build|add|remove|compact|reindex|info`: the datastore from the command line.

The commands load the LM (`--model`, the shipped default if omitted) and hand it to the
datastore as its key encoder; `datastore` itself never imports `silo`. Library errors
(and unreadable files) are printed as one line, with exit code 2 and no traceback.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from datastore.errors import SiloError
from silo.cli.console import clean_errors, out

ModelOpt = Annotated[Path | None, typer.Option(
    help="LM folder (save_pretrained layout); default: the shipped models/silo-small.")]
CorpusOpt = Annotated[list[Path], typer.Option(
    "--corpus", help="Corpus JSONL/JSONL.gz files or folders (repeat the option).")]
StoreOpt = Annotated[Path, typer.Option("--datastore", "--out", help="Datastore folder.")]
PolicyOpt = Annotated[str | None, typer.Option(
    help="Licence classes to take from the corpus, e.g. copyleft,restricted; all if unset.")]


def _encoder(model: Path | None, batch_size: int) -> Any:
    from silo.encoder import LMEncoder
    from silo.model import DEFAULT_MODEL, load_lm

    return LMEncoder.from_loaded(load_lm(model or DEFAULT_MODEL), batch_size=batch_size)


def _documents(corpus: list[Path], policy: str | None, allow_empty: bool = False,
               ) -> Iterator[Any]:
    """The corpus's usable documents; none at all is an error unless `allow_empty` (a
    corpus whose every line is bad would otherwise make an empty datastore and exit 0)."""
    from datastore.document import parse_policy
    from silo.corpus.jsonl import read_corpus

    if not corpus:
        raise SiloError("name at least one corpus file with --corpus")
    docs = read_corpus(corpus, parse_policy(policy) if policy else None)
    first = next(docs, None)
    if first is None:
        if not allow_empty:
            names = ", ".join(str(c) for c in corpus)
            raise SiloError(f"{names}: no usable document"
                            f"{' under policy ' + policy if policy else ''} (see the "
                            "warnings above); pass --allow-empty to build an empty datastore")
        return iter(())
    return itertools.chain([first], docs)


def _public(uri: str) -> str:
    """A Milvus URI without credentials (those belong in SILO_MILVUS_TOKEN)."""
    from datastore.index.milvus_server import public_uri

    return public_uri(uri) if uri else ""


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


@clean_errors
def build(
    out_dir: StoreOpt,
    corpus: CorpusOpt,
    model: ModelOpt = None,
    backend: Annotated[str, typer.Option(
        help="exact | faiss-flat | faiss-ivfpq | faiss-ivfpq-fs | milvus")] = "faiss-flat",
    policy: PolicyOpt = None,
    nlist: Annotated[int, typer.Option(help="IVF lists (faiss-ivfpq).")] = 4096,
    m: Annotated[int, typer.Option(help="PQ sub-quantizers; must divide the key dim.")] = 64,
    nbits: Annotated[int, typer.Option(help="Bits per PQ code.")] = 8,
    nprobe: Annotated[int, typer.Option(help="IVF lists searched per query.")] = 8,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 8,
    name: Annotated[str, typer.Option(help="Datastore name in the manifest.")] = "datastore",
    allow_empty: Annotated[bool, typer.Option(
        help="Build even when the corpus has no usable document.")] = False,
    milvus_uri: Annotated[str, typer.Option(
        help="Milvus server URI for a shared index (milvus); credentials come from "
             "SILO_MILVUS_TOKEN and are never written to the manifest.")] = "",
    milvus_index: Annotated[str, typer.Option(
        help="Index type on the Milvus server: FLAT, IVF_FLAT, IVF_PQ, HNSW, GPU_IVF_PQ, "
             "GPU_CAGRA.")] = "FLAT",
) -> None:
    """Build a datastore from corpus files (re-run the same command to resume)."""
    from datastore.config import DatastoreConfig
    from datastore.store.datastore import Datastore

    try:
        config = DatastoreConfig(backend=backend, nlist=nlist, m=m, nbits=nbits,
                                 nprobe=nprobe, encode_batch=batch_size, name=name,
                                 milvus_uri=_public(milvus_uri), milvus_index=milvus_index)
    except ValueError as e:
        raise SiloError(str(e)) from None
    encoder = _encoder(model, batch_size)
    docs = _documents(corpus, policy, allow_empty)
    with Datastore.build(out_dir, docs, encoder, config) as store:
        _print_json(asdict(store.info()))


@clean_errors
def add(datastore: StoreOpt, corpus: CorpusOpt, model: ModelOpt = None,
        policy: PolicyOpt = None) -> None:
    """Add documents to a built datastore, without a rebuild (existing ids are refused)."""
    from datastore.store.datastore import Datastore

    encoder = _encoder(model, 8)
    with Datastore.open(datastore, encoder_fingerprint=encoder.fingerprint) as store:
        stats = store.add_documents(_documents(corpus, policy), encoder, progress=True)
        _print_json(asdict(stats))


@clean_errors
def remove(
    datastore: StoreOpt,
    doc_id: Annotated[list[str] | None, typer.Option(help="A document id (repeatable).")] = None,
    source: Annotated[str | None, typer.Option(help="Every document of this source.")] = None,
    url_prefix: Annotated[str | None, typer.Option(help="Every document under this url.")
                          ] = None,
    reason: Annotated[str | None, typer.Option(help="Recorded on the receipt.")] = None,
) -> None:
    """Opt documents out: effective at once, durable; prints the receipt, with its proof
    in the transparency log (for `silo verify`)."""
    from datastore.store.datastore import Datastore

    with Datastore.open(datastore, verify=False) as store:
        receipt = store.optout(doc_ids=doc_id or (), source=source, url_prefix=url_prefix,
                               reason=reason)
        log = None if receipt.log_index is None else store.log.receipt(receipt.log_index)
        _print_json({**receipt.to_json(), "datastore": store.config.name,
                     "log": None if log is None else log.to_json()})


@clean_errors
def compact(datastore: StoreOpt) -> None:
    """Physically erase opted-out documents (vectors, blocks, stored text)."""
    from datastore.store.datastore import Datastore

    with Datastore.open(datastore) as store:
        purged = store.compact()
        _print_json({"documents_purged": purged, **asdict(store.info())})


@clean_errors
def reindex(
    datastore: StoreOpt,
    backend: Annotated[str | None, typer.Option(
        help="exact | faiss-flat | faiss-ivfpq | faiss-ivfpq-fs; default: unchanged.")] = None,
    nlist: Annotated[int | None, typer.Option(help="IVF lists.")] = None,
    m: Annotated[int | None, typer.Option(help="PQ sub-quantizers.")] = None,
    nbits: Annotated[int | None, typer.Option(help="Bits per PQ code (4 for fast-scan).")
                     ] = None,
    nprobe: Annotated[int | None, typer.Option(help="IVF lists searched per query.")] = None,
) -> None:
    """Rebuild the kNN index with another backend or parameters from the stored keys
    (no forward pass, no model needed); opted-out documents are left out."""
    from dataclasses import replace

    from datastore.store.datastore import Datastore

    changes: dict[str, Any] = {k: v for k, v in dict(backend=backend, nlist=nlist, m=m,
                                                     nbits=nbits, nprobe=nprobe).items()
                               if v is not None}
    with Datastore.open(datastore) as store:
        try:
            config = replace(store.config, **changes)
        except ValueError as e:
            raise SiloError(str(e)) from None
        indexed = store.reindex(config, progress=True)
        _print_json({"entries_indexed": indexed, **asdict(store.info())})


@clean_errors
def info(datastore: StoreOpt,
         receipts: Annotated[bool, typer.Option(help="List opt-out receipts too.")] = False,
         ) -> None:
    """Counts, backend, model fingerprint and size of a datastore."""
    from datastore.store.datastore import Datastore

    with Datastore.open(datastore, verify=False) as store:
        data: dict[str, Any] = asdict(store.info())
        if receipts:
            data["receipts"] = [r.to_json() for r in store.receipts()]
        _print_json(data)


app = typer.Typer(help="Build, change and inspect kNN/BM25 datastores.", no_args_is_help=True)
for _command in (build, add, remove, compact, reindex, info):
    app.command()(_command)
