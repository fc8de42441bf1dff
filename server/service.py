"""The service object behind the routes: completions, tokenizer, attribution, admin.

Route handlers stay thin and call this. It turns protocol models into `SiloLM` requests
(checking the limits from settings), hands them to the model thread (`ModelWorker`),
awaits them with the request timeout, and shapes the OpenAI-style responses. Datastore
operations (add, opt-out, open) run in worker threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from datastore.errors import InvalidInputError, NotFoundError
from datastore.filter import SearchFilter
from datastore.optout import OptOutSelector
from server.auth import Principal
from server.errors import ApiError, error_body, stream_error
from server.lookup import lookup
from server.metrics import Metrics
from server.protocol import (
    CompletionRequest,
    DatastoreEntry,
    DatastoreList,
    SiloRequestOptions,
)
from server.registry import DatastoreRegistry
from server.settings import Settings
from server.worker import Job, ModelWorker
from silo.lm import (
    Completion,
    GenerationRequest,
    GenerationResult,
    ScoreRequest,
    ScoreResult,
    SiloLM,
    SiloOptions,
    TokenEvent,
)

log = logging.getLogger("server")


def _invalid(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Build a library request object; its ValueError is the caller's bad input."""
    try:
        return fn(*args, **kwargs)
    except InvalidInputError:
        raise
    except ValueError as e:
        raise InvalidInputError(str(e)) from None


