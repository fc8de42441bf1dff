"""A generated token's event: the text it adds, cut at a stop sequence, and why a choice
finishes."""

from __future__ import annotations

import torch

from silo.codec import Codec
from silo.events import token_event
from silo.request import GenerationRequest


def test_events_cut_at_a_stop_sequence_and_wait_for_whole_characters(
        tiny_tokenizer: object) -> None:
    codec = Codec(tiny_tokenizer)
    ids = codec.encode("ab é!")
    dist = torch.log_softmax(torch.zeros(len(tiny_tokenizer)), dim=0)  # type: ignore[arg-type]
    request = GenerationRequest((1,), max_tokens=len(ids), stop=("!",), logprobs=2)
    texts, deltas, finishes = [""], [], []
    for step in range(len(ids)):
        ev = token_event(codec, 0, ids[step], dist, ids[:step + 1], texts, request, step, None)
        deltas.append(ev.text)
        finishes.append(ev.finish_reason)
        assert ev.top_logprobs is not None and len(ev.top_logprobs) == 2
    assert "".join(deltas) == "ab é" == texts[0]  # the stop sequence is not sent
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    if len(codec.encode("é")) > 1:  # a byte-level tokenizer: half a character adds nothing
        assert "" in deltas[:-1]


def test_a_choice_ends_at_eos_or_at_max_tokens(tiny_tokenizer: object) -> None:
    codec = Codec(tiny_tokenizer)
    dist = torch.zeros(len(tiny_tokenizer))  # type: ignore[arg-type]
    a = codec.encode("a")[0]
    short = GenerationRequest((1,), max_tokens=2)
    assert token_event(codec, 0, a, dist, [a], [""], short, 0, None).finish_reason is None
    assert token_event(codec, 0, a, dist, [a, a], ["a"], short, 1, None).finish_reason == \
        "length"
    eos = token_event(codec, 0, codec.eos_id, dist, [codec.eos_id], [""], short, 0, None)
    assert eos.finish_reason == "stop"
    ignoring = GenerationRequest((1,), max_tokens=2, ignore_eos=True)
    assert token_event(codec, 0, codec.eos_id, dist, [codec.eos_id], [""], ignoring, 0,
                       None).finish_reason is None
