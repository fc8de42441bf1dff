"""The entry filter against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest

from datastore.document import LicenseClass
from datastore.filter import (
    AccessScope,
    SearchFilter,
    compute_filter,
    merge_ranges,
    range_bitmap,
)
from datastore.table.records import snapshot_of


def _snapshot(n_docs: int, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 6, size=n_docs)  # some documents have no entry
    ends = np.cumsum(lengths)
    starts = ends - lengths
    blocks = np.arange(n_docs + 1)
    ranges = np.stack([starts, ends, blocks[:-1], blocks[1:]], 1).astype(np.int64)
    classes = [list(LicenseClass)[i % 6].value for i in range(n_docs)]
    sources = [["a", "b", "c"][i % 3] for i in range(n_docs)]
    removed = rng.random(n_docs) < 0.2
    return snapshot_of([f"d{i}" for i in range(n_docs)], classes, sources, removed, ranges)


def _brute_excluded_entries(snap, request: SearchFilter) -> np.ndarray:  # type: ignore[no-untyped-def]
    out = np.zeros(snap.n_entries, dtype=bool)
    for row in range(len(snap.doc_ids)):
        cls = list(LicenseClass)[snap.class_code[row]]
        source = snap.sources[snap.source_code[row]]
        bad = bool(snap.removed[row])
        bad |= request.policy is not None and cls not in request.policy
        bad |= request.scope.license_classes is not None and cls not in \
            request.scope.license_classes
        bad |= request.scope.sources is not None and source not in request.scope.sources
        out[snap.entry_start[row]:snap.entry_end[row]] = bad
    return out


@pytest.mark.parametrize("seed", range(5))
def test_filter_matches_brute_force_policy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    snap = _snapshot(200, seed)
    request = SearchFilter(
        policy=frozenset(c for c in LicenseClass if rng.random() < 0.6),
        scope=AccessScope(sources=frozenset({"a", "c"}) if seed % 2 else None,
                          license_classes=frozenset({LicenseClass.PD, LicenseClass.SW,
                                                     LicenseClass.BY}) if seed % 3 else None))
    f = compute_filter(snap, request)
    want = _brute_excluded_entries(snap, request)
    ids = np.arange(-1, snap.n_entries + 2)
    expect = np.concatenate([[True], want, [True, True]])  # -1 and ids past the end
    np.testing.assert_array_equal(f.excludes(ids), expect)
    bits = np.unpackbits(f.allow_bitmap, bitorder="little")[:snap.n_entries].astype(bool)
    np.testing.assert_array_equal(bits, ~want)
    assert f.n_excluded_entries == int(want.sum())
    for row, doc_id in enumerate(snap.doc_ids):
        lo, hi = snap.entry_start[row], snap.entry_end[row]
        if hi > lo:
            assert f.allows_doc(doc_id) is not bool(want[lo])
    assert f.allows_doc("no-such-doc") is False


def test_merge_ranges_joins_touching_and_drops_empty() -> None:
    starts, ends = merge_ranges(np.array([0, 2, 4, 4, 9]), np.array([2, 4, 4, 6, 12]))
    assert starts.tolist() == [0, 9] and ends.tolist() == [6, 12]
    starts, ends = merge_ranges(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert len(starts) == 0


def test_range_bitmap_layout_is_faiss_little_endian() -> None:
    bits = range_bitmap(np.array([1, 9]), np.array([3, 10]), 12, inside=True)
    assert bits.tolist() == [0b00000110, 0b00000010]
    assert range_bitmap(np.array([1]), np.array([3]), 4, inside=False).tolist() == [0b1001]


def test_milvus_expression_names_excluded_ranges() -> None:
    snap = snapshot_of(["x", "y", "z"], ["pd", "copyleft", "copyleft"], ["s", "s", "s"],
                       np.zeros(3, bool), np.array([[0, 4, 0, 1], [4, 5, 1, 2], [5, 9, 2, 3]]))
    f = compute_filter(snap, SearchFilter(policy=frozenset({LicenseClass.PD})))
    assert f.milvus_expression() == "id < 9 and not ((id >= 4 and id < 9))"
    assert compute_filter(snap).milvus_expression() == "id < 9"


def test_access_scope_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="license_classes"):
        AccessScope(license_classes=frozenset({"pd"}))  # type: ignore[arg-type]


def test_derived_filter_equals_a_fresh_one() -> None:
    snap = _snapshot(300, seed=4)
    request = SearchFilter(policy=frozenset({LicenseClass.PD, LicenseClass.SW}))
    old = compute_filter(snap, request)
    _ = old.allow_bitmap  # built, so the derived filter patches a copy
    rows = np.array([5, 6, 7, 120, 299])
    new_snap = snap.with_removed(rows)
    derived, fresh = old.excluding(new_snap, rows), compute_filter(new_snap, request)
    np.testing.assert_array_equal(derived.allow_bitmap, fresh.allow_bitmap)
    np.testing.assert_array_equal(derived.starts, fresh.starts)
    np.testing.assert_array_equal(derived.ends, fresh.ends)
