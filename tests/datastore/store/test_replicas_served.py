"""Two `silo serve` processes over one shared datastore (document table in PostgreSQL,
kNN index on a Milvus server, the folder copied to each): writes through either are in
effect on both, the equivalence guarantee holds across them, kill -9 of one loses no
acknowledged write, and an outage of either dependency is a 503 that ends by itself."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from datastore.config import DatastoreConfig
from datastore.document import Document
from datastore.table.factory import DATABASE_ENV
from tests.conftest import make_documents
from tests.milvus import MilvusServer
from tests.pg import PgCluster

pytestmark = pytest.mark.slow
ADMIN = {"Authorization": "Bearer replica-admin"}
ROOT = Path(__file__).resolve().parents[3]
TEXT = "And God said, Let there be light: and there was light."
SCORE = {"max_tokens": 0, "echo": True, "logprobs": 1,
         "silo": {"mode": "knnlm", "k": 8, "attribution": True}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_lm: Any, tiny_tokenizer: Any,
              ) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny-silo"
    tiny_lm.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _build(model_dir: Path, folder: Path, docs: list[Document], uri: str) -> Path:
    from datastore.store.datastore import Datastore
    from silo.encoder import LMEncoder
    from silo.model import load_lm

    config = DatastoreConfig(backend="milvus", milvus_uri=uri, block_tokens=16,
                             block_overlap=4, name=folder.name)
    encoder = LMEncoder.from_loaded(load_lm(model_dir))
    Datastore.build(folder, docs, encoder, config, progress=False).close()
    return folder


@dataclass
class Replica:
    """One `silo serve` subprocess."""

    folder: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""

    def start(self) -> None:
        from tests.server.conftest import free_port

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        silo = Path(sys.executable).parent / "silo"
        self.proc = subprocess.Popen([str(silo), "serve", "--host", "127.0.0.1", "--port",
                                      str(port), "--datastore", str(self.folder)],
                                     env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=open(self.folder / "serve.log", "ab"))  # noqa: SIM115
        deadline = time.time() + 180
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        self.kill()
        log = (self.folder / "serve.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"silo serve over {self.folder} did not come up:\n{log}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def post(self, path: str, body: dict[str, Any], admin: bool = False) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=ADMIN if admin else {},
                          timeout=120)


@dataclass
class Deployment:
    a: Replica
    b: Replica
    reference: Path  # a datastore that never held pd/2 (same model, FLAT on Milvus)
    pg: PgCluster
    milvus: MilvusServer


@pytest.fixture(scope="module")
def deployment(pg_cluster: PgCluster, milvus: MilvusServer, model_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("replicas")
    with pg_cluster.database() as url:
        docs = make_documents()
        with _env(DATABASE_ENV, url):
            _build(model_dir, root / "shared", docs, milvus.uri)
        with _env(DATABASE_ENV, None):
            _build(model_dir, root / "never", [d for d in docs if d.doc_id != "pd/2"],
                   milvus.uri)
        env = {**os.environ, DATABASE_ENV: url, "SILO_MODEL": str(model_dir),
               "SILO_ADMIN_KEY": "replica-admin"}
        replicas = []
        for name in ("a", "b"):
            shutil.copytree(root / "shared", root / name)
            replicas.append(Replica(root / name, {**env, "SILO_AUDIT_LOG":
                                                  str(root / f"{name}.audit.jsonl")}))
            replicas[-1].start()
        try:
            yield Deployment(replicas[0], replicas[1], root / "never", pg_cluster, milvus)
        finally:
            for replica in replicas:
                replica.kill()


def _named(response: httpx.Response) -> set[str]:
    """Every doc_id anywhere in a response body."""
    assert response.status_code == 200, response.text
    found: set[str] = set()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if isinstance(x.get("doc_id"), str):
                found.add(x["doc_id"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(response.json())
    return found


def _logprobs(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    values = response.json()["choices"][0]["logprobs"]["token_logprobs"][1:]
    return np.array(values, dtype=np.float64)


def test_optout_through_one_replica_equals_a_store_that_never_held_the_document(
        deployment: Deployment, model_dir: Path) -> None:
    from server.settings import Settings
    from tests.server.conftest import start_server

    a, b = deployment.a, deployment.b
    before = b.post("/v1/completions", {"prompt": TEXT, **SCORE})
    assert "pd/2" in _named(before)
    r = a.post("/admin/optout", {"doc_ids": ["pd/2"]}, admin=True)
    assert r.status_code == 200 and r.json()["doc_ids"] == ["pd/2"], r.text
    server, thread, url = start_server(Settings(model=model_dir,
                                                datastore=deployment.reference,
                                                audit_log=deployment.reference / "audit"))
    try:
        never = httpx.post(url + "/v1/completions", json={"prompt": TEXT, **SCORE},
                           timeout=120)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    for replica in (b, a):
        after = replica.post("/v1/completions", {"prompt": TEXT, **SCORE})
        np.testing.assert_allclose(_logprobs(after), _logprobs(never), atol=1e-4)
        # served against a checkpoint that includes the opt-out
        assert after.json()["silo"]["checkpoint"]["size"] > r.json()["log_index"]
        assert "pd/2" not in _named(after)
        assert "pd/2" not in _named(replica.post("/v1/attribution", {"text": TEXT, "k": 10}))
    assert not np.allclose(_logprobs(before), _logprobs(never), atol=1e-4)


def test_a_document_added_through_one_replica_is_served_by_the_other(
        deployment: Deployment) -> None:
    text = "Zyxwv quokka marmalade is a rare new phrase about quokka marmalade."
    line = {"id": "new/1", "text": text, "license": "CC0-1.0", "source": "web"}
    r = deployment.b.post("/admin/documents", {"documents": [line]}, admin=True)
    assert r.status_code == 200, r.text
    assert "new/1" in _named(deployment.a.post("/v1/completions", {"prompt": text, **SCORE}))
    assert "new/1" in _named(deployment.a.post("/v1/attribution", {"text": text, "k": 10}))


def test_kill_9_mid_write_loses_no_acknowledged_optout(deployment: Deployment) -> None:
    a, b = deployment.a, deployment.b
    victims = [d.doc_id for d in make_documents() if d.doc_id.startswith("cl/")]
    acked: list[dict[str, Any]] = []

    def opt_out() -> None:
        for doc_id in victims:
            try:
                r = a.post("/admin/optout", {"doc_ids": [doc_id]}, admin=True)
            except httpx.HTTPError:
                return  # killed mid-request: not acknowledged
            if r.status_code == 200:
                acked.append(r.json())

    writer = threading.Thread(target=opt_out)
    writer.start()
    while len(acked) < 2 and writer.is_alive():
        time.sleep(0.01)
    a.kill()
    writer.join()
    assert len(acked) >= 2
    receipts = httpx.get(b.url + "/admin/optouts", headers=ADMIN, timeout=60).json()
    listed = {x["optout_id"] for x in receipts["receipts"]}
    assert {x["optout_id"] for x in acked} <= listed
    gone = {d for x in acked for d in x["doc_ids"]}
    # every opt-out in effect is in the log, and every one the log holds is in effect
    removed = {d for x in receipts["receipts"] for d in x["doc_ids"]}
    logged = {e["documents"][0]["id_sha256"] for e in _entries(b) if e["action"] == "optout"}
    assert logged == {hashlib.sha256(d.encode()).hexdigest() for d in removed}
    for text in ("A dictionary entry", "Lay, v. t."):
        named = _named(b.post("/v1/completions", {"prompt": text, **SCORE}))
        assert not named & gone
    a.start()  # the restarted replica agrees
    assert not _named(a.post("/v1/attribution", {"text": "Lay, v. t.", "k": 10})) & gone


def _entries(replica: Replica) -> list[dict[str, Any]]:
    size = int(httpx.get(replica.url + "/v1/log/checkpoint", timeout=60).text.splitlines()[1])
    out: list[dict[str, Any]] = []
    while len(out) < size:
        page = httpx.get(replica.url + "/v1/log/entries", params={
            "start": len(out), "end": size}, timeout=60).json()["entries"]
        assert page, f"no entries from {len(out)}"
        out += page
    return out


def test_two_replicas_writing_at_once_append_one_log_in_order(deployment: Deployment) -> None:
    a, b = deployment.a, deployment.b
    receipts: list[dict[str, Any]] = []

    def opt_out(replica: Replica, victims: list[str]) -> None:
        for doc_id in victims:
            r = replica.post("/admin/optout", {"doc_ids": [doc_id]}, admin=True)
            if r.status_code == 200:
                receipts.append(r.json())

    writers = [threading.Thread(target=opt_out, args=(a, ["sw/0", "sw/2"])),
               threading.Thread(target=opt_out, args=(b, ["sw/1", "pd/4"]))]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert len(receipts) == 4
    entries = _entries(a)
    assert [e["index"] for e in entries] == list(range(len(entries)))
    assert entries == _entries(b)  # one log, whichever replica serves it
    for receipt in receipts:
        entry = entries[receipt["log_index"]]
        assert entry["leaf"] == receipt["log"]["leaf"] and entry["action"] == "optout"
        assert [d["id_sha256"] for d in entry["documents"]] == [
            hashlib.sha256(receipt["doc_ids"][0].encode()).hexdigest()]
    assert (httpx.get(a.url + "/v1/log/checkpoint", timeout=60).text
            == httpx.get(b.url + "/v1/log/checkpoint", timeout=60).text)


def test_an_outage_of_either_dependency_is_a_503_that_ends_by_itself(
        deployment: Deployment) -> None:
    b = deployment.b
    body = {"prompt": TEXT, **SCORE}
    assert b.post("/v1/completions", body).status_code == 200
    for (down, up), named in (((deployment.pg.stop, deployment.pg.start), "document table"),
                              ((deployment.milvus.pause, deployment.milvus.resume), "Milvus")):
        down()
        try:
            r = b.post("/v1/completions", body)
            assert r.status_code == 503 and named in r.json()["error"]["message"], r.text
        finally:
            up()
        assert b.post("/v1/completions", body).status_code == 200
