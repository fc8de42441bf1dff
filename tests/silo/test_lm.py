"""SiloLM against brute-force references, and the equivalence guarantee end to end."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from datastore.document import LicenseClass
from datastore.errors import InvalidInputError
from datastore.filter import AccessScope
from datastore.store.datastore import Datastore
from silo.knnlm import KnnParams
from silo.lm import (
    GenerationRequest,
    ScoreRequest,
    SiloConfig,
    SiloLM,
    SiloOptions,
    TokenEvent,
)
from silo.relevance import smooth
from silo.ric import RicParams, with_passage
from silo.tuning import knn_target_prob, mixed_logprob, nearest_distances
from tests.conftest import make_documents
from tests.silo.conftest import ALL, CONFIG, TEXT, build_store, prompt_ids


def _lp(lm: SiloLM, options: SiloOptions, ids: tuple[int, ...], **kw: object) -> np.ndarray:
    res = lm.score([ScoreRequest(ids, options=options, **kw)])[0]  # type: ignore[arg-type]
    assert res.token_logprobs[0] is None
    return np.array(res.token_logprobs[1:], dtype=np.float64)


def test_parametric_scores_equal_the_model_with_echo_semantics(full: SiloLM) -> None:
    ids = prompt_ids(full)[:20]  # fits one window: no sliding
    lm = SiloLM(full.model, full.tokenizer, None)
    res = lm.score([ScoreRequest(ids, top_logprobs=3, options=SiloOptions("parametric"))])[0]
    with torch.inference_mode():
        ref = torch.log_softmax(full.model(input_ids=torch.tensor([ids])).logits[0], -1)
    want = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()
    np.testing.assert_allclose(np.array(res.token_logprobs[1:], float), want, atol=1e-5)
    assert res.top_logprobs is not None and res.top_logprobs[0] is None
    best = res.top_logprobs[1]
    assert best is not None and len(best) == 3
    assert max(best, key=best.__getitem__) == int(ref[0].argmax())


def test_hook_path_gives_the_same_scores(full: SiloLM) -> None:
    ids = prompt_ids(full)
    assert full.runner.base_gives_head_input
    want = _lp(full, ALL[1], ids)
    full.runner.base_gives_head_input = False
    try:
        got = _lp(full, ALL[1], ids)
    finally:
        full.runner.base_gives_head_input = True
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_lambda_zero_is_the_parametric_distribution(full: SiloLM) -> None:
    ids = prompt_ids(full)
    base = _lp(full, SiloOptions("parametric"), ids)
    assert np.array_equal(_lp(full, SiloOptions("knnlm", k=4, lam=0.0), ids), base)


def test_knnlm_matches_a_brute_force_reference(full: SiloLM) -> None:
    ids = prompt_ids(full)[:20]
    opts = SiloOptions("knnlm", k=5, lam=0.3, knn_temperature=3.0)
    got = _lp(full, opts, ids)
    with torch.inference_mode():
        out = full.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    p_lm = torch.softmax(out.logits[0], -1).double().numpy()
    hidden = out.hidden_states[-1][0].double().numpy()  # the LM head's input
    assert full.datastore is not None
    keys = np.asarray(full.datastore.kv.keys, np.float64)
    values = np.asarray(full.datastore.kv.values)
    for t in range(len(ids) - 1):
        d = ((keys - hidden[t]) ** 2).sum(1)
        near = np.argsort(d, kind="stable")[:5]
        w = np.exp(-d[near] / 3.0)
        w /= w.sum()
        p_knn = w[values[near] == ids[t + 1]].sum()
        want = np.log(0.7 * p_lm[t, ids[t + 1]] + 0.3 * p_knn)
        assert got[t] == pytest.approx(want, abs=2e-3)


def test_sliding_windows_and_batching_change_nothing(full: SiloLM) -> None:
    ids = prompt_ids(full, TEXT + " " + TEXT)
    for opts in ALL:
        wide = SiloLM(full.model, full.tokenizer, full.datastore, SiloConfig(batch_size=16))
        a = _lp(full, opts, ids)
        b = _lp(wide, opts, ids)
        assert a.shape == (len(ids) - 1,) and np.isfinite(a).all()
        if opts.mode in ("parametric", "knnlm"):  # same context up to window truncation
            np.testing.assert_allclose(a[:16], b[:16], atol=1e-4)
    many = full.score([ScoreRequest(ids[:n], options=ALL[1]) for n in (5, 1, 9)])
    alone = [full.score([ScoreRequest(ids[:n], options=ALL[1])])[0] for n in (5, 1, 9)]
    for x, y in zip(many, alone, strict=True):
        np.testing.assert_allclose(np.array(x.token_logprobs[1:], float),
                                   np.array(y.token_logprobs[1:], float), atol=1e-5)
    assert many[1].token_logprobs == (None,)


def test_replug_matches_a_hand_built_ensemble(full: SiloLM) -> None:
    ids = prompt_ids(full)[:24]
    ric = RicParams(query_tokens=8, k=2, stride=4)
    most = 0
    got = _lp(full, SiloOptions("ric", ric=ric), ids)
    store = full.datastore
    assert store is not None
    for s in range(0, len(ids) - 1, 4):
        e = min(len(ids) - 1, s + 4)
        query = full.decode([t for t in ids[:s + 1][-8:] if t != full.eos_id]).strip()
        hits = store.bm25_search(query, 2) if query else []
        rows = [with_passage(full.encode(h.text), ids[:e], full.max_length, full.eos_id)
                for h in hits] or [list(ids[:e])]
        w = torch.log_softmax(torch.tensor([h.score for h in hits] or [0.0]), 0)
        with torch.inference_mode():
            lps = [torch.log_softmax(full.model(input_ids=torch.tensor([r])).logits[0], -1)
                   [len(r) - (e - s):] for r in rows]
        mix = torch.logsumexp(torch.stack(lps) + w[:, None, None], 0)
        want = mix[torch.arange(e - s), torch.tensor(ids[s + 1:e + 1])]
        np.testing.assert_allclose(got[s:e], want.numpy(), atol=1e-4)
        most = max(most, len(hits))
    assert most == 2  # some chunk really ensembled two passages


@pytest.mark.parametrize(("kind", "backend"), [("optout", "exact"), ("policy", "exact"),
                                               ("scope", "exact"), ("optout", "faiss-ivfpq"),
                                               ("optout", "faiss-ivfpq-fs")])
def test_filtered_output_equals_a_datastore_without_the_documents(
        tmp_path: Path, tiny_lm: object, tiny_tokenizer: object, kind: str,
        backend: str) -> None:
    docs = make_documents()
    # IVF-PQ: the reduced store reuses the full one's trained quantizer (DESIGN)
    config = replace(CONFIG, backend=backend, nlist=4, m=8, nbits=4, nprobe=2)
    store = build_store(tmp_path / "full", tiny_lm, tiny_tokenizer, docs, config)
    trained = tmp_path / "full" / "index.faiss" if "ivfpq" in backend else None
    scope = AccessScope()
    policy = None
    if kind == "optout":
        store.optout(doc_ids=["cl/0", "pd/2"])
        kept = [d for d in docs if d.doc_id not in ("cl/0", "pd/2")]
    elif kind == "policy":
        policy = frozenset({LicenseClass.PD, LicenseClass.SW})
        kept = [d for d in docs if d.license_class in policy]
    else:
        scope = AccessScope(sources=frozenset({"kjv", "gcide"}))
        kept = [d for d in docs if d.source in ("kjv", "gcide")]
    excluded = {d.doc_id for d in docs} - {d.doc_id for d in kept}
    reduced = build_store(tmp_path / "reduced", tiny_lm, tiny_tokenizer, kept, config, trained)
    cfg = SiloConfig(batch_size=4, window=24, stride=8)
    a = SiloLM(tiny_lm, tiny_tokenizer, store, cfg)
    ids = prompt_ids(a)
    # the relevance weight on, at the median nearest distance: it too must see only
    # what the reduced store holds
    near = nearest_distances(a.target_scores([ids], SiloOptions("knnlm"), 6, scope), 6)
    weight = KnnParams(relevance=float(np.median(near)),
                       relevance_temperature=float(near.std()) or 1.0)
    # and from the margin to a reference, which holds none of the datastore's documents
    reference = build_store(tmp_path / "reference", tiny_lm, tiny_tokenizer,
                            [d for d in docs if d.source == "kjv"], replace(CONFIG, bm25=False))
    with_reference = SiloLM(tiny_lm, tiny_tokenizer, store, cfg, reference=reference)
    margin = near - with_reference.target_scores([ids], SiloOptions("knnlm"), 6, scope,
                                                 reference=True).baseline
    weights = {(0.0, False): weight, (0.8, False): replace(weight, relevance_decay=0.8),
               (0.0, True): replace(weight, relevance=float(np.median(margin)),
                                    relevance_margin=True)}
    # pointers 0: a search per position; 2: pointers followed where two remain; the
    # weight measured from each position, from the context's distance and from the margin
    for base, pointers, w in itertools.product(ALL[1:], (0, 2), weights.values()):
        a = SiloLM(tiny_lm, tiny_tokenizer, store, cfg, w, reference=reference)
        b = SiloLM(tiny_lm, tiny_tokenizer, reduced, cfg, w, reference=reference)
        opts = SiloOptions(base.mode, k=6, lam=0.5, knn_temperature=2.0, license_classes=policy,
                           attribution=True, ric=base.ric, pointers=pointers,
                           relevance=pointers == 0)  # with and without the weight
        got = a.score([ScoreRequest(ids, options=opts, scope=scope)])[0]
        want = b.score([ScoreRequest(ids, options=opts)])[0]
        np.testing.assert_allclose(np.array(got.token_logprobs[1:], float),
                                   np.array(want.token_logprobs[1:], float), atol=1e-4)
        assert got.attribution is not None and not got.attribution.doc_ids() & excluded
        named = {n.doc_id for p in got.provenance or () if p for n in p.neighbours}
        named |= {q.doc_id for p in got.provenance or () if p for q in p.passages}
        assert named and not named & excluded
        gen = a.generate(GenerationRequest(ids[:6], max_tokens=5, temperature=0,
                                           options=opts, scope=scope))
        ref = b.generate(GenerationRequest(ids[:6], max_tokens=5, temperature=0, options=opts))
        assert gen.choices[0].token_ids == ref.choices[0].token_ids
        assert gen.choices[0].attribution is not None
        assert not gen.choices[0].attribution.doc_ids() & excluded
    store.close()
    reduced.close()
    reference.close()


@pytest.mark.parametrize("pointers", [0, 1], ids=["search", "pointers"])
def test_contributions_are_lambda_times_the_knn_mass(full: SiloLM, pointers: int) -> None:
    ids = prompt_ids(full)[:16]
    opts = SiloOptions("knnlm", k=8, lam=0.4, knn_temperature=2.0, attribution=True,
                       pointers=pointers)
    before = full.searches.searched
    res = full.score([ScoreRequest(ids, options=opts)])[0]
    if pointers:  # some tokens were predicted through pointers, and attributed the same
        assert full.searches.searched - before < len(ids) - 1
    lm_only = _lp(full, SiloOptions("parametric"), ids)
    assert res.provenance is not None and res.attribution is not None
    for t, prov in enumerate(res.provenance[1:]):
        assert prov is not None
        mass = sum(n.contribution for n in prov.neighbours)
        # p = 0.6 p_LM + mass, with mass = 0.4 p_kNN(token)
        mixed = np.exp(res.token_logprobs[t + 1])  # type: ignore[arg-type]
        assert mixed == pytest.approx(0.6 * np.exp(lm_only[t]) + mass, abs=1e-5)
    docs = [d for s in res.attribution.sentences for d in s.documents]
    assert docs and all(d.via == "knn" and d.snippet for d in docs)
    for s in res.attribution.sentences:
        scores = [d.score for d in s.documents]
        assert scores == sorted(scores, reverse=True)


def _weighted(full: SiloLM, d0: float, t: float) -> SiloLM:
    """`full` with a relevance weight among its datastore's defaults."""
    return SiloLM(full.model, full.tokenizer, full.datastore, full.config,
                  KnnParams(relevance=d0, relevance_temperature=t))


