"""Several datastores in one request: the mixture against hand-computed references, and
the guarantees (an opt-out inside a combination equals never-added)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from datastore.errors import InvalidInputError
from datastore.store.datastore import Datastore
from silo.combination import (
    DEFAULT_VOTE,
    combined_log_probs,
    combined_target_log_probs,
    contributions,
    default_vote,
    member_weights,
    relevance_shares,
)
from silo.knnlm import KnnParams, interpolate, knn_log_probs
from silo.lm import GenerationRequest, ScoreRequest, SiloConfig, SiloLM, SiloOptions
from silo.relevance import smooth
from silo.ric import RicParams
from silo.tuning import knn_target_prob, nearest_distances
from tests.conftest import make_documents
from tests.silo.conftest import CONFIG, build_store, prompt_ids

CFG = SiloConfig(batch_size=3, window=24, stride=8)


def _lm_side() -> torch.Tensor:
    return torch.log_softmax(torch.arange(6.0).repeat(3, 1), dim=1)


# three rows; member a's neighbours: near, far, none; member b's: far, near, near
D = torch.tensor([[0.0, 1.0, 9.0, 9.5], [9.0, 9.0, 0.5, 1.0], [0.0, 0.0, 1.0, 2.0]])
V = torch.tensor([[1, 2, 3, 3], [1, 1, 4, 4], [-1, -1, 5, 4]])


def test_one_member_is_the_single_datastore_mixture() -> None:
    lm = _lm_side()
    for p in (KnnParams(2, 0.4, 2.0), KnnParams(2, 0.7, 1.0, relevance=3.0,
                                                relevance_temperature=0.5)):
        knn = knn_log_probs(D[:, :2], V[:, :2], 6, p.temperature)
        want = interpolate(lm, knn, p.row_lam(D[:, :2], V[:, :2]), torch.isfinite(knn).any(1))
        for vote in ("joint", "separate"):  # one datastore: the two votes are one
            got = combined_log_probs(lm, D[:, :2], V[:, :2], [p], 6, vote)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
            assert torch.equal(got[2], lm[2])  # no neighbour: the LM's row bit for bit


def _joint_by_hand(lm: torch.Tensor, members: list[KnnParams]) -> np.ndarray:
    """One softmax over every member's neighbours at logit -d / tau_i + log a_i, given
    the kNN side's whole share sum_i a_i."""
    a = member_weights(D, V, members, "separate").numpy()
    out = (1 - a.sum(1, keepdims=True)) * lm.exp().double().numpy()
    for row in range(len(D)):
        logits, tokens = [], []
        for i, c in enumerate((slice(0, 2), slice(2, 4))):
            for d, v in zip(D[row, c].tolist(), V[row, c].tolist(), strict=True):
                if v >= 0 and a[row, i] > 0:
                    logits.append(-d / members[i].temperature + math.log(a[row, i]))
                    tokens.append(v)
        if logits:
            w = np.exp(np.array(logits) - max(logits))
            for t, x in zip(tokens, w / w.sum(), strict=True):
                out[row, t] += a[row].sum() * x
    return out


def test_the_joint_vote_is_one_vote_over_every_neighbour() -> None:
    lm = _lm_side()
    for members in ([KnnParams(2, 0.5, 1.0, relevance=4.0), KnnParams(2, 0.8, 2.0,
                                                                     relevance=2.0)],
                    [KnnParams(2, 0.6, 3.0), KnnParams(2, 0.6, 3.0)]):
        got = combined_log_probs(lm, D, V, members, 6, "joint")
        np.testing.assert_allclose(got.exp().numpy(), _joint_by_hand(lm, members), atol=1e-6)
        # the same share in all as the separate vote, divided by the members' neighbours
        joint, separate = (member_weights(D, V, members, v) for v in ("joint", "separate"))
        torch.testing.assert_close(joint.sum(1), separate.sum(1))
        assert not torch.allclose(joint, separate)
    # equal shares and temperatures: the vote of one store holding every neighbour
    same = [KnnParams(2, 0.6, 3.0), KnnParams(2, 0.6, 3.0)]
    merged = interpolate(lm, knn_log_probs(D, V, 6, 3.0), 0.6)
    torch.testing.assert_close(combined_log_probs(lm[:2], D[:2], V[:2], same, 6, "joint"),
                               merged[:2], atol=1e-6, rtol=0)
    with pytest.raises(InvalidInputError, match="vote must be one of"):
        member_weights(D, V, same, "best")


