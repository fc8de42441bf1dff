"""Incremental decoding: inputs fed over their caches, read whole, or both in one call,
give what reading each input whole alone gives."""

from __future__ import annotations

import torch

from silo.decoding import Decoder, _parts
from silo.lm import SiloLM
from tests.silo.conftest import prompt_ids


def test_next_equals_reading_each_input_whole(full: SiloLM) -> None:
    runner = full.runner
    ids = list(prompt_ids(full))
    decoder = Decoder(runner, batch_size=2)  # several passes of each kind
    first = [ids[:3], ids[:7], ids[2:5], ids[:20]]
    _, _, caches = decoder.next(first, [None] * len(first))
    assert all(c is not None and list(c.tokens) == x for c, x in zip(caches, first,
                                                                     strict=True))
    # grown by one (fed over the cache), changed (read whole), and a new input
    second = [ids[:4], ids[:8], ids[3:7], ids[:21], ids[5:9]]
    lp, hidden, again = decoder.next(second, [*caches, None])
    for i, x in enumerate(second):
        (want_lp,), (want_h,) = runner.forward([x], [1])
        torch.testing.assert_close(lp[i], want_lp[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(hidden[i], want_h[0], atol=1e-4, rtol=1e-4)
    assert [list(c.tokens) for c in again if c is not None] == second
    _, _, none = decoder.next(second, again, keep=False)
    assert none == [None] * len(second)


def test_an_input_that_fills_the_context_keeps_no_cache(full: SiloLM) -> None:
    n = full.runner.max_length
    ids = [5 + i % 50 for i in range(n)]
    _, _, caches = Decoder(full.runner, 4).next([ids, ids[:-1]], [None, None])
    assert caches[0] is None and caches[1] is not None


def test_passes_split_where_padding_would_cost_more_than_the_slack() -> None:
    lengths = [2, 3, 3, 130, 131]
    assert _parts(list(range(5)), lengths, 16, 64) == [[0, 1, 2], [3, 4]]
    assert _parts(list(range(5)), lengths, 2, 10_000) == [[0, 1], [2, 3], [4]]
    assert _parts(list(range(5)), lengths, 16, 10_000) == [[0, 1, 2, 3, 4]]


def test_inputs_with_a_shared_prefix_read_it_once(full: SiloLM) -> None:
    runner = full.runner
    ids = list(prompt_ids(full))
    passage = ids[10:16]
    inputs = [[*passage, *ids[:3]], [*passage, *ids[3:5]], [*passage, *ids[:2]]]
    read: list[list[int]] = []  # the rows read whole
    prefill = runner.prefill

    def counted(runs: list[list[list[int]]]):  # type: ignore[no-untyped-def]
        read.extend(r for run in runs for r in run)
        return prefill(runs)

    runner.prefill = counted  # type: ignore[method-assign]
    try:
        decoder = Decoder(runner, batch_size=4)
        lp, hidden, caches = decoder.next(inputs, [None] * 3, prefixes=[len(passage)] * 3)
        again, _, _ = decoder.next(inputs[:1], [None], prefixes=[len(passage)])
    finally:
        del runner.prefill
    assert read == [passage]  # the passage once, and no input whole
    for i, x in enumerate(inputs):
        (want_lp,), (want_h,) = runner.forward([x], [1])
        torch.testing.assert_close(lp[i], want_lp[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(hidden[i], want_h[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again[0], lp[0], atol=1e-5, rtol=0)
    assert [list(c.tokens) for c in caches if c is not None] == inputs
