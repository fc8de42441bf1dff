import gzip
import json
from pathlib import Path

import pytest

from datastore.document import LicenseClass, parse_policy
from datastore.errors import CorpusFormatError
from silo.corpus.jsonl import ReadReport, dedup, read_corpus, read_jsonl, split_of, write_jsonl


def write_lines(path: Path, records: list[object]) -> Path:
    with open(path, "w") as fh:
        for r in records:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def line(i: int, text: str = "some text", license: str = "MIT", **extra: object) -> dict:
    return {"id": f"d{i}", "text": text, "license": license, "source": "s", **extra}


def test_reads_plain_and_gzip_with_class_derived_from_licence(tmp_path: Path, documents) -> None:
    n = write_jsonl(documents, tmp_path / "c.jsonl.gz")
    assert n == len(documents)
    with gzip.open(tmp_path / "c.jsonl.gz", "rt") as fh:
        assert json.loads(fh.readline())["id"] == documents[0].doc_id
    back = list(read_jsonl(tmp_path / "c.jsonl.gz", strict=True))
    assert back == documents


def test_licence_class_per_source(corpus_file: Path) -> None:
    classes = {d.source: d.license_class for d in read_corpus([corpus_file])}
    assert classes == {
        "kjv": LicenseClass.PD,
        "devil": LicenseClass.PD,
        "stdlib": LicenseClass.SW,
        "gcide": LicenseClass.COPYLEFT,
    }


def test_policy_filter_keeps_only_allowed_classes(corpus_file: Path) -> None:
    docs = list(read_corpus([corpus_file], parse_policy("pd,sw")))
    assert docs and all(d.license_class in {LicenseClass.PD, LicenseClass.SW} for d in docs)
    assert not [d for d in docs if d.source == "gcide"]


def test_bad_lines_are_reported_with_file_and_line(tmp_path: Path, caplog) -> None:
    path = write_lines(
        tmp_path / "bad.jsonl",
        [
            line(1),
            line(2, text="   "),
            "{not json",
            line(4, license="Frobnitz Licence"),  # unknown: kept, but as class unknown
            line(5, license="Frobnitz Licence", license_class="pd"),  # claims pd: rejected
            line(6, license="MIT", license_class="martian"),
            {"text": "no id", "license": "MIT"},
        ],
    )
    report = ReadReport()
    docs = list(read_jsonl(path, report=report))
    assert [d.doc_id for d in docs] == ["d1", "d4"]
    assert docs[1].license_class is LicenseClass.UNKNOWN
    assert report.read == 2 and report.total_skipped == 5
    assert any(f"{path}:2: no text" in e for e in report.examples)
    assert any(f"{path}:3: invalid JSON" in e for e in report.examples)
    assert any(f"{path}:5: unknown license" in e for e in report.examples)
    assert f"{path}:2" in caplog.text
    with pytest.raises(CorpusFormatError) as err:
        list(read_jsonl(path, strict=True))
    assert (err.value.path, err.value.line) == (str(path), 2)


def test_unknown_licence_never_becomes_low_risk(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "c.jsonl",
        [line(1, license="see website"), line(2, license="see website", license_class="sw")],
    )
    docs = list(read_corpus([path], parse_policy("pd,sw")))
    assert docs == []


def test_dedup_drops_exact_duplicates_modulo_whitespace(documents) -> None:
    twin = documents[0].__class__(
        **{
            **documents[0].__dict__,
            "doc_id": "twin",
            "text": "  " + documents[0].text.replace(" ", "\n"),
        }
    )
    kept = list(dedup([*documents, twin]))
    assert [d.doc_id for d in kept] == [d.doc_id for d in documents]


def test_split_is_deterministic_and_disjoint() -> None:
    ids = [f"doc-{i}" for i in range(5000)]
    first = {i: split_of(i, 0.1, 0.1) for i in ids}
    assert first == {i: split_of(i, 0.1, 0.1) for i in reversed(ids)}
    counts = {s: sum(1 for v in first.values() if v == s) for s in ("train", "valid", "test")}
    assert sum(counts.values()) == len(ids)  # each document in exactly one split
    assert 350 < counts["valid"] < 650 and 350 < counts["test"] < 650
    with pytest.raises(ValueError, match="valid_frac"):
        split_of("x", 0.6, 0.5)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="corpus file not found"):
        list(read_corpus([tmp_path / "nope.jsonl"]))
