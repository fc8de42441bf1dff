"""The exact backend's ordering: distance first, ties to the lower entry id (as faiss)."""

from __future__ import annotations

import torch

from datastore.index.exact import smallest


def test_ties_go_to_the_lower_id_inside_and_across_the_kth_place() -> None:
    d = torch.tensor([[3.0, 1.0, 1.0, 2.0, 1.0, float("inf")],
                      [0.5, 0.5, 0.5, 0.5, 0.1, 0.2]])
    ids = torch.tensor([[9, 7, 4, 2, 5, 1], [6, 3, 8, 1, 0, 2]])
    got_d, got_i = smallest(d, ids, 2)
    assert got_i.tolist() == [[4, 5], [0, 2]]
    assert torch.allclose(got_d, torch.tensor([[1.0, 1.0], [0.1, 0.2]]))
    got_d, got_i = smallest(d, ids, 4)
    assert got_i.tolist() == [[4, 5, 7, 2], [0, 2, 1, 3]]  # 0.5 four times: ids 1, 3
    assert torch.isfinite(got_d).all()


def test_search_orders_by_distance_then_id_across_chunks(monkeypatch) -> None:
    import numpy as np

    import datastore.index.exact as exact

    class Keys:  # the key/value store's face the index reads
        def __init__(self, keys: np.ndarray) -> None:
            self.keys = keys

        def __len__(self) -> int:
            return len(self.keys)

    rng = np.random.default_rng(0)
    keys = rng.integers(-2, 3, (500, 4)).astype(np.float16)  # many equal distances
    queries = rng.integers(-2, 3, (40, 4)).astype(np.float32)
    monkeypatch.setattr(exact, "CHUNK_ROWS", 64)  # eight merges of running top-k
    got_d, got_i = exact.ExactIndex(Keys(keys)).search(queries, 50)
    full = ((queries[:, None, :] - keys[None].astype(np.float32)) ** 2).sum(-1)
    for row in range(len(queries)):
        want = np.lexsort((np.arange(len(keys)), full[row]))[:50]
        assert got_i[row].tolist() == want.tolist()
        assert np.allclose(got_d[row], full[row, want])
