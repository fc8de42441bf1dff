"""`silo serve` run as a user would run it: its checks before starting, and serving."""

import subprocess
import sys
from pathlib import Path

from tests.silo.cli.command import ROOT, silo


def test_serve_checks_its_model_and_datastore_before_starting(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cases = [(["serve", "--model", tmp_path / "none"], "no such model folder"),
             (["serve", "--model", tmp_path], "no config.json"),
             (["serve", "--model", model, "--datastore", "/nonexistent"],
              "no such datastore folder"),
             (["serve", "--model", model, "--datastore", tmp_path], "manifest.json"),
             (["serve", "--model", model, "--dtype", "int4"], "dtype must be one of")]
    for args, needle in cases:
        result = silo(*[str(a) for a in args])
        output = result.stdout + result.stderr
        assert result.returncode == 2, (args, output)
        assert needle in output and "Traceback" not in output


def test_a_bad_dtype_in_the_environment_fails_before_the_server_starts(
        tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("SILO_DTYPE", "int4")  # the subprocess inherits it
    result = silo("serve", "--model", str(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "dtype must be one of" in output, output
    assert "Traceback" not in output


def test_serve_without_a_datastore_answers_with_the_parametric_lm(tmp_path: Path) -> None:
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from silo.cli.main import main; main()", "serve", "--no-datastore",
         "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                       json={"prompt": "A kernel is", "max_tokens": 4})
        assert r.status_code == 200 and r.json()["silo"]["mode"] == "parametric"
        knn = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                         json={"prompt": "A", "max_tokens": 1, "silo": {"mode": "knnlm"}})
        assert knn.status_code == 400 and "datastore" in knn.json()["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    both = silo("serve", "--no-datastore", "--datastore", str(tmp_path))
    assert both.returncode == 2 and "exclude each other" in both.stderr + both.stdout


def test_the_default_datastore_is_built_from_the_shipped_corpus() -> None:
    from silo.cli.serve_cmd import CORPUS
    from silo.model import DEFAULT_MODEL

    assert CORPUS.is_file() and CORPUS.parent == ROOT / "data" / "corpus"
    assert (DEFAULT_MODEL / "config.json").is_file()


def test_serve_refuses_a_datastore_measured_from_a_reference_without_one(
        tmp_path: Path, tiny_lm: object, tiny_tokenizer: object) -> None:
    from silo.tuning import GridPoint, write_defaults
    from tests.conftest import make_documents
    from tests.silo.conftest import build_store

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    store = tmp_path / "ds"
    build_store(store, tiny_lm, tiny_tokenizer, make_documents()[:2]).close()
    write_defaults(store, GridPoint(4, 0.5, 1.0, 0.0, relevance=-1.0, relevance_margin=True),
                   {})
    for extra, needle in (([], "--reference"), (["--reference", str(tmp_path / "none")],
                                                "no such datastore folder")):
        result = silo("serve", "--model", str(model), "--datastore", str(store), *extra)
        output = result.stdout + result.stderr
        assert result.returncode == 2 and needle in output, output
        assert "Traceback" not in output