def test_the_relevance_weight_in_scoring_attribution_and_generation(full: SiloLM) -> None:
    ids = prompt_ids(full)[:20]
    opts = SiloOptions("knnlm", k=5, lam=0.6, knn_temperature=3.0, attribution=True)
    scores = full.target_scores([ids], SiloOptions("knnlm"), 5)
    nearest = nearest_distances(scores, 5)
    d0, t = float(np.median(nearest)), float(nearest.std()) or 1.0
    w = 1.0 / (1.0 + np.exp((nearest - d0) / t))
    assert w.min() < 0.4 and 0.5 < w.max() < 1.0  # contexts of differing relevance
    weighted = _weighted(full, d0, t)
    res = weighted.score([ScoreRequest(ids, options=opts)])[0]
    p_lm = np.exp(_lp(full, SiloOptions("parametric"), ids))
    p_knn = knn_target_prob(scores, 5, 3.0)
    want = np.log((1 - 0.6 * w) * p_lm + 0.6 * w * p_knn)
    got = np.array(res.token_logprobs[1:], float)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert res.provenance is not None
    for i, prov in enumerate(res.provenance[1:]):  # contributions: lam w times the mass
        assert prov is not None
        mass = sum(n.contribution for n in prov.neighbours)
        assert np.exp(got[i]) == pytest.approx((1 - 0.6 * w[i]) * p_lm[i] + mass, abs=1e-5)
    # off by request: the one weight, as a datastore tuned without it
    plain = replace(opts, relevance=False)
    assert np.array_equal(_lp(weighted, plain, ids), _lp(full, opts, ids))
    # greedy generation follows the weighted distribution
    gen = weighted.generate(GenerationRequest(ids[:6], max_tokens=5, temperature=0,
                                              options=opts))
    (choice,) = gen.choices
    again = _lp(weighted, opts, ids[:6] + choice.token_ids)[5:]
    np.testing.assert_allclose(again, choice.token_logprobs, atol=1e-4)
    # a context far from every entry (d0 below every distance) gets the LM bit for bit
    far = _weighted(full, float(nearest.min()) - 1e3, 1.0)
    assert np.array_equal(_lp(far, opts, ids), _lp(full, SiloOptions("parametric"), ids))
    assert weighted.plan(opts).knn.relevance == d0
    assert weighted.plan(plain).knn.relevance is None


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_lm: object,
              tiny_tokenizer: object) -> Datastore:
    """A reference index: some of the same kind of text, none of the datastore's."""
    docs = [d for d in make_documents() if d.source in ("kjv", "stdlib")]
    return build_store(tmp_path_factory.mktemp("reference"), tiny_lm, tiny_tokenizer,
                       docs, replace(CONFIG, bm25=False))


