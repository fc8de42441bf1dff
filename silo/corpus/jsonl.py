"""Open License Corpus-style documents: reading, validating, filtering, deduplicating, splitting.

A corpus is JSONL or JSONL.gz, one document a line:
`{"id", "text", "license", "license_class", "source", "url"}`. `license_class` may be
omitted, in which case it is derived from `license`; when both are given they must agree
on whether the document is low risk, so a mislabelled line is never accepted as `pd`/`sw`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from datastore.document import (
    Document,
    LicenseClass,
    classify_license,
    parse_license_class,
)
from datastore.errors import CorpusFormatError, InvalidInputError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass
class ReadReport:
    """What a read skipped, by reason, with the first few locations for the log."""

    read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def skip(self, error: CorpusFormatError) -> None:
        kind = error.reason.split(":")[0].split(" (")[0]
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        if len(self.examples) < 10:
            self.examples.append(str(error))

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())


def open_text(path: Path) -> IO[str]:
    """Open a plain or gzip-compressed text file (by suffix) for reading."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def parse_line(record: Any, path: str, line: int) -> Document:
    """Validate one decoded corpus record; raise CorpusFormatError naming path:line."""
    if not isinstance(record, dict):
        raise CorpusFormatError(path, line, "not a JSON object")
    doc_id, text = record.get("id"), record.get("text")
    if not isinstance(doc_id, str | int) or str(doc_id) == "":
        raise CorpusFormatError(path, line, "missing id")
    if not isinstance(text, str) or not text.strip():
        raise CorpusFormatError(path, line, f"no text (document {doc_id!r})")
    license = record.get("license")
    if not isinstance(license, str) or not license.strip():
        raise CorpusFormatError(path, line, f"no license (document {doc_id!r})")
    derived = classify_license(license)
    declared = record.get("license_class")
    if declared is None:
        cls = derived
    else:
        try:
            cls = parse_license_class(str(declared))
        except ValueError:
            raise CorpusFormatError(
                path, line, f"unknown license_class {declared!r} (document {doc_id!r})"
            ) from None
        # A low-risk class needs a licence we recognise as low risk, so a typo or an
        # unknown licence is never let in as pd/sw/by.
        if cls.permissive and not derived.permissive:
            raise CorpusFormatError(
                path,
                line,
                f"unknown license: {license!r} is not a known permissive licence, "
                f"but the line claims class {cls.value!r} (document {doc_id!r})",
            )
    if cls is LicenseClass.UNKNOWN and declared is None:
        log.debug("%s:%d: licence %r not recognised; class unknown", path, line, license)
    url = record.get("url")
    return Document(
        doc_id=str(doc_id),
        text=text,
        license=license.strip(),
        license_class=cls,
        source=str(record.get("source") or "unknown"),
        url=str(url) if url else None,
    )


def read_jsonl(
    path: Path, *, strict: bool = False, report: ReadReport | None = None
) -> Iterator[Document]:
    """Documents of one JSONL(.gz) file. Bad lines raise when `strict`, else are skipped,
    logged with file:line and counted in `report`."""
    with open_text(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise CorpusFormatError(str(path), lineno, f"invalid JSON: {exc.msg}") from None
                doc = parse_line(record, str(path), lineno)
            except CorpusFormatError as err:
                if strict:
                    raise
                log.warning("skipped %s", err)
                if report is not None:
                    report.skip(err)
                continue
            if report is not None:
                report.read += 1
            yield doc


def corpus_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders into their *.jsonl / *.jsonl.gz files, sorted for determinism."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted([*p.glob("*.jsonl"), *p.glob("*.jsonl.gz")]))
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"corpus file not found: {p}")
    return files


def read_corpus(
    paths: Sequence[Path],
    policy: frozenset[LicenseClass] | None = None,
    *,
    strict: bool = False,
    report: ReadReport | None = None,
) -> Iterator[Document]:
    """Documents of all files (folders expanded), keeping only `policy` classes if given."""
    for path in corpus_files(paths):
        for doc in read_jsonl(path, strict=strict, report=report):
            if policy is None or doc.license_class in policy:
                yield doc


def dedup(docs: Iterable[Document]) -> Iterator[Document]:
    """Drop exact duplicates (same text after whitespace normalisation); first one wins."""
    seen: set[bytes] = set()
    for doc in docs:
        digest = hashlib.blake2b(" ".join(doc.text.split()).encode(), digest_size=16).digest()
        if digest not in seen:
            seen.add(digest)
            yield doc


def split_of(doc_id: str, valid_frac: float = 0.01, test_frac: float = 0.01) -> str:
    """The split of a document, a pure function of its id: stable across runs, machines and
    corpus order, and a document lives in exactly one split."""
    if valid_frac < 0 or test_frac < 0 or valid_frac + test_frac >= 1:
        raise InvalidInputError("valid_frac and test_frac must be >= 0 and sum to < 1")
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64
    if h < test_frac:
        return "test"
    if h < test_frac + valid_frac:
        return "valid"
    return "train"


def write_jsonl(docs: Iterable[Document], path: Path) -> int:
    """Write documents as corpus lines (gzip if the name ends in .gz); return the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    # mtime=0 makes the .gz bytes a function of the content alone (reproducible builds).
    raw: IO[bytes] = (
        gzip.GzipFile(path, "wb", mtime=0) if path.suffix == ".gz" else open(path, "wb")  # type: ignore[assignment]
    )
    with raw, io.TextIOWrapper(raw, encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps(doc.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n