def test_the_joint_vote_survives_extreme_temperatures() -> None:
    # -d_1 / tau overflows float64 for every member: the limit gives it all to the
    # member nearest by d_1 / tau, as the kNN softmax itself tends to its nearest
    for tau in (1e-320, 5e-324):
        members = [KnnParams(2, 0.5, tau), KnnParams(2, 0.8, tau)]
        w = member_weights(D + 1.0, V, members, "joint")
        assert torch.isfinite(w).all()
        torch.testing.assert_close(w.sum(1), member_weights(D + 1.0, V, members,
                                                            "separate").sum(1))
        assert w[0, 0] > 0 and w[0, 1] == 0 and w[1, 1] > 0 and w[1, 0] == 0
        assert w[2, 0] == 0  # no neighbour in a: all to b
    near = torch.tensor([[math.inf, math.inf]], dtype=torch.float64)
    assert relevance_shares(near, [KnnParams(2, 0.5, 1.0)] * 2).sum() == 0


def test_the_default_vote_is_separate_only_where_every_member_is_weighted() -> None:
    weighted = KnnParams(4, 0.5, 1.0, relevance=2.0)
    assert default_vote([weighted, weighted]) == "separate"
    assert default_vote([weighted, KnnParams(4, 0.5, 1.0)]) == DEFAULT_VOTE == "joint"
    assert default_vote([]) == "joint"


def test_weights_are_a_softmax_with_the_lm_at_score_zero() -> None:
    a = KnnParams(2, 0.5, 1.0, relevance=4.0, relevance_temperature=1.0)
    b = KnnParams(2, 0.8, 1.0, relevance=2.0, relevance_temperature=0.5)
    w = member_weights(D, V, [a, b], "separate")
    s = np.array([[4.0 - 0.0, (2.0 - 9.0) / 0.5], [4.0 - 9.0, (2.0 - 0.5) / 0.5],
                  [-np.inf, (2.0 - 1.0) / 0.5]])
    e = np.exp(s)
    want = e / (1 + e.sum(1, keepdims=True)) * np.array([0.5, 0.8])
    np.testing.assert_allclose(w.numpy(), want, rtol=1e-12)
    assert (w.sum(1) <= 0.8).all()
    # without relevance weights: uniform, and a member without neighbours takes no part
    plain = member_weights(D, V, [KnnParams(2, 0.5, 1.0), KnnParams(2, 0.8, 1.0)],
                           "separate")
    np.testing.assert_allclose(plain.numpy(), [[0.25, 0.4], [0.25, 0.4], [0.0, 0.4]])


@pytest.mark.parametrize("vote", ["joint", "separate"])
def test_the_mixture_by_hand_and_at_the_targets(vote: str) -> None:
    lm = _lm_side()
    members = [KnnParams(2, 0.5, 1.0, relevance=4.0), KnnParams(2, 0.8, 2.0, relevance=2.0)]
    got = combined_log_probs(lm, D, V, members, 6, vote)
    w = member_weights(D, V, members, vote).numpy()
    p_a = knn_log_probs(D[:, :2], V[:, :2], 6, 1.0).exp().double().numpy()
    p_b = knn_log_probs(D[:, 2:], V[:, 2:], 6, 2.0).exp().double().numpy()
    want = ((1 - w.sum(1, keepdims=True)) * lm.exp().double().numpy()
            + w[:, :1] * p_a + w[:, 1:] * p_b)
    np.testing.assert_allclose(got.exp().numpy(), want, atol=1e-6)
    np.testing.assert_allclose(got.exp().sum(1).numpy(), 1.0, atol=1e-5)
    targets = torch.tensor([1, 4, 5])
    at = combined_target_log_probs(lm.gather(1, targets[:, None])[:, 0], D, V, targets,
                                   members, vote)
    torch.testing.assert_close(at, got.gather(1, targets[:, None])[:, 0], atol=1e-6, rtol=0)
    mass, weights = contributions(D, V, targets, members, vote)
    lm_t = lm.exp().gather(1, targets[:, None])[:, 0].double()
    mixed = (1 - weights.sum(1)) * lm_t + mass.sum(1)
    torch.testing.assert_close(mixed.log().float(), at, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory, tiny_lm: object,
            tiny_tokenizer: object) -> dict[str, SiloLM]:
    """Three datastores over disjoint parts of the test corpus."""
    docs = make_documents()
    parts = {"bible": [d for d in docs if d.source in ("kjv", "devil")],
             "code": [d for d in docs if d.source == "stdlib"],
             "dict": [d for d in docs if d.source == "gcide"]}
    out = {}
    for name, part in parts.items():
        store = build_store(tmp_path_factory.mktemp(name), tiny_lm, tiny_tokenizer, part)
        out[name] = SiloLM(tiny_lm, tiny_tokenizer, store, CFG)
    return out


