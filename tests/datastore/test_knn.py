"""The fp16 key / int32 value store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datastore.errors import CorruptDatastoreError
from datastore.knn import KeyValueStore


def test_append_reopen_truncate_erase(tmp_path: Path) -> None:
    kv = KeyValueStore(tmp_path, 4)
    keys = np.arange(40, dtype=np.float32).reshape(10, 4)
    kv.append(keys[:6], np.arange(6) + 70000, np.arange(6))
    kv.append(keys[6:], np.arange(6, 10) + 70000, np.arange(6, 10))
    assert (tmp_path / "keys.f16").stat().st_size == 10 * 4 * 2  # fp16 on disk
    again = KeyValueStore.from_dir(tmp_path, 4)
    assert len(again) == 10
    np.testing.assert_array_equal(again.keys, keys.astype(np.float16))
    assert again.values.dtype == np.int32 and again.values[9] == 70009  # no int16 wrap
    again.erase(np.array([2]), np.array([4]))
    assert not np.asarray(again.keys[2:4]).any() and again.values[2:4].tolist() == [-1, -1]
    assert again.keys[4, 0] == 16
    again.truncate(5)
    assert len(KeyValueStore.from_dir(tmp_path, 4)) == 5


def test_partial_tail_is_not_a_row(tmp_path: Path) -> None:
    kv = KeyValueStore(tmp_path, 4)
    kv.append(np.ones((3, 4)), np.ones(3), np.ones(3))
    with open(tmp_path / "keys.f16", "ab") as f:
        f.write(b"\x00" * 5)
    assert len(KeyValueStore(tmp_path, 4)) == 3
    with pytest.raises(CorruptDatastoreError, match="only 3"):
        KeyValueStore(tmp_path, 4).truncate(4)


def test_shapes_are_checked(tmp_path: Path) -> None:
    kv = KeyValueStore(tmp_path, 4)
    with pytest.raises(ValueError, match=r"\(r, 4\)"):
        kv.append(np.ones((3, 5)), np.ones(3), np.ones(3))
    with pytest.raises(CorruptDatastoreError, match="values.i32"):
        (tmp_path / "values.i32").unlink()
        KeyValueStore.from_dir(tmp_path, 4)


def test_maps_a_racing_reader_built_before_an_append_are_not_served(tmp_path: Path) -> None:
    kv = KeyValueStore(tmp_path, 4)
    kv.append(np.ones((3, 4)), np.arange(3), np.arange(3))
    stale = kv._memmaps()  # a search thread builds the maps for 3 rows ...
    kv.append(np.full((2, 4), 2.0), np.arange(3, 5), np.arange(3, 5))
    kv._maps = stale  # ... and stores them just after the append cleared the cache
    assert kv.keys.shape == (5, 4) and kv.values.tolist() == [0, 1, 2, 3, 4]
    assert (np.asarray(kv.keys[3:]) == 2).all()
