"""When the idle model thread waits for company: only after serving several jobs in one
turn, and then only until as many are queued again. With a batching wait of an hour, a
job that is not supposed to wait is answered (the one-minute limits below are liveness
bounds, not timings)."""

from __future__ import annotations

import threading

from server.worker import Job, ModelWorker
from silo.lm import ScoreRequest, SiloLM, SiloOptions

HOUR = 3600.0


def _job(lm: SiloLM, done: threading.Semaphore, n: int = 4) -> Job:
    request = ScoreRequest(tuple(range(3, 3 + n)), options=SiloOptions(mode="parametric"))
    return Job(lm, request, lambda result: done.release())


def test_a_lone_client_never_waits_for_company(tiny_lm, tiny_tokenizer) -> None:
    lm = SiloLM(tiny_lm, tiny_tokenizer)
    worker = ModelWorker(max_batch=8, max_queue=8, batch_wait_s=HOUR)
    worker.start()
    try:
        done = threading.Semaphore(0)
        for _ in range(3):  # one after another, as a lone client sends them
            worker.submit(_job(lm, done))
            assert done.acquire(timeout=60)
    finally:
        worker.stop()


def test_after_a_batch_the_model_waits_only_until_as_many_are_queued(
        tiny_lm, tiny_tokenizer) -> None:
    lm = SiloLM(tiny_lm, tiny_tokenizer)
    worker = ModelWorker(max_batch=8, max_queue=8, batch_wait_s=HOUR)
    done = threading.Semaphore(0)
    for n in (2, 3):  # queued before the thread starts: served together in one turn
        worker.submit(_job(lm, done, n))
    worker.start()
    try:
        for _ in range(2):
            assert done.acquire(timeout=60)
        worker.submit(_job(lm, done))  # alone: the model waits for a second job ...
        assert not done.acquire(timeout=0.2)
        worker.submit(_job(lm, done, 5))  # ... and starts as soon as it is queued
        for _ in range(2):
            assert done.acquire(timeout=60)
    finally:
        worker.stop()
