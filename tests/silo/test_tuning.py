"""Grid search against SiloLM's own scoring, and defaults stored with the datastore."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from datastore.config import DatastoreConfig
from datastore.store.datastore import Datastore
from silo.encoder import LMEncoder
from silo.lm import ScoreRequest, SiloConfig, SiloLM, SiloOptions
from silo.tuning import (
    Grid,
    GridPoint,
    TargetScores,
    best_overall,
    choose_pointers,
    grid_search,
    has_relevance,
    mixed_logprob,
    read_defaults,
    tune_pointers,
    widen,
    write_defaults,
)
from tests.conftest import make_documents
from tests.silo.conftest import saved_model

TEXTS = ["Lay, v. t. To cause to lie down.", "kernel: The essential part of a system."]


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory, tiny_lm: object,
       tiny_tokenizer: object) -> SiloLM:
    enc = LMEncoder(tiny_lm, tiny_tokenizer, "tiny-fp", max_length=128)
    config = DatastoreConfig(backend="exact", bm25=False, ngram=False)
    store = Datastore.build(tmp_path_factory.mktemp("ds"), make_documents(), enc, config,
                            progress=False)
    return SiloLM(tiny_lm, tiny_tokenizer, store, SiloConfig(batch_size=4))


def test_grid_points_equal_silolm_scoring_at_those_values(lm: SiloLM) -> None:
    seqs = [(lm.eos_id, *lm.encode(t)) for t in TEXTS]
    grid = Grid(ks=(2, 8), lams=(0.3, 0.8), temperatures=(1.0, 10.0))
    scores = lm.target_scores(seqs, SiloOptions("knnlm"), k=grid.k_max)
    assert scores.distances.shape == (sum(len(s) - 1 for s in seqs), 8)
    points = grid_search(scores, grid)
    assert len(points) == 8
    assert [p.perplexity for p in points] == sorted(p.perplexity for p in points)
    for p in (points[0], points[-1]):
        opts = SiloOptions("knnlm", k=p.k, lam=p.lam, knn_temperature=p.temperature)
        res = lm.score([ScoreRequest(s, options=opts) for s in seqs])
        lps = np.array([x for r in res for x in r.token_logprobs[1:]], dtype=np.float64)
        assert p.perplexity == pytest.approx(float(np.exp(-lps.mean())), rel=1e-4)
        np.testing.assert_allclose(mixed_logprob(scores, p.params), lps, atol=1e-4)
    plain = lm.target_scores(seqs, SiloOptions("parametric"), k=0)
    np.testing.assert_allclose(plain.lm_logprob, scores.lm_logprob)


def test_rows_without_neighbours_keep_the_lm() -> None:
    scores = TargetScores(np.log([0.5, 0.25]), np.array([[1.0], [np.inf]], np.float32),
                          np.array([[3], [-1]]), np.array([3, 3]))
    got = mixed_logprob(scores, GridPoint(1, 0.5, 1.0, 0.0).params)
    np.testing.assert_allclose(np.exp(got), [0.75, 0.25])


def test_best_overall_minimises_the_mean_log_perplexity() -> None:
    a = [GridPoint(1, 0.5, 1.0, 10.0), GridPoint(2, 0.5, 1.0, 4.0)]
    b = [GridPoint(1, 0.5, 1.0, 10.0), GridPoint(2, 0.5, 1.0, 30.0)]
    best = best_overall({"a": a, "b": b})
    # exp(mean(log)): (1) sqrt(100) = 10, (2) sqrt(120) ~ 10.95
    assert (best.k, best.perplexity) == (1, pytest.approx(10.0))


def test_a_k_tolerance_takes_the_fewest_neighbours_within_it() -> None:
    points = {"a": [GridPoint(4096, 0.8, 80.0, 20.0), GridPoint(2048, 0.8, 40.0, 20.3),
                    GridPoint(2048, 0.7, 80.0, 20.2), GridPoint(1024, 0.8, 80.0, 21.0)]}
    assert best_overall(points).k == 4096
    # 2048 is within 2% (the better of its two points); 1024 is 5% worse
    assert best_overall(points, 0.02) == GridPoint(2048, 0.7, 80.0, pytest.approx(20.2))
    assert best_overall(points, 0.1).k == 1024


def test_defaults_round_trip_and_become_silolm_defaults(lm: SiloLM, tmp_path: Path) -> None:
    assert read_defaults(tmp_path) is None
    write_defaults(tmp_path, GridPoint(64, 0.7, 40.0, 12.0), {"x": GridPoint(16, 0.6, 20.0, 9.0)})
    assert read_defaults(tmp_path) == GridPoint(64, 0.7, 40.0, 0.0).params
    assert lm.datastore is not None
    write_defaults(lm.datastore.folder, GridPoint(4, 0.6, 5.0, 1.0), {})
    again = SiloLM(lm.model, lm.tokenizer, lm.datastore)
    assert again.defaults == GridPoint(4, 0.6, 5.0, 0.0).params
    assert again.plan(SiloOptions("knnlm")).knn == again.defaults
    (lm.datastore.folder / "silo_knnlm.json").unlink()


def test_relevance_defaults_round_trip(tmp_path: Path) -> None:
    write_defaults(tmp_path, GridPoint(64, 0.7, 40.0, 12.0), {})
    assert not has_relevance(tmp_path)
    point = GridPoint(64, 0.9, 40.0, 12.0, relevance=55.5, relevance_temperature=3.0,
                      relevance_decay=0.95)
    write_defaults(tmp_path, point, {})
    assert has_relevance(tmp_path)
    assert read_defaults(tmp_path) == point.params
    assert read_defaults(tmp_path).relevance == 55.5  # type: ignore[union-attr]
    assert read_defaults(tmp_path).relevance_decay == 0.95  # type: ignore[union-attr]
    # defaults stored before the context's distance existed read back with decay 0, and
    # do not count as tuned with it (the default datastore is tuned again once)
    path = tmp_path / "silo_knnlm.json"
    data = json.loads(path.read_text())
    del data["default"]["relevance_decay"]
    path.write_text(json.dumps(data))
    assert read_defaults(tmp_path) == replace(point, relevance_decay=0.0).params
    assert not has_relevance(tmp_path)
    # a weight measured from the reference reads back as such; defaults stored before
    # the reference existed read back without it, and do not count as tuned with it
    write_defaults(tmp_path, replace(point, relevance_margin=True), {})
    assert read_defaults(tmp_path) == replace(point, relevance_margin=True).params
    assert read_defaults(tmp_path).margin  # type: ignore[union-attr]
    data = json.loads(path.read_text())
    del data["default"]["relevance_margin"]
    path.write_text(json.dumps(data))
    assert read_defaults(tmp_path) == point.params
    assert not has_relevance(tmp_path)
    write_defaults(tmp_path, point, {})
    # without a uniform point, a request without the weight takes the same k, lam, tau
    assert read_defaults(tmp_path, relevance=False) == GridPoint(64, 0.9, 40.0, 0.0).params
    write_defaults(tmp_path, point, {}, uniform=GridPoint(64, 0.5, 20.0, 14.0))
    assert read_defaults(tmp_path) == point.params
    assert read_defaults(tmp_path, relevance=False) == GridPoint(64, 0.5, 20.0, 0.0).params


def test_the_pointer_choice_searches_least_within_the_tolerance() -> None:
    best = GridPoint(64, 0.5, 10.0, 20.0)
    table = {1: (21.0, 0.2), 2: (20.3, 0.4), 4: (20.1, 0.7)}  # ppl, share searched
    choice, measured = choose_pointers(table.__getitem__, best, (1, 2, 4), 0.02)
    assert choice.pointers == 2 and choice.searched == 0.4 and choice.k == 64
    assert [p.pointers for p in measured] == [1, 2, 4]
    none, _ = choose_pointers(table.__getitem__, best, (1,), 0.02)  # 5% worse: refused
    assert none == best and none.params.pointers == 0


def test_pointer_tuning_measures_silolm_and_is_exact_at_a_search_everywhere(lm: SiloLM,
                                                                         ) -> None:
    seqs = {"x": [(lm.eos_id, *lm.encode(t)) for t in TEXTS]}
    best = best_overall({"x": grid_search(lm.target_scores(seqs["x"], SiloOptions("knnlm"),
                                                           8), Grid(ks=(8,), lams=(0.5,),
                                                                    temperatures=(5.0,)))})
    never = 10**6  # a threshold no position reaches: every token searched, as pointers 0
    _, (point,) = tune_pointers(lm, seqs, best, (never,))
    assert point.searched == 1.0 and point.perplexity == pytest.approx(best.perplexity)
    _, (one,) = tune_pointers(lm, seqs, best, (1,))
    assert 0 < one.searched < 1 and np.isfinite(one.perplexity)
    opts = SiloOptions("knnlm", k=8, lam=0.5, knn_temperature=5.0, pointers=1)
    res = lm.score([ScoreRequest(s, options=opts) for s in seqs["x"]])
    lps = np.array([x for r in res for x in r.token_logprobs[1:]], dtype=np.float64)
    assert one.perplexity == pytest.approx(float(np.exp(-lps.mean())), rel=1e-4)


def test_grid_is_validated_naming_the_field() -> None:
    with pytest.raises(ValueError, match="ks"):
        Grid(ks=())
    with pytest.raises(ValueError, match="lam"):
        Grid(lams=(1.5,))


def test_widen_extends_only_the_edges_the_best_point_sits_on() -> None:
    grid = Grid(ks=(16, 64), lams=(0.2, 0.5, 0.9), temperatures=(1.0, 5.0, 20.0))
    assert widen(grid, GridPoint(16, 0.5, 5.0, 10.0)) == Grid((8, 16, 64), grid.lams,
                                                              grid.temperatures)
    inside = Grid(ks=(16, 64, 256), lams=grid.lams, temperatures=grid.temperatures)
    assert widen(inside, GridPoint(64, 0.5, 5.0, 10.0)) == inside
    corner = widen(inside, GridPoint(256, 0.9, 20.0, 10.0))
    assert corner == Grid((16, 64, 256, 512), (0.2, 0.5, 0.9, 0.95), (1.0, 5.0, 20.0, 80.0))
    low = widen(inside, GridPoint(64, 0.2, 1.0, 10.0))
    assert low.lams[0] == 0.1 and low.temperatures[0] == 0.25
    at_limits = Grid(ks=(4096,), lams=(1.0,), temperatures=(1e6,))
    assert widen(at_limits, GridPoint(4096, 1.0, 1e6, 10.0)).ks == (2048, 4096)


def test_tune_command_stores_defaults_the_next_silolm_uses(
        tmp_path: Path, corpus_file: Path, tiny_lm: object, tiny_tokenizer: object) -> None:
    from typer.testing import CliRunner

    from silo.cli.main import app

    model_dir = tmp_path / "model"
    enc = saved_model(model_dir, tiny_lm, tiny_tokenizer)
    Datastore.build(tmp_path / "ds", make_documents(), enc,
                    DatastoreConfig(backend="exact", ngram=False), progress=False).close()
    args = ["tune", "--corpus", str(corpus_file), "--datastore", str(tmp_path / "ds"),
            "--model", str(model_dir), "--split", "train", "--ks", "2,4", "--lams", "0.5",
            "--temperatures", "1,10"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "of tokens searched" in result.output
    stored = read_defaults(tmp_path / "ds")
    assert stored is not None and stored.k in (2, 4) and stored.lam == 0.5
    assert stored.pointers in (0, 1, 2, 4, 8, 16, 32)
    assert SiloLM.from_dirs(model_dir, tmp_path / "ds").defaults == stored
    done = CliRunner().invoke(app, ["complete", "In the", "--datastore", str(tmp_path / "ds"),
                                    "--model", str(model_dir), "--max-tokens", "4"])
    assert done.exit_code == 0, done.output
    assert '"sentences"' in done.output
    bad = CliRunner().invoke(app, args[:-2] + ["--temperatures", "x"])
    assert bad.exit_code == 2 and "temperatures" in bad.output
    for wrong in ("1.5", "-1"):
        bad = CliRunner().invoke(app, [*args, "--pointers", wrong])
        assert bad.exit_code == 2 and "--pointers" in bad.output
    bad = CliRunner().invoke(app, [*args, "--k-tolerance", "-0.1"])
    assert bad.exit_code == 2 and "--k-tolerance" in bad.output
    bad = CliRunner().invoke(app, [*args, "--relevance-tolerance", "-0.1"])
    assert bad.exit_code == 2 and "--relevance-tolerance" in bad.output
    bad = CliRunner().invoke(app, [*args, "--document-tolerance", "-0.1"])
    assert bad.exit_code == 2 and "--document-tolerance must be >= 0" in bad.output
    assert read_defaults(tmp_path / "ds") == stored  # refused before any work
    # text from outside the datastore: the relevance weight is tuned and stored too
    off = tmp_path / "off.jsonl"
    off.write_text("".join(json.dumps({"id": f"zz/{i}", "text": t, "source": "zz",
                                       "license": "CC0-1.0", "license_class": "pd"}) + "\n"
                           for i, t in enumerate(["qqq zzz xxj vvw " * 8, "kkq jjz " * 12])))
    result = CliRunner().invoke(app, [*args, "--off-domain", str(off), "--pointers", "",
                                      "--document-tolerance", "0.01"])
    assert result.exit_code == 0, result.output
    assert "relevance d0=" in result.output and "off:zz: ppl LM" in result.output
    assert " decay=" in result.output and "worst off-domain document" in result.output
    tuned = read_defaults(tmp_path / "ds")
    assert tuned is not None and tuned.relevance is not None and has_relevance(tmp_path / "ds")
    again = SiloLM.from_dirs(model_dir, tmp_path / "ds")
    assert again.plan(SiloOptions("knnlm")).knn == tuned
    # turned off by a request: the grid's best at one weight, as tuned before
    plain = again.plan(SiloOptions("knnlm", relevance=False)).knn
    assert plain == read_defaults(tmp_path / "ds", relevance=False)
    assert plain.relevance is None and plain.lam == 0.5
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = CliRunner().invoke(app, [*args, "--off-domain", str(empty)])
    assert bad.exit_code != 0 and "no train documents" in bad.output
    # with a reference index of the LM's own text, the weight may be measured from it
    ref = tmp_path / "ref"
    Datastore.build(ref, [d for d in make_documents() if d.source == "kjv"], enc,
                    DatastoreConfig(backend="exact", ngram=False, bm25=False),
                    progress=False).close()
    result = CliRunner().invoke(app, [*args, "--off-domain", str(off), "--reference", str(ref)])
    assert result.exit_code == 0, result.output
    tuned = read_defaults(tmp_path / "ds")
    assert tuned is not None and tuned.relevance is not None and has_relevance(tmp_path / "ds")
    assert ("from the reference" in result.output) == tuned.margin
    assert SiloLM.from_dirs(model_dir, tmp_path / "ds", reference_dir=ref).defaults == tuned
    # stored measured from the reference, it needs one to be opened (and says so)
    write_defaults(tmp_path / "ds", GridPoint(4, 0.5, 1.0, 0.0, relevance=-1.0,
                                              relevance_margin=True), {})
    done = CliRunner().invoke(app, ["complete", "In the", "--datastore", str(tmp_path / "ds"),
                                    "--model", str(model_dir), "--max-tokens", "2"])
    assert done.exit_code != 0 and "reference" in done.output
    done = CliRunner().invoke(app, ["complete", "In the", "--datastore", str(tmp_path / "ds"),
                                    "--model", str(model_dir), "--max-tokens", "2",
                                    "--reference", str(ref)])
    assert done.exit_code == 0, done.output
