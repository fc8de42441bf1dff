"""Tuning several datastores as a set, on cached neighbours and through `silo tune-set`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from datastore.config import DatastoreConfig
from datastore.store.datastore import Datastore
from silo.knnlm import KnnParams
from silo.lm import ScoreRequest, SiloLM, SiloOptions
from silo.set_tuning import (
    SetReport,
    candidates,
    choose,
    combined_logprob,
    read_set,
    set_key,
    write_set,
)
from silo.tuning import TargetScores, read_defaults
from tests.conftest import make_documents
from tests.silo.conftest import saved_model


def _member(n: int, near: float, helpful: bool, seed: int) -> TargetScores:
    rng = np.random.default_rng(seed)
    d = np.sort(near + rng.uniform(0.0, 1.0, (n, 4)), axis=1).astype(np.float32)
    targets = np.random.default_rng(0).integers(0, 50, n)  # the same text for every member
    values = np.repeat((targets if helpful else targets + 1)[:, None], 4, axis=1)
    return TargetScores(np.full(n, math.log(0.1)), d, values, targets)


def test_a_set_is_tuned_past_each_members_caution() -> None:
    # each member knows its own domain (near, helpful) and not the other's (far, wrong);
    # their own weights (d0 0.2, T 0.5) give each only a share of its own domain
    own = [KnnParams(4, 0.5, 1.0, relevance=0.2, relevance_temperature=0.5)] * 2
    scores = {"a": [_member(300, 0.0, True, 1), _member(300, 4.0, False, 2)],
              "b": [_member(300, 4.0, False, 3), _member(300, 0.0, True, 4)]}
    report = choose(scores, own)
    assert len(candidates(own)) == 2 * 8 * 4 * 4  # two votes
    assert all(report.tuned[d] < 0.8 * report.own[d] for d in scores)
    assert {p.lam for p in report.members} == {0.95}
    assert report.members[0].relevance > 0.2 and report.members[0].pointers == 0
    unweighted = [KnnParams(4, 0.5, 1.0)] * 2
    assert [c[0].lam for _, c in candidates(unweighted)] == [0.5, 0.6, 0.8, 0.95] * 2
    with pytest.raises(ValueError, match="at least one domain"):
        choose({}, own)


def test_stored_set_parameters_round_trip(tmp_path: Path) -> None:
    assert read_set(tmp_path, ["a", "b"]) is None
    p = KnnParams(8, 0.8, 20.0, 0, relevance=3.0, relevance_temperature=2.0)
    write_set(tmp_path, ["b", "a"], p, "separate")
    assert read_set(tmp_path, ["a", "b"]) == (p, "separate") and set_key(["b", "a"]) == "a,b"
    assert read_set(tmp_path, ["a", "c"]) is None
    with pytest.raises(ValueError, match="vote must be one of"):
        write_set(tmp_path, ["a", "b"], p, "merged")
    # a set stored before the vote existed was tuned with separate votes
    path = tmp_path / "silo_knnlm.json"
    data = json.loads(path.read_text())
    del data["sets"]["a,b"]["vote"]
    path.write_text(json.dumps(data))
    assert read_set(tmp_path, ["a", "b"]) == (p, "separate")


def test_text_no_member_covers_bounds_the_set() -> None:
    # both members are near the off-domain text and vote wrongly on it: tuned without
    # it, the set takes the largest weights; with it, only settings that leave it
    # within the tolerance of the LM compete
    own = [KnnParams(4, 0.5, 1.0, relevance=0.2, relevance_temperature=0.5)] * 2
    scores = {"a": [_member(300, 0.0, True, 1), _member(300, 4.0, False, 2)],
              "b": [_member(300, 4.0, False, 3), _member(300, 0.0, True, 4)]}
    off = {"x": [_member(300, 1.0, False, 5), _member(300, 1.0, False, 6)]}
    free = choose(scores, own)
    bounded = choose(scores, own, off, tolerance=0.01)
    assert bounded.off["x"] <= 1.01 < choose(scores, own, off, tolerance=10.0).off["x"]
    assert free.off == {} and bounded.tuned["a"] >= free.tuned["a"]
    assert bounded.vote in ("joint", "separate")
    alone = choose(scores, own, votes=("separate",))
    assert alone.vote == "separate" and alone.tuned["a"] >= free.tuned["a"] - 1e-9


def test_tune_set_command_stores_what_the_combination_uses(
        tmp_path: Path, corpus_file: Path, tiny_lm: object, tiny_tokenizer: object) -> None:
    from typer.testing import CliRunner

    from silo.cli.main import app

    model_dir = tmp_path / "model"
    enc = saved_model(model_dir, tiny_lm, tiny_tokenizer)
    docs = make_documents()
    for name, sources in (("bible", ("kjv", "devil")), ("dict", ("gcide",))):
        Datastore.build(tmp_path / name, [d for d in docs if d.source in sources], enc,
                        DatastoreConfig(backend="exact", ngram=False), progress=False).close()
    args = ["tune-set", "--datastore", f"bible={tmp_path / 'bible'}", "--datastore",
            str(tmp_path / "dict"), "--corpus", str(corpus_file), "--model", str(model_dir),
            "--split", "train", "--max-tokens", "256"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "tuned as a set" in result.output
    stored = [read_set(tmp_path / n, ["bible", "dict"]) for n in ("bible", "dict")]
    assert all(s is not None for s in stored)
    assert "sets" in json.loads((tmp_path / "bible" / "silo_knnlm.json").read_text())
    assert read_defaults(tmp_path / "bible") is None  # it has no tuning of its own
    loaded = SiloLM.from_dirs(model_dir)
    members = [(n, SiloLM(loaded.model, loaded.tokenizer, Datastore.open(
        tmp_path / n, encoder_fingerprint=enc.fingerprint))) for n in ("bible", "dict")]
    both = SiloLM.combine(members)
    assert both.plan(SiloOptions("knnlm")).members == tuple(s[0] for s in stored)
    assert both.plan(SiloOptions("knnlm")).vote == stored[0][1]
    # a request that turns the weight off takes each member's own parameters
    assert both.plan(SiloOptions("knnlm", relevance=False)).members == tuple(
        m.plan(SiloOptions("knnlm", relevance=False, pointers=0)).knn for _, m in members)
    ids = (both.eos_id, *both.encode("And God said, Let there be light."))
    assert both.score([ScoreRequest(ids, options=SiloOptions("knnlm"))])[0].token_logprobs
    one = CliRunner().invoke(app, args[:3] + args[5:])
    assert one.exit_code == 2 and "at least two" in one.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    none = CliRunner().invoke(app, [*args[:5], "--corpus", str(empty), "--model",
                                    str(model_dir)])
    assert none.exit_code == 2 and "no valid documents" in none.output
    bad = CliRunner().invoke(app, [*args, "--relevance-tolerance", "-1"])
    assert bad.exit_code == 2 and "--relevance-tolerance must be >= 0" in bad.output
    bad = CliRunner().invoke(app, [*args, "--document-tolerance", "-1"])
    assert bad.exit_code == 2 and "--document-tolerance must be >= 0" in bad.output
    # text no member covers, as `silo tune --off-domain` takes it
    off = CliRunner().invoke(app, [*args, "--off-domain", str(corpus_file),
                                   "--document-tolerance", "0.01"])
    assert off.exit_code == 0, off.output
    assert "(off-domain)" in off.output and "of the LM alone" in off.output


def _docs(*parts: TargetScores) -> TargetScores:
    """The parts one after another, each a document (TargetScores.first)."""
    joined = [np.concatenate([getattr(p, f) for p in parts])
              for f in ("lm_logprob", "distances", "values", "targets")]
    first = np.concatenate([np.eye(1, len(p.targets), dtype=bool)[0] for p in parts])
    return TargetScores(*joined, first)


def test_a_set_holds_each_off_domain_document_and_its_members_context_distances() -> None:
    own = [KnnParams(4, 0.5, 1.0, relevance=0.2, relevance_temperature=0.5,
                     relevance_decay=0.9)] * 2
    scores = {"a": [_member(300, 0.0, True, 1), _member(300, 4.0, False, 2)],
              "b": [_member(300, 4.0, False, 3), _member(300, 0.0, True, 4)]}
    # a long far document, and one as near as the members' own text but not helped
    off = {"x": [_docs(_member(2700, 6.0, False, 5), _member(300, 1.5, False, 6)),
                 _docs(_member(2700, 6.0, False, 7), _member(300, 1.5, False, 8))]}
    pooled = choose(scores, own, off, tolerance=0.05)
    held = choose(scores, own, off, tolerance=0.05, document_tolerance=0.01)

    def near_document(report: SetReport) -> float:  # the near document's ratio to the LM
        x = combined_logprob(off["x"], report.members, report.vote)[2700:]
        return math.exp(off["x"][0].lm_logprob[2700:].mean() - x.mean())

    assert near_document(pooled) > 1.01 >= near_document(held)
    assert held.tuned["a"] > pooled.tuned["a"]  # the bound costs the members' own text
    # the figures are the mixture's at the choice, each member's context distances
    # computed afresh
    for d in scores:
        fresh = combined_logprob(scores[d], held.members, held.vote)
        assert held.tuned[d] == pytest.approx(math.exp(-fresh.mean()), rel=1e-12)
    assert all(p.relevance_decay == 0.9 for p in held.members)
