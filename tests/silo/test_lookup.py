"""Attribution of any text: verbatim spans first, then BM25, always through the filter."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from datastore.document import LicenseClass
from datastore.filter import AccessScope, SearchFilter
from silo.lookup import lookup
from tests.conftest import make_documents
from tests.silo.conftest import CONFIG, build_store


def test_lookup_names_the_verbatim_source_first_and_respects_the_filter(
        tmp_path: Path, tiny_lm: object, tiny_tokenizer: object) -> None:
    docs = make_documents()
    store = build_store(tmp_path / "ds", tiny_lm, tiny_tokenizer, docs,
                        replace(CONFIG, ngram=True))
    source = docs[1]
    sentence = source.text.split(".")[0] + "."
    found = lookup(store, sentence + " And then something else.", 3, SearchFilter())
    first = found.sentences[0]
    assert first.text.startswith(sentence[:20])
    assert first.documents[0].doc_id == source.doc_id and first.documents[0].via == "verbatim"
    assert first.documents[0].license_class == source.license_class.value
    assert len(first.documents) <= 3 and len({d.doc_id for d in first.documents}) == \
        len(first.documents)

    store.optout(doc_ids=[source.doc_id])
    after = lookup(store, sentence, 3, SearchFilter())
    assert source.doc_id not in after.doc_ids()
    scoped = lookup(store, sentence, 3, SearchFilter(
        scope=AccessScope(license_classes=frozenset({LicenseClass.SW}))))
    assert all(d.license_class == "sw" for s in scoped.sentences for d in s.documents)
    store.close()
