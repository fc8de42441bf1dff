"""The `silo` command run as a user would run it: a real subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def silo(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from silo.cli import main; main()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_train_tiny_preset_then_eval_and_generate(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    run = silo("train", "--config", "configs/tiny.toml", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "valid ppl" in run.stderr
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(str(out)).config.model_type == "llama"

    res = tmp_path / "eval.json"
    run = silo(
        "eval",
        "data/corpus/devil.jsonl.gz",
        "--model",
        str(out),
        "--split",
        "all",
        "--window",
        "64",
        "--stride",
        "32",
        "--max-tokens",
        "300",
        "--json",
        str(res),
    )
    assert run.returncode == 0, run.stderr
    [devil] = json.loads(res.read_text())
    assert devil["domain"] == "devil" and devil["tokens"] == 300 and 1 < devil["perplexity"] < 512

    run = silo("generate", "The Devil's Dictionary", "--model", str(out), "--max-tokens", "8")
    assert run.returncode == 0 and run.stdout.startswith("The Devil's Dictionary")


def test_bad_corpus_line_is_one_clear_line_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok", "license": "MIT"}\n{"id": "b", "text": ""}\n')
    run = silo("corpus", "stats", str(bad), "--strict")
    assert run.returncode == 2
    assert f"{bad}:2: no text" in run.stderr and "Traceback" not in run.stderr
    run = silo("corpus", "stats", str(bad))
    assert run.returncode == 0 and "skipped 1 bad lines" in run.stderr


def test_unknown_names_are_refused(tmp_path: Path) -> None:
    run = silo("corpus", "build", "--sources", "kjv,nonsense", "--out", str(tmp_path))
    assert run.returncode == 2 and "unknown sources ['nonsense']" in run.stderr
    run = silo("eval", "data/corpus/devil.jsonl.gz", "--model", str(tmp_path / "none"))
    assert run.returncode == 2 and "no model at" in run.stderr
    assert "Traceback" not in run.stderr


def test_corpus_split_writes_disjoint_files(tmp_path: Path, corpus_file: Path) -> None:
    run = silo(
        "corpus",
        "split",
        str(corpus_file),
        "--out",
        str(tmp_path / "s"),
        "--policy",
        "pd,sw",
        "--valid-frac",
        "0.3",
        "--test-frac",
        "0.3",
    )
    assert run.returncode == 0, run.stderr
    from silo.corpus import read_jsonl

    ids = [
        [d.doc_id for d in read_jsonl(tmp_path / "s" / f"{s}.jsonl.gz")]
        for s in ("train", "valid", "test")
    ]
    flat = [i for part in ids for i in part]
    assert len(flat) == len(set(flat)) == 8  # the 8 pd+sw fixture documents, once each


def test_serve_checks_its_model_and_datastore_before_starting(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cases = [(["serve", "--model", tmp_path / "none"], "no such model folder"),
             (["serve", "--model", tmp_path], "no config.json"),
             (["serve", "--model", model, "--datastore", "/nonexistent"],
              "no such datastore folder"),
             (["serve", "--model", model, "--datastore", tmp_path], "manifest.json")]
    for args, needle in cases:
        result = silo(*[str(a) for a in args])
        output = result.stdout + result.stderr
        assert result.returncode == 2, (args, output)
        assert needle in output and "Traceback" not in output


def test_serve_without_a_datastore_answers_with_the_parametric_lm(tmp_path: Path) -> None:
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from silo.cli import main; main()", "serve", "--no-datastore",
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
