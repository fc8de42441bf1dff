"""An opt-out acknowledged just before `kill -9` is still in effect after a restart, and
in the transparency log at the index its receipt gave."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import ADMIN_KEY, free_port


def _start(model_dir: Path, store_dir: Path, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "SILO_MODEL": str(model_dir), "SILO_DATASTORE": str(store_dir),
           "SILO_ADMIN_KEY": ADMIN_KEY, "SILO_AUDIT_LOG": str(tmp_path / "audit.jsonl")}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory",
                             "server.app:create_app", "--host", "127.0.0.1", "--port",
                             str(port), "--log-level", "warning"], env=env,
                            cwd=Path(__file__).resolve().parents[2])
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server subprocess did not come up")


@pytest.mark.slow
def test_optout_survives_kill_9(model_dir: Path, store_dir: Path, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    text = {"text": "And God said, Let there be light: and there was light.", "k": 10}
    proc, url = _start(model_dir, store_dir, tmp_path)
    try:
        before = httpx.post(url + "/v1/attribution", json=text).json()
        assert "pd/2" in {d["doc_id"] for s in before["sentences"] for d in s["documents"]}
        r = httpx.post(url + "/admin/optout", json={"doc_ids": ["pd/2"]}, headers=headers)
        assert r.status_code == 200
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown, no flush: only what was committed
        proc.wait()
    proc, url = _start(model_dir, store_dir, tmp_path)
    try:
        after = httpx.post(url + "/v1/attribution", json=text).json()
        assert "pd/2" not in {d["doc_id"] for s in after["sentences"] for d in s["documents"]}
        receipts = httpx.get(url + "/admin/optouts", headers=headers).json()["receipts"]
        assert [x["optout_id"] for x in receipts] == [r.json()["optout_id"]]
        index = r.json()["log_index"]
        (entry,) = httpx.get(url + "/v1/log/entries", params={
            "start": index, "end": index + 1}).json()["entries"]
        assert entry["action"] == "optout" and entry["leaf"] == r.json()["log"]["leaf"]
        assert [d["id_sha256"] for d in entry["documents"]] == [
            hashlib.sha256(b"pd/2").hexdigest()]
        size = int(httpx.get(url + "/v1/log/checkpoint").text.splitlines()[1])
        assert size == index + 1  # nothing logged that did not happen
    finally:
        proc.kill()
        proc.wait()
