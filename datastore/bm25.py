"""BM25 passage search for RIC-LM: the factory that opens a backend by name.

The backend face (`BM25Index`, `BM25Hit`, `BM25Config`) lives in datastore.bm25_base and
is re-exported here, so callers import everything BM25 from this module. Imports run one
way: this module -> the backends (datastore.bm25_bm25s, datastore.bm25_lucene) ->
datastore.bm25_base.
"""

from __future__ import annotations

from pathlib import Path

from datastore.bm25_base import Allow, BM25Config, BM25Hit, BM25Index, Ranked
from datastore.errors import InvalidInputError

__all__ = ["BACKENDS", "Allow", "BM25Config", "BM25Hit", "BM25Index", "Ranked",
           "create_bm25", "open_bm25"]

BACKENDS = ("bm25s", "lucene")


def _backend_class(backend: str) -> type[BM25Index]:
    # Imported on demand: the Lucene backend starts a JVM, bm25s pulls scipy.
    if backend == "bm25s":
        from datastore.bm25_bm25s import BM25sIndex

        return BM25sIndex
    if backend == "lucene":
        from datastore.bm25_lucene import LuceneIndex

        return LuceneIndex
    raise InvalidInputError(f"unknown BM25 backend {backend!r}; expected one of {BACKENDS}")


def create_bm25(backend: str, path: Path, config: BM25Config | None = None) -> BM25Index:
    """A new empty BM25 index of the named backend in folder `path`."""
    return _backend_class(backend).create(Path(path), config)


def open_bm25(backend: str, path: Path) -> BM25Index:
    """The BM25 index of the named backend saved in folder `path`."""
    return _backend_class(backend).from_dir(Path(path))
