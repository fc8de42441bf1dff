"""The inputs of a request's passes: sliding windows predict every position once, RIC
groups prepend the passages retrieved before them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from silo.lm import SiloLM, SiloOptions
from silo.ric import RicParams
from tests.silo.conftest import prompt_ids


def test_windows_predict_every_position_once(full: SiloLM) -> None:
    contexts = full.contexts
    window, stride = contexts.window()
    seqs = [list(range(1, 60)), list(range(1, 5)), [1]]
    groups = contexts.plain_groups(seqs)
    predicted = np.concatenate([np.arange(i, i + g.scored) for i, g in groups])
    assert sorted(predicted.tolist()) == list(range(sum(len(s) - 1 for s in seqs)))
    assert all(len(g.inputs) == 1 and len(g.inputs[0]) <= window for _, g in groups)
    assert window == 24 and stride == 8  # the fixture's SiloConfig


def test_ric_groups_prepend_the_passages_retrieved_before_them(full: SiloLM) -> None:
    ids = list(prompt_ids(full))
    plan = full.plan(SiloOptions("ric", ric=RicParams(query_tokens=8, stride=6, k=2)))
    groups = full.contexts.ric_groups([ids], plan)
    assert [i for i, _ in groups] == list(range(0, len(ids) - 1, 6))
    for start, group in groups:
        assert group.passages == full.retriever.passages(ids[:start + 1], plan)
        if group.passages:
            assert len(group.inputs) == len(group.passages)
            for p, x in zip(group.passages, group.inputs, strict=True):
                assert x[:min(len(p.ids), 3)] == list(p.ids[:3])
                assert x[-group.scored:] == ids[start:start + group.scored]


def test_no_passage_is_the_context_alone(full: SiloLM) -> None:
    plan = full.plan(replace(SiloOptions("ric"), attribution=False))
    group = full.contexts.ric_group(list(range(1, 200)), 3, (), plan)
    assert group.inputs == [list(range(1, 200))[-full.max_length:]] and group.scored == 3
