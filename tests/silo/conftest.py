"""Fixtures for the silo tests: a SiloLM over the tiny model and a tiny exact datastore."""

from __future__ import annotations

from pathlib import Path

import pytest

from datastore.config import DatastoreConfig
from datastore.document import Document
from datastore.store.datastore import Datastore
from silo.encoder import LMEncoder
from silo.lm import SiloConfig, SiloLM, SiloOptions
from silo.ric import RicParams
from tests.conftest import make_documents

CONFIG = DatastoreConfig(backend="exact", block_tokens=16, block_overlap=4, ngram=False,
                         flush_entries=64, encode_batch=4)
TEXT = "Lay, v. t. To cause to lie down. And God said, Let there be light."
ALL = (SiloOptions("parametric"), SiloOptions("knnlm", k=8, lam=0.4, knn_temperature=2.0),
       SiloOptions("ric", ric=RicParams(query_tokens=8, stride=6)),
       SiloOptions("knnlm+ric", k=8, lam=0.4, knn_temperature=2.0,
                   ric=RicParams(query_tokens=8, stride=6)))


def saved_model(folder: Path, tiny_lm: object, tiny_tokenizer: object) -> LMEncoder:
    """The tiny model saved as a model folder, and an encoder of it (as `silo` commands
    load it, so the datastores it builds have the folder's fingerprint)."""
    from silo.model import fingerprint

    tiny_lm.save_pretrained(folder)  # type: ignore[attr-defined]
    tiny_tokenizer.save_pretrained(folder)  # type: ignore[attr-defined]
    loaded = SiloLM.from_dirs(folder)
    return LMEncoder(loaded.model, loaded.tokenizer,
                     fingerprint(loaded.model, loaded.tokenizer), max_length=128)


def build_store(path: Path, model: object, tok: object, docs: list[Document],
           config: DatastoreConfig = CONFIG, trained: Path | None = None) -> Datastore:
    enc = LMEncoder(model, tok, "tiny-fp", max_length=128, batch_size=4)
    return Datastore.build(path, docs, enc, config, progress=False, trained_index=trained)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, tiny_lm: object,
         tiny_tokenizer: object) -> SiloLM:
    store = build_store(tmp_path_factory.mktemp("full"), tiny_lm, tiny_tokenizer, make_documents())
    return SiloLM(tiny_lm, tiny_tokenizer, store, SiloConfig(batch_size=3, window=24, stride=8))


def prompt_ids(lm: SiloLM, text: str = TEXT) -> tuple[int, ...]:
    return (lm.eos_id, *lm.encode(text))


