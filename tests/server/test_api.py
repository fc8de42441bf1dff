"""The inference API over real HTTP, called with the official `openai` client."""

from __future__ import annotations

import json
import math

import openai
import pytest

from tests.server.conftest import USER_KEY, Live


def _client(live: Live, key: str = USER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_completion_with_usage_and_silo_info(live: Live) -> None:
    client = _client(live)
    model = client.models.list().data[0].id
    assert model == "tiny-silo"
    out = client.completions.create(model=model, prompt="In the beginning", max_tokens=6,
                                    temperature=0, n=2, seed=1)
    assert [c.index for c in out.choices] == [0, 1]
    assert out.choices[0].text == out.choices[1].text  # greedy: both choices agree
    assert out.usage is not None and out.usage.completion_tokens <= 12
    extra = out.model_extra or {}
    assert extra["silo"]["mode"] == "knnlm" and extra["silo"]["datastore"] == "main"


def test_the_relevance_weight_is_on_by_default_and_off_on_request(make_live, model_dir,
                                                                  store_dir) -> None:
    from silo.tuning import GridPoint, write_defaults

    # tuned with the weight: half weight at squared distance 1, falling with T 0.5
    write_defaults(store_dir, GridPoint(8, 0.6, 2.0, 0.0, relevance=1.0,
                                        relevance_temperature=0.5), {})
    live = make_live(model=model_dir, datastore=store_dir)
    client = _client(live)
    tokens = client.post("/../tokenize", cast_to=dict, body={
        "prompt": "And God said, Let there be light", "add_special_tokens": False})["tokens"]

    def scored(silo: dict[str, object]) -> tuple[list[float | None], dict[str, object]]:
        out = client.completions.create(model="m", prompt=tokens, max_tokens=0, echo=True,
                                        logprobs=0, extra_body={"silo": silo})
        lp = out.choices[0].logprobs
        assert lp is not None and lp.token_logprobs is not None
        return lp.token_logprobs, (out.model_extra or {})["silo"]

    weighted, info = scored({"mode": "knnlm"})
    assert info["relevance"] is True and info["lambda"] == 0.6
    plain, info = scored({"mode": "knnlm", "relevance": False})
    assert info["relevance"] is False
    alone, info = scored({"mode": "parametric"})
    assert info["relevance"] is None
    assert weighted != plain  # the weight changed the mixture
    # the weight only moves the mixture towards the LM alone, never past it
    for w, p, a in zip(weighted[1:], plain[1:], alone[1:], strict=True):
        assert w is not None and p is not None and a is not None
        assert min(p, a) - 1e-5 <= w <= max(p, a) + 1e-5


def test_seed_makes_sampling_repeatable(live: Live) -> None:
    client = _client(live)
    texts = [client.completions.create(model="m", prompt="And God said", max_tokens=8,
                                       temperature=1.0, seed=7).choices[0].text
             for _ in range(2)]
    assert texts[0] == texts[1]


def test_echo_logprobs_match_scoring_only(live: Live) -> None:
    """echo + logprobs returns the prompt's log-probs (null first) then the generated
    ones; with max_tokens 0 it only scores, with the same prompt log-probs."""
    client = _client(live)
    ids = client.post("/../tokenize", cast_to=dict, body={"prompt": "the earth was void",
                                                          "add_special_tokens": False})
    tokens = ids["tokens"]
    both = client.completions.create(model="m", prompt=tokens, max_tokens=1, echo=True,
                                     logprobs=1, temperature=0)
    lp = both.choices[0].logprobs
    assert lp is not None and lp.token_logprobs is not None and lp.top_logprobs is not None
    assert len(lp.token_logprobs) == len(tokens) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    only = client.completions.create(model="m", prompt=tokens, max_tokens=0, echo=True,
                                     logprobs=1).choices[0].logprobs
    assert only is not None and only.token_logprobs is not None
    assert len(only.token_logprobs) == len(tokens)
    for a, b in zip(lp.token_logprobs[1:-1], only.token_logprobs[1:], strict=True):
        assert a is not None and b is not None and math.isclose(a, b, abs_tol=1e-4)
    # greedy: the generated token is the top-1 of its own position
    last_top = lp.top_logprobs[-1]
    assert last_top is not None
    assert math.isclose(max(last_top.values()), lp.token_logprobs[-1], abs_tol=1e-5)


def test_batch_of_token_prompts_keeps_order(live: Live) -> None:
    client = _client(live)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    out = client.completions.create(model="m", prompt=prompts, max_tokens=0, echo=True,
                                    logprobs=0)
    assert [c.index for c in out.choices] == [0, 1, 2]
    for c, p in zip(out.choices, prompts, strict=True):
        assert c.logprobs is not None and len(c.logprobs.tokens or []) == len(p)


def test_streaming_ends_with_done(live: Live) -> None:
    client = _client(live)
    pieces, finish = [], None
    for chunk in client.completions.create(model="m", prompt="The lightest element",
                                           max_tokens=5, temperature=0, stream=True):
        for c in chunk.choices:
            pieces.append(c.text)
            finish = c.finish_reason or finish
    whole = client.completions.create(model="m", prompt="The lightest element",
                                      max_tokens=5, temperature=0)
    assert "".join(pieces) == whole.choices[0].text
    assert finish in ("length", "stop")
    with live.client(USER_KEY) as http, http.stream(
            "POST", "/v1/completions",
            json={"prompt": "x", "max_tokens": 2, "stream": True}) as resp:
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


def test_attribution_in_completion_and_lookup(live: Live) -> None:
    with live.client(USER_KEY) as http:
        r = http.post("/v1/completions", json={
            "prompt": "In the beginning God created", "max_tokens": 8, "temperature": 0,
            "silo": {"mode": "knnlm", "attribution": True, "k": 8}})
        assert r.status_code == 200, r.text
        sentences = r.json()["silo"]["attribution"]
        assert sentences and all({"text", "documents", "index"} <= set(s) for s in sentences)
        docs = [d for s in sentences for d in s["documents"]]
        assert docs and {"doc_id", "source", "license_class", "score", "snippet"} <= set(docs[0])
        r = http.post("/v1/attribution", json={"text": "In the beginning God created the "
                                                       "heaven and the earth. Lay, v. t."})
        assert r.status_code == 200, r.text
        found = r.json()["sentences"]
        assert found[0]["documents"][0]["doc_id"] == "pd/0"
        # licence policy goes through the one filter: no copyleft document is named
        r = http.post("/v1/attribution", json={"text": "Lay, v. t. To cause to lie down",
                                               "license_classes": ["pd", "sw"]})
        assert all(d["license_class"] in ("pd", "sw")
                   for s in r.json()["sentences"] for d in s["documents"])


@pytest.mark.parametrize("mode", ["parametric", "ric", "knnlm+ric"])
def test_every_mode_completes(live: Live, mode: str) -> None:
    with live.client(USER_KEY) as http:
        r = http.post("/v1/completions", json={"prompt": "The heapq module", "max_tokens": 3,
                                               "silo": {"mode": mode}})
    assert r.status_code == 200, r.text
    assert r.json()["silo"]["mode"] == mode


def test_tokenizer_endpoints_round_trip(live: Live) -> None:
    with live.client(USER_KEY) as http:
        info = http.get("/tokenizer_info").json()
        assert info["eos_token"] and info["model_max_length"] > 0
        tok = http.post("/tokenize", json={"prompt": "the earth", "add_special_tokens": False})
        body = tok.json()
        assert body["count"] == len(body["tokens"]) and body["max_model_len"] > 0
        back = http.post("/detokenize", json={"tokens": body["tokens"]}).json()
        assert back["prompt"] == "the earth"
        eos = http.post("/tokenize", json={"prompt": info["eos_token"],
                                           "add_special_tokens": False}).json()["tokens"]
        assert len(eos) == 1


@pytest.mark.parametrize("body, fragment", [
    ({"prompt": "x", "max_tokens": 100_000}, "max_tokens"),
    ({"prompt": "x " * 3000, "max_tokens": 1}, "limit"),
    ({"prompt": [10_000_000], "max_tokens": 1}, "vocabulary"),
    ({"prompt": "x", "n": 1000}, "n is"),
    ({"prompt": "x", "silo": {"mode": "magic"}}, "mode"),
    ({"prompt": "x", "silo": {"datastore": "nope"}}, "nope"),
    ({"prompt": "x", "silo": {"relevance": "sometimes"}}, "relevance"),
    ({"prompt": []}, "empty"),
    ({"max_tokens": 1}, "prompt"),
    ({"prompt": ["ok", "a\ud800"]}, "prompt[1]: not valid Unicode"),
    ({"prompt": "x", "stop": ["\udc00"]}, "stop[0]: not valid Unicode"),
])
def test_bad_input_is_a_400_with_a_message(live: Live, body: dict, fragment: str) -> None:
    with live.client(USER_KEY) as http:  # json.dumps escapes lone surrogates as \\udXXX
        r = http.post("/v1/completions", content=json.dumps(body),
                      headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 404), r.text
    error = r.json()["error"]
    assert fragment in error["message"] and error["type"]


def test_metrics_count_requests_tokens_and_datastore(live: Live) -> None:
    with live.client(USER_KEY) as http:
        http.post("/v1/completions", json={"prompt": "In the", "max_tokens": 2})
        text = http.get("/metrics").text
    assert 'silo_requests_total{method="POST",route="/v1/completions",status="200"}' in text
    assert "silo_request_seconds_bucket" in text and "silo_knn_search_seconds_count" in text
    assert 'silo_tokens_total{kind="completion"}' in text
    assert 'silo_datastore_documents{datastore="main",state="live"} 10.0' in text
