"""Entries of a document and the streaming ingest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datastore.build import document_entries, encode_documents, ingest
from datastore.config import DatastoreConfig
from datastore.document import Document, LicenseClass
from datastore.errors import ConflictError, InvalidInputError
from datastore.knn import KeyValueStore
from tests.datastore.conftest import OpenTable
from tests.datastore.synthetic import SyntheticEncoder, corpus


def test_document_entries_pair_state_at_t_with_token_t_plus_1() -> None:
    hidden = np.arange(12, dtype=np.float32).reshape(4, 3)
    keys, values, charpos = document_entries([5, 6, 7, 8], [(0, 1), (2, 3), (4, 6), (7, 8)],
                                             hidden)
    np.testing.assert_array_equal(keys, hidden[:3])
    assert values.tolist() == [6, 7, 8] and values.dtype == np.int32
    assert charpos.tolist() == [2, 4, 7]
    keys, values, _ = document_entries([5], [(0, 1)], hidden[:1])
    assert keys.shape == (0, 3) and len(values) == 0


def test_ingest_flushes_in_chunks_and_refuses_duplicates(tmp_path: Path,
                                                         new_table: OpenTable) -> None:
    enc = SyntheticEncoder()
    table, kv = new_table(), KeyValueStore(tmp_path, enc.dim)
    config = DatastoreConfig(flush_entries=50, encode_batch=3)
    stats = ingest(corpus(20), enc, table, kv, config, skip_existing=False, progress=False)
    snap = table.snapshot()
    assert stats.documents == 20 and stats.entries == snap.n_entries == len(kv)
    assert (snap.entry_end[:-1] == snap.entry_start[1:]).all()  # contiguous id ranges
    for row in (0, 7):  # keys on disk = encoder output (fp16)
        doc = corpus(20)[row]
        want = enc.encode([enc.tokenize(doc.text)])[0][:-1].astype(np.float16)
        np.testing.assert_array_equal(kv.keys[snap.entry_start[row]:snap.entry_end[row]], want)
    with pytest.raises(ConflictError, match="doc-0"):
        ingest(corpus(5), enc, table, kv, config, skip_existing=False, progress=False)
    again = ingest(corpus(22), enc, table, kv, config, skip_existing=True, progress=False)
    assert (again.documents, again.skipped) == (2, 20)


def test_invalid_documents_name_themselves() -> None:
    bad = Document("", "text", "mit", LicenseClass.SW, "s")
    with pytest.raises(InvalidInputError, match="non-empty"):
        list(encode_documents([bad], SyntheticEncoder(), DatastoreConfig()))


def test_config_fields_are_validated() -> None:
    with pytest.raises(ValueError, match="backend"):
        DatastoreConfig(backend="annoy")
    with pytest.raises(ValueError, match="block_overlap"):
        DatastoreConfig(block_tokens=8, block_overlap=8)
    assert DatastoreConfig.from_json({"backend": "faiss-flat", "future": 1}).backend == \
        "faiss-flat"
