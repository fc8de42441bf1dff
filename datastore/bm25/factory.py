"""Which BM25 backend a datastore uses, by name, created or opened (datastore.bm25.base has
the face they all show)."""

from __future__ import annotations

from pathlib import Path

from datastore.bm25.base import BM25Config, BM25Index
from datastore.errors import InvalidInputError

BACKENDS = ("bm25s", "lucene")


def _backend_class(backend: str) -> type[BM25Index]:
    # Imported on demand: the Lucene backend starts a JVM, bm25s pulls scipy.
    if backend == "bm25s":
        from datastore.bm25.bm25s import BM25sIndex

        return BM25sIndex
    if backend == "lucene":
        from datastore.bm25.lucene import LuceneIndex

        return LuceneIndex
    raise InvalidInputError(f"unknown BM25 backend {backend!r}; expected one of {BACKENDS}")


def create_bm25(backend: str, path: Path, config: BM25Config | None = None) -> BM25Index:
    """A new empty BM25 index of the named backend in folder `path`."""
    return _backend_class(backend).create(Path(path), config)


def open_bm25(backend: str, path: Path) -> BM25Index:
    """The BM25 index of the named backend saved in folder `path`."""
    return _backend_class(backend).from_dir(Path(path))
