"""The document table in SQLite: one file in the datastore folder, the embedded default.

WAL mode with `synchronous=FULL`, so a committed transaction is on disk before the call
returns. One connection, shared by the process's threads under a lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from datastore.errors import CorruptDatastoreError
from datastore.table.base import DocumentTable
from datastore.table.schema import SQLITE, Run, statements

TABLE_FILE = "documents.sqlite"


class SqliteTable(DocumentTable):
    """The document table of one datastore folder, in `documents.sqlite`."""

    _duplicate = sqlite3.IntegrityError

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.location = str(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(statements(SQLITE))
            self._prepare(SQLITE)
        except sqlite3.DatabaseError as e:
            raise CorruptDatastoreError(f"{path}: not a readable document table ({e})") from None

    @classmethod
    def from_dir(cls, folder: Path) -> SqliteTable:
        return cls(Path(folder) / TABLE_FILE)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, list(args)).fetchall()

    @contextmanager
    def _transaction(self) -> Iterator[Run]:
        def run(sql: str, args: Sequence[Any] = (), many: bool = False,
                ) -> list[tuple[Any, ...]]:
            if many:
                self._db.executemany(sql, args)
                return []
            return self._db.execute(sql, list(args)).fetchall()

        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield run
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _compact_storage(self) -> None:
        with self._lock:
            # VACUUM rewrites the file without free pages; the checkpoint empties the WAL.
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _columns(self, table: str) -> set[str]:
        return {r[1] for r in self._read(f"PRAGMA table_info({table})")}

    def check_integrity(self) -> None:
        result = self._read("PRAGMA quick_check")[0][0]
        if result != "ok":
            raise CorruptDatastoreError(f"{self.path}: integrity check failed: {result}")
