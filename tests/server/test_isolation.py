"""One request never fails another, over real HTTP: extreme sampling values are answered,
a request whose rows fail ends alone while the requests batched with it get the output
they get alone, and a streaming client that leaves frees its rows."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.server.conftest import Live

TINY = sys.float_info.min * sys.float_info.epsilon  # 5e-324, the smallest positive float


def _post(live: Live, body: dict[str, Any]) -> httpx.Response:
    with live.client() as c:
        return c.post("/v1/completions", json=body)


def _concurrently(live: Live, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: _post(live, b), bodies))


def _ordinary(i: int) -> dict[str, Any]:
    return {"prompt": ["In the beginning", "And God said", "A stack"][i % 3],
            "max_tokens": 8, "temperature": 0.8, "seed": 100 + i,
            "silo": {"mode": ["knnlm", "parametric"][i % 2]}}


def test_extreme_sampling_values_get_answers_not_errors(make_live, model_dir, store_dir
                                                        ) -> None:
    live = make_live(model=model_dir, datastore=store_dir, batch_wait_ms=50.0)
    greedy = {"prompt": "Let there be", "max_tokens": 8, "temperature": 0,
              "silo": {"mode": "knnlm"}}
    extremes = [{**greedy, "temperature": 1e-300}, {**greedy, "temperature": TINY},
                {**greedy, "temperature": 1.0, "top_p": 1e-300},
                {**greedy, "temperature": 2.0, "top_p": TINY, "seed": 1},
                {**greedy, "silo": {"mode": "knnlm", "knn_temperature": TINY}},
                {**greedy, "silo": {"mode": "knnlm", "lambda": 1.0, "k": 1}},
                {**greedy, "silo": {"mode": "knnlm", "lambda": 0.0}},
                {**greedy, "silo": {"mode": "knnlm", "lambda": 1.0,
                                    "knn_temperature": 1e6}}]
    responses = _concurrently(live, [*extremes, *[_ordinary(i) for i in range(4)]])
    assert [r.status_code for r in responses] == [200] * len(responses), \
        [r.text for r in responses if r.status_code != 200]
    want = _post(live, greedy).json()["choices"][0]["text"]
    for r in responses[:4]:  # below 1e-5 greedy; a vanishing top_p keeps only the top token
        assert r.json()["choices"][0]["text"] == want
    for body in ({**greedy, "temperature": 1e308}, {**greedy, "top_p": 0},
                 {**greedy, "stop": [""]}):
        r = _post(live, body)
        assert r.status_code == 400 and r.json()["error"]["message"], r.text


def test_a_failing_request_never_changes_another_requests_output(
        make_live, model_dir, store_dir) -> None:
    live = make_live(model=model_dir, datastore=store_dir, batch_wait_ms=50.0)
    lm = live.app.state.service.registry.lm()
    mark = int(lm.tokenizer.bos_token_id)  # in no text the server makes from a prompt
    ordinary = [_ordinary(i) for i in range(8)]
    alone = [_post(live, b).json()["choices"][0]["text"] for b in ordinary]

    def hook(rows: Sequence[Sequence[int]]) -> None:
        if any(mark in r for r in rows):
            raise RuntimeError("a row of the poisoned request")

    poisoned = [{"prompt": [mark, 40 + i, 41], "max_tokens": 8, "temperature": 0.8,
                 "silo": {"mode": ["knnlm", "parametric"][i % 2]}} for i in range(4)]
    lm.rows_hook = hook
    try:
        for _ in range(2):  # two rounds: the poisoned ones first, then interleaved
            bodies = [*poisoned, *ordinary] if _ == 0 else [
                b for pair in zip(ordinary[:4], poisoned, strict=True) for b in pair
            ] + ordinary[4:]
            responses = _concurrently(live, bodies)
            for body, r in zip(bodies, responses, strict=True):
                if body in poisoned:
                    assert r.status_code == 500
                    assert r.json()["error"]["message"] == "internal error"
                else:
                    assert r.status_code == 200, r.text
                    assert r.json()["choices"][0]["text"] == alone[ordinary.index(body)]
    finally:
        lm.rows_hook = None


def test_a_streaming_client_that_leaves_frees_its_rows(make_live, model_dir, store_dir
                                                       ) -> None:
    live = make_live(model=model_dir, datastore=store_dir, max_tokens_limit=100_000)
    worker = live.app.state.service.worker
    body = {"prompt": "In the beginning", "max_tokens": 100_000, "temperature": 1.0,
            "seed": 3, "stream": True, "ignore_eos": True, "silo": {"mode": "parametric"}}
    with live.client() as c, c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        events: list[dict[str, Any]] = []
        # a few tokens; the iterator is kept, since dropping it mid-stream closes the
        # connection, and the client hangs up only when it leaves this block
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
                if len(events) == 3:
                    break
        assert not any(e["choices"][0]["finish_reason"] for e in events)
        assert worker.running == 1
    deadline = time.monotonic() + 30
    while worker.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.running == 0  # dropped at the next step, long before 100k tokens
    assert _post(live, _ordinary(0)).status_code == 200
