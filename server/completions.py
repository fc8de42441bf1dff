"""The completions service: a protocol request into `SiloLM` requests (the limits from
settings checked, the plan resolved once), handed to the model thread (`ModelWorker`),
awaited with the request timeout, and answered as one response or as server-sent events.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.responses import Response, StreamingResponse

from datastore.errors import InvalidInputError
from datastore.table.log import LogHead
from datastore.tlog.keys import b64
from server.auth import Principal
from server.errors import ApiError, error_body, stream_error
from server.metrics import Metrics
from server.protocol import (
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    SiloRequestOptions,
)
from server.registry import DatastoreRegistry
from server.responses import Choices, event_text, silo_info, summary
from server.settings import Settings
from server.tokens import TokenizerService
from server.transparency import checkpoint_header, response_note
from server.worker import Job, ModelWorker
from silo.lm import GenerationRequest, Mode, Plan, ScoreRequest, SiloLM, SiloOptions, TokenEvent


@dataclass(frozen=True)
class Prepared:
    """A completion request made ready for the model: the SiloLM and plan it is served
    with, its prompts, per prompt the library request (None: nothing to compute), and
    the transparency log's head it is served against (None without a datastore)."""

    lm: SiloLM
    plan: Plan
    datastore: str | None
    prompts: list[tuple[int, ...]]
    requests: list[ScoreRequest | GenerationRequest | None]
    checkpoint: LogHead | None


