"""Attribution lookup for any text (the service's POST /v1/attribution): per sentence, the
documents holding its longest verbatim spans (the n-gram index), then its top BM25
documents.

Both searches go through the datastore's one entry filter, so an opted-out or
out-of-scope document is never named. The result has the per-sentence shape of
silo.attribution, as the attribution of generated text does.
"""

from __future__ import annotations

from datastore.filter import SearchFilter
from datastore.store.datastore import Datastore
from silo.attribution import (
    SNIPPET_CHARS,
    AttributedDocument,
    Attribution,
    SentenceAttribution,
    sentence_spans,
)


def _document(store: Datastore, doc_id: str, score: float, snippet: str | None,
              via: str) -> AttributedDocument:
    doc = store.snapshot.document(doc_id)
    return AttributedDocument(doc_id, doc.source, doc.license_class.value, float(score),
                              snippet, via)


def _verbatim(store: Datastore, sentence: str, k: int, flt: SearchFilter,
              ) -> list[AttributedDocument]:
    """Documents sharing the longest spans with the sentence; score = span length."""
    if store.ngram is None:
        return []
    out = []
    for m in store.verbatim(sentence, k, flt):
        text = store.table.text(store.snapshot.row_of[m.doc_id])
        snippet = None if text is None else text[m.doc_start:m.doc_end][:SNIPPET_CHARS]
        out.append(_document(store, m.doc_id, m.length, snippet, "verbatim"))
    return out


def _bm25(store: Datastore, sentence: str, k: int, flt: SearchFilter,
          ) -> list[AttributedDocument]:
    if store.bm25 is None:
        return []
    return [_document(store, h.doc_id, h.score, h.text[:SNIPPET_CHARS], "bm25")
            for h in store.bm25_search(sentence, k, flt)]


def lookup(store: Datastore, text: str, k: int, flt: SearchFilter) -> Attribution:
    """Per non-blank sentence: verbatim documents first (longest span first), then
    BM25-only documents (best score first), at most k in all."""
    sentences = []
    for start, end in sentence_spans(text):
        sentence = text[start:end]
        if not sentence.strip():
            continue
        docs: dict[str, AttributedDocument] = {}
        for doc in _verbatim(store, sentence, k, flt) + _bm25(store, sentence, k, flt):
            docs.setdefault(doc.doc_id, doc)
        sentences.append(SentenceAttribution(sentence, tuple(list(docs.values())[:k])))
    return Attribution(tuple(sentences))
