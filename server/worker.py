"""The model thread: dynamic batching of scoring and generation, off the event loop.

Route handlers submit `Job`s and await them; one thread owns the model. Each turn it

  1. admits queued jobs: scoring jobs wait for the next scoring batch, generation jobs
     join the running set while it holds fewer than `max_batch` sequences;
  2. scores every waiting scoring job in one `SiloLM.score` call (the LM groups them by
     options and pads them into shared forward passes);
  3. advances every running generation by one token, rows of different requests that
     share a SiloLM and a plan going through ONE forward pass (continuous batching).

The queue is bounded: `submit` raises `CapacityError` (HTTP 429 with Retry-After) when
`max_queue` jobs are waiting. A job holds the SiloLM it was submitted with, so a
datastore swap never changes a request in flight. A cancelled job (timeout, client gone)
is dropped at the next turn.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from datastore.errors import CapacityError
from silo.lm import (
    GenerationRequest,
    GenerationResult,
    ScoreRequest,
    ScoreResult,
    SiloLM,
    TokenEvent,
    _sample,
)

log = logging.getLogger("server.worker")

Done = Callable[[Any], None]  # receives the result or the exception


@dataclass
class Job:
    """One unit of model work. `done` and `emit` are called on the model thread."""

    lm: SiloLM
    request: ScoreRequest | GenerationRequest
    done: Done
    emit: Callable[[TokenEvent], None] | None = None  # streaming: each token as chosen
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def sequences(self) -> int:
        return self.request.n if isinstance(self.request, GenerationRequest) else 1


@dataclass
class _Generation:
    """A running generation: its rows (prompt + new tokens) per choice."""

    job: Job
    request: GenerationRequest
    plan: Any
    generator: torch.Generator
    rows: list[list[int]]
    new: list[list[int]]
    texts: list[str]
    passages: list[tuple[Any, ...]]
    live: list[int]
    events: list[list[TokenEvent]]
    prompt: ScoreResult | None
    step: int = 0


def _start(job: Job) -> _Generation:
    """Resolve the plan, seed the sampler and (with echo) score the prompt."""
    req = job.request
    assert isinstance(req, GenerationRequest)
    lm = job.lm
    plan = lm.plan(req.options, req.scope)
    seed = req.seed if req.seed is not None else int(torch.randint(2**31, ()).item())
    prompt = None
    if req.echo:
        prompt = lm.score([ScoreRequest(req.prompt_ids, req.logprobs, req.options,
                                        req.scope)])[0]
    n = req.n
    return _Generation(job, req, plan, torch.Generator().manual_seed(seed),
                       [list(req.prompt_ids) for _ in range(n)], [[] for _ in range(n)],
                       [""] * n, [() for _ in range(n)], list(range(n)),
                       [[] for _ in range(n)], prompt)


def _finish(gen: _Generation) -> GenerationResult:
    lm, req = gen.job.lm, gen.request
    choices = tuple(lm._completion(i, evs, req) for i, evs in enumerate(gen.events))
    return GenerationResult(choices, gen.prompt)


def _step(lm: SiloLM, gens: list[_Generation]) -> None:
    """One token for every live row of `gens` (same SiloLM, same plan): one forward pass,
    then each request samples its own rows with its own generator."""
    plan = gens[0].plan
    rows: list[list[int]] = []
    passages: list[tuple[Any, ...]] = []
    for g in gens:
        for r in g.live:
            if plan.uses_ric and g.step % plan.ric.stride == 0:
                g.passages[r] = lm._retrieve(g.rows[r], plan)
            rows.append(g.rows[r])
            passages.append(g.passages[r])
    chunk = lm._step(rows, list(range(len(rows))), passages, plan)
    mixed = lm._mixed(chunk, plan)
    picked, at = [], 0
    for g in gens:
        n = len(g.live)
        picked.append(_sample(mixed[at:at + n], g.request.temperature, g.request.top_p,
                              g.generator))
        at += n
    tokens = torch.cat(picked)
    provs = lm._provenance(chunk, tokens, plan) if plan.attribution else None
    at = 0
    for g in gens:
        still = []
        for r in g.live:
            token = int(tokens[at])
            g.rows[r].append(token)
            g.new[r].append(token)
            ev = lm._event(r, token, mixed[at], g.new[r], g.texts, g.request, g.step,
                           None if provs is None else provs[at])
            g.events[r].append(ev)
            if g.job.emit is not None:
                g.job.emit(ev)
            if ev.finish_reason is None:
                still.append(r)
            at += 1
        g.live = still
        g.step += 1


class ModelWorker:
    """The model thread and its bounded queue (see the module docstring)."""

    def __init__(self, max_batch: int, max_queue: int, batch_wait_s: float,
                 on_batch: Callable[[str, int], None] | None = None) -> None:
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self.on_batch = on_batch or (lambda kind, size: None)
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running: list[_Generation] = []
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="silo-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    @property
    def depth(self) -> int:
        """Jobs waiting to be admitted."""
        return len(self._queue)

    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._queue) >= self.max_queue:
                raise CapacityError(f"the request queue is full ({self.max_queue} waiting); "
                                    "retry later")
            self._queue.append(job)
            self._cond.notify()

    # ---- the thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            scores = self._admit()
            if scores is None:
                return
            if scores:
                self._score(scores)
            if self._running:
                self._generate()

    def _admit(self) -> list[Job] | None:
        """Take waiting jobs (blocking while there is nothing to do); None on stop."""
        with self._cond:
            while not self._queue and not self._running and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            if not self._running and self.batch_wait_s > 0 and len(self._queue) == 1:
                # a lone request waits a moment for company; a busy server never waits
                self._cond.wait(self.batch_wait_s)
            taken: list[Job] = []
            used = sum(len(g.live) for g in self._running)
            scores: list[Job] = []
            while self._queue:
                job = self._queue[0]
                if isinstance(job.request, GenerationRequest):
                    if used and used + job.sequences > self.max_batch:
                        break
                    used += job.sequences
                elif len(scores) >= self.max_batch:
                    break
                taken.append(self._queue.popleft())
                if isinstance(job.request, ScoreRequest):
                    scores.append(job)
        for job in taken:
            if not job.cancelled.is_set() and isinstance(job.request, GenerationRequest):
                self._begin(job)
        return [j for j in scores if not j.cancelled.is_set()]

    def _begin(self, job: Job) -> None:
        try:
            gen = _start(job)
        except Exception as exc:  # reported to the request; the thread carries on
            job.done(exc)
            return
        if job.request.max_tokens == 0:  # type: ignore[union-attr]
            job.done(_finish(gen))
        else:
            self._running.append(gen)

    def _score(self, jobs: list[Job]) -> None:
        """One batched call; if it fails, each job alone, so one bad job fails alone."""
        self.on_batch("score", len(jobs))
        by_lm: dict[int, list[Job]] = {}
        for job in jobs:
            by_lm.setdefault(id(job.lm), []).append(job)
        for group in by_lm.values():
            try:
                results = group[0].lm.score([j.request for j in group])  # type: ignore[misc]
            except Exception:
                for job in group:
                    self._score_alone(job)
                continue
            for job, res in zip(group, results, strict=True):
                job.done(res)

    @staticmethod
    def _score_alone(job: Job) -> None:
        try:
            job.done(job.lm.score([job.request])[0])  # type: ignore[list-item]
        except Exception as exc:
            job.done(exc)

    def _generate(self) -> None:
        """Advance every running generation one token, grouped by (SiloLM, plan)."""
        self._running = [g for g in self._running if not g.job.cancelled.is_set()]
        groups: dict[tuple[int, Any], list[_Generation]] = {}
        for g in self._running:
            groups.setdefault((id(g.job.lm), g.plan), []).append(g)
        self.on_batch("generate", sum(len(g.live) for g in self._running))
        started = time.perf_counter()
        for gens in groups.values():
            try:
                _step(gens[0].job.lm, gens)
            except Exception as exc:
                log.exception("generation step failed")
                for g in gens:
                    g.live = []
                    g.job.done(exc)
                    g.job.cancelled.set()
        log.debug("step of %d rows in %.1f ms", sum(len(g.live) for g in self._running),
                  1e3 * (time.perf_counter() - started))
        still = []
        for g in self._running:
            if g.job.cancelled.is_set():
                continue
            if g.live:
                still.append(g)
            else:
                g.job.done(_finish(g))
        self._running = still
