"""Several datastores in one request, over real HTTP: naming them, the default set, a
key's datastores, and a left-out datastore that might as well never have existed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from server.auth import read_keys_file
from server.metrics import Metrics
from server.settings import Settings
from tests.conftest import make_documents
from tests.server.conftest import Live, build_store

PARTS = {"bible": ("kjv", "devil"), "code": ("stdlib",), "dict": ("gcide",)}


@pytest.fixture(scope="module")
def stores(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("several")
    return {name: build_store(model_dir, root / name,
                              [d for d in make_documents() if d.source in sources])
            for name, sources in PARTS.items()}


def _listed(stores: dict[str, Path], *names: str) -> str:
    return ",".join(f"{n}={stores[n]}" for n in names)


def _complete(live: Live, silo: dict[str, Any], key: str | None = None,
              **body: Any) -> dict[str, Any]:
    request = {"prompt": "And God said, Let there be light", "max_tokens": 6,
               "temperature": 0, "echo": True, "logprobs": 1, "silo": silo, **body}
    with live.client(key) as c:
        r = c.post("/v1/completions", json=request)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_left_out_datastore_might_never_have_existed(make_live, model_dir: Path,
                                                      stores: dict[str, Path]) -> None:
    three = make_live(model=model_dir, datastores=_listed(stores, "bible", "code", "dict"))
    two = make_live(model=model_dir, datastores=_listed(stores, "bible", "dict"))
    for mode in ("ric", "knnlm+ric"):  # RIC-LM over both: passages of either
        got = _complete(three, {"mode": mode, "attribution": True,
                                "datastores": ["dict", "bible"]})
        assert got == {**_complete(two, {"mode": mode, "attribution": True,
                                         "datastores": "all"}),
                       "id": got["id"], "created": got["created"]}
    silo = {"mode": "knnlm", "attribution": True}
    got = _complete(three, {**silo, "datastores": ["dict", "bible"]})
    want = _complete(two, {**silo, "datastores": "all"})
    assert got["choices"] == want["choices"]
    assert got["silo"]["attribution"] == want["silo"]["attribution"]
    assert got["silo"]["datastores"] == ["bible", "dict"] and got["silo"]["datastore"] is None
    docs = [d for s in got["silo"]["attribution"] for d in s["documents"]]
    assert docs and {d["datastore"] for d in docs} <= {"bible", "dict"}
    assert all(d["doc_id"].startswith("pd/" if d["datastore"] == "bible" else "cl/")
               for d in docs)
    weights = [s["datastore_weights"] for s in got["silo"]["attribution"]]
    assert all(w.keys() == {"bible", "dict"} and 0 <= sum(w.values()) <= 1 for w in weights)
    # the combination is not either datastore alone
    alone = _complete(three, {**silo, "datastores": ["bible"]})
    assert alone["silo"]["datastore"] == "bible" and alone["silo"]["datastores"] is None
    assert alone["choices"][0]["logprobs"] != got["choices"][0]["logprobs"]
    # the default set, when a request names none
    default = make_live(model=model_dir, datastores=_listed(stores, "bible", "code", "dict"),
                        default_datastores="bible,dict")
    assert _complete(default, silo)["choices"] == got["choices"]


def test_bad_sets_are_4xx_with_a_message(make_live, model_dir: Path,
                                         stores: dict[str, Path]) -> None:
    live = make_live(model=model_dir, datastores=_listed(stores, "bible", "code"))
    cases = [({"datastores": []}, 400, "at least one"),
             ({"datastores": ["bible", "nope"]}, 404, "nope"),
             ({"datastores": "some"}, 400, "datastores"),
             ({"datastores": ["bible"], "datastore": "code"}, 400, "not both"),
             ({"datastores": "all", "signed": True}, 400, "several datastores")]
    with live.client() as c:
        for silo, status, fragment in cases:
            r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1, "silo": silo})
            assert r.status_code == status, (silo, r.text)
            assert fragment in r.json()["error"]["message"], (silo, r.text)


def test_a_key_uses_only_its_datastores(make_live, model_dir: Path, stores: dict[str, Path],
                                        tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"key": "k-bible", "name": "b", "datastores": ["bible"]},
                                {"key": "k-any", "name": "any"}]))
    live = make_live(model=model_dir, datastores=_listed(stores, "bible", "code", "dict"),
                     default_datastores="code,dict", keys_file=keys)
    with live.client("k-bible") as c:
        for silo in ({"datastores": ["bible", "code"]}, {"datastore": "dict"}, {}):
            r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1,
                                                "silo": {"mode": "knnlm", **silo}})
            assert r.status_code == 403, r.text
            assert r.json()["error"]["type"] == "permission_error"
        r = c.post("/v1/attribution", json={"text": "And God said.", "datastore": "code"})
        assert r.status_code == 403, r.text
    # "all": every datastore the key may use, here the one
    mine = _complete(live, {"mode": "knnlm", "datastores": "all"}, "k-bible")
    assert mine["silo"]["datastore"] == "bible"
    assert mine["choices"] == _complete(live, {"mode": "knnlm", "datastore": "bible"},
                                        "k-any")["choices"]
    everything = _complete(live, {"mode": "knnlm", "datastores": "all"}, "k-any")
    assert everything["silo"]["datastores"] == ["bible", "code", "dict"]
    bad = tmp_path / "bad.json"
    for wrong in ([], "bible", [""]):
        bad.write_text(json.dumps([{"key": "k", "datastores": wrong}]))
        with pytest.raises(ValueError, match=r"bad.json\[0\]: 'datastores'"):
            read_keys_file(bad)


def test_datastores_of_another_model_are_refused_at_start(
        model_dir: Path, stores: dict[str, Path], tmp_path: Path, tiny_lm: Any,
        tiny_tokenizer: Any) -> None:
    import torch

    from datastore.errors import ModelMismatchError, NotFoundError
    from server.app import load_service

    other = tmp_path / "other-model"
    tiny_lm.save_pretrained(other)
    tiny_tokenizer.save_pretrained(other)
    from silo.model import load_lm

    changed = load_lm(other)
    with torch.no_grad():
        next(changed.model.parameters()).add_(1.0)
    changed.model.save_pretrained(other)
    foreign = build_store(other, tmp_path / "foreign", make_documents()[:3])
    settings = Settings(model=model_dir, audit_log=tmp_path / "audit.jsonl",
                        datastores=f"{_listed(stores, 'bible')},foreign={foreign}")
    with pytest.raises(ModelMismatchError, match="'foreign'.*another model"):
        load_service(settings, Metrics(lambda: {}))
    unknown = Settings(model=model_dir, audit_log=tmp_path / "audit.jsonl",
                       datastores=_listed(stores, "bible"), default_datastores="bible,gone")
    with pytest.raises(NotFoundError, match="'gone'"):
        load_service(unknown, Metrics(lambda: {}))


def test_a_stored_set_that_does_not_read_back_fails_the_start(
        model_dir: Path, tmp_path: Path) -> None:
    from datastore.errors import InvalidInputError
    from server.app import load_service
    from silo.knnlm import KnnParams
    from silo.set_tuning import write_set
    from silo.tuning import DEFAULTS_FILE

    store = build_store(model_dir, tmp_path / "code", [
        d for d in make_documents() if d.source == "stdlib"])
    write_set(store, ["code", "dict"], KnnParams(k=8, lam=0.3), "joint")
    settings = Settings(model=model_dir, audit_log=tmp_path / "audit.jsonl",
                        datastores=f"code={store}")
    load_service(settings, Metrics(lambda: {}))  # a good set starts
    path = store / DEFAULTS_FILE
    data = json.loads(path.read_text())
    data["sets"]["code,dict"]["vote"] = "plurality"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match=f"{path}.*'code,dict'.*plurality"):
        load_service(settings, Metrics(lambda: {}))
    data["sets"]["code,dict"] = {"k": 8, "lam": 3.0, "vote": "joint"}
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match="'code,dict'.*lam must be in"):
        load_service(settings, Metrics(lambda: {}))
    # a set whose weights are measured from a reference needs one set
    data["sets"]["code,dict"] = {"k": 8, "lam": 0.3, "relevance": -1.0,
                                 "relevance_margin": True, "vote": "joint"}
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match="'code,dict'.*reference"):
        load_service(settings, Metrics(lambda: {}))


def test_a_weight_measured_from_a_reference_is_served_with_it(make_live, model_dir: Path,
                                                               tmp_path: Path) -> None:
    import numpy as np

    from datastore.errors import NotFoundError
    from server.app import load_service
    from silo.lm import ScoreRequest, SiloLM, SiloOptions
    from silo.tuning import GridPoint, nearest_distances, write_defaults

    docs = make_documents()
    store = build_store(model_dir, tmp_path / "bible",
                        [d for d in docs if d.source in PARTS["bible"]])
    reference = build_store(model_dir, tmp_path / "reference",
                            [d for d in docs if d.source == "stdlib"])
    lm = SiloLM.from_dirs(model_dir, store, reference_dir=reference)
    ids = tuple(lm.encode("And God said, Let there be light"))  # as the server reads it
    scores = lm.target_scores([ids], SiloOptions("knnlm"), 8, reference=True)
    assert scores.baseline is not None
    margin = nearest_distances(scores, 8) - scores.baseline
    write_defaults(store, GridPoint(8, 0.6, 5.0, 0.0, relevance=float(np.median(margin)),
                                    relevance_temperature=float(margin.std()) or 1.0,
                                    relevance_decay=0.5, relevance_margin=True), {})
    # without the reference the weight cannot be measured: the start fails, saying so
    bare = Settings(model=model_dir, audit_log=tmp_path / "audit.jsonl", datastore=store)
    with pytest.raises(NotFoundError, match="SILO_REFERENCE"):
        load_service(bare, Metrics(lambda: {}))
    live = make_live(model=model_dir, datastore=store, reference=reference)
    got = _complete(live, {"mode": "knnlm"}, max_tokens=0)
    served = got["choices"][0]["logprobs"]["token_logprobs"][1:]
    want = SiloLM.from_dirs(model_dir, store, reference_dir=reference).score(
        [ScoreRequest(ids, options=SiloOptions("knnlm"))])[0].token_logprobs[1:]
    np.testing.assert_allclose(np.array(served, float), np.array(want, float), atol=1e-4)
    # and it reads the reference: one weight everywhere gives other numbers
    plain = _complete(live, {"mode": "knnlm", "relevance": False}, max_tokens=0)
    assert plain["choices"][0]["logprobs"] != got["choices"][0]["logprobs"]
