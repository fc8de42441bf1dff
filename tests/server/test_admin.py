"""Admin flows over real HTTP: add documents, opt out, receipts, datastore swap, audit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_documents
from tests.server.conftest import ADMIN_KEY, USER_KEY, Live, build_store


def _attributed(live: Live, text: str) -> set[str]:
    with live.client(USER_KEY) as http:
        r = http.post("/v1/attribution", json={"text": text, "k": 10})
    assert r.status_code == 200, r.text
    return {d["doc_id"] for s in r.json()["sentences"] for d in s["documents"]}


def test_optout_is_effective_at_once_and_listed(live: Live) -> None:
    text = "In the beginning God created the heaven and the earth."
    assert "pd/0" in _attributed(live, text)
    with live.client(ADMIN_KEY) as admin:
        r = admin.post("/admin/optout", json={"doc_ids": ["pd/0"], "reason": "owner asked"})
        assert r.status_code == 200, r.text
        receipt = r.json()
        assert receipt["doc_ids"] == ["pd/0"] and receipt["entries_removed"] > 0
        assert "pd/0" not in _attributed(live, text)
        listed = admin.get("/admin/optouts").json()["receipts"]
        assert [x["optout_id"] for x in listed] == [receipt["optout_id"]]
        assert admin.post("/admin/optout", json={"doc_ids": ["nope"]}).status_code == 404
        assert admin.post("/admin/optout", json={}).status_code == 400
    audit = [json.loads(line) for line in live.settings.audit_log.read_text().splitlines()]
    assert any(a["action"] == "optout" and a["who"] == "admin" and a["outcome"] == "ok"
               for a in audit)


def test_add_documents_then_conflict(live: Live) -> None:
    line = {"id": "new/1", "text": "Zyxwv quokka marmalade is a rare new phrase.",
            "license": "CC-BY-4.0", "source": "web", "url": "https://example.org/1"}
    with live.client(ADMIN_KEY) as admin:
        r = admin.post("/admin/documents", json={"documents": [line]})
        assert r.status_code == 200, r.text
        assert r.json()["documents"] == 1 and r.json()["entries"] > 0
        assert "new/1" in _attributed(live, "Zyxwv quokka marmalade is a rare new phrase.")
        again = admin.post("/admin/documents", json={"documents": [line]})
        assert again.status_code == 409 and "new/1" in again.json()["error"]["message"]
        bad = admin.post("/admin/documents", json={"documents": [{"id": "x"}]})
        assert bad.status_code == 400 and "request.documents:0" in bad.json()["error"]["message"]


def test_swap_datastores_at_run_time(make_live, model_dir: Path, store_dir: Path,
                                     tmp_path: Path) -> None:
    other = build_store(model_dir, tmp_path / "other", make_documents()[:3])
    live = make_live(model=model_dir, datastore=store_dir, datastores=f"small={other}",
                     admin_key=ADMIN_KEY)
    with live.client(ADMIN_KEY) as admin:
        listed = admin.get("/admin/datastores").json()
        assert listed["active"] == "main"
        assert {d["name"] for d in listed["datastores"]} == {"main", "small"}
        r = admin.post("/admin/datastores/small/activate")
        assert r.status_code == 200 and r.json()["active"] == "small"
        done = admin.post("/v1/completions", json={"prompt": "In", "max_tokens": 1})
        assert done.json()["silo"]["datastore"] == "small"
        assert admin.post("/admin/datastores/missing/activate").status_code == 404
    # the other datastore holds only the first three documents
    assert _attributed(live, "kernel: The essential part of an operating system") <= {
        "pd/0", "pd/1", "pd/2"}


def test_a_cli_add_while_the_service_has_the_folder_open(live: Live, model_dir: Path,
                                                         store_dir: Path, tmp_path: Path) -> None:
    """`silo datastore add` beside `silo serve` on one folder: each write holds the folder
    only while it writes, the service's next write finds the folder as the command left
    it, and the folder ends equal to a clean build of the same documents."""
    from datastore.store.datastore import Datastore
    from tests.server.conftest import build_store

    docs = make_documents()
    corpus = tmp_path / "more.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"cli/{i}", "text": f"Entry {i}: a quokka "
                                          "eats marmalade by the river.", "license": "CC0-1.0",
                                          "source": "web"}) + "\n" for i in range(3)))
    silo = str(Path(sys.executable).with_name("silo"))
    added = subprocess.run([silo, "datastore", "add", "--datastore", str(store_dir),
                            "--corpus", str(corpus), "--model", str(model_dir)],
                           capture_output=True, text=True, timeout=300)
    assert added.returncode == 0, added.stderr
    line = {"id": "http/1", "text": "Zyxwv quokka marmalade is a rare new phrase.",
            "license": "CC-BY-4.0", "source": "web"}
    with live.client(ADMIN_KEY) as admin:
        r = admin.post("/admin/documents", json={"documents": [line]})
        assert r.status_code == 200, r.text
        assert admin.post("/admin/optout", json={"doc_ids": ["cli/1"]}).status_code == 200
    from silo.corpus.jsonl import parse_line

    more = [parse_line(json.loads(x), str(corpus), i + 1)
            for i, x in enumerate(corpus.read_text().splitlines())]
    clean = build_store(model_dir, tmp_path / "clean",
                        [*docs, *more, parse_line(line, "request", 1)])
    with Datastore.open(store_dir) as served, Datastore.open(clean) as whole:
        assert served.snapshot.doc_ids == whole.snapshot.doc_ids
        assert len(served.kv) == len(whole.kv)
        assert [bool(served.snapshot.removed[served.table.get(d).doc_row])
                for d in ("cli/0", "cli/1")] == [False, True]