def _lp(lm: SiloLM, options: SiloOptions, ids: tuple[int, ...]) -> np.ndarray:
    res = lm.score([ScoreRequest(ids, options=options)])[0]
    return np.array(res.token_logprobs[1:], dtype=np.float64)


def _relevant(lm: SiloLM, ids: tuple[int, ...], decay: float = 0.0,
              reference: Datastore | None = None, margin: bool = False) -> SiloLM:
    """`lm` with a relevance weight at the median nearest distance of `ids` (measured
    from the context's distance at `decay`, and with `margin` from the distance to the
    `reference`: silo.relevance), served with the `reference`."""
    lm = SiloLM(lm.model, lm.tokenizer, lm.datastore, CFG, reference=reference)
    scores = lm.target_scores([ids], SiloOptions("knnlm"), 4, reference=margin)
    near = nearest_distances(scores, 4) - (scores.baseline if margin else 0.0)
    weight = KnnParams(4, 0.6, 2.0, relevance=float(np.median(near)),
                       relevance_temperature=float(near.std()) or 1.0, relevance_decay=decay,
                       relevance_margin=margin)
    return SiloLM(lm.model, lm.tokenizer, lm.datastore, CFG, weight, reference=reference)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_lm: object,
              tiny_tokenizer: object) -> Datastore:
    """A reference index over text of neither datastore combined below (the code's)."""
    docs = [d for d in make_documents() if d.source == "stdlib"]
    return build_store(tmp_path_factory.mktemp("reference"), tiny_lm, tiny_tokenizer, docs,
                       replace(CONFIG, bm25=False))


def _context(near: np.ndarray, decay: float) -> np.ndarray:
    """One sequence's context distances (silo.relevance) from its nearest (n,)."""
    first = np.zeros(len(near), dtype=bool)
    first[0] = True
    return smooth(near[:, None], first, (decay,))[0][:, 0]


@pytest.mark.parametrize(("decays", "margins"), [
    ((0.0, 0.0), (False, False)), ((0.8, 0.5), (False, False)), ((0.5, 0.0), (True, False))],
    ids=["position", "context", "reference"])
