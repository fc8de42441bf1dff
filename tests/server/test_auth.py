"""Keys: 401/403 rules, open inference, scoped keys through the one filter, constant-time
lookup table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datastore.document import LicenseClass
from datastore.errors import InvalidInputError
from server.auth import KeyRing, Principal, bearer, read_keys_file
from tests.server.conftest import ADMIN_KEY, USER_KEY, Live


def test_bearer_parsing() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None and bearer(None) is None and bearer("Bearer ") is None


def test_keyring_lookup() -> None:
    ring = KeyRing("adm", [("u1", Principal("alice", "user"))])
    assert ring.lookup("adm").role == "admin"  # type: ignore[union-attr]
    assert ring.lookup("u1").name == "alice"  # type: ignore[union-attr]
    assert ring.lookup("u2") is None and not ring.open
    assert KeyRing(None, []).open


def test_keys_file_errors_name_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([{"key": "k", "license_classes": ["pd", "bogus"]}]))
    with pytest.raises(InvalidInputError, match=r"keys.json\[0\]"):
        read_keys_file(path)
    path.write_text(json.dumps([{"key": "k", "name": "bob", "sources": ["kjv"],
                                 "license_classes": ["pd"]}]))
    [(key, who)] = read_keys_file(path)
    assert key == "k" and who.scope.license_classes == frozenset({LicenseClass.PD})


def test_admin_and_user_failures(live: Live) -> None:
    with live.client() as anon, live.client(USER_KEY) as user, \
            live.client("wrong") as wrong, live.client(ADMIN_KEY) as admin:
        assert anon.get("/admin/optouts").status_code == 401
        assert wrong.get("/admin/optouts").status_code == 401
        r = user.get("/admin/optouts")
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        assert admin.get("/admin/optouts").status_code == 200
        r = anon.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert user.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}
                         ).status_code == 200
        assert anon.get("/healthz").status_code == 200


def test_admin_disabled_and_open_inference(make_live, model_dir: Path) -> None:
    live = make_live(model=model_dir)  # no keys at all, no datastore
    with live.client() as anon:
        r = anon.get("/admin/datastores")
        assert r.status_code == 403 and "SILO_ADMIN_KEY" in r.json()["error"]["message"]
        r = anon.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert r.status_code == 200 and r.json()["silo"]["mode"] == "parametric"


def test_scoped_key_sees_only_its_sources(make_live, model_dir: Path, store_dir: Path,
                                          tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"key": "kjv-only", "name": "reader", "sources": ["kjv"]}]))
    live = make_live(model=model_dir, datastore=store_dir, keys_file=keys)
    with live.client("kjv-only") as http:
        r = http.post("/v1/completions", json={
            "prompt": "The heapq module provides", "max_tokens": 6, "temperature": 0,
            "silo": {"attribution": True, "k": 16}})
        assert r.status_code == 200, r.text
        docs = {d["doc_id"] for s in r.json()["silo"]["attribution"] for d in s["documents"]}
        assert docs and all(d.startswith("pd/") and int(d[3:]) < 3 for d in docs)
        r = http.post("/v1/attribution", json={"text": "The heapq module provides"})
        assert all(d["source"] == "kjv" for s in r.json()["sentences"] for d in s["documents"])
    with live.client() as anon:
        assert anon.post("/v1/completions", json={"prompt": "x"}).status_code == 401
