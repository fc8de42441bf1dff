"""Attribution lookup for any text (POST /v1/attribution): per sentence, the documents
holding its longest verbatim spans (the n-gram index), then its top BM25 documents.

Both searches go through the datastore's one entry filter, so an opted-out or
out-of-scope document is never named.
"""

from __future__ import annotations

from typing import Any

from datastore.filter import SearchFilter
from datastore.table.records import CLASS_CODES
from silo.attribution import SNIPPET_CHARS, sentence_spans


def _describe(store: Any, doc_id: str, score: float, snippet: str | None,
              via: str) -> dict[str, Any]:
    snap = store.snapshot
    row = snap.row_of[doc_id]
    return {"doc_id": doc_id, "source": snap.sources[snap.source_code[row]],
            "license_class": CLASS_CODES[int(snap.class_code[row])].value,
            "score": float(score), "snippet": snippet, "via": via}


def _verbatim(store: Any, sentence: str, k: int, flt: SearchFilter) -> list[dict[str, Any]]:
    """Documents sharing the longest spans with the sentence; score = span length."""
    if store.ngram is None:
        return []
    out = []
    for m in store.verbatim(sentence, k, flt):
        text = store.table.text(store.snapshot.row_of[m.doc_id])
        snippet = None if text is None else text[m.doc_start:m.doc_end][:SNIPPET_CHARS]
        out.append(_describe(store, m.doc_id, m.length, snippet, "verbatim"))
    return out


def _bm25(store: Any, sentence: str, k: int, flt: SearchFilter) -> list[dict[str, Any]]:
    if store.bm25 is None:
        return []
    return [_describe(store, h.doc_id, h.score, h.text[:SNIPPET_CHARS], "bm25")
            for h in store.bm25_search(sentence, k, flt)]


def lookup(store: Any, text: str, k: int, flt: SearchFilter) -> list[dict[str, Any]]:
    """[{"text", "documents": [...]}] per sentence; verbatim documents first (longest
    span first), then BM25-only documents (best score first), at most k in all."""
    sentences = []
    for start, end in sentence_spans(text):
        sentence = text[start:end]
        if not sentence.strip():
            continue
        docs: dict[str, dict[str, Any]] = {}
        for doc in _verbatim(store, sentence, k, flt) + _bm25(store, sentence, k, flt):
            docs.setdefault(doc["doc_id"], doc)
        sentences.append({"text": sentence, "documents": list(docs.values())[:k]})
    return sentences