def test_the_weight_measured_from_the_margin_to_the_reference(full: SiloLM,
                                                              reference: Datastore) -> None:
    ids = prompt_ids(full)[:20]
    lm = SiloLM(full.model, full.tokenizer, full.datastore, full.config, reference=reference)
    scores = lm.target_scores([ids], SiloOptions("knnlm"), 5, reference=True)
    assert scores.baseline is not None
    # d_ref: the nearest distance the reference gives when it is searched as a datastore
    as_store = SiloLM(full.model, full.tokenizer, reference, full.config)
    np.testing.assert_allclose(scores.baseline, nearest_distances(
        as_store.target_scores([ids], SiloOptions("knnlm"), 1), 1), rtol=1e-6)
    margin = nearest_distances(scores, 5) - scores.baseline
    d0, t = float(np.median(margin)), float(margin.std()) or 1.0
    p_lm = np.exp(_lp(full, SiloOptions("parametric"), ids))
    p_knn = knn_target_prob(scores, 5, 3.0)
    first = np.zeros(len(margin), dtype=bool)
    first[0] = True
    for decay in (0.0, 0.8):
        params = KnnParams(5, 0.6, 3.0, relevance=d0, relevance_temperature=t,
                           relevance_decay=decay, relevance_margin=True)
        weighted = SiloLM(full.model, full.tokenizer, full.datastore, full.config, params,
                          reference=reference)
        opts = SiloOptions("knnlm", attribution=True)
        got = _lp(weighted, opts, ids)
        # by hand: w from the margin, averaged over the context
        r = smooth(margin[:, None], first, (decay,))[0][:, 0]
        w = 1.0 / (1.0 + np.exp((r - d0) / t))
        assert w.max() - w.min() > 0.2  # contexts of differing relevance
        np.testing.assert_allclose(got, np.log((1 - 0.6 * w) * p_lm + 0.6 * w * p_knn),
                                   atol=1e-5)
        np.testing.assert_allclose(got, mixed_logprob(scores, params), atol=1e-5)
        # greedy generation follows the same weights (the prompt's read at the first step)
        gen = weighted.generate(GenerationRequest(ids[:6], max_tokens=5, temperature=0,
                                                  options=opts))
        (choice,) = gen.choices
        again = _lp(weighted, opts, ids[:6] + choice.token_ids)[5:]
        np.testing.assert_allclose(again, choice.token_logprobs, atol=1e-4)
    # a weight read from the reference needs one
    with pytest.raises(InvalidInputError, match="reference"):
        SiloLM(full.model, full.tokenizer, full.datastore, full.config,
               KnnParams(relevance=d0, relevance_margin=True))
    with pytest.raises(InvalidInputError, match="reference"):
        full.target_scores([ids], SiloOptions("knnlm"), 5, reference=True)