class CompletionService:
    """POST /v1/completions, whole or streamed."""

    def __init__(self, settings: Settings, registry: DatastoreRegistry,
                 tokens: TokenizerService, worker: ModelWorker, metrics: Metrics,
                 model_name: str) -> None:
        self.settings = settings
        self.registry = registry
        self.tokens = tokens
        self.worker = worker
        self.metrics = metrics
        self.model_name = model_name
        self.choices = Choices(tokens)

    # ---- preparing -------------------------------------------------------------------

    def _check_limits(self, req: CompletionRequest) -> None:
        s = self.settings
        if (req.max_tokens or 0) > s.max_tokens_limit:
            raise InvalidInputError(f"max_tokens is {req.max_tokens}; the limit is "
                                    f"{s.max_tokens_limit}")
        if req.n > s.max_n:
            raise InvalidInputError(f"n is {req.n}; the limit is {s.max_n}")
        if (req.logprobs or 0) > s.max_logprobs:
            raise InvalidInputError(f"logprobs is {req.logprobs}; the limit is "
                                    f"{s.max_logprobs}")

    def _options(self, opts: SiloRequestOptions | None) -> SiloOptions:
        o = opts or SiloRequestOptions()
        classes = None if o.license_classes is None else frozenset(o.license_classes)
        mode = o.mode or self.settings.default_mode
        if (self.registry.active is None and o.mode is None and o.datastore is None
                and o.datastores is None and self.settings.default_set() is None):
            mode = Mode.PARAMETRIC  # no datastore configured: the default cannot apply
        return SiloOptions(mode=mode, k=o.k, lam=o.lambda_, knn_temperature=o.knn_temperature,
                           license_classes=classes, attribution=o.attribution,
                           relevance=o.relevance)

    def _prepare(self, req: CompletionRequest, principal: Principal) -> Prepared:
        """Check the request and build its library requests; bad input is an
        InvalidInputError (a 400) before anything is queued."""
        self._check_limits(req)
        prompts = self.tokens.prompts(req.prompt)
        options = self._options(req.silo)
        lm = self.lm_for(req, principal)
        plan = lm.plan(options, principal.scope)  # a mode the datastore cannot serve: 400
        if req.silo is not None and req.silo.signed:
            self._check_signable(req, lm)
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        requests: list[ScoreRequest | GenerationRequest | None] = []
        for ids in prompts:
            if (req.max_tokens or 0) == 0:
                requests.append(ScoreRequest(ids, req.logprobs or 0, options, principal.scope,
                                             plan) if req.echo else None)
            else:
                requests.append(GenerationRequest(
                    ids, req.max_tokens or 16, 1.0 if req.temperature is None
                    else req.temperature, 1.0 if req.top_p is None else req.top_p, req.n,
                    stop, req.seed, req.logprobs or 0, req.echo, options, principal.scope,
                    req.ignore_eos, plan))
        # read now: every change below it is in effect for every search the request makes
        head = None if lm.datastore is None else lm.datastore.view.log
        return Prepared(lm, plan, self.registry.name_of(lm), prompts, requests, head)

    def lm_for(self, req: CompletionRequest, principal: Principal) -> SiloLM:
        """The SiloLM serving the request's datastores (registry.resolve)."""
        o = req.silo
        return self.registry.resolve(o.datastore if o else None, o.datastores if o else None,
                                     principal.datastores, self.settings.default_set())

    @staticmethod
    def _check_signable(req: CompletionRequest, lm: SiloLM) -> None:
        if req.stream:
            raise InvalidInputError("a streamed response cannot be signed; ask for it whole")
        if lm.members:
            raise InvalidInputError("a response over several datastores cannot be signed "
                                    "(each has its own log); name one datastore")
        if lm.datastore is None or lm.datastore.log.signer is None:
            raise InvalidInputError("this service has no log key (SILO_LOG_KEY_FILE), so "
                                    "it cannot sign responses")

    # ---- the model thread ------------------------------------------------------------

    def _submit_all(self, prepared: Prepared, loop: asyncio.AbstractEventLoop,
                    emit: Callable[[int], Any] | None = None,
                    finished: Callable[[int], Any] | None = None,
                    ) -> list[tuple[asyncio.Future[Any], Job]]:
        """Queue the jobs of one request: all, or none (a full queue refusing a later one
        cancels those already queued, so nothing runs for a request that got a 429).
        `emit(p)` and `finished(p)` give prompt p's callbacks for a stream."""
        submitted: list[tuple[asyncio.Future[Any], Job]] = []
        try:
            for p, request in enumerate(prepared.requests):
                if request is not None:
                    submitted.append(self._submit(
                        prepared.lm, request, loop, emit(p) if emit else None,
                        finished(p) if finished else None))
        except BaseException:
            for future, job in submitted:
                job.cancelled.set()
                future.cancel()
            raise
        return submitted

    def _submit(self, lm: SiloLM, request: ScoreRequest | GenerationRequest,
                loop: asyncio.AbstractEventLoop, emit: Any = None, finished: Any = None,
                ) -> tuple[asyncio.Future[Any], Job]:
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

    async def _await(self, submitted: Sequence[tuple[asyncio.Future[Any], Job]],
                     ) -> list[Any]:
        try:
            return await asyncio.wait_for(asyncio.gather(*(f for f, _ in submitted)),
                                          self.settings.request_timeout_s)
        except TimeoutError:
            raise ApiError(504, f"the request took longer than "
                           f"{self.settings.request_timeout_s:g} s", "timeout_error",
                           "timeout") from None
        finally:
            for _, job in submitted:
                job.cancelled.set()

    @staticmethod
    def _per_prompt(prepared: Prepared, results: Sequence[Any]) -> list[Any]:
        """The results (one per queued job) placed at their prompts (None elsewhere)."""
        found = iter(results)
        return [None if r is None else next(found) for r in prepared.requests]

    # ---- responses -------------------------------------------------------------------

    async def respond(self, req: CompletionRequest, principal: Principal, body: bytes,
                      ) -> Response:
        """The HTTP response: the whole body, or its server-sent events; with the log's
        checkpoint in `Silo-Checkpoint`, and signed in `Silo-Signature` when asked."""
        lm = self.lm_for(req, principal)
        for store in [m.datastore for _, m in lm.members] or [lm.datastore]:
            if store is not None and store.config.shares_index:
                # what other replicas committed, in the view the request's checkpoint is
                # read from (a local folder's view moves with its own writes)
                await asyncio.to_thread(store.sync)
        if req.stream:
            prepared, events = self.stream(req, principal)
            return StreamingResponse(events, media_type="text/event-stream", headers={
                "Cache-Control": "no-cache", **checkpoint_header(prepared.checkpoint)})
        prepared, response = await self.complete(req, principal)
        content = response.model_dump_json(by_alias=True).encode()
        headers = checkpoint_header(prepared.checkpoint)
        if req.silo is not None and req.silo.signed and prepared.checkpoint is not None:
            store = prepared.lm.datastore
            assert store is not None
            note = response_note(store, prepared.checkpoint, body, content)
            headers["Silo-Signature"] = b64(note.encode())
        return Response(content, media_type="application/json", headers=headers)

    async def complete(self, req: CompletionRequest, principal: Principal,
                       ) -> tuple[Prepared, CompletionResponse]:
        prepared = self._prepare(req, principal)
        submitted = self._submit_all(prepared, asyncio.get_running_loop())
        results = self._per_prompt(prepared, await self._await(submitted))
        choices: list[CompletionChoice] = []
        for p, (ids, result) in enumerate(zip(prepared.prompts, results, strict=True)):
            choices += self.choices.of_prompt(p * req.n, ids, req, result)
        usage, attribution = summary(prepared.prompts, req.n, results)
        self.metrics.tokens.labels("prompt").inc(usage.prompt_tokens)
        self.metrics.tokens.labels("completion").inc(usage.completion_tokens)
        return prepared, CompletionResponse.model_construct(
            id=f"cmpl-{uuid.uuid4().hex}", object="text_completion", created=int(time.time()),
            model=self.model_name, choices=choices, usage=usage,
            silo=silo_info(prepared.plan, prepared.datastore, attribution,
                           prepared.checkpoint))

    # ---- streams ---------------------------------------------------------------------

    def stream(self, req: CompletionRequest, principal: Principal,
               ) -> tuple[Prepared, AsyncIterator[str]]:
        """Server-sent events: one chunk per token, then usage, then `data: [DONE]`.
        Limits are checked before the first byte, so bad input is still a 400."""
        prepared = self._prepare(req, principal)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, TokenEvent | None]] = asyncio.Queue()
        submitted = self._submit_all(
            prepared, loop, emit=lambda p: functools.partial(_post, loop, queue, p),
            finished=lambda p: functools.partial(queue.put_nowait, (p, None)))
        return prepared, self._events(req, prepared, queue, submitted)

    async def _events(self, req: CompletionRequest, prepared: Prepared,
                      queue: asyncio.Queue[tuple[int, TokenEvent | None]],
                      submitted: list[tuple[asyncio.Future[Any], Job]]) -> AsyncIterator[str]:
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(choices: list[CompletionChoice], **extra: Any) -> str:
            return event_text(CompletionChunk.model_construct(
                id=cid, object="text_completion", created=created, model=self.model_name,
                choices=choices, **extra))

        if req.echo:
            for p, ids in enumerate(prepared.prompts):
                text = self.tokens.text(ids)
                yield chunk([CompletionChoice.model_construct(
                    index=p * req.n + j, text=text, logprobs=None, finish_reason=None)
                    for j in range(req.n)])
        futures = [f for f, _ in submitted]
        deadline = _loop_time() + self.settings.request_timeout_s
        running = len(futures)
        try:
            while running:  # each job posts its events, then (p, None) when it ends
                try:
                    p, ev = await asyncio.wait_for(queue.get(),
                                                   max(0.0, deadline - _loop_time()))
                except TimeoutError:  # the error event, then [DONE]: no partial tail
                    timeout = error_body("the request timed out", "timeout_error", "timeout")
                    yield _data(timeout)
                    break
                if ev is None:
                    running -= 1
                    continue
                yield chunk([self.choices.event(p * req.n + ev.choice, ev, req.logprobs)])
            failed = [e for f in futures if f.done() and (e := f.exception()) is not None]
            if failed:
                yield _data(stream_error(failed[0]))
            elif not running:
                results = self._per_prompt(prepared, [f.result() for f in futures])
                usage, attribution = summary(prepared.prompts, req.n, results)
                yield chunk([], usage=usage, silo=silo_info(
                    prepared.plan, prepared.datastore, attribution, prepared.checkpoint))
        finally:
            for _, job in submitted:
                job.cancelled.set()
        yield "data: [DONE]\n\n"


def _post(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any], prompt: int,
          event: TokenEvent) -> None:
    """Hand a token event from the model thread to the streaming response."""
    loop.call_soon_threadsafe(queue.put_nowait, (prompt, event))


def _data(body: dict[str, object]) -> str:
    import orjson

    return f"data: {orjson.dumps(body).decode()}\n\n"


def _loop_time() -> float:
    return asyncio.get_running_loop().time()
