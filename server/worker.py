"""The model thread: dynamic batching of scoring and generation, off the event loop.

Route handlers submit `Job`s and await them; one thread owns the model. Each turn it

  1. admits queued jobs: scoring jobs wait for the next scoring batch, generation jobs
     join the running set while it holds fewer than `max_batch` sequences (an idle
     model that was just serving several jobs first waits up to `batch_wait_s` for as
     many again; one that served a single job starts at once);
  2. scores every waiting scoring job in one `SiloLM.score` call (the LM groups them by
     options and pads them into shared forward passes);
  3. advances every running generation by one token, the rows of all requests that
     share a SiloLM in one `SiloLM.step` (continuous batching: one set of forward
     passes whatever their modes, one search and mixture per plan, one sampler call).

The queue is bounded: `submit` raises `CapacityError` (HTTP 429 with Retry-After) when
`max_queue` jobs are waiting. A job holds the SiloLM it was submitted with, so a
datastore swap never changes a request in flight. A cancelled job (timeout, client gone)
is dropped at the next turn, and its rows with it.

A failure while serving one job ends that job alone: `SiloLM.step` keeps a failing
state's error on the state and steps the others on; a scoring batch that fails is
scored again one job at a time. Each job gets its own result or its own exception.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datastore.errors import CapacityError, SiloError
from silo.lm import GenerationRequest, GenerationState, ScoreRequest, SiloLM, TokenEvent

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


@dataclass(eq=False)
class _Generation:
    """A running generation: its job and the SiloLM's state for it."""

    job: Job
    state: GenerationState


class ModelWorker:
    """The model thread and its bounded queue (see the module docstring)."""

    def __init__(self, max_batch: int, max_queue: int, batch_wait_s: float,
                 on_batch: Callable[[str, int], None] | None = None,
                 torch_threads: int | None = None) -> None:
        self.max_batch = max_batch
        self.torch_threads = torch_threads
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self.on_batch = on_batch or (lambda kind, size: None)
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running: list[_Generation] = []
        self._company = 0  # jobs served in the last turn: how many to wait for when idle
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
    def running(self) -> int:
        """Generations being stepped (a cancelled one leaves at the next step)."""
        return len(self._running)

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
        if self.torch_threads is not None:
            # OpenMP's thread count belongs to the calling thread: set it on this one
            import torch

            torch.set_num_threads(self.torch_threads)
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
            if not self._running:
                self._await_company()
            taken: list[Job] = []
            used = sum(len(g.state.live) for g in self._running)
            scores: list[Job] = []
            # generations are admitted in order while rows are free; scoring jobs do not
            # wait behind a generation that does not fit
            waiting: deque[Job] = deque()
            generations_full = False
            while self._queue:
                job = self._queue.popleft()
                if isinstance(job.request, GenerationRequest):
                    generations_full = generations_full or bool(
                        used and used + job.sequences > self.max_batch)
                    if generations_full:
                        waiting.append(job)
                        continue
                    used += job.sequences
                elif len(scores) < self.max_batch:
                    scores.append(job)
                else:
                    waiting.append(job)
                    continue
                taken.append(job)
            self._queue = waiting
            self._company = len(taken) + len(self._running)
        for job in taken:
            if not job.cancelled.is_set() and isinstance(job.request, GenerationRequest):
                self._begin(job)
        return [j for j in scores if not j.cancelled.is_set()]

    def _await_company(self) -> None:
        """Before an idle model starts, wait (at most `batch_wait_s`) until as many jobs
        are queued as the last turn served. Only a server that was just serving several
        requests expects company; a lone client's request never waits."""
        deadline = time.monotonic() + self.batch_wait_s
        while len(self._queue) < self._company and not self._stop:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _begin(self, job: Job) -> None:
        assert isinstance(job.request, GenerationRequest)
        try:
            (state,) = job.lm.start([job.request])
        except Exception as exc:  # reported to the request; the thread carries on
            _log_failure(exc)
            job.done(exc)
            return
        if state.finished:  # max_tokens 0
            self._end(_Generation(job, state))
        else:
            self._running.append(_Generation(job, state))

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
            _log_failure(exc)
            job.done(exc)

    def _generate(self) -> None:
        """Advance every running generation one token: one `SiloLM.step` per SiloLM
        (requests in flight across a datastore swap hold the one they started with);
        each job's events emitted."""
        self._running = [g for g in self._running if not g.job.cancelled.is_set()]
        groups: dict[int, list[_Generation]] = {}
        for g in self._running:
            groups.setdefault(id(g.job.lm), []).append(g)
        rows = sum(len(g.state.live) for g in self._running)
        self.on_batch("generate", rows)
        started = time.perf_counter()
        for gens in groups.values():
            try:
                stepped = gens[0].job.lm.step([g.state for g in gens])
            except Exception as exc:  # SiloLM.step isolates requests; this is a bug in it
                log.exception("generation step failed")
                for g in gens:
                    g.state.fail(exc)
                continue
            for g, events in zip(gens, stepped, strict=True):
                if g.job.emit is not None and events:
                    try:
                        for ev in events:
                            g.job.emit(ev)
                    except Exception:  # its listener is gone (a closed loop): drop the job
                        log.exception("a streamed job could not take its events")
                        g.job.cancelled.set()
        log.debug("step of %d rows in %.1f ms", rows, 1e3 * (time.perf_counter() - started))
        still = []
        for g in self._running:
            if g.job.cancelled.is_set():
                continue
            if g.state.finished:
                self._end(g)
            else:
                still.append(g)
        self._running = still

    @staticmethod
    def _end(g: _Generation) -> None:
        """A finished generation's result, or the error that ended it, to its job."""
        result: Any = g.state.error
        if result is None:
            try:
                result = g.job.lm.finish(g.state)
            except Exception as exc:  # attribution of the finished text
                result = exc
        if isinstance(result, BaseException):
            _log_failure(result)
        try:
            g.job.done(result)  # exactly once, whatever it does
        except Exception:
            log.exception("a job's completion callback failed")


def _log_failure(exc: BaseException) -> None:
    """A request's own bad input is not worth a traceback in the log; anything else is."""
    if isinstance(exc, SiloError):
        log.info("request failed: %s: %s", type(exc).__name__, exc)
    else:
        log.error("request failed", exc_info=exc)