def test_attribution_off_does_no_provenance_work(full: SiloLM,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("provenance looked up")

    monkeypatch.setattr(full.datastore, "entry_info", boom)
    monkeypatch.setattr(full.retriever, "provenance", boom)
    res = full.score([ScoreRequest(prompt_ids(full), options=ALL[3])])[0]
    assert res.provenance is None and res.attribution is None
    gen = full.generate(GenerationRequest(prompt_ids(full)[:5], max_tokens=3, options=ALL[3]))
    assert gen.choices[0].provenance is None and gen.choices[0].attribution is None


@pytest.mark.parametrize("opts", ALL, ids=lambda o: o.mode)
def test_greedy_generation_follows_the_scored_distribution(full: SiloLM,
                                                           opts: SiloOptions) -> None:
    prompt = prompt_ids(full)[:6]
    res = full.generate(GenerationRequest(prompt, max_tokens=6, temperature=0, logprobs=2,
                                          options=opts, echo=True))
    (choice,) = res.choices
    assert res.prompt is not None and res.prompt.token_logprobs[0] is None
    assert len(choice.token_ids) <= 6 and choice.top_logprobs is not None
    for lp, top, tok in zip(choice.token_logprobs, choice.top_logprobs, choice.token_ids,
                            strict=True):
        assert max(top, key=top.__getitem__) == tok and top[tok] == pytest.approx(lp)
    if opts.mode in ("parametric", "knnlm"):  # scoring sees the same contexts
        again = _lp(full, opts, prompt + choice.token_ids)[len(prompt) - 1:]
        np.testing.assert_allclose(again, choice.token_logprobs, atol=1e-4)


def test_sampling_is_seeded_and_honours_stop_n_and_max_tokens(full: SiloLM) -> None:
    prompt = prompt_ids(full)[:4]
    req = GenerationRequest(prompt, max_tokens=8, temperature=1.0, top_p=0.9, n=3, seed=7,
                            options=ALL[1])
    a, b = full.generate(req), full.generate(req)
    assert [c.token_ids for c in a.choices] == [c.token_ids for c in b.choices]
    assert len(a.choices) == 3 and all(len(c.token_ids) <= 8 for c in a.choices)
    text = a.choices[0].text
    if len(text) > 2:
        stop = text[1:3]
        cut = full.generate(GenerationRequest(prompt, max_tokens=8, temperature=1.0,
                                              top_p=0.9, n=1, seed=7, stop=(stop,),
                                              options=ALL[1]))
        assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].text
    events = list(full.generate_stream(req))
    assert "".join(e.text for e in events if e.choice == 0) == a.choices[0].text
    finished = [e for e in events if e.finish_reason]
    assert sorted(e.choice for e in finished) == [0, 1, 2]


