"""The OpenAI completion response, built from the protocol models: choices with their
logprobs, the usage and the `silo` block, for a whole response or a stream's events.

Bodies are built with `model_construct` (the values come from the library, already of
the models' types) and sent as their JSON without validating them again; non-finite
floats become null.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datastore.table.log import LogHead
from server.protocol import (
    AttributedDocument,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    LogProbs,
    SentenceAttribution,
    SiloResponseInfo,
    Usage,
)
from server.tokens import TokenizerService
from server.transparency import checkpoint_ref
from silo.attribution import Attribution
from silo.request import Completion, GenerationResult, Plan, ScoreResult, TokenEvent


def sentences(index: int | None, attribution: Attribution | None,
              ) -> list[SentenceAttribution]:
    """The per-sentence attribution of choice `index` (None: of a text looked up), as
    the protocol writes it."""
    if attribution is None:
        return []
    return [SentenceAttribution.model_construct(
        text=s.text, index=index,
        documents=[AttributedDocument.model_construct(
            doc_id=d.doc_id, source=d.source, license_class=d.license_class, score=d.score,
            snippet=d.snippet, via=d.via, datastore=d.datastore) for d in s.documents],
        datastore_weights=dict(s.weights) if s.weights else None)
        for s in attribution.sentences]


def silo_info(plan: Plan, datastore: str | None, attribution: list[SentenceAttribution],
              checkpoint: LogHead | None = None) -> SiloResponseInfo:
    """The `silo` block: the mode, datastore and kNN settings the request was served
    with, the attribution when asked, and the log's checkpoint it was served against."""
    knn = plan.knn if plan.mode.uses_knn else None
    return SiloResponseInfo.model_construct(
        mode=plan.mode, datastore=datastore, datastores=list(plan.datastores) or None,
        k=knn.k if knn else None,
        lambda_=knn.lam if knn else None,
        knn_temperature=knn.temperature if knn else None,
        relevance=any(p.relevance is not None for p in (knn, *plan.members)) if knn else None,
        attribution=attribution if plan.attribution else None,
        checkpoint=checkpoint_ref(checkpoint))


def summary(prompts: Sequence[tuple[int, ...]], n: int, results: Sequence[Any],
            ) -> tuple[Usage, list[SentenceAttribution]]:
    """The usage and the attribution of a request's results (one per prompt; None for
    a prompt that was neither generated from nor scored)."""
    completion_tokens, attribution = 0, []
    for p, result in enumerate(results):
        if isinstance(result, GenerationResult):
            for c in result.choices:
                completion_tokens += len(c.token_ids)
                attribution += sentences(p * n + c.index, c.attribution)
        elif isinstance(result, ScoreResult):
            attribution += sentences(p * n, result.attribution)
    prompt_tokens = sum(len(p) for p in prompts)
    return Usage.model_construct(prompt_tokens=prompt_tokens,
                                 completion_tokens=completion_tokens,
                                 total_tokens=prompt_tokens + completion_tokens), attribution


class Choices:
    """Choices and logprobs in OpenAI's shape, with the tokenizer's texts."""

    def __init__(self, tokens: TokenizerService) -> None:
        self.tokens = tokens

    def of_prompt(self, first: int, ids: tuple[int, ...], req: CompletionRequest,
                  result: GenerationResult | ScoreResult | None) -> list[CompletionChoice]:
        """The choices of one prompt: n generations, or its echo when only scoring."""
        prompt_text = self.tokens.text(ids)
        if not isinstance(result, GenerationResult):
            lp = self.logprobs(result, None, req.logprobs, 0) if result else None
            return [CompletionChoice.model_construct(
                index=first, text=prompt_text if req.echo else "", logprobs=lp,
                finish_reason="length")]
        out = []
        for c in result.choices:
            offset = 0 if req.echo else len(prompt_text)
            out.append(CompletionChoice.model_construct(
                index=first + c.index, text=(prompt_text if req.echo else "") + c.text,
                logprobs=self.logprobs(result.prompt, c, req.logprobs, offset),
                finish_reason=c.finish_reason))
        return out

    def logprobs(self, prompt: ScoreResult | None, completion: Completion | None,
                 n: int | None, offset: int) -> LogProbs | None:
        """OpenAI's logprobs object over the echoed prompt (if any), then the completion."""
        if n is None:
            return None
        ids: list[int] = []
        values: list[float | None] = []
        tops: list[dict[int, float] | None] = []
        if prompt is not None:
            ids += prompt.tokens
            values += prompt.token_logprobs
            tops += prompt.top_logprobs or [None] * len(prompt.tokens)
        if completion is not None:
            ids += completion.token_ids
            values += completion.token_logprobs
            tops += completion.top_logprobs or [None] * len(completion.token_ids)
        texts = [self.tokens.token_text(t) for t in ids]
        offsets = []
        for t in texts:
            offsets.append(offset)
            offset += len(t)
        return LogProbs.model_construct(
            tokens=texts, token_logprobs=values, text_offset=offsets,
            top_logprobs=[None if t is None else self._named(t) for t in tops] if n else None)

    def event(self, index: int, ev: TokenEvent, n: int | None) -> CompletionChoice:
        """The choice of one streamed token."""
        lp = None
        if n is not None:
            top = None if ev.top_logprobs is None else [self._named(ev.top_logprobs)]
            lp = LogProbs.model_construct(
                tokens=[self.tokens.token_text(ev.token_id)], token_logprobs=[ev.logprob],
                top_logprobs=top, text_offset=[0])
        return CompletionChoice.model_construct(index=index, text=ev.text, logprobs=lp,
                                                finish_reason=ev.finish_reason)

    def _named(self, top: dict[int, float]) -> dict[str, float]:
        return {self.tokens.token_text(k): v for k, v in top.items()}


def event_text(chunk: CompletionChunk) -> str:
    """A chunk as one server-sent event (fields it was not given are left out)."""
    return f"data: {chunk.model_dump_json(by_alias=True, exclude_unset=True)}\n\n"
