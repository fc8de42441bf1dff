"""What a generated token becomes for the client: its event (the text it adds, cut at a
stop sequence, and its finish reason) and, at the end, each choice's completion."""

from __future__ import annotations

import torch

from silo.attribution import TokenProvenance
from silo.codec import Codec
from silo.request import Completion, GenerationRequest, TokenEvent
from silo.retrieval import Retriever


def token_event(codec: Codec, choice: int, token: int, dist: torch.Tensor, new: list[int],
                texts: list[str], request: GenerationRequest, step: int,
                provenance: TokenProvenance | None) -> TokenEvent:
    """The event for a chosen token (`new`: the choice's tokens so far, with it), cutting
    the text at a stop sequence; `texts[choice]` becomes the choice's text so far."""
    full = codec.decode(new)
    finish = None
    if full.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more
        full = texts[choice]
    cut = min((full.find(s) for s in request.stop if s in full), default=-1)
    if cut >= 0:
        full, finish = full[:cut], "stop"
    elif token == codec.eos_id and not request.ignore_eos:
        finish = "stop"
    elif step == request.max_tokens - 1:
        finish = "length"
    delta = full[len(texts[choice]):] if full.startswith(texts[choice]) else ""
    texts[choice] = full
    top = None
    if request.logprobs:
        values, ids = dist.topk(min(request.logprobs, dist.shape[0]))
        top = dict(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenEvent(choice, token, delta, float(dist[token]), top, provenance, finish)


def completion(index: int, events: list[TokenEvent], request: GenerationRequest,
               retriever: Retriever) -> Completion:
    """A finished choice: its events collected, attributed where the request asks."""
    ids = [e.token_id for e in events]
    text = "".join(e.text for e in events)
    provs = tuple(e.provenance for e in events if e.provenance is not None)
    attribution = None
    if request.options.attribution and ids:
        attribution = retriever.attribution(ids, provs)
    return Completion(
        index, tuple(ids), text, tuple(e.logprob for e in events),
        tuple(e.top_logprobs or {} for e in events) if request.logprobs else None,
        events[-1].finish_reason or "length" if events else "length",
        provs if request.options.attribution else None, attribution)
