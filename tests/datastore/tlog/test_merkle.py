"""The Merkle tree against a reference written from RFC 9162 alone (§2.1.1 MTH,
§2.1.3.1 PATH, §2.1.4.1 PROOF/SUBPROOF, recursive and over all the leaves)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import pytest

from datastore.errors import CorruptDatastoreError, InvalidInputError
from datastore.tlog.merkle import (
    EMPTY_ROOT,
    MemoryHashes,
    consistency_proof,
    hashes_to_store,
    inclusion_proof,
    leaf_hash,
    node_hash,
    tree_root,
    verify_consistency,
    verify_inclusion,
)

N = 70


def _k(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: Sequence[bytes]) -> bytes:
    if len(d) == 0:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


def path(m: int, d: Sequence[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return path(m, d[:k]) + [mth(d[k:])]
    return path(m - k, d[k:]) + [mth(d[:k])]


def subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [mth(d)]
    k = _k(len(d))
    if m <= k:
        return subproof(m, d[:k], b) + [mth(d[k:])]
    return subproof(m - k, d[k:], False) + [mth(d[:k])]


LEAVES = [f"leaf {i}".encode() for i in range(N)]


@pytest.fixture(scope="module")
def log() -> MemoryHashes:
    store = MemoryHashes()
    for i, data in enumerate(LEAVES):
        assert store.append(data) == i
    return store


def test_hashes_follow_rfc_9162() -> None:
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()
    assert EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert tree_root(0, lambda ix: pytest.fail("read for the empty tree")) == EMPTY_ROOT


def test_roots_equal_reference(log: MemoryHashes) -> None:
    for n in range(N + 1):
        assert log.root(n) == mth(LEAVES[:n]), n


def test_inclusion_proofs_equal_reference_and_verify(log: MemoryHashes) -> None:
    for n in range(1, N + 1):
        root = mth(LEAVES[:n])
        for m in range(n):
            proof = inclusion_proof(m, n, log.read)
            assert proof == path(m, LEAVES[:n]), (m, n)
            assert len(proof) <= math.ceil(math.log2(n))
            assert verify_inclusion(m, n, leaf_hash(LEAVES[m]), proof, root)


def test_consistency_proofs_equal_reference_and_verify(log: MemoryHashes) -> None:
    for n in range(1, N + 1):
        for m in range(1, n + 1):
            proof = consistency_proof(m, n, log.read)
            assert proof == (subproof(m, LEAVES[:n], True) if m < n else []), (m, n)
            # RFC 9162's own example PROOF(3, D[7]) has 4 hashes: the bound is one more
            # than an audit path's
            assert len(proof) <= math.ceil(math.log2(n)) + 1
            assert verify_consistency(m, n, mth(LEAVES[:m]), mth(LEAVES[:n]), proof)
        assert consistency_proof(0, n, log.read) == []
        assert verify_consistency(0, n, EMPTY_ROOT, mth(LEAVES[:n]), [])


def test_rfc_example_consistency_proof_has_four_hashes(log: MemoryHashes) -> None:
    d = LEAVES[:7]
    c, dd = leaf_hash(d[2]), leaf_hash(d[3])
    g = node_hash(leaf_hash(d[0]), leaf_hash(d[1]))
    assert consistency_proof(3, 7, log.read) == [c, dd, g, mth(d[4:7])]


def _flipped(proof: list[bytes], i: int) -> list[bytes]:
    return proof[:i] + [bytes([proof[i][0] ^ 1]) + proof[i][1:]] + proof[i + 1:]


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13, 33])
def test_tampered_inclusion_proofs_fail(log: MemoryHashes, n: int) -> None:
    root = mth(LEAVES[:n])
    for m in range(n):
        proof, h = inclusion_proof(m, n, log.read), leaf_hash(LEAVES[m])
        assert not verify_inclusion(m, n, leaf_hash(b"other"), proof, root)
        assert not verify_inclusion(m, n, h, proof, mth(LEAVES[:n + 1]))
        assert not verify_inclusion(m, n, h, [*proof, h], root)
        assert not verify_inclusion(n, n, h, proof, root)
        for other in range(n):
            assert verify_inclusion(other, n, h, proof, root) == (other == m)
        # a size of another proof shape; a size of the same shape would need the root
        # of that size, which a checkpoint binds to it
        for size in range(m + 1, N + 1):
            if len(path(m, LEAVES[:size])) != len(proof):
                assert not verify_inclusion(m, size, h, proof, root)
        for i in range(len(proof)):
            assert not verify_inclusion(m, n, h, _flipped(proof, i), root)
            assert not verify_inclusion(m, n, h, proof[:i] + proof[i + 1:], root)


@pytest.mark.parametrize(("m", "n"), [(1, 2), (3, 7), (4, 8), (5, 13), (32, 70), (63, 64),
                                      (69, 70)])
def test_tampered_consistency_proofs_fail(log: MemoryHashes, m: int, n: int) -> None:
    old, new = mth(LEAVES[:m]), mth(LEAVES[:n])
    proof = consistency_proof(m, n, log.read)
    assert not verify_consistency(m, n, old, mth(LEAVES[:n - 1]), proof)
    assert not verify_consistency(m, n, mth(LEAVES[:m + 1]), new, proof)
    assert not verify_consistency(m, n, old, new, [])
    assert not verify_consistency(m, n, old, new, [*proof, old])
    assert not verify_consistency(m, n, old, new, proof[1:])
    for i in range(len(proof)):
        assert not verify_consistency(m, n, old, new, _flipped(proof, i))
    for other in range(1, n):
        if other != m:
            assert not verify_consistency(other, n, old, new, proof)
    for size in range(m + 1, N + 1):
        if len(subproof(m, LEAVES[:size], True)) != len(proof):
            assert not verify_consistency(m, size, old, new, proof)


def test_equal_and_empty_trees_are_consistent_only_with_their_roots() -> None:
    same = mth(LEAVES[:9])
    assert verify_consistency(9, 9, same, same, [])
    assert not verify_consistency(9, 9, same, mth(LEAVES[:8]), [])
    assert not verify_consistency(9, 9, same, same, [same])
    assert not verify_consistency(0, 9, same, same, [])
    assert not verify_consistency(0, 9, EMPTY_ROOT, same, [same])


def test_malformed_proofs_are_false_not_errors(log: MemoryHashes) -> None:
    proof = inclusion_proof(3, 10, log.read)
    root, h = mth(LEAVES[:10]), leaf_hash(LEAVES[3])
    for bad in ([b"short"], ["text"], [None], "string", None):
        assert verify_inclusion(3, 10, h, bad, root) is False  # type: ignore[arg-type]
        assert verify_consistency(3, 10, mth(LEAVES[:3]), root, bad) is False  # type: ignore[arg-type]
    assert verify_inclusion(-1, 10, h, proof, root) is False
    assert verify_inclusion(True, 10, h, proof, root) is False
    assert verify_consistency(5, 4, root, root, []) is False
    assert verify_consistency(-1, 4, root, root, []) is False


class Counting:
    """A reader that counts its calls and the hashes asked."""

    def __init__(self, store: MemoryHashes) -> None:
        self.store, self.calls, self.asked = store, 0, 0

    def __call__(self, indexes: Sequence[tuple[int, int]]) -> list[bytes]:
        self.calls += 1
        self.asked += len(indexes)
        return self.store.read(indexes)


@pytest.mark.parametrize("n", [1, 2, 3, 31, 32, 33, 69, 70])
def test_reader_is_called_once_with_log_n_indexes(log: MemoryHashes, n: int) -> None:
    bound = 2 * math.ceil(math.log2(n)) + 2 if n > 1 else 1
    reads: list[Counting] = []
    for make in ([lambda r: tree_root(n, r)]
                 + [lambda r, m=m: inclusion_proof(m, n, r) for m in range(n)]
                 + [lambda r, m=m: consistency_proof(m, n, r) for m in range(1, n)]):
        reads.append(Counting(log))
        make(reads[-1])
    assert all(r.calls <= 1 and r.asked <= bound for r in reads)


def test_appending_reads_only_left_siblings() -> None:
    store = MemoryHashes()
    for i in range(40):
        reader = Counting(store)
        rows = hashes_to_store(i, LEAVES[i], reader)
        assert reader.calls <= 1 and reader.asked == len(rows) - 1
        assert rows[0] == (0, i, leaf_hash(LEAVES[i]))
        for level, index, h in rows:  # each row is the complete subtree it names
            lo = index << level
            assert h == mth(LEAVES[lo:lo + (1 << level)]) and lo + (1 << level) <= i + 1
        store.append(LEAVES[i])


def test_bad_arguments_name_the_values(log: MemoryHashes) -> None:
    with pytest.raises(InvalidInputError, match="5.*size 5"):
        inclusion_proof(5, 5, log.read)
    with pytest.raises(InvalidInputError, match="-1"):
        inclusion_proof(-1, 5, log.read)
    with pytest.raises(InvalidInputError, match="6.*5"):
        consistency_proof(6, 5, log.read)
    with pytest.raises(InvalidInputError, match="-1"):
        consistency_proof(-1, 5, log.read)
    with pytest.raises(InvalidInputError, match="-2"):
        tree_root(-2, log.read)
    with pytest.raises(InvalidInputError, match="-1"):
        hashes_to_store(-1, b"", log.read)
    with pytest.raises(InvalidInputError, match="71"):
        log.root(N + 1)


def test_a_reader_that_answers_wrongly_is_corruption(log: MemoryHashes) -> None:
    with pytest.raises(CorruptDatastoreError):
        tree_root(7, lambda ix: log.read(ix)[:-1])
    with pytest.raises(CorruptDatastoreError):
        tree_root(7, lambda ix: [b"short"] * len(ix))
    with pytest.raises(CorruptDatastoreError):
        MemoryHashes().read([(0, 0)])