def test_a_combination_scores_the_mixture_of_its_members(
        members: dict[str, SiloLM], reference: Datastore, decays: tuple[float, float],
        margins: tuple[bool, bool]) -> None:
    ids = prompt_ids(members["bible"])[:20]
    a, b = (_relevant(members[n], ids, d, reference, m)
            for n, d, m in zip(("bible", "dict"), decays, margins, strict=True))
    both = SiloLM.combine([("bible", a), ("dict", b)])
    assert both.set_vote == "separate"  # every member weighted by relevance
    opts = SiloOptions("knnlm", attribution=True)
    # by hand, from each member's own neighbours
    p_lm = np.exp(_lp(a, SiloOptions("parametric"), ids))
    scores = [m.target_scores([ids], SiloOptions("knnlm"), 4, reference=True) for m in (a, b)]
    s = np.stack([(m.defaults.relevance  # type: ignore[operator]
                   - _context(nearest_distances(sc, 4) - (sc.baseline if margin else 0.0),
                              m.defaults.relevance_decay))
                  / m.defaults.relevance_temperature
                  for m, sc, margin in zip((a, b), scores, margins, strict=True)], 1)
    a_i = np.exp(s) / (1 + np.exp(s).sum(1, keepdims=True)) * 0.6
    # the joint vote: each member's share of sum a_i in proportion to a_i Z_i
    d = [np.where(sc.values[:, :4] >= 0, sc.distances[:, :4], np.inf).astype(np.float64)
         for sc in scores]
    low = np.minimum(*(x.min(1) for x in d))[:, None]
    z = np.stack([np.exp(-(x - low) / 2.0).sum(1) for x in d], 1)
    p = [knn_target_prob(sc, 4, 2.0) for sc in scores]
    for vote in ("joint", "separate"):  # the default last
        both.set_vote = vote
        res = both.score([ScoreRequest(ids, options=opts)])[0]
        got = np.array(res.token_logprobs[1:], float)
        w = (a_i if vote == "separate"
             else a_i.sum(1, keepdims=True) * a_i * z / (a_i * z).sum(1, keepdims=True))
        want = np.log((1 - w.sum(1)) * p_lm + w[:, 0] * p[0] + w[:, 1] * p[1])
        np.testing.assert_allclose(got, want, atol=1e-5)
    # attribution names each document's datastore and each datastore's weight
    assert res.provenance is not None and res.attribution is not None
    named = {(n.datastore, n.doc_id) for prov in res.provenance[1:] if prov
             for n in prov.neighbours}
    assert {ds for ds, _ in named} == {"bible", "dict"}
    assert all(d.startswith("pd/") if ds == "bible" else d.startswith("cl/") for ds, d in named)
    for i, prov in enumerate(res.provenance[1:]):
        assert prov is not None and dict(prov.weights).keys() == {"bible", "dict"}
        mass = sum(n.contribution for n in prov.neighbours)
        assert math.exp(got[i]) == pytest.approx((1 - w[i].sum()) * p_lm[i] + mass, abs=1e-5)
    sentence = res.attribution.sentences[0]
    assert dict(sentence.weights).keys() == {"bible", "dict"}
    assert {d.datastore for s in res.attribution.sentences for d in s.documents} <= {
        "bible", "dict"}
    # greedy generation follows the combined distribution
    gen = both.generate(GenerationRequest(ids[:6], max_tokens=5, temperature=0, options=opts))
    (choice,) = gen.choices
    again = _lp(both, opts, ids[:6] + choice.token_ids)[5:]
    np.testing.assert_allclose(again, choice.token_logprobs, atol=1e-4)
    assert choice.attribution is not None


def test_an_optout_inside_a_combination_equals_never_added(
        members: dict[str, SiloLM], reference: Datastore, tmp_path: Path, tiny_lm: object,
        tiny_tokenizer: object) -> None:
    docs = [d for d in make_documents() if d.source == "gcide"]
    with_doc = build_store(tmp_path / "with", tiny_lm, tiny_tokenizer, docs)
    without = build_store(tmp_path / "without", tiny_lm, tiny_tokenizer,
                          [d for d in docs if d.doc_id != "cl/0"])
    with_doc.optout(doc_ids=["cl/0"])
    ids = prompt_ids(members["bible"])
    # the members without relevance weights, and weighted from the margin to a reference
    # (the datastore's weight set alike in both: from the store that never held cl/0)
    plain = (members["bible"], None, None)
    margin = (_relevant(members["bible"], ids, 0.5, reference, True),
              _relevant(SiloLM(tiny_lm, tiny_tokenizer, without, CFG), ids, 0.5, reference,
                        True).defaults, reference)
    cases = [(w, *c) for w in (plain, margin) for c in (
        ("knnlm", True, "score"), ("knnlm", False, "score"), ("ric", True, "score"),
        ("knnlm+ric", True, "quota"))]
    for (a, weight, ref), mode, relevance, merge in cases:
        opted, never = (SiloLM.combine([("bible", a), ("dict", SiloLM(
            tiny_lm, tiny_tokenizer, store, CFG, weight, reference=ref))])
            for store in (with_doc, without))
        ric = RicParams(query_tokens=8, stride=6, k=2)
        opts = SiloOptions(mode, k=6, lam=0.5, knn_temperature=2.0, attribution=True,
                           relevance=relevance, ric=replace(ric, merge=merge))
        got = opted.score([ScoreRequest(ids, options=opts)])[0]
        want = never.score([ScoreRequest(ids, options=opts)])[0]
        np.testing.assert_allclose(np.array(got.token_logprobs[1:], float),
                                   np.array(want.token_logprobs[1:], float), atol=1e-5)
        assert got.attribution is not None and "cl/0" not in got.attribution.doc_ids()
        gen = opted.generate(GenerationRequest(ids[:6], max_tokens=5, temperature=0,
                                               options=opts))
        alone = never.generate(GenerationRequest(ids[:6], max_tokens=5, temperature=0,
                                                 options=opts))
        assert gen.choices[0].token_ids == alone.choices[0].token_ids
    with_doc.close()
    without.close()


