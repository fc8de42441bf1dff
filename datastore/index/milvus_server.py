"""The kNN index on a Milvus server (or cluster), shared by every replica of a datastore.

One collection per datastore (`silo_<name>_<8 hex>`, recorded in `milvus.json` in the
folder and in the manifest) holds each entry's key vector with scalar fields: entry id
(primary key), next token, char position, document row, licence class code and source.
So a licence or scope filter is a constant-size expression over the class and source
fields, and replicas pull from it the key rows that other replicas added.

Index types: FLAT (exact), IVF_FLAT, IVF_PQ (nlist, M, nbits, nprobe of the config),
HNSW (M 16, efConstruction 200, ef max(k, 64)), and on GPU clusters GPU_IVF_PQ and
GPU_CAGRA.

Exactness across the consistency window. A Milvus delete is invisible to searches below
Strong consistency, and Strong costs one time tick (~0.2 s) per search. Instead, every
index write (a batch of inserts, a delete) is followed by an upsert of a sentinel row
(id -1) whose commit timestamp is the *fence*; the document table records the fence in
the same transaction that publishes the entries or clears the pending deletes. Searches
run at consistency "Customized" with guarantee_timestamp = the fence of the table state
they read: Milvus answers once it has applied everything up to the fence (no wait once
a tick has passed), so every recorded write is visible. Rows tombstoned whose delete is
not yet behind the fence (an opt-out in flight, or one a crash or an outage cut short)
are excluded by `doc_row not in [...]`: only those, so the expression never grows with
the number of opt-outs. Entries published later are cut off by `id < n` of the
snapshot.

A server that cannot be reached raises UnavailableError (HTTP 503); a collection the
server released on restart is loaded again on the next call.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from datastore.config import DatastoreConfig
from datastore.errors import CorruptDatastoreError, InvalidInputError, UnavailableError
from datastore.filter import EntryFilter
from datastore.index.base import SharedKnnIndex, pad_results

LOCATION_FILE = "milvus.json"
INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_PQ", "HNSW", "GPU_IVF_PQ", "GPU_CAGRA")
TOKEN_ENV = "SILO_MILVUS_TOKEN"  # credentials come from here, never from the manifest
SENTINEL = -1  # primary key of the fence row; searches keep to id >= 0
INSERT_ROWS = 4096  # rows per insert request
QUERY_ROWS = 16_384  # Milvus's cap on rows per query
SEARCH_BATCH = 1024  # queries per search request
DELETE_ROWS = 1000  # document rows per delete expression
CALL_TIMEOUT_S = 10
_T = TypeVar("_T")


def public_uri(uri: str) -> str:
    """The URI without user or password (for the manifest and messages)."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _index_params(config: DatastoreConfig) -> dict[str, Any]:
    kind = config.milvus_index
    if kind in ("IVF_FLAT",):
        return {"nlist": config.nlist}
    if kind in ("IVF_PQ", "GPU_IVF_PQ"):
        return {"nlist": config.nlist, "m": config.m, "nbits": config.nbits}
    if kind == "HNSW":
        return {"M": 16, "efConstruction": 200}
    if kind == "GPU_CAGRA":
        return {"intermediate_graph_degree": 64, "graph_degree": 32}
    return {}


def _search_params(kind: str, k: int, nprobe: int) -> dict[str, Any]:
    if kind.startswith(("IVF", "GPU_IVF")):
        return {"nprobe": nprobe}
    if kind == "HNSW":
        return {"ef": max(k, 64)}
    if kind == "GPU_CAGRA":
        return {"itopk_size": max(k, 64)}
    return {}


