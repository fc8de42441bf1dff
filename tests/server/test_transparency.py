"""The transparency log over real HTTP: receipts that prove an opt-out (checked with
`silo verify` and with a check written from RFC 9162 and C2SP alone), the public log
routes and their bad input, responses that name their checkpoint, signed responses, a
rewritten log that fails verification, and the audit log in the document table."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.datastore.tlog.test_merkle import mth, path
from tests.server.conftest import ADMIN_KEY, USER_KEY, Live

SILO = str(Path(sys.executable).with_name("silo"))
TEXT = "In the beginning God created the heaven and the earth."
SCORE = {"max_tokens": 0, "echo": True, "logprobs": 1, "silo": {"attribution": True}}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """A log key made as an operator makes one."""
    out = tmp_path / "log.key"
    done = subprocess.run([SILO, "log", "keygen", "--out", str(out), "--name", "test-log"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert done.stdout.strip().startswith("test-log+")  # the verifier key, for data owners
    return out


@pytest.fixture
def signed(make_live, model_dir: Path, store_dir: Path, key_file: Path) -> Live:
    return make_live(model=model_dir, datastore=store_dir, admin_key=ADMIN_KEY,
                     log_key_file=key_file)


def _optout(live: Live, doc_id: str) -> dict[str, Any]:
    r = live.client(ADMIN_KEY).post("/admin/optout", json={"doc_ids": [doc_id],
                                                            "reason": "owner asked"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _open_note(note: str, key: str) -> str:
    """The text of a C2SP signed note after checking its Ed25519 signature by `key`
    (`<name>+<hex key hash>+<base64 of 0x01 || public key>`), from the spec alone."""
    name, key_hash, encoded = key.strip().split("+", 2)
    raw = base64.b64decode(encoded)
    assert raw[0] == 0x01 and len(raw) == 33
    assert hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() == key_hash
    text, _, signatures = note.partition("\n\n")
    text += "\n"
    for line in signatures.splitlines():
        signer, blob = line.removeprefix("\u2014 ").split(" ")
        sig = base64.b64decode(blob)
        if signer == name and sig[:4].hex() == key_hash:
            Ed25519PublicKey.from_public_bytes(raw[1:]).verify(sig[4:], text.encode())
            return text
    raise AssertionError(f"no signature by {name} on the note")


def _leaves(live: Live, size: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < size:
        r = live.client().get("/v1/log/entries", params={"start": len(out), "end": size})
        assert r.status_code == 200 and r.json()["entries"], r.text
        out += [base64.b64decode(e["leaf"]) for e in r.json()["entries"]]
    return out


def test_a_receipt_proves_the_optout_by_rfc_9162_and_c2sp_alone(signed: Live) -> None:
    receipt = _optout(signed, "pd/0")
    log = receipt["log"]
    assert log["index"] == receipt["log_index"]
    leaf = base64.b64decode(log["leaf"])
    lines = leaf.decode().splitlines()
    assert lines[:2] == ["silo-log-leaf v1", "action optout"]
    assert f"selector doc_ids {_sha('pd/0')}" in lines
    assert any(line.startswith(f"doc {_sha('pd/0')} ") for line in lines)
    assert b"pd/0" not in leaf and b"owner asked" not in leaf  # nothing in clear
    key = signed.client().get("/v1/log/key")
    assert key.status_code == 200 and key.headers["content-type"].startswith("text/plain")
    origin, size, root = _open_note(log["checkpoint"], key.text).splitlines()
    assert origin.startswith("silo/tiny/") and int(size) == log["index"] + 1
    # the tree the checkpoint signs, rebuilt from the served leaves by RFC 9162 §2.1.1
    leaves = _leaves(signed, int(size))
    assert leaves[log["index"]] == leaf
    assert base64.b64encode(mth(leaves)).decode() == root
    assert [base64.b64encode(h).decode() for h in path(log["index"], leaves)] == \
        log["inclusion"]
    served = signed.client().get("/v1/log/proof/inclusion",
                                 params={"index": log["index"], "size": size}).json()
    assert served == {"index": log["index"], "size": int(size), "hashes": log["inclusion"]}
    # the leaves before the opt-out: the documents the build added
    added = [e for e in signed.client().get("/v1/log/entries", params={
        "start": 0, "end": log["index"]}).json()["entries"] if e["action"] == "add"]
    assert {d["id_sha256"] for e in added for d in e["documents"]} >= {_sha("pd/0")}


def _verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SILO, "verify", *args], capture_output=True, text=True,
                          timeout=120)


def test_silo_verify_checks_receipts_and_histories(signed: Live, tmp_path: Path) -> None:
    saved = tmp_path / "earlier.checkpoint"
    first = _verify("--server", signed.url, "--doc-id", "pd/3", "--save", str(saved))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "live" in first.stdout and saved.read_text().startswith("silo/tiny/")
    receipt = _optout(signed, "pd/3")
    (tmp_path / "receipt.json").write_text(json.dumps(receipt))
    key = signed.client().get("/v1/log/key").text.strip()
    done = _verify(str(tmp_path / "receipt.json"), "--server", signed.url, "--since",
                   str(saved), "--key", key, "--doc-id", "pd/3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout and len(done.stdout.splitlines()) >= 5
    history = _verify("--server", signed.url, "--doc-id", "pd/3", "--key", key)
    assert history.returncode == 0 and "opted out" in history.stdout, history.stdout
    # a leaf changed in the receipt, a receipt of other documents, a receipt that is not one
    forged = {**receipt, "log": {**receipt["log"], "leaf": base64.b64encode(
        base64.b64decode(receipt["log"]["leaf"]).replace(b"optout", b"add\n\n")).decode()}}
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    bad = _verify(str(tmp_path / "forged.json"), "--server", signed.url, "--key", key)
    assert bad.returncode == 1 and "FAIL" in bad.stdout, bad.stdout
    other = _verify(str(tmp_path / "receipt.json"), "--server", signed.url, "--key", key,
                    "--doc-id", "pd/4")
    assert other.returncode == 1, other.stdout
    (tmp_path / "junk.json").write_text("{not json")
    junk = _verify(str(tmp_path / "junk.json"), "--server", signed.url)
    assert junk.returncode == 2 and "junk.json" in junk.stderr + junk.stdout
    assert "Traceback" not in junk.stderr


def test_a_rewritten_log_fails_verification(make_live, model_dir: Path, store_template: Path,
                                            key_file: Path, tmp_path: Path) -> None:
    # two copies of one datastore that then part ways: the operator shows one history to
    # one owner and another history to the next
    lives = []
    for name in ("a", "b"):
        folder = Path(shutil.copytree(store_template, tmp_path / name))
        lives.append(make_live(model=model_dir, datastore=folder, admin_key=ADMIN_KEY,
                               log_key_file=key_file, audit_log=tmp_path / f"{name}.audit"))
    a, b = lives
    _optout(a, "pd/1")
    saved = tmp_path / "a.checkpoint"
    assert _verify("--server", a.url, "--doc-id", "pd/1", "--save", str(saved)).returncode == 0
    receipt = _optout(b, "pd/2")
    (tmp_path / "receipt.json").write_text(json.dumps(receipt))
    assert _verify(str(tmp_path / "receipt.json"), "--server", b.url).returncode == 0
    forked = _verify(str(tmp_path / "receipt.json"), "--server", b.url, "--since", str(saved))
    assert forked.returncode == 1 and "consisten" in forked.stdout, forked.stdout
    # a leaf rewritten in place: the served leaves no longer rebuild the signed root
    with sqlite3.connect(tmp_path / "b" / "documents.sqlite") as db:
        (leaf,) = db.execute("SELECT leaf FROM log_leaves WHERE idx = 0").fetchone()
        db.execute("UPDATE log_leaves SET leaf = ? WHERE idx = 0",
                   (bytes(leaf).replace(b"action add", b"action purge"),))
    rewritten = _verify("--server", b.url, "--doc-id", "pd/2")
    assert rewritten.returncode == 1 and "NOT rebuild" in rewritten.stdout, rewritten.stdout


def test_responses_name_the_checkpoint_they_were_served_against(signed: Live) -> None:
    http = signed.client()
    before = http.post("/v1/completions", json={"prompt": TEXT, **SCORE})
    assert before.status_code == 200, before.text
    cp = before.json()["silo"]["checkpoint"]
    assert before.headers["Silo-Checkpoint"] == f"{cp['size']} {cp['root']}"
    receipt = _optout(signed, "pd/0")
    for r in (http.post("/v1/completions", json={"prompt": TEXT, **SCORE}),
              http.post("/v1/attribution", json={"text": TEXT, "k": 10})):
        assert r.status_code == 200, r.text
        body = r.json()
        cp = body["silo"]["checkpoint"] if "silo" in body else body["checkpoint"]
        assert cp["size"] > receipt["log_index"]  # the opt-out was in effect
        size, root = r.headers["Silo-Checkpoint"].split()
        assert (int(size), root) == (cp["size"], cp["root"])
        assert "pd/0" not in r.text
    streamed = http.post("/v1/completions", json={"prompt": TEXT, "max_tokens": 2,
                                                   "stream": True})
    assert streamed.status_code == 200 and "Silo-Checkpoint" in streamed.headers


def test_a_signed_response_verifies(signed: Live) -> None:
    http = signed.client()
    request = json.dumps({"prompt": TEXT, **SCORE, "silo": {"signed": True}}).encode()
    r = http.post("/v1/completions", content=request,
                  headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    note = base64.b64decode(r.headers["Silo-Signature"]).decode()
    text = _open_note(note, http.get("/v1/log/key").text)
    lines = text.splitlines()
    assert lines[0] == "silo-signed-response v1"
    cp = r.json()["silo"]["checkpoint"]
    assert lines[2:4] == [str(cp["size"]), cp["root"]]
    assert f"request {hashlib.sha256(request).hexdigest()}" in lines
    assert f"response {hashlib.sha256(r.content).hexdigest()}" in lines
    stream = http.post("/v1/completions", json={"prompt": TEXT, "stream": True,
                                                 "silo": {"signed": True}})
    assert stream.status_code == 400 and "stream" in stream.json()["error"]["message"]


def test_without_a_key_checkpoints_are_unsigned_and_said_so(live: Live) -> None:
    http = live.client()
    key = http.get("/v1/log/key")
    assert key.status_code == 404 and "SILO_LOG_KEY_FILE" in key.json()["error"]["message"]
    checkpoint = http.get("/v1/log/checkpoint").text
    assert "\u2014" not in checkpoint and len(checkpoint.splitlines()) == 3
    r = live.client(USER_KEY).post("/v1/completions", json={
        "prompt": TEXT, "max_tokens": 1, "silo": {"signed": True}})
    assert r.status_code == 400 and "SILO_LOG_KEY_FILE" in r.json()["error"]["message"]


@pytest.mark.parametrize(("route", "params", "says"), [
    ("/v1/log/proof/inclusion", {"index": 10**6, "size": 10**6 + 1}, "no tree of size"),
    ("/v1/log/proof/inclusion", {"index": 1, "size": 1}, "index 1, size 1"),
    ("/v1/log/proof/inclusion", {"index": -1, "size": 3}, "index"),
    ("/v1/log/proof/consistency", {"from": 5, "to": 2}, "from 5, to 2"),
    ("/v1/log/proof/consistency", {"from": 1, "to": 9}, "no tree of size 9"),
    ("/v1/log/proof/consistency", {"from": 1}, "to"),
    ("/v1/log/entries", {"start": 10**6, "end": 10**6 + 5}, "past the log"),
    ("/v1/log/entries", {"start": 4, "end": 2}, "start"),
    ("/v1/log/entries", {"start": "x", "end": 2}, "start"),
    ("/v1/log/checkpoint", {"datastore": "nope"}, "nope"),
])
def test_bad_input_to_the_log_routes_is_a_4xx_with_a_message(
        live: Live, route: str, params: dict[str, Any], says: str) -> None:
    r = live.client().get(route, params=params)
    assert 400 <= r.status_code < 500, r.text
    assert says in r.json()["error"]["message"]


def test_refused_admin_calls_are_audited_in_the_document_table(
        make_live, model_dir: Path, store_dir: Path) -> None:
    live = make_live(model=model_dir, datastore=store_dir, admin_key=ADMIN_KEY,
                     audit_log=None)
    assert live.client("wrong").post("/admin/optout", json={"doc_ids": ["pd/0"]}
                                     ).status_code in (401, 403)
    _optout(live, "pd/0")
    assert not list(Path.cwd().glob("audit*.jsonl"))
    with sqlite3.connect(store_dir / "documents.sqlite") as db:
        rows = db.execute("SELECT who, action, outcome FROM audit").fetchall()
    assert ("admin", "optout", "ok") in rows
    assert any(outcome != "ok" for _, _, outcome in rows)