class SiloService:
    """Everything the routes do, over one model and its datastores."""

    def __init__(self, settings: Settings, registry: DatastoreRegistry, encoder: Any,
                 model_name: str, metrics: Metrics) -> None:
        self.settings = settings
        self.registry = registry
        self.encoder = encoder  # token ids -> keys, for documents added over HTTP
        self.model_name = model_name
        self.metrics = metrics
        base = registry.lm(None) if registry.active is None else registry.lm()
        self.tokenizer = base.tokenizer
        self.max_length = base.max_length
        self.vocab_size = base.vocab_size
        self.max_prompt_tokens = settings.max_prompt_tokens or self.max_length
        self._token_texts: dict[int, str] = {}
        self.worker = ModelWorker(settings.max_batch_size, settings.max_queue,
                                  settings.batch_wait_ms / 1000, metrics.observe_batch,
                                  settings.torch_threads)

    # ---- prompts and limits ----------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def token_text(self, token_id: int) -> str:
        """One token's text, cached: logprobs name every token of a response, and the
        tokenizer's `decode` costs microseconds a call."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = str(self.tokenizer.decode([token_id]))
        return text

    def prompts(self, prompt: Any) -> list[tuple[int, ...]]:
        """A request's prompt as token-id sequences; an empty one becomes [EOS]."""
        if isinstance(prompt, str):
            items: list[Any] = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            items = [prompt]
        else:
            items = list(prompt)
        if not items:
            raise InvalidInputError("prompt must not be empty")
        if len(items) > self.settings.max_prompts:
            raise InvalidInputError(f"{len(items)} prompts in one request; the limit is "
                                    f"{self.settings.max_prompts}")
        out = []
        for i, item in enumerate(items):
            ids = self.encode(item) if isinstance(item, str) else list(item)
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise InvalidInputError(f"prompt {i}: token id {bad[0]} is outside the "
                                        f"vocabulary [0, {self.vocab_size})")
            if len(ids) > self.max_prompt_tokens:
                raise InvalidInputError(f"prompt {i} has {len(ids)} tokens; the limit is "
                                        f"{self.max_prompt_tokens}")
            out.append(tuple(ids) or (int(self.tokenizer.eos_token_id),))
        return out

    def check_limits(self, req: CompletionRequest) -> None:
        s = self.settings
        if (req.max_tokens or 0) > s.max_tokens_limit:
            raise InvalidInputError(f"max_tokens is {req.max_tokens}; the limit is "
                                    f"{s.max_tokens_limit}")
        if req.n > s.max_n:
            raise InvalidInputError(f"n is {req.n}; the limit is {s.max_n}")
        if (req.logprobs or 0) > s.max_logprobs:
            raise InvalidInputError(f"logprobs is {req.logprobs}; the limit is "
                                    f"{s.max_logprobs}")

    def options(self, opts: SiloRequestOptions | None) -> SiloOptions:
        o = opts or SiloRequestOptions()
        classes = None if o.license_classes is None else frozenset(o.license_classes)
        mode = o.mode or self.settings.default_mode
        if self.registry.active is None and o.mode is None and o.datastore is None:
            mode = "parametric"  # no datastore configured: the default cannot apply
        return _invalid(SiloOptions, mode=mode, k=o.k, lam=o.lambda_,
                        knn_temperature=o.knn_temperature, license_classes=classes,
                        attribution=o.attribution)

    # ---- completions -----------------------------------------------------------------

    def _requests(self, req: CompletionRequest, principal: Principal,
                  ) -> tuple[SiloLM, SiloOptions, list[tuple[int, ...]], list[Any]]:
        self.check_limits(req)
        prompts = self.prompts(req.prompt)
        options = self.options(req.silo)
        lm = self.registry.lm(req.silo.datastore if req.silo else None)
        lm.plan(options, principal.scope)  # a mode the datastore cannot serve: 400 now
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        reqs: list[Any] = []
        for ids in prompts:
            if (req.max_tokens or 0) == 0:
                reqs.append(_invalid(ScoreRequest, ids, req.logprobs or 0, options,
                                     principal.scope) if req.echo else None)
            else:
                reqs.append(_invalid(
                    GenerationRequest, ids, req.max_tokens or 16,
                    1.0 if req.temperature is None else req.temperature,
                    1.0 if req.top_p is None else req.top_p, req.n, stop, req.seed,
                    req.logprobs or 0, req.echo, options, principal.scope, req.ignore_eos))
        return lm, options, prompts, reqs

    def _submit(self, lm: SiloLM, request: Any, loop: asyncio.AbstractEventLoop,
                emit: Any = None, finished: Any = None) -> tuple[asyncio.Future[Any], Job]:
        """Queue a job; its future settles on the loop. `finished()` runs (on the loop)
        right after, so a stream wakes up when a job ends."""
        future: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any) -> None:
            if not future.done():
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
            if finished is not None:
                finished()

        def done(result: Any) -> None:
            loop.call_soon_threadsafe(settle, result)

        job = Job(lm, request, done, emit)
        self.worker.submit(job)
        return future, job

    async def _await(self, futures: Sequence[asyncio.Future[Any]], jobs: Sequence[Job],
                     ) -> list[Any]:
        try:
            return await asyncio.wait_for(asyncio.gather(*futures),
                                          self.settings.request_timeout_s)
        except TimeoutError:
            raise ApiError(504, f"the request took longer than "
                           f"{self.settings.request_timeout_s:g} s", "timeout_error",
                           "timeout") from None
        finally:
            for job in jobs:
                job.cancelled.set()

    async def complete(self, req: CompletionRequest, principal: Principal) -> dict[str, Any]:
        lm, options, prompts, reqs = self._requests(req, principal)
        loop = asyncio.get_running_loop()
        submitted = self._submit_all(
            [(lambda r=r: self._submit(lm, r, loop)) for r in reqs if r is not None])
        results = iter(await self._await([f for f, _ in submitted], [j for _, j in submitted]))
        choices, attribution, completion_tokens = [], [], 0
        for p, (ids, r) in enumerate(zip(prompts, reqs, strict=True)):
            result = None if r is None else next(results)
            for c in self._choices(p * req.n, ids, req, result):
                choices.append(c["choice"])
                completion_tokens += c["tokens"]
                attribution += c["attribution"]
        prompt_tokens = sum(len(p) for p in prompts)
        self.metrics.tokens.labels("prompt").inc(prompt_tokens)
        self.metrics.tokens.labels("completion").inc(completion_tokens)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": self.model_name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens":
                          completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
                "silo": self._silo_info(lm, options, attribution)}

    def _silo_info(self, lm: SiloLM, options: SiloOptions, attribution: list[dict[str, Any]]
                   ) -> dict[str, Any]:
        knn = lm.plan(options).knn if options.uses_knn else None
        return {"mode": options.mode, "datastore": self.registry.name_of(lm),
                "k": knn.k if knn else None, "lambda": knn.lam if knn else None,
                "knn_temperature": knn.temperature if knn else None,
                "attribution": attribution if options.attribution else None}

    def _choices(self, first: int, ids: tuple[int, ...], req: CompletionRequest,
                 result: GenerationResult | ScoreResult | None) -> list[dict[str, Any]]:
        """The choices of one prompt: n generations, or its echo when only scoring."""
        prompt_text = str(self.tokenizer.decode(list(ids), skip_special_tokens=True))
        if not isinstance(result, GenerationResult):
            sentences = _sentences(first, result.attribution if result else None)
            lp = self._logprobs(result, None, req.logprobs, 0) if result else None
            return [{"choice": {"index": first, "text": prompt_text if req.echo else "",
                                "logprobs": lp, "finish_reason": "length"},
                     "tokens": 0, "attribution": sentences}]
        out = []
        for c in result.choices:
            text = (prompt_text if req.echo else "") + c.text
            offset = 0 if req.echo else len(prompt_text)
            lp = self._logprobs(result.prompt, c, req.logprobs, offset)
            out.append({"choice": {"index": first + c.index, "text": text, "logprobs": lp,
                                   "finish_reason": c.finish_reason},
                        "tokens": len(c.token_ids),
                        "attribution": _sentences(first + c.index, c.attribution)})
        return out

    def _logprobs(self, prompt: ScoreResult | None, completion: Completion | None,
                  n: int | None, offset: int) -> dict[str, Any] | None:
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
        tokens = [self.token_text(t) for t in ids]
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t)
        return {"tokens": tokens, "token_logprobs": values,  # protocol.LogProbs
                "top_logprobs": [None if t is None else
                                 {self.token_text(k): v for k, v in t.items()}
                                 for t in tops] if n else None,
                "text_offset": offsets}

    # ---- streaming -------------------------------------------------------------------

    async def stream(self, req: CompletionRequest, principal: Principal,
                     ) -> AsyncIterator[str]:
        """Server-sent events: one chunk per token, then usage, then `data: [DONE]`.
        Limits are checked before the first byte, so bad input is still a 400."""
        lm, options, prompts, reqs = self._requests(req, principal)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, TokenEvent | None]] = asyncio.Queue()
        submitted = self._submit_all([
            (lambda p=p, r=r: self._submit(lm, r, loop, functools.partial(_post, loop, queue, p),
                                           functools.partial(queue.put_nowait, (p, None))))
            for p, r in enumerate(reqs) if r is not None])
        return self._events(req, lm, options, prompts, reqs, queue, submitted)

    @staticmethod
    def _submit_all(submits: list[Any]) -> list[tuple[asyncio.Future[Any], Job]]:
        """Queue the jobs of one request: all, or none (a full queue refusing a later one
        cancels those already queued, so nothing runs for a request that got a 429)."""
        submitted: list[tuple[asyncio.Future[Any], Job]] = []
        try:
            for submit in submits:
                submitted.append(submit())
        except BaseException:
            for future, job in submitted:
                job.cancelled.set()
                future.cancel()
            raise
        return submitted

    async def _events(self, req: CompletionRequest, lm: SiloLM, options: SiloOptions,
                      prompts: list[tuple[int, ...]], reqs: list[Any],
                      queue: asyncio.Queue[tuple[int, TokenEvent | None]],
                      submitted: list[tuple[asyncio.Future[Any], Job]]) -> AsyncIterator[str]:
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            body = {"id": cid, "object": "text_completion", "created": created,
                    "model": self.model_name, "choices": choices, **extra}
            return f"data: {json.dumps(body)}\n\n"

        if req.echo:
            for p, ids in enumerate(prompts):
                text = str(self.tokenizer.decode(list(ids), skip_special_tokens=True))
                yield chunk([{"index": p * req.n + j, "text": text, "logprobs": None,
                              "finish_reason": None} for j in range(req.n)])
        futures = [f for f, _ in submitted]
        deadline = loop_time() + self.settings.request_timeout_s
        running = len(futures)
        try:
            while running:  # each job posts its events, then (p, None) when it ends
                try:
                    p, ev = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop_time()))
                except TimeoutError:  # the error event, then [DONE]: no partial tail
                    timeout = error_body("the request timed out", "timeout_error", "timeout")
                    yield f"data: {json.dumps(timeout)}\n\n"
                    break
                if ev is None:
                    running -= 1
                    continue
                yield chunk([{"index": p * req.n + ev.choice, "text": ev.text,
                              "logprobs": self._event_logprobs(ev, req.logprobs),
                              "finish_reason": ev.finish_reason}])
            failed = [e for f in futures if f.done() and (e := f.exception()) is not None]
            if failed:
                yield f"data: {json.dumps(stream_error(failed[0]))}\n\n"
            elif not running:
                results = [f.result() for f in futures]
                yield chunk([], **self._stream_tail(req, lm, options, prompts,
                                                    [r is not None for r in reqs], results))
        finally:
            for _, job in submitted:
                job.cancelled.set()
        yield "data: [DONE]\n\n"

    def _event_logprobs(self, ev: TokenEvent, n: int | None) -> dict[str, Any] | None:
        if n is None:
            return None
        top = None if ev.top_logprobs is None else [
            {self.token_text(k): v for k, v in ev.top_logprobs.items()}]
        return {"tokens": [self.token_text(ev.token_id)], "token_logprobs": [ev.logprob],
                "top_logprobs": top, "text_offset": [0]}

    def _stream_tail(self, req: CompletionRequest, lm: SiloLM, options: SiloOptions,
                     prompts: list[tuple[int, ...]], reqs_present: list[bool],
                     results: list[Any]) -> dict[str, Any]:
        completion_tokens, attribution = 0, []
        gens = iter(results)
        for p in range(len(prompts)):
            result = next(gens, None) if reqs_present[p] else None
            if isinstance(result, GenerationResult):
                for c in result.choices:
                    completion_tokens += len(c.token_ids)
                    attribution += _sentences(p * req.n + c.index, c.attribution)
        prompt_tokens = sum(len(p) for p in prompts)
        return {"usage": {"prompt_tokens": prompt_tokens,
                          "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
                "silo": self._silo_info(lm, options, attribution)}

    # ---- tokenizer -------------------------------------------------------------------

    def tokenizer_info(self) -> dict[str, Any]:
        t = self.tokenizer
        return {"tokenizer_class": type(t).__name__, "model_max_length": self.max_length,
                "max_model_len": self.max_length, "vocab_size": self.vocab_size,
                "eos_token": t.eos_token, "bos_token": t.bos_token, "pad_token": t.pad_token,
                "unk_token": t.unk_token, "eos_token_id": t.eos_token_id,
                "bos_token_id": t.bos_token_id, "chat_template": None}

    def tokenize(self, prompt: str, add_special_tokens: bool) -> dict[str, Any]:
        ids = self.encode(prompt, add_special_tokens)
        return {"tokens": ids, "count": len(ids), "max_model_len": self.max_length}

    def detokenize(self, tokens: list[int]) -> dict[str, Any]:
        bad = [t for t in tokens if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidInputError(f"token id {bad[0]} is outside the vocabulary "
                                    f"[0, {self.vocab_size})")
        return {"prompt": str(self.tokenizer.decode(tokens))}

    # ---- attribution lookup ----------------------------------------------------------

    async def attribution(self, text: str, k: int, license_classes: Any,
                          datastore: str | None, principal: Principal) -> dict[str, Any]:
        store = self.registry.datastore(datastore)
        flt = SearchFilter(None if license_classes is None else frozenset(license_classes),
                           principal.scope)
        return {"sentences": await asyncio.to_thread(lookup, store, text, k, flt)}

    # ---- admin -----------------------------------------------------------------------

    def _store_name(self, name: str | None) -> str:
        name = name or self.registry.active
        if name is None:
            raise NotFoundError("no datastore is active")
        return name

    async def add_documents(self, lines: list[dict[str, Any]], name: str | None,
                            ) -> dict[str, Any]:
        from silo.corpus import parse_line

        store_name = self._store_name(name)
        docs = [parse_line(line, "request.documents", i) for i, line in enumerate(lines)]
        store = self.registry.datastore(store_name)
        stats = await asyncio.to_thread(store.add_documents, docs, self.encoder)
        return {"datastore": store_name, "documents": stats.documents,
                "entries": stats.entries, "blocks": stats.blocks}

    async def optout(self, body: dict[str, Any], name: str | None) -> dict[str, Any]:
        """Returns only after the tombstones are committed (Datastore.optout fsyncs)."""
        store_name = self._store_name(name)
        selector = _invalid(OptOutSelector.from_json,
                            {k: v for k, v in body.items() if v is not None})
        store = self.registry.datastore(store_name)
        receipt = await asyncio.to_thread(store.optout, selector)
        self.metrics.optouts.inc()
        self.metrics.optout_documents.inc(len(receipt.doc_ids))
        return {**receipt.to_json(), "datastore": store_name}

    async def receipts(self, name: str | None) -> dict[str, Any]:
        store_name = self._store_name(name)
        store = self.registry.datastore(store_name)
        receipts = await asyncio.to_thread(store.receipts)
        return {"datastore": store_name,
                "receipts": [{**r.to_json(), "datastore": store_name} for r in receipts]}

    def datastores(self) -> DatastoreList:
        loaded = self.registry.loaded()
        entries = []
        for name, path in sorted(self.registry.paths.items()):
            lm = loaded.get(name)
            info = None if lm is None or lm.datastore is None else asdict(lm.datastore.info())
            entries.append(DatastoreEntry(name=name, path=str(path),
                                          active=name == self.registry.active,
                                          loaded=lm is not None, info=info))
        return DatastoreList(active=self.registry.active, datastores=entries)

    async def activate(self, name: str) -> DatastoreList:
        await asyncio.to_thread(self.registry.activate, name)
        return self.datastores()

    def datastore_infos(self) -> dict[str, Any]:
        return {name: lm.datastore.info() for name, lm in self.registry.loaded().items()
                if lm.datastore is not None}


def _post(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any], prompt: int,
          event: TokenEvent) -> None:
    """Hand a token event from the model thread to the streaming response."""
    loop.call_soon_threadsafe(queue.put_nowait, (prompt, event))


def loop_time() -> float:
    return asyncio.get_running_loop().time()


def _sentences(index: int, attribution: Any) -> list[dict[str, Any]]:
    if attribution is None:
        return []
    return [{**s, "index": index} for s in attribution.to_json()["sentences"]]


def model_name_of(path: Path, configured: str | None) -> str:
    return configured or Path(path).name
