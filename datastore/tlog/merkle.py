"""RFC 9162 Merkle tree over stored complete subtrees, with inclusion and consistency
proofs and their client-side checks.

A complete (perfect) subtree is addressed by (level, index): level 0 index i is leaf i's
hash, and (L, i) covers leaves [i * 2**L, (i + 1) * 2**L). Only complete subtrees are
stored, so appending a leaf writes 1 + (trailing one bits of its index) rows and never
changes a row already written.

Every range a root or a proof needs is [lo, hi) with lo a multiple of a power of two at
least hi - lo; such a range is a left-to-right run of complete subtrees (one per set bit
of hi - lo), and its RFC 9162 hash is their right fold. Each operation therefore lists
the (level, index) it needs, reads them with ONE call to a `HashReader` (one SQL query
for the document table), and hashes: O(log n) rows read, never the whole log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from datastore.errors import CorruptDatastoreError, InvalidInputError

HASH_SIZE = 32  # bytes of SHA-256
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) per RFC 9162 §2.1.1

# Given (level, index) pairs, return their stored hashes in the same order.
HashReader = Callable[[Sequence[tuple[int, int]]], list[bytes]]

Range = tuple[int, int]  # leaves [lo, hi)


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d): 32 bytes."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): 32 bytes."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2): RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtrees(lo: int, hi: int) -> list[tuple[int, int]]:
    """The complete subtrees, left to right, that make up [lo, hi), as (level, index)."""
    out = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        out.append((level, lo >> level))
        lo += 1 << level
    return out


def _read(read: HashReader, indexes: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """One call to the reader, its answer checked: (level, index) -> 32-byte hash."""
    if not indexes:
        return {}
    hashes = read(indexes)
    if len(hashes) != len(indexes):
        raise CorruptDatastoreError(
            f"the log's hash store returned {len(hashes)} hashes for {len(indexes)} asked")
    for at, h in zip(indexes, hashes, strict=True):
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise CorruptDatastoreError(f"the log's stored hash at (level, index) {at} "
                                        f"is not {HASH_SIZE} bytes")
    return dict(zip(indexes, hashes, strict=True))


def _range_hashes(ranges: list[Range], read: HashReader) -> list[bytes]:
    """MTH of each range, from one read of the subtrees they are made of."""
    parts = [_subtrees(lo, hi) for lo, hi in ranges]
    needed = list(dict.fromkeys(at for subtrees in parts for at in subtrees))
    stored = _read(read, needed)
    out = []
    for subtrees in parts:
        h = stored[subtrees[-1]]
        for at in reversed(subtrees[:-1]):
            h = node_hash(stored[at], h)
        out.append(h)
    return out


def hashes_to_store(index: int, leaf: bytes, read: HashReader) -> list[tuple[int, int, bytes]]:
    """The (level, index, hash) rows to store when the leaf data `leaf` is appended at
    position `index` (the log's size before it): its leaf hash, then every complete
    subtree it completes, lowest first. Reads the left siblings it needs, once."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise InvalidInputError(f"leaf index must be an integer >= 0, got {index!r}")
    ones = (~index & (index + 1)).bit_length() - 1  # trailing one bits of index
    siblings = [(level, (index >> level) - 1) for level in range(ones)]
    stored = _read(read, siblings)
    h = leaf_hash(leaf)
    rows = [(0, index, h)]
    for level, at in enumerate(siblings, start=1):
        h = node_hash(stored[at], h)
        rows.append((level, index >> level, h))
    return rows


def _check_size(size: int, name: str = "size") -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInputError(f"tree {name} must be an integer >= 0, got {size!r}")


def tree_root(size: int, read: HashReader) -> bytes:
    """MTH of the first `size` leaves (32 bytes); SHA-256 of nothing for size 0."""
    _check_size(size)
    if size == 0:
        return EMPTY_ROOT
    return _range_hashes([(0, size)], read)[0]


def _path(index: int, size: int) -> list[Range]:
    """The ranges whose hashes make PATH(index, D[size]) (RFC 9162 §2.1.3.1), leaf
    side first."""
    out = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    return out[::-1]


def inclusion_proof(index: int, size: int, read: HashReader) -> list[bytes]:
    """The audit path of leaf `index` in the tree of `size` leaves: at most
    ceil(log2 size) hashes of 32 bytes, leaf side first."""
    _check_size(size)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
        raise InvalidInputError(
            f"leaf index {index!r} is not in a tree of size {size} (need 0 <= index < size)")
    return _range_hashes(_path(index, size), read)


def _subproof(old: int, new: int) -> list[Range]:
    """The ranges whose hashes make PROOF(old, D[new]) = SUBPROOF(old, D[new], true)
    (RFC 9162 §2.1.4.1), for 0 < old < new; deepest first."""
    out = []
    lo, hi, m, whole = 0, new, old, True
    while m < hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:  # the old tree's last subtree is not the old root itself
        out.append((lo, hi))
    return out[::-1]


def consistency_proof(old: int, new: int, read: HashReader) -> list[bytes]:
    """The proof that the tree of `old` leaves is a prefix of the tree of `new` leaves:
    at most ceil(log2 new) + 1 hashes of 32 bytes. Empty when old is 0 (the empty tree
    is a prefix of every tree) or old == new."""
    _check_size(old, "old size")
    _check_size(new, "new size")
    if old > new:
        raise InvalidInputError(
            f"no consistency proof from size {old} to the smaller size {new}")
    if old == 0 or old == new:
        return []
    return _range_hashes(_subproof(old, new), read)


def _is_hashes(proof: Sequence[bytes]) -> bool:
    return isinstance(proof, (list, tuple)) and all(
        isinstance(h, bytes) and len(h) == HASH_SIZE for h in proof)


def _is_count(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def verify_inclusion(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes],
                     root: bytes) -> bool:
    """True iff `proof` shows the leaf hash at `index` in the tree of `size` leaves with
    this root (RFC 9162 §2.1.3.2). False, never an exception, for a bad proof."""
    if not (_is_count(index) and _is_count(size) and index < size and _is_hashes(proof)):
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """True iff `proof` shows the tree (old, old_root) is a prefix of (new, new_root)
    (RFC 9162 §2.1.4.2; old 0 needs the empty root and old == new equal roots, both with
    an empty proof). False, never an exception, for a bad proof."""
    if not (_is_count(old) and _is_count(new) and old <= new and _is_hashes(proof)):
        return False
    if old == 0:
        return not proof and old_root == EMPTY_ROOT
    if old == new:
        return not proof and old_root == new_root
    if not proof:
        return False
    path = list(proof)
    if old & (old - 1) == 0:  # old is a power of two: its root is a node of the new tree
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == old_root and sr == new_root and sn == 0


class MemoryHashes:
    """A log's stored hashes in a dict: for tests, small tools, and a verifier that
    rebuilds the tree from leaves it fetched."""

    def __init__(self) -> None:
        self._hashes: dict[tuple[int, int], bytes] = {}
        self._size = 0

    @property
    def size(self) -> int:
        """Number of leaves appended."""
        return self._size

    def append(self, leaf: bytes) -> int:
        """Append leaf data; returns its index."""
        index = self._size
        for level, i, h in hashes_to_store(index, leaf, self.read):
            self._hashes[(level, i)] = h
        self._size += 1
        return index

    def read(self, indexes: Sequence[tuple[int, int]]) -> list[bytes]:
        """The `HashReader` over this store."""
        try:
            return [self._hashes[at] for at in indexes]
        except KeyError as e:
            raise CorruptDatastoreError(f"no stored hash at (level, index) {e.args[0]}") from None

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (all of them by default)."""
        size = self._size if size is None else size
        if _is_count(size) and size > self._size:
            raise InvalidInputError(f"tree size {size} is beyond the {self._size} leaves held")
        return tree_root(size, self.read)
