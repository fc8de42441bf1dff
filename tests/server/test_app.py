"""The app factory's start-up settings."""

from __future__ import annotations

from pathlib import Path

import torch


def test_torch_threads_are_set_before_the_model_loads(make_live, model_dir: Path) -> None:
    before = torch.get_num_threads()
    try:
        live = make_live(model=model_dir, torch_threads=1)
        assert torch.get_num_threads() == 1
        with live.client() as c:
            assert c.get("/healthz").status_code == 200
    finally:
        torch.set_num_threads(before)
