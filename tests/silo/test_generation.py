"""Batched generation: one failing request never changes another's outcome or output."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from datastore.errors import UnavailableError
from silo.lm import GenerationRequest, GenerationResult, SiloLM, SiloOptions
from tests.silo.conftest import ALL, prompt_ids


class Poisoned(RuntimeError):
    pass


def _poison(mark: int):  # type: ignore[no-untyped-def]
    def hook(rows: Sequence[Sequence[int]]) -> None:
        if any(mark in r for r in rows):
            raise Poisoned("a row of the poisoned request")
    return hook


def _ordinary(full: SiloLM, opts: SiloOptions) -> list[GenerationRequest]:
    ids = prompt_ids(full)
    return [GenerationRequest(ids[:6], max_tokens=5, temperature=0, logprobs=2, options=opts),
            GenerationRequest(ids[:3], max_tokens=6, temperature=1.0, n=2, seed=11,
                              options=opts),
            GenerationRequest(ids[2:12], max_tokens=4, temperature=0.8, top_p=0.9, seed=5,
                              options=opts)]


def _run(lm: SiloLM, requests: list[GenerationRequest]) -> list[GenerationResult | BaseException]:
    states = lm.start(requests)
    while not all(s.finished for s in states):
        lm.step(states)
    return [s.error if s.error is not None else lm.finish(s) for s in states]


def _assert_same(got: GenerationResult, want: GenerationResult) -> None:
    assert [c.token_ids for c in got.choices] == [c.token_ids for c in want.choices]
    for a, b in zip(got.choices, want.choices, strict=True):
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-4)
        assert a.text == b.text and a.finish_reason == b.finish_reason


@pytest.mark.parametrize("opts", ALL, ids=lambda o: o.mode)
def test_a_request_whose_rows_fail_fails_alone(full: SiloLM, opts: SiloOptions) -> None:
    ordinary = _ordinary(full, opts)
    want = [full.generate(r) for r in ordinary]  # each alone, no failing neighbour
    mark = int(full.tokenizer.bos_token_id)  # in no passage, prompt or generated text
    assert mark not in (full.eos_id, full.pad_id)
    assert all(mark not in r.prompt_ids for r in ordinary)
    poisoned = GenerationRequest((*prompt_ids(full)[:4], mark), max_tokens=6, temperature=0,
                                 options=opts)
    full.rows_hook = _poison(mark)
    try:
        # the poisoned request first, in the middle and last of the batch
        for at in (0, 2, 3):
            requests = [*ordinary[:at], poisoned, *ordinary[at:]]
            results = _run(full, requests)
            failed = results.pop(at)
            assert isinstance(failed, Poisoned)
            for got, w in zip(results, want, strict=True):
                assert isinstance(got, GenerationResult)
                _assert_same(got, w)
    finally:
        full.rows_hook = None


def test_a_request_that_fails_mid_generation_keeps_the_others_going(full: SiloLM) -> None:
    """The probe fails from its third step on, when incremental decoding has cached
    every state: the failure still lands on it alone."""
    opts = ALL[1]
    ordinary = _ordinary(full, opts)
    want = [full.generate(r) for r in ordinary]
    start = tuple(prompt_ids(full)[1:6])  # a prefix no ordinary prompt has
    assert all(tuple(r.prompt_ids[:5]) != start for r in ordinary)
    probe = GenerationRequest(start, max_tokens=6, temperature=0, options=opts)

    def hook(rows: Sequence[Sequence[int]]) -> None:
        if any(tuple(r[:5]) == start and len(r) >= 7 for r in rows):
            raise Poisoned("the probe's third step")

    full.rows_hook = hook
    try:
        results = _run(full, [probe, *ordinary])
    finally:
        full.rows_hook = None
    assert isinstance(results[0], Poisoned)
    for got, w in zip(results[1:], want, strict=True):
        assert isinstance(got, GenerationResult)
        _assert_same(got, w)


def test_a_failure_in_one_requests_own_sampling_ends_it_alone(full: SiloLM) -> None:
    ordinary = _ordinary(full, ALL[0])
    want = [full.generate(r) for r in ordinary]
    broken = GenerationRequest(prompt_ids(full)[:4], max_tokens=3, temperature=1.0, seed=1)
    object.__setattr__(broken, "temperature", float("nan"))  # a sampler bug for this one
    results = _run(full, [*ordinary, broken])
    assert isinstance(results[-1], RuntimeError)
    for got, w in zip(results[:-1], want, strict=True):
        assert isinstance(got, GenerationResult)
        _assert_same(got, w)
    with pytest.raises(RuntimeError):
        full.generate(broken)


def test_a_datastore_fault_is_unavailable_not_a_bug(full: SiloLM) -> None:
    assert full.datastore is not None
    search = full.datastore.knn_search

    def broken(*args: object, **kwargs: object) -> object:
        raise OSError("index file unreadable")

    full.datastore.knn_search = broken  # the datastore is outside the unit under test
    try:
        with pytest.raises(UnavailableError, match="kNN search failed"):
            full.generate(GenerationRequest(prompt_ids(full)[:4], max_tokens=2,
                                            options=ALL[1]))
        # a parametric request in the same step needs no search and goes on
        results = _run(full, [GenerationRequest(prompt_ids(full)[:4], max_tokens=2,
                                                temperature=0, options=ALL[1]),
                              GenerationRequest(prompt_ids(full)[:4], max_tokens=2,
                                                temperature=0, options=ALL[0])])
    finally:
        full.datastore.knn_search = search
    assert isinstance(results[0], UnavailableError)
    assert isinstance(results[1], GenerationResult)
    assert torch.equal(torch.tensor(results[1].choices[0].token_ids),
                       torch.tensor(full.generate(GenerationRequest(
                           prompt_ids(full)[:4], max_tokens=2, temperature=0,
                           options=ALL[0])).choices[0].token_ids))


def test_ignore_eos_generates_past_the_end_of_text_token(full: SiloLM) -> None:
    ids = prompt_ids(full)[:3]
    full.rows_hook = None

    def request(seed: int, ignore_eos: bool) -> GenerationRequest:
        return GenerationRequest(ids, max_tokens=40, temperature=2.0, seed=seed,
                                 ignore_eos=ignore_eos, options=ALL[0])

    # A seed whose draw reaches the end-of-text token before max_tokens.
    seed, stopped = next((s, r.choices[0]) for s in range(500)
                         if (r := full.generate(request(s, False))).choices[0].finish_reason
                         == "stop")
    assert stopped.token_ids[-1] == full.eos_id and len(stopped.token_ids) < 40
    went_on = full.generate(request(seed, True)).choices[0]
    assert went_on.finish_reason == "length" and len(went_on.token_ids) == 40
    assert went_on.token_ids[:len(stopped.token_ids)] == stopped.token_ids


def test_a_choice_samples_the_same_tokens_whatever_n_is(full: SiloLM) -> None:
    ids = prompt_ids(full)[:4]
    one = full.generate(GenerationRequest(ids, max_tokens=6, temperature=1.0, seed=9))
    three = full.generate(GenerationRequest(ids, max_tokens=6, temperature=1.0, seed=9, n=3))
    assert three.choices[0].token_ids == one.choices[0].token_ids
    assert len({c.token_ids for c in three.choices}) > 1  # each choice its own stream
