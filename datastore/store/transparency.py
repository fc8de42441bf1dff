"""A datastore's transparency log, as its owner and its clients see it: signed
checkpoints, entries, proofs, and what an opt-out receipt carries.

The log's leaves and hashes live in the document table (datastore.table.log), written in
the transaction of each change. Its checkpoints are C2SP tlog-checkpoints whose origin
names the datastore and the log's random id, signed as C2SP signed notes with the
operator's Ed25519 key (`SILO_LOG_KEY_FILE`, made by `silo log keygen`). Without a key
the log is kept and its proofs served all the same; its checkpoints are unsigned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from datastore.errors import InvalidInputError
from datastore.table.base import DocumentTable
from datastore.table.log import LogHead
from datastore.tlog.keys import Signer, b64, read_key_file
from datastore.tlog.leaf import Leaf
from datastore.tlog.note import Checkpoint

KEY_FILE_ENV = "SILO_LOG_KEY_FILE"


def signer_from_env() -> Signer | None:
    """The operator's signing key from the file `SILO_LOG_KEY_FILE` names, if set."""
    path = os.environ.get(KEY_FILE_ENV)
    return read_key_file(path) if path else None


@dataclass(frozen=True)
class ReceiptLog:
    """What a receipt proves: its leaf, at its index, is in a signed checkpoint."""

    index: int
    leaf: bytes
    checkpoint: str  # the note: signed, or the checkpoint text alone without a key
    inclusion: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "leaf": b64(self.leaf), "checkpoint": self.checkpoint,
                "inclusion": [b64(h) for h in self.inclusion]}


class TransparencyLog:
    """The log of one datastore (see the module docstring)."""

    def __init__(self, table: DocumentTable, name: str, signer: Signer | None) -> None:
        self.table = table
        self.name = name
        self.signer = signer
        self._origin: str | None = None

    @property
    def origin(self) -> str:
        """The checkpoints' origin line: the datastore's name and the log's id."""
        if self._origin is None:
            self._origin = f"silo/{self.name}/{self.table.log.size_and_id()[1]}"
        return self._origin

    @property
    def verifier_key(self) -> str | None:
        """The note verifier key of the signer (None: checkpoints are unsigned)."""
        return None if self.signer is None else self.signer.verifier().to_text()

    def head(self, size: int | None = None) -> LogHead:
        return self.table.log.head(size)

    def checkpoint(self, head: LogHead) -> Checkpoint:
        return Checkpoint(self.origin, head.size, head.root)

    def note(self, head: LogHead | None = None) -> str:
        """The checkpoint at `head` (the current one if None) as a signed note, or its
        text alone without a key."""
        checkpoint = self.checkpoint(head or self.head())
        return checkpoint.sign([self.signer]) if self.signer else checkpoint.to_text()

    def entries(self, start: int, end: int) -> list[tuple[int, bytes]]:
        """(index, leaf bytes) of [start, end) as far as the log reaches (a page at most)."""
        if start < 0 or end < start:
            raise InvalidInputError(f"entries need 0 <= start <= end; got start {start}, "
                                    f"end {end}")
        size = self.table.log.size_and_id()[0]
        if start > size:
            raise InvalidInputError(f"start {start} is past the log's {size} leaves")
        return list(enumerate(self.table.log.leaves(start, end), start))

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return self.table.log.inclusion(index, size)

    def consistency(self, old: int, new: int) -> list[bytes]:
        return self.table.log.consistency(old, new)

    def receipt(self, index: int) -> ReceiptLog:
        """The proof of the leaf at `index`: its inclusion in the checkpoint of the tree
        that ends with it."""
        (data,) = self.table.log.leaves(index, index + 1)
        return ReceiptLog(index, data, self.note(self.head(index + 1)),
                          tuple(self.inclusion(index, index + 1)))

    def record(self, leaf: Leaf) -> LogHead:
        """Append a leaf for a change outside the document table (activate, reindex)."""
        return self.table.record(leaf)
