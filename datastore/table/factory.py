"""Which document table a datastore uses: SQLite in its folder, or PostgreSQL.

A new datastore keeps its table in PostgreSQL when `SILO_DATABASE_URL` is set, else in
SQLite. The manifest records the choice (`database`: host, port, dbname and schema, or
None for SQLite), so a datastore is always reopened where it was built. On reopening,
`SILO_DATABASE_URL` (when set) is the connection string, credentials included, else the
manifest's location with libpq's environment variables.

psycopg is imported only for a PostgreSQL table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from datastore.errors import UnavailableError
from datastore.table.base import DocumentTable
from datastore.table.sqlite import SqliteTable

DATABASE_ENV = "SILO_DATABASE_URL"


def _pg() -> Any:
    try:
        import datastore.table.postgres as table_pg
    except ImportError as e:
        raise UnavailableError(
            f"the document table is in PostgreSQL but psycopg cannot be imported ({e}); "
            "install the postgres extra: pip install 'silo-lm[postgres]'") from None
    return table_pg


def new_database_location(name: str) -> dict[str, Any] | None:
    """Where a new datastore called `name` will keep its table: a PostgreSQL location
    (for the manifest) when SILO_DATABASE_URL is set, else None (SQLite)."""
    url = os.environ.get(DATABASE_ENV)
    return _pg().database_location(url, name) if url else None


def open_table(folder: Path, database: dict[str, Any] | None,
               create: bool = False) -> DocumentTable:
    """The document table of the datastore in `folder` whose manifest records
    `database`; `create` makes its tables where absent (a build)."""
    if database is None:
        return SqliteTable.from_dir(folder)
    table_pg = _pg()
    url = os.environ.get(DATABASE_ENV) or table_pg.conninfo_of(database)
    table: DocumentTable = table_pg.PostgresTable(url, database["schema"], create=create)
    return table
