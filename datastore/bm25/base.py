"""BM25 passage search for RIC-LM: the backend face and the filtered search.

The backends (datastore.bm25.bm25s, datastore.bm25.lucene) subclass `BM25Index`; the
factory that picks one by name is datastore.bm25.factory.

Every backend indexes RIC blocks (datastore.blocks) in its own folder and has the same
face: `create(path)`, `from_dir(path)`, `add`, `search`, `batch_search`, `doc`, `delete`,
`save`, `len()`. Two backends, chosen by name:

- `bm25s` (default, datastore.bm25.bm25s): sparse score matrix in numpy/scipy.
- `lucene` (datastore.bm25.lucene): Lucene through the Anserini jar that pyserini
  ships, the field's standard; needs the `lucene` extra.

Both analyse text the same way so that their rankings are comparable: Lucene's
standard word boundaries, English possessive removal, lower case, Lucene's 33 English
stop words, the Porter stemmer (Anserini's `DefaultEnglishAnalyzer`; bm25s gets a regex
version of it plus PyStemmer's `porter`). Both score with Lucene's BM25 (no (k1 + 1)
factor), k1 = 0.9, b = 0.4 by default (Anserini's defaults). What remains different:
Lucene stores each passage length in one byte (lossy beyond ~40 terms), and the regex
splits some scripts (CJK ideographs, emoji) differently from Unicode word breaking.

The entry filter `allow(doc_id)` is part of the ranking (`_rank`), so that each backend
applies it its own way:

- bm25s is exact: N, document frequencies and the mean block length are computed over
  the allowed blocks only, so a filtered search returns exactly what an index that
  never held the excluded blocks would (DESIGN.md, "The equivalence guarantee").
- lucene over-fetches then drops: `allow` is asked of the best candidates, and more are
  fetched until k allowed hits are found or no more blocks match. Its corpus
  statistics still count the blocks the filter drops, until they are deleted (opt-out
  compaction), so its filtered scores, and at times its order, are approximate.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from datastore.blocks import Block, read_blocks, write_blocks
from datastore.errors import (
    ConflictError,
    CorruptDatastoreError,
    InvalidInputError,
    NotFoundError,
)

META_FILE = "bm25.json"
BLOCKS_FILE = "blocks.jsonl"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BM25Config:
    """BM25 parameters: k1 (term-frequency saturation), b (length normalisation)."""

    k1: float = 0.9
    b: float = 0.4

    def __post_init__(self) -> None:
        if not self.k1 > 0:
            raise InvalidInputError(f"k1 must be > 0, got {self.k1}")
        if not 0 <= self.b <= 1:
            raise InvalidInputError(f"b must be in [0, 1], got {self.b}")


@dataclass(frozen=True)
class BM25Hit:
    """One retrieved passage with its BM25 score (higher is better)."""

    block_id: int
    doc_id: str
    score: float
    text: str
    char_start: int
    char_end: int


Allow = Callable[[str], bool]
# (block_id, score) pairs, best first: what a backend's ranking returns.
Ranked = list[tuple[int, float]]


class BM25Index(ABC):
    """A BM25 index over RIC blocks, kept in one folder.

    Subclasses implement the ranking and their own files; this class holds the block
    table (id -> Block), the block file, the metadata file and the filtered search.
    """

    backend: ClassVar[str]

    def __init__(self, path: Path, config: BM25Config, blocks: Iterable[Block] = ()) -> None:
        self.path = path
        self.config = config
        self._blocks: dict[int, Block] = {b.block_id: b for b in blocks}

    # -- construction ---------------------------------------------------------------

    @classmethod
    @abstractmethod
    def create(cls, path: Path, config: BM25Config | None = None) -> Self:
        """A new empty index in folder `path` (created; must be absent or empty)."""

    @classmethod
    @abstractmethod
    def from_dir(cls, path: Path) -> Self:
        """Open the index saved in folder `path`."""

    # -- backend hooks --------------------------------------------------------------

    @abstractmethod
    def _index_add(self, blocks: Sequence[Block]) -> None:
        """Index new blocks (ids already checked to be new)."""

    @abstractmethod
    def _index_delete(self, block_ids: Collection[int]) -> None:
        """Forget blocks (ids already checked to exist), physically at the next save."""

    @abstractmethod
    def _index_save(self) -> None:
        """Write the backend's own files into `self.path`."""

    @abstractmethod
    def _rank(self, queries: Sequence[str], n: int, allow: Allow | None) -> list[Ranked]:
        """Per query, up to n blocks of documents `allow` accepts (all when None) with a
        positive score, best first; ties by block id. Fewer than n only when fewer match."""

    def close(self) -> None:  # noqa: B027 - only backends holding files override it
        """Release files and locks held open (the index is unusable afterwards)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the face -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._blocks)

    def add(self, blocks: Sequence[Block]) -> None:
        """Index more blocks; an id already present (or repeated) is a ConflictError."""
        seen: set[int] = set()
        for b in blocks:
            if b.block_id in self._blocks or b.block_id in seen:
                raise ConflictError(f"block {b.block_id} (doc {b.doc_id!r}) is already indexed")
            seen.add(b.block_id)
        if not blocks:
            return
        self._index_add(blocks)
        self._blocks.update((b.block_id, b) for b in blocks)

    def delete(self, block_ids: Collection[int]) -> None:
        """Remove blocks at once from search; `save()` then erases them from disk.

        Ids not in the index are ignored, so a repeated compaction is harmless.
        """
        gone = sorted({int(i) for i in block_ids} & self._blocks.keys())
        if not gone:
            return
        self._index_delete(gone)
        for i in gone:
            del self._blocks[i]

    def doc(self, block_id: int) -> Block:
        """The block with this id."""
        try:
            return self._blocks[block_id]
        except KeyError:
            raise NotFoundError(f"no block {block_id} in BM25 index {self.path}") from None

    def save(self) -> None:
        """Write the index to its folder; deleted blocks leave no bytes behind."""
        self._index_save()
        write_blocks(self.path / BLOCKS_FILE, self._blocks.values())
        meta = {"backend": self.backend, "version": FORMAT_VERSION, **asdict(self.config)}
        _write_json(self.path / META_FILE, meta)

    def search(self, query: str, k: int, allow: Allow | None = None) -> list[BM25Hit]:
        """The k best blocks for `query` whose document `allow` accepts, best first.

        `allow` must give the same verdict for a document as long as it lives: the bm25s
        backend caches the allowed blocks per `allow` object (per instance for a bound
        method), until the next add or delete.
        """
        return self.batch_search([query], k, allow)[0]

    def batch_search(
        self, queries: Sequence[str], k: int, allow: Allow | None = None
    ) -> list[list[BM25Hit]]:
        """`search` for each query; fewer than k hits only when fewer blocks match."""
        if isinstance(queries, str):
            raise InvalidInputError("batch_search takes a sequence of queries, not one string")
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        if not self._blocks:
            return [[] for _ in queries]
        ranked = self._rank(queries, min(k, len(self._blocks)), allow)
        return [[self._hit(b, s) for b, s in cands] for cands in ranked]

    def _hit(self, block_id: int, score: float) -> BM25Hit:
        b = self._blocks[block_id]
        return BM25Hit(b.block_id, b.doc_id, float(score), b.text, b.char_start, b.char_end)


def new_index_dir(path: Path) -> None:
    """Create folder `path` for a new index; an existing non-empty one is a conflict."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConflictError(f"{path} already exists and is not an empty folder")
    path.mkdir(parents=True, exist_ok=True)


def read_index_dir(path: Path, backend: str) -> tuple[BM25Config, list[Block]]:
    """Config and blocks of the `backend` index saved in `path`."""
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise NotFoundError(f"no BM25 index in {path} (missing {META_FILE})")
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        found, version = meta["backend"], meta["version"]
        config = BM25Config(k1=float(meta["k1"]), b=float(meta["b"]))
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptDatastoreError(f"{meta_path}: unreadable BM25 metadata: {e}") from None
    if found != backend:
        raise InvalidInputError(f"{path} holds a {found!r} BM25 index, not {backend!r}")
    if version != FORMAT_VERSION:
        raise CorruptDatastoreError(
            f"{meta_path}: format version {version}, this code reads {FORMAT_VERSION}"
        )
    return config, read_blocks(path / BLOCKS_FILE)


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
