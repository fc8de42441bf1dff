"""The app's start-up settings, as the model thread sees them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def test_the_model_thread_runs_with_the_configured_torch_threads(make_live, model_dir: Path,
                                                                 ) -> None:
    live = make_live(model=model_dir, torch_threads=1)
    seen: list[int] = []

    def record(rows: Sequence[Sequence[int]]) -> None:  # runs on the model thread
        seen.append(torch.get_num_threads())

    live.app.state.service.registry.lm().rows_hook = record
    with live.client() as c:
        r = c.post("/v1/completions", json={"prompt": "In the", "max_tokens": 2})
    assert r.status_code == 200 and seen and set(seen) == {1}
