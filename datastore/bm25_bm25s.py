"""The bm25s BM25 backend (the default): a sparse (blocks x terms) score matrix.

bm25s has no incremental add, so this backend keeps every block's analysed term ids
and rebuilds the score matrix from them, lazily, at the first search after a change:
no text is analysed twice, and a burst of adds costs one rebuild (linear in the
number of indexed terms). Delete drops the block's terms the same way, so scores after
a delete equal those of an index that never held the block.

Files in the folder, besides `bm25.json` and `blocks.jsonl`:
  vocab.json     list of terms; the position is the term id
  terms.npy      (total_terms,) int32, the blocks' term ids one after another, in
                 the order of blocks.jsonl
  terms_ptr.npy  (n_blocks + 1,) int64, where each block's term ids start
`save()` drops from the vocabulary the terms no remaining block uses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Self

import bm25s
import numpy as np
import Stemmer

from datastore.blocks import Block
from datastore.bm25 import (
    BM25Config,
    BM25Index,
    Ranked,
    new_index_dir,
    read_index_dir,
)
from datastore.errors import CorruptDatastoreError

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET, which Anserini's default analyzer uses.
LUCENE_STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the "
    "their then there these they this to was will with".split()
)
# Word characters joined by inner dots and apostrophes ("u.s.a", "3.14", "don't"), as
# Unicode word breaking (Lucene's StandardTokenizer) keeps them together.
_WORD = re.compile(r"\w+(?:[.'\u2019]\w+)*")
_STEMMER = Stemmer.Stemmer("porter")


def analyze(text: str) -> list[str]:
    """Index terms of `text`: words, possessive 's dropped, lower-cased, stop words
    removed, Porter-stemmed (the order of Lucene's English analyzer chain)."""
    words = []
    for word in _WORD.findall(text):
        word = word.lower()
        if word.endswith(("'s", "\u2019s")):
            word = word[:-2]
        if word and word not in LUCENE_STOP_WORDS:
            words.append(word)
    return list(_STEMMER.stemWords(words))


def top_positive(scores: np.ndarray, block_ids: np.ndarray, n: int) -> Ranked:
    """The n best (block_id, score) with score > 0, best first, ties by block id.

    scores, block_ids: (n_blocks,) aligned by row.
    """
    rows = np.flatnonzero(scores > 0)
    if len(rows) > n:
        # Keep everything scoring at least the n-th best, so ties at the cut are
        # decided by block id below rather than by argpartition's arbitrary order.
        nth = np.partition(scores[rows], len(rows) - n)[len(rows) - n]
        rows = rows[scores[rows] >= nth]
    order = np.lexsort((block_ids[rows], -scores[rows]))[:n]
    return [(int(block_ids[r]), float(scores[r])) for r in rows[order]]


class BM25sIndex(BM25Index):
    """BM25 over blocks with bm25s; see the module docstring for the files."""

    backend = "bm25s"

    def __init__(
        self,
        path: Path,
        config: BM25Config,
        blocks: Sequence[Block] = (),
        terms: Sequence[np.ndarray] = (),
        vocab: Sequence[str] = (),
    ) -> None:
        super().__init__(path, config, blocks)
        self._terms: dict[int, np.ndarray] = {
            b.block_id: t for b, t in zip(blocks, terms, strict=True)
        }
        self._vocab: dict[str, int] = {term: i for i, term in enumerate(vocab)}
        self._model: bm25s.BM25 | None = None
        self._row_ids = np.zeros(0, dtype=np.int64)  # (n_blocks,) block id of each row

    @classmethod
    def create(cls, path: Path, config: BM25Config | None = None) -> Self:
        new_index_dir(path)
        index = cls(path, config or BM25Config())
        index.save()
        return index

    @classmethod
    def from_dir(cls, path: Path) -> Self:
        config, blocks = read_index_dir(path, cls.backend)
        try:
            vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
            flat = np.load(path / "terms.npy")
            ptr = np.load(path / "terms_ptr.npy")
        except (OSError, ValueError) as e:
            raise CorruptDatastoreError(f"{path}: unreadable bm25s files: {e}") from None
        if (
            len(ptr) != len(blocks) + 1
            or ptr[-1] != len(flat)
            or flat.max(initial=-1) >= len(vocab)
        ):
            raise CorruptDatastoreError(f"{path}: bm25s term files do not match blocks.jsonl")
        terms = [flat[ptr[i] : ptr[i + 1]] for i in range(len(blocks))]
        return cls(path, config, blocks, terms, vocab)

    def _term_ids(self, text: str) -> np.ndarray:
        """(n_terms,) int32 ids of the terms of `text`, adding new terms to the vocabulary."""
        ids = [self._vocab.setdefault(term, len(self._vocab)) for term in analyze(text)]
        return np.asarray(ids, dtype=np.int32)

    def _index_add(self, blocks: Sequence[Block]) -> None:
        for b in blocks:
            self._terms[b.block_id] = self._term_ids(b.text)
        self._model = None

    def _index_delete(self, block_ids: Collection[int]) -> None:
        for i in block_ids:
            del self._terms[i]
        self._model = None

    def _index_save(self) -> None:
        # Renumber the terms still in use, so a deleted block's unique words go too.
        ordered = [self._terms[i] for i in self._blocks]
        flat = np.concatenate(ordered) if ordered else np.zeros(0, dtype=np.int32)
        used, flat = np.unique(flat, return_inverse=True)
        by_id = list(self._vocab)  # dicts keep insertion order = term id order
        vocab = [by_id[i] for i in used]
        ptr = np.zeros(len(ordered) + 1, dtype=np.int64)
        np.cumsum([len(t) for t in ordered], out=ptr[1:])
        flat = flat.astype(np.int32)
        self._terms = {i: flat[ptr[r] : ptr[r + 1]] for r, i in enumerate(self._blocks)}
        self._vocab = {term: i for i, term in enumerate(vocab)}
        self._model = None
        (self.path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
        np.save(self.path / "terms.npy", flat)
        np.save(self.path / "terms_ptr.npy", ptr)

    def _ensure_model(self) -> bm25s.BM25:
        if self._model is None:
            model = bm25s.BM25(k1=self.config.k1, b=self.config.b, method="lucene")
            corpus = [self._terms[i].tolist() for i in self._blocks]
            model.scores = model.build_index_from_ids(
                list(range(len(self._vocab))), corpus, show_progress=False
            )
            self._row_ids = np.fromiter(self._blocks, dtype=np.int64, count=len(self._blocks))
            self._model = model
        return self._model

    def _rank(self, queries: Sequence[str], n: int) -> list[Ranked]:
        model = self._ensure_model()
        ranked: list[Ranked] = []
        for query in queries:
            ids = [self._vocab[t] for t in analyze(query) if t in self._vocab]
            if not ids:
                ranked.append([])
                continue
            scores = model.get_scores_from_ids(ids)
            ranked.append(top_positive(scores, self._row_ids, n))
        return ranked