class MilvusServerIndex(SharedKnnIndex):
    """The collection of one datastore on a Milvus server."""

    files: tuple[str, ...] = (LOCATION_FILE,)

    def __init__(self, location: dict[str, Any], config: DatastoreConfig, dim: int) -> None:
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise InvalidInputError(
                "the milvus backend needs pymilvus: pip install 'silo-lm[milvus]'") from None
        self._location = location
        self.collection = str(location["collection"])
        self.config = config
        self.dim = dim
        self.kind = config.milvus_index
        self._uri = config.milvus_uri
        self.client = self._call(lambda: MilvusClient(
            uri=self._uri, token=_token(), db_name=location.get("db_name", "default"),
            timeout=CALL_TIMEOUT_S))

    # ---- lifecycle -------------------------------------------------------------------

    @classmethod
    def create(cls, folder: Path, config: DatastoreConfig, dim: int) -> MilvusServerIndex:
        from pymilvus import DataType

        if config.milvus_index not in INDEX_TYPES:
            raise InvalidInputError(f"milvus_index must be one of {', '.join(INDEX_TYPES)}, "
                                    f"got {config.milvus_index!r}")
        slug = re.sub(r"[^a-z0-9_]+", "_", config.name.lower())[:40]
        location = {"uri": public_uri(config.milvus_uri), "db_name": "default",
                    "collection": f"silo_{slug}_{uuid.uuid4().hex[:8]}"}
        index = cls(location, config, dim)
        client = index.client
        schema = client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("value", DataType.INT32)
        schema.add_field("charpos", DataType.INT32)
        schema.add_field("doc_row", DataType.INT64)
        schema.add_field("license_class", DataType.INT8)
        schema.add_field("source", DataType.VARCHAR, max_length=1024)
        params = client.prepare_index_params()
        params.add_index(field_name="vector", index_type=config.milvus_index,
                         metric_type="L2", params=_index_params(config))
        index._call(lambda: client.create_collection(
            index.collection, schema=schema, index_params=params,
            consistency_level="Bounded"))
        (Path(folder) / LOCATION_FILE).write_text(json.dumps(location, indent=1))
        return index

    @classmethod
    def from_dir(cls, folder: Path, config: DatastoreConfig, dim: int) -> MilvusServerIndex:
        path = Path(folder) / LOCATION_FILE
        try:
            location = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CorruptDatastoreError(f"{path}: unreadable ({e})") from None
        index = cls(location, config, dim)
        if not index._call(lambda: index.client.has_collection(index.collection)):
            raise CorruptDatastoreError(
                f"{path}: collection {index.collection!r} is not on the Milvus server at "
                f"{location['uri']}")
        index._call(lambda: index.client.load_collection(index.collection))
        return index

    @property
    def location(self) -> dict[str, Any]:
        return self._location

    def close(self) -> None:
        self.client.close()

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run one client call; failures become UnavailableError, and a collection the
        server released (it restarted) is loaded again and the call retried once."""
        from pymilvus.exceptions import MilvusException

        for attempt in (0, 1):
            try:
                return fn()
            except MilvusException as e:
                if attempt == 0 and "not loaded" in str(e).lower():
                    self._load()
                    continue
                raise UnavailableError(f"the kNN index on the Milvus server at "
                                       f"{public_uri(self._uri)} failed: {e}") from None
            except Exception as e:  # grpc errors when the server is down
                raise UnavailableError(f"the kNN index on the Milvus server at "
                                       f"{public_uri(self._uri)} cannot be reached: "
                                       f"{type(e).__name__}: {e}") from None
        raise AssertionError("unreachable")

    def _load(self) -> None:
        try:
            self.client.load_collection(self.collection)
        except Exception as e:
            raise UnavailableError(f"the kNN index on the Milvus server at "
                                   f"{public_uri(self._uri)} cannot load its collection: "
                                   f"{e}") from None

    # ---- writes ----------------------------------------------------------------------

    def __len__(self) -> int:
        rows = self._call(lambda: self.client.query(
            self.collection, filter="id >= 0", output_fields=["count(*)"],
            consistency_level="Strong"))
        return int(rows[0]["count(*)"])

    def add_entries(self, keys: np.ndarray, ids: np.ndarray, fields: dict[str, Any]) -> None:
        """Insert entries (r, dim) under ids (r,) with their scalar fields: value,
        charpos, doc_row, license_class (each (r,) ints) and source (r strings)."""
        keys = np.asarray(keys, dtype=np.float32)
        for i in range(0, len(keys), INSERT_ROWS):
            part = slice(i, i + INSERT_ROWS)
            rows = [{"id": e, "vector": v, "value": val, "charpos": cp, "doc_row": r,
                     "license_class": c, "source": s}
                    for e, v, val, cp, r, c, s in zip(
                        ids[part].tolist(), keys[part].tolist(),
                        np.asarray(fields["value"][part]).tolist(),
                        np.asarray(fields["charpos"][part]).tolist(),
                        np.asarray(fields["doc_row"][part]).tolist(),
                        np.asarray(fields["license_class"][part]).tolist(),
                        list(fields["source"][part]), strict=True)]
            self._call(partial(self.client.insert, self.collection, rows))

    def delete_rows(self, doc_rows: Sequence[int]) -> None:
        """Delete every entry of the given document rows (an opt-out)."""
        rows = sorted(int(r) for r in doc_rows)
        for i in range(0, len(rows), DELETE_ROWS):
            expr = f"doc_row in {rows[i:i + DELETE_ROWS]}"
            self._call(partial(self.client.delete, self.collection, filter=expr))

    def remove(self, starts: np.ndarray, ends: np.ndarray) -> None:
        """Compaction: delete the entries of the id ranges (already gone after an
        opt-out's delete_rows; deleting again is harmless)."""
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            self._call(partial(self.client.delete, self.collection,
                               filter=f"id >= {s} and id < {e}"))

    def fence(self) -> int:
        """A server timestamp later than every write this client made: the commit
        timestamp of an upsert of the sentinel row."""
        row = {"id": SENTINEL, "vector": [0.0] * self.dim, "value": -1, "charpos": 0,
               "doc_row": -1, "license_class": -1, "source": ""}
        conn = self.client._get_connection()  # the MilvusClient hides the timestamp
        result = self._call(lambda: conn.upsert_rows(self.collection, [row],
                                                     timeout=CALL_TIMEOUT_S))
        return int(result.timestamp)

    def save(self) -> None:
        self._call(lambda: self.client.flush(self.collection))

    # ---- reads -----------------------------------------------------------------------

    def _at(self, fence: int) -> dict[str, Any]:
        return {"consistency_level": "Customized", "guarantee_timestamp": max(fence, 1),
                "timeout": CALL_TIMEOUT_S}

    def search(self, queries: np.ndarray, k: int, filter: EntryFilter | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """A search at Strong consistency (outside a datastore's replica state)."""
        dist, ids = self._search(queries, k, _expression(filter, ()),
                                 {"consistency_level": "Strong", "timeout": CALL_TIMEOUT_S})
        return dist, ids

    def search_at(self, queries: np.ndarray, k: int, filter: EntryFilter, fence: int,
                  pending: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Search as of the table state the filter was computed from: at its fence,
        excluding its pending rows."""
        return self._search(queries, k, _expression(filter, pending), self._at(fence))

    def _search(self, queries: np.ndarray, k: int, expr: str | None,
                consistency: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(queries, np.float32)
        dist = np.full((len(q), k), np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        if expr is None or len(q) == 0:  # nothing may be returned
            return dist, ids
        params = {"metric_type": "L2",
                  "params": _search_params(self.kind, k, self.config.nprobe)}
        for b in range(0, len(q), SEARCH_BATCH):
            part = q[b:b + SEARCH_BATCH].tolist()
            hits = self._call(partial(
                self.client.search, self.collection, data=part, limit=k, filter=expr,
                search_params=params, **consistency))
            for row, found in enumerate(hits, start=b):
                for col, hit in enumerate(found):
                    dist[row, col], ids[row, col] = hit["distance"], hit["id"]
        return pad_results(dist, ids, k)

    def fetch(self, start: int, end: int, fence: int,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Key rows [start, end): keys (n, dim) float32, values and charpos (n,) int32.
        Ids the index no longer holds come back erased (zero key, value -1)."""
        n = end - start
        keys = np.zeros((n, self.dim), np.float32)
        values = np.full(n, -1, np.int32)
        charpos = np.zeros(n, np.int32)
        for s in range(start, end, QUERY_ROWS):
            e = min(end, s + QUERY_ROWS)
            rows = self._call(partial(
                self.client.query, self.collection, filter=f"id >= {s} and id < {e}",
                limit=QUERY_ROWS, output_fields=["id", "vector", "value", "charpos"],
                **self._at(fence)))
            for r in rows:
                i = int(r["id"]) - start
                keys[i], values[i], charpos[i] = r["vector"], r["value"], r["charpos"]
        return keys, values, charpos


def _expression(filter: EntryFilter | None, pending: Sequence[int]) -> str | None:
    """The filter as a Milvus expression of constant size: the snapshot's id bound, the
    licence classes and sources its allowed documents have, and the pending rows. None
    when no document is allowed.

    Exact because the filter is a product (allowed = class allowed and source allowed):
    a live document whose class and source both occur among allowed documents is itself
    allowed. Removed documents are not covered by it: their vectors are deleted behind
    the fence, or pending."""
    if filter is None:
        return "id >= 0"
    docs = filter.docs
    live = ~docs.removed
    allowed = live & ~filter.excluded_docs
    if not allowed.any():
        return None
    parts = [f"id >= 0 and id < {filter.n_entries}"]
    refused = live & filter.excluded_docs
    if refused.any():
        classes = np.unique(docs.class_code[allowed])
        sources = np.unique(docs.source_code[allowed])
        if not np.isin(docs.class_code[refused], classes).all():
            parts.append(f"license_class in {classes.tolist()}")
        if not np.isin(docs.source_code[refused], sources).all():
            parts.append(f"source in {json.dumps([docs.sources[s] for s in sources])}")
    if pending:
        parts.append(f"doc_row not in {sorted(int(r) for r in pending)}")
    return " and ".join(parts)


def _token() -> str:
    import os

    return os.environ.get(TOKEN_ENV, "")