def test_bad_requests_are_library_errors(full: SiloLM) -> None:
    lm = SiloLM(full.model, full.tokenizer, None)
    with pytest.raises(InvalidInputError, match="needs a datastore"):
        lm.score([ScoreRequest((1, 2), options=SiloOptions("knnlm"))])
    with pytest.raises(ValueError, match="mode"):
        SiloOptions("nearest")
    with pytest.raises(ValueError, match="top_p"):
        GenerationRequest((1,), top_p=0.0)
    with pytest.raises(ValueError, match="prompt_ids"):
        ScoreRequest((1, -2))


@pytest.mark.parametrize("opts", ALL, ids=lambda o: o.mode)
def test_batched_stepping_equals_generating_one_at_a_time(full: SiloLM,
                                                          opts: SiloOptions) -> None:
    ids = prompt_ids(full)
    requests = [GenerationRequest(ids[:6], max_tokens=5, temperature=0, logprobs=2,
                                  options=opts),
                GenerationRequest(ids[:3], max_tokens=7, temperature=1.0, n=2, seed=11,
                                  options=opts, echo=True),
                GenerationRequest(ids[2:12], max_tokens=3, temperature=0.8, top_p=0.9,
                                  seed=5, options=opts),
                GenerationRequest(ids[:4], max_tokens=0, echo=True, options=opts)]
    states = full.start(requests)
    assert states[3].finished and not states[0].finished
    streamed: list[list[TokenEvent]] = [[] for _ in requests]
    while not all(s.finished for s in states):
        for seen, events in zip(streamed, full.step(states), strict=True):
            seen += events
    for req, state, emitted in zip(requests, states, streamed, strict=True):
        want = full.generate(req)
        got = full.finish(state)
        assert [c.token_ids for c in got.choices] == [c.token_ids for c in want.choices]
        assert sorted(e.choice for e in emitted if e.finish_reason) == \
            ([] if req.max_tokens == 0 else list(range(req.n)))
        for a, b in zip(got.choices, want.choices, strict=True):
            np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-4)
            assert a.text == b.text and a.finish_reason == b.finish_reason
        if req.echo:
            assert got.prompt is not None and want.prompt is not None
            np.testing.assert_allclose(np.array(got.prompt.token_logprobs[1:], float),
                                       np.array(want.prompt.token_logprobs[1:], float),
                                       atol=1e-4)


