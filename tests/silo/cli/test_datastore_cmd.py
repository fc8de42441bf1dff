"""`silo datastore ...` end to end on a tiny model and corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datastore.document import Document, LicenseClass
from silo.cli.datastore_cmd import app

runner = CliRunner()


def _model(folder: Path, seed: int) -> Path:
    from silo.model import build_lm
    from silo.tokenizer import train_tokenizer

    tok = train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 20, vocab_size=300)
    build_lm("tiny", vocab_size=len(tok), seed=seed).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _corpus(path: Path, docs: list[Document]) -> Path:
    path.write_text("".join(json.dumps(d.to_json()) + "\n" for d in docs))
    return path


def _docs(prefix: str, n: int) -> list[Document]:
    return [Document(f"{prefix}{i}", f"the fox {i} jumps over dog number {i * 7}", "gpl-3.0",
                     LicenseClass.COPYLEFT, "forum" if i % 2 else "wiki",
                     f"https://forum.example/{i}") for i in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cmd")
    return {"model": _model(root / "model", 0), "other": _model(root / "other", 1),
            "corpus": _corpus(root / "a.jsonl", _docs("a", 6)),
            "more": _corpus(root / "b.jsonl", _docs("b", 3)), "root": root}


def _run(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_build_remove_compact_add_info(setup: dict[str, Path]) -> None:
    ds = setup["root"] / "ds"
    code, output = _run("build", "--out", ds, "--corpus", setup["corpus"], "--model",
                        setup["model"], "--backend", "exact")
    assert code == 0, output
    assert json.loads(output[output.index("{"):])["documents"] == 6
    code, output = _run("remove", "--datastore", ds, "--doc-id", "a1", "--doc-id", "a2",
                        "--reason", "owner asked")
    assert code == 0, output
    receipt = json.loads(output)
    assert receipt["doc_ids"] == ["a1", "a2"] and receipt["entries_removed"] > 0
    code, output = _run("compact", "--datastore", ds)
    assert code == 0 and json.loads(output)["documents_purged"] == 2
    code, output = _run("add", "--datastore", ds, "--corpus", setup["more"], "--model",
                        setup["model"])
    assert code == 0 and json.loads(output[output.index("{"):])["documents"] == 3
    code, output = _run("info", "--datastore", ds, "--receipts")
    data = json.loads(output)
    assert (data["documents"], data["live_documents"]) == (9, 7)
    assert data["receipts"][0]["purged_at"] is not None
    code, output = _run("reindex", "--datastore", ds, "--backend", "faiss-flat")
    data = json.loads(output[output.index("{"):])
    assert code == 0 and data["backend"] == "faiss-flat"
    assert data["entries_indexed"] == data["indexed_entries"] == data["live_entries"]


def test_errors_are_one_line_with_exit_code_2(setup: dict[str, Path]) -> None:
    ds = setup["root"] / "ds2"
    assert _run("build", "--out", ds, "--corpus", setup["corpus"], "--model",
                setup["model"], "--backend", "exact")[0] == 0
    cases = [
        (("remove", "--datastore", ds, "--doc-id", "nope"), "nope"),
        (("remove", "--datastore", ds), "exactly one"),
        (("add", "--datastore", ds, "--corpus", setup["more"], "--model", setup["other"]),
         "built with model"),
        (("build", "--out", setup["root"] / "x", "--corpus", setup["root"] / "missing.jsonl",
          "--model", setup["model"]), "missing.jsonl"),
        (("build", "--out", setup["root"] / "y", "--corpus", setup["corpus"], "--model",
          setup["model"], "--backend", "annoy"), "backend"),
        (("info", "--datastore", setup["root"] / "nothing"), "not a datastore"),
        (("reindex", "--datastore", ds, "--backend", "faiss-ivfpq-fs", "--nbits", "8"),
         "nbits must be 4"),
        (("reindex", "--datastore", ds, "--backend", "milvus"), "local index"),
    ]
    for args, needle in cases:
        code, output = _run(*args)
        assert code == 2, (args, output)
        assert needle in output and "Traceback" not in output


def test_a_corpus_without_a_usable_document_builds_nothing_unless_asked(
        setup: dict[str, Path]) -> None:
    bad = setup["root"] / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "no licence"}\nnot json\n{"id": "b", "text": "", '
                   '"license": "MIT"}\n')
    out = setup["root"] / "empty"
    code, output = _run("build", "--out", out, "--corpus", bad, "--model", setup["model"],
                        "--backend", "exact")
    assert code == 2 and "no usable document" in output and "--allow-empty" in output
    assert "Traceback" not in output and not out.exists()
    code, output = _run("build", "--out", out, "--corpus", bad, "--model", setup["model"],
                        "--backend", "exact", "--allow-empty")
    assert code == 0 and json.loads(output[output.index("{"):])["documents"] == 0
