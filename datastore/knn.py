"""The kNN key/value store: one row per entry, in three flat files that only grow.

keys.f16     (n, dim) float16: the LM's final hidden state (after the final norm) at
             position t of a document
values.i32   (n,) int32: the token at t+1 (int32, because vocabularies pass 32767)
charpos.i32  (n,) int32: character offset in the document where that next token starts,
             for attribution snippets

Entry id = row. A document's entries are one contiguous range (recorded in the table),
so entry -> (document, position) is a binary search over the table's ranges and
position = entry_id - entry_start. Appends go through buffered files and `flush()`
fsyncs them; readers see the rows through read-only memmaps, so memory does not grow
with the store. `truncate(n)` drops rows written after the last committed document
(restart after a crash); `erase(ranges)` overwrites rows with zeros (compaction).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from datastore.errors import CorruptDatastoreError

KEYS_FILE = "keys.f16"
VALUES_FILE = "values.i32"
CHARPOS_FILE = "charpos.i32"
FILES = (KEYS_FILE, VALUES_FILE, CHARPOS_FILE)


class KeyValueStore:
    """Append-only fp16 keys, int32 values and int32 char positions of a datastore."""

    def __init__(self, folder: Path, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.folder = Path(folder)
        self.dim = dim
        for name in FILES:
            (self.folder / name).touch(exist_ok=True)
        self._n = self._rows_on_disk()
        self._maps: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_dir(cls, folder: Path, dim: int) -> KeyValueStore:
        for name in FILES:
            if not (Path(folder) / name).exists():
                raise CorruptDatastoreError(f"{Path(folder) / name}: missing")
        return cls(folder, dim)

    def _rows_on_disk(self) -> int:
        """Whole rows present in all three files (a crash may leave a partial tail)."""
        sizes = [os.path.getsize(self.folder / n) for n in FILES]
        return min(sizes[0] // (2 * self.dim), sizes[1] // 4, sizes[2] // 4)

    def __len__(self) -> int:
        return self._n

    def append(self, keys: np.ndarray, values: np.ndarray, charpos: np.ndarray) -> None:
        """Append rows: keys (r, dim) float, values (r,) and charpos (r,) ints."""
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must be (r, {self.dim}), got {keys.shape}")
        if not len(keys) == len(values) == len(charpos):
            raise ValueError("keys, values and charpos must have the same length")
        for name, arr in ((KEYS_FILE, keys.astype(np.float16)),
                          (VALUES_FILE, values.astype(np.int32)),
                          (CHARPOS_FILE, charpos.astype(np.int32))):
            with open(self.folder / name, "ab") as f:
                f.write(np.ascontiguousarray(arr).tobytes())
                f.flush()
                os.fsync(f.fileno())
        self._n += len(keys)
        self._maps = None

    def refresh(self, limit: int | None = None) -> None:
        """Count the rows again after another process wrote the files, dropping any tail
        past `limit` (rows a write cut short never committed)."""
        self._n = self._rows_on_disk()
        self._maps = None
        if limit is not None and self._n > limit:
            self.truncate(limit)

    def truncate(self, n: int) -> None:
        """Drop every row from `n` on (rows written but never committed to the table)."""
        if n > self._rows_on_disk():
            raise CorruptDatastoreError(
                f"{self.folder}: the table names {n} entries but the key files hold only "
                f"{self._rows_on_disk()}")
        for name, width in ((KEYS_FILE, 2 * self.dim), (VALUES_FILE, 4), (CHARPOS_FILE, 4)):
            os.truncate(self.folder / name, n * width)
        self._n = n
        self._maps = None

    def _memmaps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Readers (searches) and the writer (append) run on different threads: maps are
        # reused only while they cover exactly the current row count, so maps a reader
        # built from a count an append has since moved past are never served again.
        n, maps = self._n, self._maps
        if maps is not None and len(maps[1]) == n:
            return maps
        if n == 0:
            return (np.zeros((0, self.dim), np.float16), np.zeros(0, np.int32),
                    np.zeros(0, np.int32))
        maps = (np.memmap(self.folder / KEYS_FILE, np.float16, "r", shape=(n, self.dim)),
                np.memmap(self.folder / VALUES_FILE, np.int32, "r", shape=(n,)),
                np.memmap(self.folder / CHARPOS_FILE, np.int32, "r", shape=(n,)))
        self._maps = maps
        return maps

    @property
    def keys(self) -> np.ndarray:
        """(n, dim) float16 memmap (read-only)."""
        return self._memmaps()[0]

    @property
    def values(self) -> np.ndarray:
        """(n,) int32 memmap: next token of each entry."""
        return self._memmaps()[1]

    @property
    def charpos(self) -> np.ndarray:
        """(n,) int32 memmap: char offset of the next token in its document."""
        return self._memmaps()[2]

    def erase(self, starts: np.ndarray, ends: np.ndarray) -> None:
        """Overwrite the rows of the ranges [starts[i], ends[i]) with zeros, in place.
        Values become -1. Entry ids stay stable, so nothing else is renumbered."""
        self._maps = None
        keys = np.memmap(self.folder / KEYS_FILE, np.float16, "r+", shape=(self._n, self.dim))
        values = np.memmap(self.folder / VALUES_FILE, np.int32, "r+", shape=(self._n,))
        charpos = np.memmap(self.folder / CHARPOS_FILE, np.int32, "r+", shape=(self._n,))
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            keys[s:e] = 0
            values[s:e] = -1
            charpos[s:e] = 0
        for arr in (keys, values, charpos):
            arr.flush()
        del keys, values, charpos