def test_step_only_touches_live_states_and_an_invalid_request_fails_to_start(
        full: SiloLM) -> None:
    done, running = full.start([GenerationRequest((1, 2), max_tokens=0),
                                GenerationRequest((1, 2), max_tokens=2, temperature=0)])
    first = full.step([done, running])
    assert first[0] == () and len(first[1]) == 1 and first[1][0] is running.events[0][0]
    lm = SiloLM(full.model, full.tokenizer, None)
    with pytest.raises(InvalidInputError, match="needs a datastore"):
        lm.start([GenerationRequest((1, 2), options=SiloOptions("knnlm"))])


@pytest.mark.parametrize("opts", ALL, ids=lambda o: o.mode)
def test_incremental_decoding_equals_rereading_the_context(full: SiloLM,
                                                           opts: SiloOptions) -> None:
    def lm(kv_cache: bool, hook: bool = False) -> SiloLM:
        out = SiloLM(full.model, full.tokenizer, full.datastore,
                     replace(full.config, kv_cache=kv_cache))
        out.runner.max_length = 12  # the first request outgrows the context mid-generation
        out.runner.base_gives_head_input = not hook
        return out

    ids = prompt_ids(full)
    requests = [GenerationRequest(ids[:5], max_tokens=10, temperature=0, logprobs=1,
                                  options=opts),
                GenerationRequest(ids[:3], max_tokens=6, temperature=1.0, n=2, seed=2,
                                  options=opts)]  # 3 rows: one prefill pass, padded
    reference = lm(kv_cache=False)
    want = [reference.generate(r) for r in requests]
    for cached in (lm(kv_cache=True), lm(kv_cache=True, hook=True)):
        states = cached.start(requests)  # stepped together: caches of unequal lengths
        while not all(s.finished for s in states):
            cached.step(states)
        assert states[1].caches and not states[0].caches  # the first outgrew the context
        for state, w in zip(states, want, strict=True):
            got = cached.finish(state)
            assert [c.token_ids for c in got.choices] == [c.token_ids for c in w.choices]
            for a, b in zip(got.choices, w.choices, strict=True):
                np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-4)


