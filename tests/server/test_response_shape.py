"""A completion body is sent without validating it against `CompletionResponse` again:
it must already be exactly what the model would write (names, aliases, order, nulls),
and the request's own time is counted once in the metrics."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.protocol import CompletionResponse
from tests.server.conftest import USER_KEY, Live

BODIES: list[dict[str, Any]] = [
    {"prompt": "In the beginning", "max_tokens": 0, "echo": True, "logprobs": 0,
     "silo": {"mode": "parametric"}},
    {"prompt": [[39, 40, 41], [40, 41, 42]], "max_tokens": 0, "echo": True,
     "logprobs": 2},
    {"prompt": "And God said", "max_tokens": 5, "temperature": 0.7, "seed": 3, "n": 2,
     "logprobs": 1, "echo": True, "stop": ["\n"]},
    {"prompt": "A stack", "max_tokens": 4, "temperature": 0,
     "silo": {"mode": "knnlm", "k": 4, "lambda": 0.5, "attribution": True}},
    {"prompt": "A stack", "max_tokens": 3, "temperature": 0, "silo": {"mode": "ric"}},
    {"prompt": [40, 41], "max_tokens": 0},  # neither echo nor logprobs: no scoring
]


@pytest.mark.parametrize("body", BODIES)
def test_a_completion_body_is_its_response_model(live: Live, body: dict[str, Any]) -> None:
    with live.client(USER_KEY) as c:
        r = c.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    sent = r.json()
    model = CompletionResponse.model_validate(sent)
    assert list(sent) == list(model.model_dump(by_alias=True))
    assert json.loads(model.model_dump_json(by_alias=True)) == sent


def test_each_request_is_observed_once(live: Live) -> None:
    with live.client(USER_KEY) as c:
        for _ in range(3):
            assert c.post("/v1/completions", json=BODIES[0]).status_code == 200
        assert c.post("/v1/completions", json={"prompt": []}).status_code == 400
        text = c.get("/metrics").text
    assert ('silo_requests_total{method="POST",route="/v1/completions",status="200"} 3.0'
            in text)
    assert ('silo_requests_total{method="POST",route="/v1/completions",status="400"} 1.0'
            in text)
    assert 'silo_request_seconds_count{route="/v1/completions"} 4.0' in text
