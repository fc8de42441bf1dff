"""The bm25s BM25 backend (the default): BM25 over sparse term postings in numpy.

The index keeps every block's analysed term ids and derives from them, lazily at the
first search after a change, a (terms x blocks) posting matrix of term frequencies
(CSC layout): no text is analysed twice, and a burst of adds costs one rebuild, linear
in the number of indexed terms. Scores are computed per query from the postings of its
terms, with bm25s's `method="lucene"` formula (Lucene's BM25, no (k1 + 1) factor):

    score(block) = sum over query terms t of  idf(t) * tf / (tf + k1 * (1 - b + b * dl / avgdl))
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

Filtered search is exact: with a filter, N, df and avgdl are computed over the blocks
the filter allows, so a filtered search returns the same blocks with the same scores as
an index that never held the excluded ones (the equivalence guarantee of DESIGN.md).
The allowed-block mask is computed once per `allow` object (per instance, for a bound
method such as `EntryFilter.allows_doc`) and cached until the next add or delete; an
`allow` must therefore answer the same for a document as long as it lives. Computing
the statistics at query time rather than baking them into a score matrix, as the
bm25s library does, is what lets one index serve every filter; it scores in float64
and agrees with the bm25s library to float32 precision (tests/datastore/test_bm25_bm25s.py).
Delete drops the block's terms, so scores after a delete equal those of an index that
never held the block.

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
import threading
import types
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import Stemmer

from datastore.blocks import Block
from datastore.bm25.base import (
    Allow,
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
# Allowed-block masks kept per index: a few live filters (policies x access scopes).
MASK_CACHE = 8


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


@dataclass(frozen=True)
class Postings:
    """Term frequencies of the indexed blocks, one column per term (CSC layout).

    indptr (n_vocab + 1,) int64: term t's postings are [indptr[t], indptr[t + 1]);
    rows (nnz,) int32: block row of each posting, increasing within a term;
    tf (nnz,) float64: occurrences of the term in that block;
    lengths (n_blocks,) int64: terms per block (dl).
    """

    indptr: np.ndarray
    rows: np.ndarray
    tf: np.ndarray
    lengths: np.ndarray


def build_postings(terms: Sequence[np.ndarray], n_vocab: int) -> Postings:
    """Postings of blocks whose term ids (each (dl,) int) are given in row order."""
    n_blocks = len(terms)
    lengths = np.fromiter(map(len, terms), dtype=np.int64, count=n_blocks)
    flat = np.concatenate(terms).astype(np.int64) if n_blocks else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(n_blocks, dtype=np.int64), lengths)
    # One key per (term, row) pair; sorting the keys orders postings by term, then row.
    pairs, tf = np.unique(flat * max(n_blocks, 1) + rows, return_counts=True)
    term, row = np.divmod(pairs, max(n_blocks, 1))
    indptr = np.zeros(n_vocab + 1, dtype=np.int64)
    np.cumsum(np.bincount(term, minlength=n_vocab), out=indptr[1:])
    return Postings(indptr, row.astype(np.int32), tf.astype(np.float64), lengths)


@dataclass(frozen=True)
class CorpusStats:
    """BM25 collection statistics over the blocks a search may draw on.

    allowed: (n_blocks,) bool, or None when every block is allowed;
    n: number of allowed blocks (N);
    knorm: (n_blocks,) float64, k1 * (1 - b + b * dl / avgdl) with avgdl the mean
    length of the allowed blocks;
    partial: (nnz,) float64, idf(t) * tf / (tf + knorm) of every posting, precomputed
    when every block is allowed (None otherwise: df then depends on the filter).
    """

    allowed: np.ndarray | None
    n: int
    knorm: np.ndarray
    partial: np.ndarray | None


def idf(df: np.ndarray, n: int) -> np.ndarray:
    """Lucene's idf, ln(1 + (N - df + 0.5) / (df + 0.5)); df (q,) int -> (q,) float64."""
    return np.log(1 + (n - df + 0.5) / (df + 0.5))


def corpus_stats(
    postings: Postings, allowed: np.ndarray | None, config: BM25Config
) -> CorpusStats:
    """Statistics over the `allowed` blocks ((n_blocks,) bool by row; None = all)."""
    lengths = postings.lengths
    kept = lengths if allowed is None else lengths[allowed]
    total = int(kept.sum())
    avgdl = total / len(kept) if total else 1.0  # no terms at all: nothing can match
    knorm = config.k1 * ((1 - config.b) + config.b * lengths / avgdl)
    partial = None
    if allowed is None:
        df = np.diff(postings.indptr)
        term = np.repeat(np.arange(len(df)), df)
        # The same operations, in the same order, as bm25_scores does under a filter.
        tf = postings.tf
        partial = idf(df, len(kept))[term] * (tf / (tf + knorm[postings.rows]))
    return CorpusStats(allowed, len(kept), knorm, partial)


