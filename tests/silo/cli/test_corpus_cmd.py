"""`silo corpus` run as a user would run it, and the one-line errors of every command."""

from pathlib import Path

from tests.silo.cli.command import silo


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
    from silo.corpus.jsonl import read_jsonl

    ids = [
        [d.doc_id for d in read_jsonl(tmp_path / "s" / f"{s}.jsonl.gz")]
        for s in ("train", "valid", "test")
    ]
    flat = [i for part in ids for i in part]
    assert len(flat) == len(set(flat)) == 8  # the 8 pd+sw fixture documents, once each