def test_ric_over_several_datastores_merges_their_passages(members: dict[str, SiloLM],
                                                           ) -> None:
    both = SiloLM.combine([("bible", members["bible"]), ("dict", members["dict"])])
    ids = prompt_ids(both)
    for merge, k in (("score", 1), ("score", 2), ("quota", 1), ("quota", 2)):
        opts = SiloOptions("ric", ric=RicParams(query_tokens=8, stride=6, k=k, merge=merge),
                           attribution=True)
        plan = both.plan(opts)
        got = both.retriever.passages(ids, plan)
        found = {n: members[n].retriever.passages(ids, members[n].plan(opts))
                 for n in ("bible", "dict")}
        pool = [(n, p) for n, hits in found.items() for p in
                (hits if merge == "score" else hits[:k])]
        pool.sort(key=lambda np_: -np_[1].score)
        want = pool[:k] if merge == "score" else pool
        assert [(p.datastore, p.block_id, p.score) for p in got] == [
            (n, p.block_id, p.score) for n, p in want]
        assert {p.datastore for p in got} <= {"bible", "dict"}
        res = both.score([ScoreRequest(ids, options=opts)])[0]
        assert res.attribution is not None
        docs = [d for s in res.attribution.sentences for d in s.documents]
        assert docs and all(d.via == "ric" and d.datastore in ("bible", "dict") for d in docs)
    # one passage by score: the better of the two datastores' top passages
    quota = [p.datastore for p in both.retriever.passages(ids, both.plan(SiloOptions(
        "ric", ric=RicParams(query_tokens=8, k=1, merge="quota"))))]
    assert sorted(quota) == ["bible", "dict"]  # a quota of one from each


def test_what_a_combination_refuses(members: dict[str, SiloLM]) -> None:
    with pytest.raises(InvalidInputError, match="at least two"):
        SiloLM.combine([("bible", members["bible"])])
    both = SiloLM.combine([("bible", members["bible"]), ("code", members["code"])])
    assert both.set_vote == "joint"  # members without relevance weights: as one store
    with pytest.raises(ValueError, match="merge must be one of"):
        RicParams(merge="best")
    alone = SiloLM(members["bible"].model, members["bible"].tokenizer, None, CFG)
    with pytest.raises(InvalidInputError, match="no datastore"):
        SiloLM.combine([("bible", members["bible"]), ("none", alone)])
    # parametric over a combination is the LM alone
    ids = prompt_ids(both)
    assert np.array_equal(_lp(both, SiloOptions("parametric"), ids),
                          _lp(members["bible"], SiloOptions("parametric"), ids))
    # each member keeps its tuned parameters, without pointers
    plan = both.plan(SiloOptions("knnlm", pointers=4))
    assert plan.datastores == ("bible", "code")
    assert plan.members == (members["bible"].plan(SiloOptions("knnlm", pointers=0)).knn,
                            members["code"].plan(SiloOptions("knnlm", pointers=0)).knn)
