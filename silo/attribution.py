"""Per-token provenance and per-sentence attribution of SiloLM output (DESIGN: Attribution).

kNN-LM: a neighbour's contribution to a token is lam times the kNN probability mass it
gave to that token (`silo.knnlm.target_neighbour_mass`); a document's contribution to a
sentence is the sum over the sentence's tokens of its neighbours' contributions.
RIC-LM: the passages in the context while a token was produced, with their BM25 scores;
a document's RIC score for a sentence is the best score of its passages there.

The per-sentence shape, shared with the server:

    {"sentences": [{"text", "documents": [{"doc_id", "source", "license_class",
                                           "score", "snippet", "via"}]}]}

Over several datastores (silo.combination) a document also names its datastore, and a
sentence carries each datastore's mean weight (lam_i w_i) over its tokens.

Documents are ranked best first: kNN documents by summed contribution, then documents
that only reached the sentence through RIC passages, by BM25 score.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Neighbour:
    """One datastore entry that voted for a token; contribution = lam * its kNN mass."""

    entry_id: int
    doc_id: str
    distance: float  # squared L2 between the query and the entry's key
    contribution: float
    datastore: str | None = None  # its datastore's name, over several


@dataclass(frozen=True)
class PassageRef:
    """A RIC passage that was in the context while a token was produced."""

    block_id: int
    doc_id: str
    score: float  # BM25
    text: str
    datastore: str | None = None  # over several datastores: the one it came from


@dataclass(frozen=True)
class TokenProvenance:
    """Where one token came from: the neighbours that voted for it (those with a share
    of its probability, best first) and the passages in context."""

    neighbours: tuple[Neighbour, ...] = ()
    passages: tuple[PassageRef, ...] = ()
    weights: tuple[tuple[str, float], ...] = ()  # over several datastores: (name, a_i)


@dataclass(frozen=True)
class DocumentInfo:
    """What attribution shows of a document besides its id."""

    source: str
    license_class: str
    snippet: str | None


@dataclass(frozen=True)
class AttributedDocument:
    doc_id: str
    source: str
    license_class: str
    score: float
    snippet: str | None
    via: str  # "knn" (score = summed contribution) or "ric" (score = BM25)
    datastore: str | None = None  # over several datastores: the one it is in

    def to_json(self) -> dict[str, Any]:
        out = {"doc_id": self.doc_id, "source": self.source,
               "license_class": self.license_class, "score": self.score,
               "snippet": self.snippet, "via": self.via}
        if self.datastore is not None:
            out["datastore"] = self.datastore
        return out


@dataclass(frozen=True)
class SentenceAttribution:
    text: str
    documents: tuple[AttributedDocument, ...] = ()
    weights: tuple[tuple[str, float], ...] = ()  # over several datastores: mean a_i

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text,
                               "documents": [d.to_json() for d in self.documents]}
        if self.weights:
            out["datastore_weights"] = dict(self.weights)
        return out


@dataclass(frozen=True)
class Attribution:
    sentences: tuple[SentenceAttribution, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"sentences": [s.to_json() for s in self.sentences]}

    def doc_ids(self) -> set[str]:
        return {d.doc_id for s in self.sentences for d in s.documents}


SNIPPET_CHARS = 160  # characters of a RIC passage shown as its snippet

# a sentence ends after . ! ? (with closing quotes/brackets) followed by space, or at a
# blank line; the end of the text closes the last one
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)|\n\s*\n")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the sentences of `text`, covering it entirely."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        if m.end() <= start:
            continue
        if spans and not text[start:m.end()].strip():  # blank run: joins the sentence before
            spans[-1] = (spans[-1][0], m.end())
        else:
            spans.append((start, m.end()))
        start = m.end()
    if start < len(text) or not spans:
        spans.append((start, len(text)))
    return spans


def token_sentences(token_ends: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[int]:
    """Sentence index of each token, from the character offset where the token ends
    (a token that straddles a boundary belongs to the sentence it ends in)."""
    out, s = [], 0
    for end in token_ends:
        while s < len(spans) - 1 and end > spans[s][1]:
            s += 1
        out.append(s)
    return out


@dataclass(frozen=True)
class _Ranked:
    doc_id: str
    score: float
    via: str
    entry_id: int | None  # the neighbour that gave most (kNN)
    passage: str | None  # the best passage's text (RIC)
    datastore: str | None = None


def rank_documents(provenance: Sequence[TokenProvenance]) -> list[_Ranked]:
    """The documents behind a run of tokens: kNN documents by summed contribution, then
    RIC-only documents by best BM25 score, best first (a document is its datastore and
    its id)."""
    knn: dict[tuple[str | None, str], float] = {}
    best_entry: dict[tuple[str | None, str], tuple[float, int]] = {}
    ric: dict[tuple[str | None, str], tuple[float, str]] = {}
    for prov in provenance:
        for n in prov.neighbours:
            key = (n.datastore, n.doc_id)
            knn[key] = knn.get(key, 0.0) + n.contribution
            if n.contribution > best_entry.get(key, (-1.0, -1))[0]:
                best_entry[key] = (n.contribution, n.entry_id)
        for p in prov.passages:
            key = (p.datastore, p.doc_id)
            if p.score > ric.get(key, (float("-inf"), ""))[0]:
                ric[key] = (p.score, p.text)
    ranked = [_Ranked(d, c, "knn", best_entry[(ds, d)][1], None, ds)
              for (ds, d), c in sorted(knn.items(), key=lambda kv: -kv[1])]
    ranked += [_Ranked(d, s, "ric", None, t, ds)
               for (ds, d), (s, t) in sorted(ric.items(), key=lambda kv: -kv[1][0])
               if (ds, d) not in knn]
    return ranked


def mean_weights(provenance: Sequence[TokenProvenance]) -> tuple[tuple[str, float], ...]:
    """Each datastore's mean weight over the tokens that carry weights."""
    sums: dict[str, float] = {}
    n = 0
    for prov in provenance:
        if prov.weights:
            n += 1
            for name, w in prov.weights:
                sums[name] = sums.get(name, 0.0) + w
    return tuple((name, total / n) for name, total in sums.items())


def attribute(text: str, token_ends: Sequence[int], provenance: Sequence[TokenProvenance],
              describe: Callable[[str, int | None, str | None], DocumentInfo],
              max_documents: int = 5) -> Attribution:
    """Per-sentence attribution of `text`, whose tokens end at `token_ends` (chars) and
    have `provenance` (one per token). `describe(doc_id, entry_id, datastore)` supplies
    source, licence class and, for kNN, the snippet around the entry (RIC documents show
    the start of their best passage)."""
    assert len(token_ends) == len(provenance), "one provenance per token"
    spans = sentence_spans(text)
    which = token_sentences(token_ends, spans)
    per_sentence: list[list[TokenProvenance]] = [[] for _ in spans]
    for s, prov in zip(which, provenance, strict=True):
        per_sentence[s].append(prov)
    sentences = []
    for (start, end), provs in zip(spans, per_sentence, strict=True):
        docs = []
        for r in rank_documents(provs)[:max_documents]:
            info = describe(r.doc_id, r.entry_id, r.datastore)
            snippet = info.snippet if r.passage is None else r.passage[:SNIPPET_CHARS]
            docs.append(AttributedDocument(r.doc_id, info.source, info.license_class,
                                           float(r.score), snippet, r.via, r.datastore))
        sentences.append(SentenceAttribution(text[start:end], tuple(docs),
                                             mean_weights(provs)))
    return Attribution(tuple(sentences))
