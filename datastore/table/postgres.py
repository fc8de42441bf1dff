"""The document table in PostgreSQL: shared state for a deployment of many replicas.

Each datastore's tables live in their own schema (`silo_<name>_<8 hex>`, chosen at
build time), so one database can hold several datastores. The manifest records where:
host, port, dbname and schema, never a user or password; credentials come from the
environment (`SILO_DATABASE_URL`, or libpq's PGUSER/PGPASSWORD/PGPASSFILE).

Durability: every session runs with `synchronous_commit=on`, so a write returns only
once its commit is flushed to the server's WAL (an acknowledged opt-out is never lost).
One connection per table, shared by the process's threads under a lock; a connection
that fails is dropped and the next call opens a new one. A database that cannot be
reached raises UnavailableError (HTTP 503): nothing is answered without the table.

Compaction runs `VACUUM FULL documents`, which rewrites the table (and its TOAST) without
the erased text; it locks the table while it runs. The server's WAL segments, replicas
of the database and its backups keep the text until they are recycled, which is the
operator's retention policy, outside this code.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from datastore.errors import CorruptDatastoreError, InvalidInputError, UnavailableError
from datastore.table.base import DocumentTable
from datastore.table.schema import POSTGRES, Run, statements

CONNECT_TIMEOUT_S = 5
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_TABLES = ("documents", "optouts", "changes")  # the tables every version had


def database_location(url: str, name: str) -> dict[str, Any]:
    """Where a new datastore called `name` keeps its table in the database at `url`:
    {"host", "port", "dbname", "schema"}, without credentials (for the manifest)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        raise InvalidInputError(f"SILO_DATABASE_URL is not a PostgreSQL URL: {e}") from None
    slug = re.sub(r"[^a-z0-9_]+", "_", name.lower())[:40]
    return {"host": params.get("host"), "port": params.get("port"),
            "dbname": params.get("dbname"), "schema": f"silo_{slug}_{uuid.uuid4().hex[:8]}"}


def conninfo_of(location: dict[str, Any]) -> str:
    """A connection string for a manifest's database location (credentials from libpq's
    environment variables)."""
    return make_conninfo(**{k: location[k] for k in ("host", "port", "dbname")
                            if location.get(k)})


def _pg(sql: str) -> str:
    """The shared queries use `?` placeholders; psycopg takes `%s` (no query holds a
    literal ? or %)."""
    return sql.replace("?", "%s")


class PostgresTable(DocumentTable):
    """The document table of one datastore, in schema `schema` of a PostgreSQL database.

    create: make the schema and its tables where absent; otherwise a missing schema is a
    CorruptDatastoreError (the manifest names a table that is not there).
    """

    _duplicate = psycopg.errors.UniqueViolation

    def __init__(self, conninfo: str, schema: str, create: bool = False) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise CorruptDatastoreError(f"not a datastore schema name: {schema!r}")
        self.schema = schema
        self._conninfo = conninfo
        where = conninfo_to_dict(conninfo)
        self.location = (f"postgresql://{where.get('host') or ''}:{where.get('port') or ''}"
                         f"/{where.get('dbname') or ''} schema {schema}")
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        if not create:
            self.check_integrity()
        # every statement is IF NOT EXISTS: creates a new schema, completes an older one
        with self._connection() as conn, conn.transaction():
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            conn.execute(statements(POSTGRES))
        self._prepare(POSTGRES)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """The open connection, under the lock; a connection failure drops it and is
        raised as UnavailableError."""
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(
                        self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                        options=f"-c search_path={self.schema} -c synchronous_commit=on")
                yield self._conn
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UnavailableError(
                    f"the document table at {self.location} cannot be reached: {reason}",
                ) from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        had_connection = self._conn is not None
        try:
            return self._query(sql, args)
        except UnavailableError:
            if not had_connection:
                raise
            return self._query(sql, args)  # the old connection died (a server restart)

    def _query(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            return conn.execute(_pg(sql), list(args)).fetchall()

    @contextmanager
    def _transaction(self) -> Iterator[Run]:
        with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            def run(sql: str, args: Sequence[Any] = (), many: bool = False,
                    ) -> list[tuple[Any, ...]]:
                if many:
                    cur.executemany(_pg(sql), args)
                    return []
                cur.execute(_pg(sql), list(args))
                return cur.fetchall() if cur.description else []

            yield run

    def _compact_storage(self) -> None:
        with self._connection() as conn:
            conn.execute("VACUUM FULL documents")

    def _columns(self, table: str) -> set[str]:
        return {r[0] for r in self._read(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND "
            "table_name = ?", (self.schema, table))}

    def check_integrity(self) -> None:
        found = self._read("SELECT " + ", ".join(f"to_regclass('{self.schema}.{t}')"
                                                 for t in _TABLES))[0]
        missing = [t for t, f in zip(_TABLES, found, strict=True) if f is None]
        if missing:
            raise CorruptDatastoreError(
                f"{self.location}: no document table there (missing {', '.join(missing)}); "
                "check SILO_DATABASE_URL names the database the datastore was built in")
