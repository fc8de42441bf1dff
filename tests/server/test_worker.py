"""The model thread: batched generation and scoring equal one-at-a-time SiloLM calls
(the reference), and a full queue is refused."""

from __future__ import annotations

import threading

import pytest

from datastore.errors import CapacityError
from server.worker import Job, ModelWorker
from silo.lm import GenerationRequest, ScoreRequest, SiloLM, SiloOptions

PARAMETRIC = SiloOptions(mode="parametric")


def _run(lm: SiloLM, requests: list, max_batch: int = 8) -> list:
    results: list = [None] * len(requests)
    done = threading.Semaphore(0)
    worker = ModelWorker(max_batch=max_batch, max_queue=64, batch_wait_s=0.0)

    def finish(i: int, result: object) -> None:
        results[i] = result
        done.release()

    for i, r in enumerate(requests):  # all queued before the thread starts: one batch
        worker.submit(Job(lm, r, lambda res, i=i: finish(i, res)))
    worker.start()
    for _ in requests:
        assert done.acquire(timeout=60)
    worker.stop()
    return results


def test_batched_generation_equals_one_at_a_time(tiny_lm, tiny_tokenizer) -> None:
    lm = SiloLM(tiny_lm, tiny_tokenizer)
    prompts = [(5, 6, 7), (8, 9), (10, 11, 12, 13, 14), (15,)]
    requests = [GenerationRequest(p, max_tokens=6, temperature=0, logprobs=2, echo=True,
                                  options=PARAMETRIC)
                for p in prompts]
    requests.append(GenerationRequest((20, 21), max_tokens=4, temperature=1.0, n=2, seed=3,
                                      options=PARAMETRIC))
    batched = _run(lm, requests, max_batch=3)  # fewer slots than rows: admission waits
    for req, got in zip(requests, batched, strict=True):
        want = lm.generate(req)
        assert [c.token_ids for c in got.choices] == [c.token_ids for c in want.choices]
        for a, b in zip(got.choices, want.choices, strict=True):
            assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
        if req.echo:
            assert got.prompt.token_logprobs[1:] == pytest.approx(
                want.prompt.token_logprobs[1:], abs=1e-4)


def test_batched_scoring_equals_one_at_a_time(tiny_lm, tiny_tokenizer) -> None:
    lm = SiloLM(tiny_lm, tiny_tokenizer)
    requests = [ScoreRequest(tuple(range(3, 3 + n)), top_logprobs=1, options=PARAMETRIC)
                for n in (2, 7, 4)]
    for req, got in zip(requests, _run(lm, requests), strict=True):
        want = lm.score([req])[0]
        assert got.token_logprobs[0] is None
        assert got.token_logprobs[1:] == pytest.approx(want.token_logprobs[1:], abs=1e-4)


def test_a_bad_job_fails_alone(tiny_lm, tiny_tokenizer) -> None:
    lm = SiloLM(tiny_lm, tiny_tokenizer)  # no datastore: knnlm cannot be planned
    good = ScoreRequest((3, 4, 5), options=PARAMETRIC)
    bad = ScoreRequest((3, 4), options=SiloOptions(mode="knnlm"))
    ok, err = _run(lm, [good, bad])
    assert ok.tokens == (3, 4, 5)
    assert isinstance(err, Exception) and "datastore" in str(err)


def test_full_queue_is_refused(tiny_lm, tiny_tokenizer) -> None:
    lm = SiloLM(tiny_lm, tiny_tokenizer)
    worker = ModelWorker(max_batch=4, max_queue=1, batch_wait_s=0.0)
    worker.submit(Job(lm, ScoreRequest((1, 2)), lambda r: None))
    with pytest.raises(CapacityError, match="queue is full"):
        worker.submit(Job(lm, ScoreRequest((1, 2)), lambda r: None))


def test_scoring_does_not_wait_behind_a_generation_that_does_not_fit(tiny_lm, tiny_tokenizer,
                                                                    ) -> None:
    lm = SiloLM(tiny_lm, tiny_tokenizer)
    worker = ModelWorker(max_batch=2, max_queue=8, batch_wait_s=0.0)
    order: list[str] = []
    done = threading.Semaphore(0)

    def job(name: str, request: object) -> Job:
        def finish(result: object) -> None:
            order.append(name)
            done.release()
        return Job(lm, request, finish)  # type: ignore[arg-type]

    long = GenerationRequest((5, 6), max_tokens=400, temperature=0, n=2, options=PARAMETRIC)
    worker.submit(job("long", long))
    worker.start()
    try:
        for _ in range(600):  # until the long generation holds both rows
            if worker.running:
                break
            threading.Event().wait(0.01)
        assert worker.running == 1
        worker.submit(job("waiting", GenerationRequest((7,), max_tokens=2, n=2,
                                                       options=PARAMETRIC)))
        worker.submit(job("score", ScoreRequest((3, 4, 5), options=PARAMETRIC)))
        for _ in range(3):
            assert done.acquire(timeout=120)
    finally:
        worker.stop()
    assert order == ["score", "long", "waiting"]
