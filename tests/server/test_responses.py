"""Usage and attribution are summed once, the same way for whole and streamed responses,
and bodies are their protocol models."""

from __future__ import annotations

import json

from datastore.filter import SearchFilter
from server.protocol import CompletionChunk, Usage
from server.responses import event_text, sentences, silo_info, summary
from silo.attribution import AttributedDocument, Attribution, SentenceAttribution
from silo.knnlm import KnnParams
from silo.mode import Mode
from silo.request import Completion, GenerationResult, Plan, ScoreResult
from silo.ric import RicParams

ATTRIBUTION = Attribution((SentenceAttribution("A stack.", (
    AttributedDocument("foldoc/stack", "foldoc", "copyleft", 0.4, "a stack is", "knn"),)),))


def _completion(index: int, tokens: int) -> Completion:
    return Completion(index, tuple(range(tokens)), "x", (0.0,) * tokens, None, "length",
                      None, ATTRIBUTION)


def test_summary_counts_tokens_and_places_attribution_by_choice() -> None:
    results = [GenerationResult((_completion(0, 3), _completion(1, 2))), None,
               ScoreResult((1, 2), (None, -1.0), attribution=ATTRIBUTION)]
    usage, attribution = summary([(1, 2), (3,), (4, 5, 6)], 2, results)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (6, 5, 11)
    assert [s.index for s in attribution] == [0, 1, 4]
    assert attribution[0].documents[0].doc_id == "foldoc/stack"


def test_the_silo_block_names_knn_settings_only_for_knn_modes() -> None:
    knn = Plan(Mode.KNNLM, KnnParams(8, 0.5, 2.0), RicParams(), SearchFilter(), True)
    body = json.loads(silo_info(knn, "foldoc", sentences(0, ATTRIBUTION))
                      .model_dump_json(by_alias=True))
    assert (body["mode"], body["k"], body["lambda"], body["datastore"]) == \
        ("knnlm", 8, 0.5, "foldoc")
    assert body["attribution"][0]["documents"][0]["via"] == "knn"
    ric = Plan(Mode.RIC, KnnParams(8, 0.5, 2.0), RicParams(), SearchFilter(), False)
    body = json.loads(silo_info(ric, None, []).model_dump_json(by_alias=True))
    assert body["k"] is None and body["attribution"] is None


def test_a_stream_event_carries_only_what_it_was_given() -> None:
    token = CompletionChunk.model_construct(id="c", object="text_completion", created=1,
                                            model="m", choices=[])
    assert json.loads(event_text(token).removeprefix("data: ")) == {
        "id": "c", "object": "text_completion", "created": 1, "model": "m", "choices": []}
    tail = CompletionChunk.model_construct(
        id="c", object="text_completion", created=1, model="m", choices=[],
        usage=Usage.model_construct(prompt_tokens=1, completion_tokens=2, total_tokens=3))
    assert json.loads(event_text(tail)[6:])["usage"]["total_tokens"] == 3
