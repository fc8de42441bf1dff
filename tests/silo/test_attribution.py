"""Per-sentence attribution from per-token provenance, by hand."""

from __future__ import annotations

from silo.attribution import (
    DocumentInfo,
    Neighbour,
    PassageRef,
    TokenProvenance,
    attribute,
    rank_documents,
    sentence_spans,
    token_sentences,
)


def test_sentences_cover_the_text() -> None:
    text = 'He said "go." Then left! Why?\n\nNew para'
    spans = sentence_spans(text)
    assert "".join(text[s:e] for s, e in spans) == text
    assert [text[s:e].strip() for s, e in spans] == ['He said "go."', "Then left!", "Why?",
                                                      "New para"]
    assert sentence_spans("") == [(0, 0)]


def test_tokens_belong_to_the_sentence_they_end_in() -> None:
    spans = [(0, 5), (5, 10)]
    assert token_sentences([2, 5, 7, 10], spans) == [0, 0, 1, 1]


def _n(doc: str, c: float, entry: int = 0) -> Neighbour:
    return Neighbour(entry, doc, 1.0, c)


def test_documents_rank_by_summed_contribution_then_ric_score() -> None:
    provs = [TokenProvenance((_n("a", 0.1, 1), _n("b", 0.3, 2))),
             TokenProvenance((_n("a", 0.25, 3),), (PassageRef(7, "c", 9.0, "passage c"),
                                                    PassageRef(8, "a", 12.0, "passage a")))]
    ranked = rank_documents(provs)
    assert [(r.doc_id, r.via) for r in ranked] == [("a", "knn"), ("b", "knn"), ("c", "ric")]
    assert abs(ranked[0].score - 0.35) < 1e-12 and ranked[0].entry_id == 3
    assert ranked[2].score == 9.0 and ranked[2].passage == "passage c"


def test_attribute_builds_the_per_sentence_shape() -> None:
    text = "One two. Three."
    ends = [3, 8, 15]
    provs = [TokenProvenance((_n("a", 0.2, 5),)), TokenProvenance(),
             TokenProvenance((), (PassageRef(1, "b", 3.5, "b's passage"),))]
    seen: list[tuple[str, int | None]] = []

    def describe(doc_id: str, entry: int | None, datastore: str | None) -> DocumentInfo:
        assert datastore is None  # one datastore: none is named
        seen.append((doc_id, entry))
        return DocumentInfo("src-" + doc_id, "copyleft", f"snippet of {entry}")

    got = attribute(text, ends, provs, describe).to_json()
    assert got == {"sentences": [
        {"text": "One two.", "documents": [
            {"doc_id": "a", "source": "src-a", "license_class": "copyleft", "score": 0.2,
             "snippet": "snippet of 5", "via": "knn"}]},
        {"text": " Three.", "documents": [
            {"doc_id": "b", "source": "src-b", "license_class": "copyleft", "score": 3.5,
             "snippet": "b's passage", "via": "ric"}]}]}
    assert seen == [("a", 5), ("b", None)]


def test_one_doc_id_in_two_datastores_is_two_documents_and_weights_are_averaged() -> None:
    provs = [TokenProvenance((Neighbour(1, "d", 0.1, 0.3, "a"), Neighbour(7, "d", 0.2, 0.2, "b")),
                             (), (("a", 0.4), ("b", 0.2))),
             TokenProvenance((Neighbour(2, "d", 0.1, 0.3, "a"),), (), (("a", 0.6), ("b", 0.0)))]
    ranked = rank_documents(provs)
    assert [(r.datastore, r.doc_id, round(r.score, 6)) for r in ranked] == [
        ("a", "d", 0.6), ("b", "d", 0.2)]
    named: list[str | None] = []

    def describe(doc_id: str, entry: int | None, datastore: str | None) -> DocumentInfo:
        named.append(datastore)
        return DocumentInfo(f"{datastore}-src", "pd", None)

    out = attribute("ab", [1, 2], provs, describe).sentences[0]
    assert [(d.datastore, d.source) for d in out.documents] == [("a", "a-src"), ("b", "b-src")]
    assert dict(out.weights) == {"a": 0.5, "b": 0.1}
    assert out.to_json()["datastore_weights"] == {"a": 0.5, "b": 0.1}
    assert out.to_json()["documents"][0]["datastore"] == "a"
    assert named == ["a", "b"]
