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


def test_a_bfloat16_model_serves_a_datastore_built_in_float32(make_live, model_dir: Path,
                                                              store_dir: Path) -> None:
    live = make_live(model=model_dir, datastore=store_dir, dtype="bfloat16")
    lm = live.app.state.service.registry.lm()
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    with live.client() as c:
        for mode in ("parametric", "knnlm", "ric"):
            r = c.post("/v1/completions", json={
                "prompt": "In the", "max_tokens": 3, "logprobs": 2, "silo": {"mode": mode}})
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            assert len(choice["logprobs"]["tokens"]) == 3
            assert all(lp <= 0 for lp in choice["logprobs"]["token_logprobs"])
        scored = c.post("/v1/completions", json={
            "prompt": "In the beginning God created", "max_tokens": 0, "echo": True,
            "logprobs": 1, "silo": {"mode": "knnlm"}})
        assert scored.status_code == 200, scored.text
