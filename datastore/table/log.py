"""The transparency log's storage, in the document table, written in the same transaction
as the change each leaf records (so the log and the datastore never disagree).

    log_state    one row: the log's size and its id (a random hex, part of the
                 checkpoint's origin, so two logs never share an origin)
    log_leaves   idx -> the leaf's bytes (datastore.tlog.leaf)
    log_hashes   node -> the hash of a complete subtree (datastore.tlog.merkle), node =
                 level << 48 | index

An append takes the log's size with `UPDATE ... RETURNING` (a row lock in PostgreSQL, so
replicas append one at a time; SQLite's writer lock does the same), stores the leaf and
the subtree hashes it completes, and reads O(log n) hashes to do it. A checkpoint, an
inclusion proof and a consistency proof each read O(log n) stored hashes in one query.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from datastore.errors import CorruptDatastoreError, InvalidInputError
from datastore.tlog.leaf import Leaf
from datastore.tlog.merkle import (
    EMPTY_ROOT,
    HashReader,
    consistency_proof,
    hashes_to_store,
    inclusion_proof,
    tree_root,
)

NODE_SHIFT = 48  # a node key holds the level above the index (2**48 leaves at most)
ENTRIES_PAGE = 1000  # leaves one read of the entries returns at most

# Runs one statement: (sql, args) -> rows (a table's read, or a transaction's run)
Query = Callable[..., list[tuple[Any, ...]]]


@dataclass(frozen=True)
class LogHead:
    """The log's size and root hash: what a checkpoint signs."""

    size: int
    root: bytes


EMPTY_HEAD = LogHead(0, EMPTY_ROOT)


def node_key(level: int, index: int) -> int:
    return (level << NODE_SHIFT) | index


def hash_reader(query: Query) -> HashReader:
    """The stored hashes of (level, index) pairs, read in one statement."""

    def read(indexes: Sequence[tuple[int, int]]) -> list[bytes]:
        if not indexes:
            return []
        keys = [node_key(level, i) for level, i in indexes]
        found = {int(k): bytes(h) for k, h in query(
            f"SELECT node, hash FROM log_hashes WHERE node IN ({','.join('?' * len(keys))})",
            keys)}
        missing = [k for k in keys if k not in found]
        if missing:
            raise CorruptDatastoreError(f"the transparency log lacks the stored hash of node "
                                        f"{missing[0] >> NODE_SHIFT}/"
                                        f"{missing[0] & ((1 << NODE_SHIFT) - 1)}")
        return [found[k] for k in keys]

    return read


def init_log(run: Query) -> None:
    """Create the log's state row where absent (a new table, or one from before the log)."""
    run("INSERT INTO log_state (id, size, log_id) VALUES (0, 0, ?) ON CONFLICT DO NOTHING",
        (uuid.uuid4().hex[:16],))


def append(run: Query, leaf: Leaf) -> tuple[int, LogHead]:
    """Append `leaf` inside the caller's write transaction: its index and the new head."""
    index = int(run("UPDATE log_state SET size = size + 1 WHERE id = 0 RETURNING size")
                [0][0]) - 1
    data = leaf.encode()
    read = hash_reader(run)
    rows = hashes_to_store(index, data, read)
    run("INSERT INTO log_leaves (idx, leaf) VALUES (?, ?)", (index, data))
    run("INSERT INTO log_hashes (node, hash) VALUES (?, ?)",
        [(node_key(level, i), h) for level, i, h in rows], True)
    return index, LogHead(index + 1, tree_root(index + 1, read))


class TableLog:
    """The log as stored in one document table (read outside any write)."""

    def __init__(self, read: Query) -> None:
        self._read = read
        self._hashes = hash_reader(read)

    def size_and_id(self) -> tuple[int, str]:
        size, log_id = self._read("SELECT size, log_id FROM log_state WHERE id = 0")[0]
        return int(size), str(log_id)

    def head(self, size: int | None = None) -> LogHead:
        """The head at `size` leaves (the current size if None)."""
        current = self.size_and_id()[0]
        size = current if size is None else size
        if not 0 <= size <= current:
            raise InvalidInputError(f"the log has {current} leaves; no tree of size {size}")
        return LogHead(size, tree_root(size, self._hashes))

    def leaves(self, start: int, end: int) -> list[bytes]:
        """Leaves [start, min(end, start + ENTRIES_PAGE)) that exist, in order."""
        end = min(end, start + ENTRIES_PAGE)
        return [bytes(r[0]) for r in self._read(
            "SELECT leaf FROM log_leaves WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end))]

    def inclusion(self, index: int, size: int) -> list[bytes]:
        if not 0 <= index < size:
            raise InvalidInputError(f"an inclusion proof needs 0 <= index < size; got index "
                                    f"{index}, size {size}")
        self._check_size(size)
        return inclusion_proof(index, size, self._hashes)

    def consistency(self, old: int, new: int) -> list[bytes]:
        if not 0 <= old <= new:
            raise InvalidInputError(f"a consistency proof needs 0 <= from <= to; got from "
                                    f"{old}, to {new}")
        self._check_size(new)
        return consistency_proof(old, new, self._hashes)

    def _check_size(self, size: int) -> None:
        current = self.size_and_id()[0]
        if size > current:
            raise InvalidInputError(f"the log has {current} leaves; no tree of size {size}")