def bm25_scores(
    postings: Postings, terms: np.ndarray, weights: np.ndarray, stats: CorpusStats
) -> np.ndarray:
    """(n_blocks,) float64 BM25 of every block; blocks outside `stats.allowed` score 0.

    terms (q,) int: distinct term ids of the query; weights (q,) float: how often each
    occurs in it. Contributions are summed per block in the order of `terms`, so two
    indexes that number terms differently still add them up in the same order.
    """
    starts, ends = postings.indptr[terms], postings.indptr[terms + 1]
    counts = ends - starts
    term_of = np.repeat(np.arange(len(terms)), counts)  # (p,) query position of a posting
    # Positions of every posting of the query terms, term after term.
    at = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(len(term_of))
    rows = postings.rows[at]
    if stats.partial is not None:
        part = stats.partial[at]
    else:
        assert stats.allowed is not None
        keep = stats.allowed[rows]
        at, rows, term_of = at[keep], rows[keep], term_of[keep]
        df = np.bincount(term_of, minlength=len(terms))
        tf = postings.tf[at]
        part = idf(df, stats.n)[term_of] * (tf / (tf + stats.knorm[rows]))
    return np.bincount(rows, weights=weights[term_of] * part, minlength=len(postings.lengths))


def _allow_anchor(allow: Allow) -> tuple[object, object]:
    """What an `allow` callable's verdicts are cached for: a bound method's instance and
    function (a new method object is made at each attribute access), else the callable."""
    if isinstance(allow, types.MethodType):
        return allow.__self__, allow.__func__
    if isinstance(allow, types.BuiltinMethodType) and allow.__self__ is not None:
        return allow.__self__, allow.__name__  # e.g. a_set.__contains__
    return allow, None


def _ref(obj: object) -> Callable[[], object]:
    """A weak reference to obj where it takes one, else a strong one."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


class BM25sIndex(BM25Index):
    """BM25 over blocks in numpy; see the module docstring for the scoring and the files."""

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
        # Derived from _terms at the first search after a change (see _prepare).
        self._postings: Postings | None = None
        self._row_ids = np.zeros(0, dtype=np.int64)  # (n_blocks,) block id of each row
        self._row_doc = np.zeros(0, dtype=np.int64)  # (n_blocks,) index into _doc_ids
        self._doc_ids: list[str] = []  # distinct documents of the blocks
        self._all: CorpusStats | None = None
        # (id(anchor), id(function)) -> (reference to the anchor, function, stats)
        self._masks: OrderedDict[tuple[int, int], tuple[Callable[[], object], object,
                                                        CorpusStats]] = OrderedDict()
        self._lock = threading.Lock()  # searches may run in several threads

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

    def _changed(self) -> None:
        """Forget everything derived from the blocks; the next search rebuilds it."""
        with self._lock:
            self._postings, self._all = None, None
            self._masks.clear()

    def _index_add(self, blocks: Sequence[Block]) -> None:
        for b in blocks:
            self._terms[b.block_id] = self._term_ids(b.text)
        self._changed()

    def _index_delete(self, block_ids: Collection[int]) -> None:
        for i in block_ids:
            del self._terms[i]
        self._changed()

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
        self._changed()
        (self.path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
        np.save(self.path / "terms.npy", flat)
        np.save(self.path / "terms_ptr.npy", ptr)

    def _prepare(self) -> Postings:
        """The postings, rebuilt (with the row -> block and row -> document maps) if stale.
        Call with the lock held."""
        if self._postings is None:
            self._row_ids = np.fromiter(self._blocks, dtype=np.int64, count=len(self._blocks))
            docs = [b.doc_id for b in self._blocks.values()]
            self._doc_ids = list(dict.fromkeys(docs))
            code = {d: i for i, d in enumerate(self._doc_ids)}
            self._row_doc = np.fromiter((code[d] for d in docs), np.int64, count=len(docs))
            self._postings = build_postings([self._terms[i] for i in self._blocks],
                                            len(self._vocab))
        return self._postings

    def _stats(self, allow: Allow | None) -> CorpusStats:
        """Statistics over the blocks `allow` accepts, cached per `allow` object. Call
        with the lock held, after _prepare."""
        assert self._postings is not None
        if allow is None:
            if self._all is None:
                self._all = corpus_stats(self._postings, None, self.config)
            return self._all
        anchor, func = _allow_anchor(allow)
        key = (id(anchor), id(func))
        cached = self._masks.get(key)
        if cached is not None and cached[0]() is anchor and cached[1] is func:
            self._masks.move_to_end(key)
            return cached[2]
        verdict = np.fromiter((bool(allow(d)) for d in self._doc_ids), dtype=bool,
                              count=len(self._doc_ids))  # one call per document
        stats = corpus_stats(self._postings, verdict[self._row_doc], self.config)
        self._masks[key] = (_ref(anchor), func, stats)
        while len(self._masks) > MASK_CACHE:
            self._masks.popitem(last=False)
        return stats

    def _rank(self, queries: Sequence[str], n: int, allow: Allow | None) -> list[Ranked]:
        with self._lock:
            postings = self._prepare()
            stats = self._stats(allow)
            row_ids = self._row_ids
        n_vocab = len(postings.indptr) - 1  # terms added since are in no posting yet
        ranked: list[Ranked] = []
        for query in queries:
            ids = (self._vocab.get(t, n_vocab) for t in analyze(query))
            counts = Counter(i for i in ids if i < n_vocab)
            if not counts:
                ranked.append([])
                continue
            terms = np.fromiter(counts, dtype=np.int64, count=len(counts))
            weights = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            scores = bm25_scores(postings, terms, weights, stats)
            ranked.append(top_positive(scores, row_ids, n))
        return ranked