@pytest.mark.parametrize("pointers", [0, 2])
def test_searches_beside_the_forward_passes_change_nothing(full: SiloLM, monkeypatch,
                                                           pointers: int) -> None:
    import silo.scoring

    ids = prompt_ids(full, TEXT + " " + TEXT)
    lm = SiloLM(full.model, full.tokenizer, full.datastore, SiloConfig(batch_size=16))
    opts = replace(ALL[1], pointers=pointers)
    requests = [ScoreRequest(ids[:n], top_logprobs=2, options=opts) for n in (30, 7, 19, 12)]
    monkeypatch.setattr(silo.scoring, "SCORE_PARTS", 1)  # one pass, then its search
    whole = lm.score(requests)
    monkeypatch.setattr(silo.scoring, "SCORE_PARTS", 4)  # parts, searched beside
    parts = lm.score(requests)
    for a, b in zip(whole, parts, strict=True):
        np.testing.assert_allclose(np.array(a.token_logprobs[1:], float),
                                   np.array(b.token_logprobs[1:], float), atol=1e-5)
        assert [list(t) for t in a.top_logprobs[1:]] == [list(t) for t in b.top_logprobs[1:]]


def test_a_search_that_fails_beside_a_forward_pass_fails_the_score(full: SiloLM) -> None:
    from datastore.errors import UnavailableError

    assert full.datastore is not None
    lm = SiloLM(full.model, full.tokenizer, full.datastore, SiloConfig(batch_size=16))
    ids = prompt_ids(full)
    requests = [ScoreRequest(ids[:n], options=ALL[1]) for n in (9, 8, 7, 6)]
    search, calls = full.datastore.knn_search, []

    def second_fails(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("index file unreadable")
        return search(*args, **kwargs)

    full.datastore.knn_search = second_fails  # the datastore is outside the unit under test
    try:
        with pytest.raises(UnavailableError, match="kNN search failed"):
            lm.score(requests)
    finally:
        full.datastore.knn_search = search
    assert len(calls) >= 2
    assert len(lm.score(requests)) == 4  # the thread goes on searching
