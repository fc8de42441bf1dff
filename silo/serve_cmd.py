"""`silo serve`: run the HTTP service with uvicorn.

With no arguments it serves the shipped default model (`models/silo-small`) with a
default datastore: a copyleft subset of the shipped corpus (FOLDOC), built once into
the cache folder with a progress bar, then reused (start within seconds). The app is
handed to uvicorn by its import string, so `silo` never imports `server`.
"""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path
from typing import Annotated

import typer

from datastore.errors import NotFoundError

APP = "server.app:create_app"
CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus" / "foldoc.jsonl.gz"
DEFAULT_DOCUMENTS = 3000  # FOLDOC entries in the default datastore: a first start in minutes


def cache_dir() -> Path:
    return Path(os.environ.get("SILO_CACHE_DIR", Path.home() / ".cache" / "silo"))


def default_datastore(model: Path) -> Path:
    """The default datastore for `model`, built on first use (keys belong to one model,
    so the folder is named after the model's fingerprint)."""
    from datastore.config import DatastoreConfig
    from datastore.store import Datastore
    from silo.corpus import read_corpus
    from silo.encoder import LMEncoder
    from silo.model import load_lm

    lm = load_lm(model)
    folder = cache_dir() / "datastores" / f"foldoc-{lm.fingerprint[:12]}"
    manifest = folder / "manifest.json"
    if manifest.exists() and '"ready"' in manifest.read_text():
        return folder
    if not CORPUS.exists():
        raise NotFoundError(f"no corpus at {CORPUS} to build the default datastore from")
    typer.echo(f"building the default datastore in {folder} (once)", err=True)
    docs = islice(read_corpus([CORPUS]), DEFAULT_DOCUMENTS)
    config = DatastoreConfig(backend="faiss-flat", name="foldoc")
    Datastore.build(folder, docs, LMEncoder.from_loaded(lm), config, progress=True).close()
    return folder


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    model: Annotated[Path | None, typer.Option(
        help="Model folder (save_pretrained layout); default: the shipped models/silo-small."
    )] = None,
    datastore: Annotated[Path | None, typer.Option(
        help="Datastore folder; default: a FOLDOC datastore built once into the cache."
    )] = None,
) -> None:
    """Serve the OpenAI-compatible API, the admin API and the page."""
    import uvicorn

    from silo.model import DEFAULT_MODEL

    model = model or Path(os.environ.get("SILO_MODEL", DEFAULT_MODEL))
    if datastore is None and not os.environ.get("SILO_DATASTORE"):
        datastore = default_datastore(model)
    os.environ["SILO_MODEL"] = str(model)
    if datastore is not None:
        os.environ["SILO_DATASTORE"] = str(datastore)
    uvicorn.run(APP, factory=True, host=host, port=port, log_level="info")
