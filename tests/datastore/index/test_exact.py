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
