"""`TableCore`: what an implementation of the document table provides (a connection,
its transactions, the storage clean-up after a purge), on which every query of
`DocumentTable` and its parts is written."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from datastore.table.schema import Run


class TableCore(ABC):
    """The implementation's side of a document table."""

    location: str  # where the table lives, for messages (a path, or host:port/db schema)
    # the implementation's unique-violation error, raised by an insert of a taken doc_id
    _duplicate: type[Exception]

    @abstractmethod
    def _read(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Rows of one statement, outside any write transaction."""

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Run]:
        """A write transaction, committed durably when the block ends and rolled back if
        it raises; yields a function running one statement in it."""

    @abstractmethod
    def _compact_storage(self) -> None:
        """After a purge: rewrite storage so that no freed page keeps erased text."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    @abstractmethod
    def check_integrity(self) -> None:
        """Raise CorruptDatastoreError when the table is damaged or absent."""

    @abstractmethod
    def _columns(self, table: str) -> set[str]:
        """The column names of one of the schema's tables."""
