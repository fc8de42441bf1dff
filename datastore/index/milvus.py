"""Milvus backend through pymilvus: milvus-lite in the datastore folder, or a server.

One collection `entries` with the entry id as primary key and the key vector; the
entry filter becomes a Milvus boolean expression over id ranges (one clause per run of
excluded documents). Removal is `delete` by the same kind of expression. The same code
runs against a Milvus cluster when `milvus_uri` names one.

A server URI (http://, tcp://) is the shared server index instead
(datastore.index.milvus_server): scalar fields, ANN index types, deletes on opt-out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datastore.config import DatastoreConfig
from datastore.errors import CorruptDatastoreError, InvalidInputError
from datastore.filter import EntryFilter
from datastore.index.base import KnnIndex, pad_results

LITE_FILE = "milvus.db"
COLLECTION = "entries"
INSERT_ROWS = 8192  # rows per insert request


def _client(folder: Path, config: DatastoreConfig) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise InvalidInputError(
            "the milvus backend needs pymilvus (pip install pymilvus milvus-lite)") from None
    return MilvusClient(uri=config.milvus_uri or str(Path(folder) / LITE_FILE))


class MilvusIndex(KnnIndex):
    """The `entries` collection of one datastore."""

    files: tuple[str, ...] = ()  # milvus-lite keeps a folder of its own, which it checks

    def __init__(self, client: Any, dim: int, local: bool) -> None:
        self.client = client
        self.dim = dim
        self._local = local

    @classmethod
    def create(cls, folder: Path, config: DatastoreConfig, dim: int) -> MilvusIndex:
        from pymilvus import DataType

        client = _client(folder, config)
        if client.has_collection(COLLECTION):
            client.drop_collection(COLLECTION)
        schema = client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        params = client.prepare_index_params()
        params.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
        client.create_collection(COLLECTION, schema=schema, index_params=params)
        return cls(client, dim, not config.milvus_uri)

    @classmethod
    def from_dir(cls, folder: Path, config: DatastoreConfig, dim: int) -> MilvusIndex:
        client = _client(folder, config)
        if not client.has_collection(COLLECTION):
            raise CorruptDatastoreError(f"{folder}: Milvus collection {COLLECTION!r} missing")
        client.load_collection(COLLECTION)  # a reopened collection is not loaded
        return cls(client, dim, not config.milvus_uri)

    def __len__(self) -> int:
        rows = self.client.query(COLLECTION, filter="id >= 0", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.float32)
        for i in range(0, len(keys), INSERT_ROWS):
            rows = [{"id": int(e), "vector": v} for e, v in
                    zip(ids[i:i + INSERT_ROWS].tolist(), keys[i:i + INSERT_ROWS].tolist(),
                        strict=True)]
            self.client.insert(COLLECTION, rows)

    def remove(self, starts: np.ndarray, ends: np.ndarray) -> None:
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            self.client.delete(COLLECTION, filter=f"id >= {s} and id < {e}")

    def save(self) -> None:
        self.client.flush(COLLECTION)

    def search(self, queries: np.ndarray, k: int, filter: EntryFilter | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        expr = "" if filter is None else filter.milvus_expression()
        hits = self.client.search(COLLECTION, data=np.asarray(queries, np.float32).tolist(),
                                  limit=k, filter=expr, search_params={"metric_type": "L2"})
        dist = np.full((len(queries), k), np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row, found in enumerate(hits):
            for col, hit in enumerate(found):
                dist[row, col], ids[row, col] = hit["distance"], hit["id"]
        return pad_results(dist, ids, k)

    def close(self) -> None:
        self.client.close()
