"""Build a licensed corpus from Debian packages, with no model hub and no root.

Each package is fetched with `apt-get download` and unpacked with `dpkg-deb -x`; every
document keeps the licence its package's copyright file states:

    source    package                      licence      class
    kjv       bible-kjv-text (+bible-kjv)  Public Domain  pd     one document a chapter
    jargon    dict-jargon                  Public Domain  pd     one document an entry
    devil     dict-devil                   Public Domain  pd
    elements  dict-elements                Public Domain  pd
    pydoc     python3.11-doc               PSF-2.0        sw     one document a reST file
    stdlib    libpython3.11-stdlib/minimal PSF-2.0        sw     one document a module
    wordnet   dict-wn                      WordNet        sw
    gcide     dict-gcide                   GPL-2.0+       copyleft
    foldoc    dict-foldoc                  GFDL-1.1       copyleft
    vera      dict-vera                    GFDL-1.1       copyleft

dictd files: `NAME.index` lines are `headword<TAB>offset<TAB>length`, offset and length
in dictd's base64 (digits A-Z a-z 0-9 + /, most significant first), into the gzip
stream `NAME.dict.dz`.
"""

from __future__ import annotations

import gzip
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from datastore.document import Document, classify_license

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}


def dictd_number(text: str) -> int:
    """Decode a dictd base64 number ("Ph" -> 15*64 + 33)."""
    value = 0
    for ch in text:
        value = value * 64 + _B64_VALUE[ch]
    return value


def read_dictd(index: Path, data: Path) -> Iterator[tuple[str, str]]:
    """(headword, definition) pairs of a dictd dictionary, one per distinct definition,
    in file order; the `00-database-*` header entries are left out."""
    with gzip.open(data, "rb") as fh:
        blob = fh.read()
    seen: set[tuple[int, int]] = set()
    entries: list[tuple[int, int, str]] = []
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if (
            len(parts) < 3
            or parts[0].startswith("00-database")
            or parts[0].startswith("00database")
        ):
            continue
        span = (dictd_number(parts[1]), dictd_number(parts[2]))
        if span not in seen:  # synonyms share one definition
            seen.add(span)
            entries.append((span[0], span[1], parts[0]))
    for offset, length, head in sorted(entries):
        text = blob[offset : offset + length].decode("utf-8", errors="replace").strip()
        if text:
            yield head, text


@dataclass(frozen=True)
class Source:
    """One corpus source: the packages it needs and how to read documents from them."""

    name: str
    packages: tuple[str, ...]
    license: str
    url: str
    reader: Callable[[Path], Iterator[tuple[str, str]]]


def _dictd(name: str) -> Callable[[Path], Iterator[tuple[str, str]]]:
    def read(root: Path) -> Iterator[tuple[str, str]]:
        base = root / "usr/share/dictd" / name
        yield from read_dictd(base.with_suffix(".index"), Path(f"{base}.dict.dz"))

    return read


def _kjv(root: Path) -> Iterator[tuple[str, str]]:
    """Chapters of the KJV, decoded by the package's own `bible` program."""
    out = subprocess.run(
        [str(root / "usr/bin/bible"), "-p", str(root / "usr/lib"), "-f", "Gen1:1-Rev22:21"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    chapters: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = re.match(r"^(\S+?)(\d+):(\d+) (.*)$", line)
        if m:
            chapters.setdefault(f"{m[1]}{m[2]}", []).append(f"{m[2]}:{m[3]} {m[4]}")
        elif chapters and line.strip():  # a verse wrapped over two lines
            last = next(reversed(chapters))
            chapters[last][-1] += " " + line.strip()
    for chapter, verses in chapters.items():
        yield chapter, "\n".join(verses)


def _files(pattern: str, base: str, skip: re.Pattern[str] | None = None):
    def read(root: Path) -> Iterator[tuple[str, str]]:
        top = root / base
        for path in sorted(top.glob(pattern)):
            rel = path.relative_to(top).as_posix()
            if skip is not None and skip.search(rel):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                yield rel, text

    return read


_TESTS = re.compile(r"(^|/)(tests?|idle_test|test_[^/]*\.py$)|/site-packages/|^config-")

SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "kjv",
            ("bible-kjv-text", "bible-kjv"),
            "Public Domain",
            "https://packages.debian.org/bookworm/bible-kjv-text",
            _kjv,
        ),
        Source(
            "jargon",
            ("dict-jargon",),
            "Public Domain",
            "https://packages.debian.org/bookworm/dict-jargon",
            _dictd("jargon"),
        ),
        Source(
            "devil",
            ("dict-devil",),
            "Public Domain",
            "https://packages.debian.org/bookworm/dict-devil",
            _dictd("devil"),
        ),
        Source(
            "elements",
            ("dict-elements",),
            "Public Domain",
            "https://packages.debian.org/bookworm/dict-elements",
            _dictd("elements"),
        ),
        Source(
            "pydoc",
            ("python3.11-doc",),
            "PSF-2.0",
            "https://packages.debian.org/bookworm/python3.11-doc",
            _files("**/*.rst.txt", "usr/share/doc/python3.11/html/_sources"),
        ),
        Source(
            "stdlib",
            ("libpython3.11-stdlib", "libpython3.11-minimal"),
            "PSF-2.0",
            "https://packages.debian.org/bookworm/libpython3.11-stdlib",
            _files("**/*.py", "usr/lib/python3.11", _TESTS),
        ),
        Source(
            "wordnet",
            ("dict-wn",),
            "WordNet",
            "https://packages.debian.org/bookworm/dict-wn",
            _dictd("wn"),
        ),
        Source(
            "gcide",
            ("dict-gcide",),
            "GPL-2.0-or-later",
            "https://packages.debian.org/bookworm/dict-gcide",
            _dictd("gcide"),
        ),
        Source(
            "foldoc",
            ("dict-foldoc",),
            "GFDL-1.1",
            "https://packages.debian.org/bookworm/dict-foldoc",
            _dictd("foldoc"),
        ),
        Source(
            "vera",
            ("dict-vera",),
            "GFDL-1.1",
            "https://packages.debian.org/bookworm/dict-vera",
            _dictd("vera"),
        ),
    ]
}


def fetch_packages(packages: tuple[str, ...], cache: Path) -> Path:
    """Download and unpack `packages` into `cache/root` (skipping those already there)."""
    debs, root = cache / "debs", cache / "root"
    debs.mkdir(parents=True, exist_ok=True)
    for pkg in packages:
        if not list(debs.glob(f"{pkg}_*.deb")):
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True, capture_output=True)
        for deb in debs.glob(f"{pkg}_*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def source_documents(source: Source, root: Path) -> Iterator[Document]:
    """The documents of one source, read from an unpacked package tree."""
    cls = classify_license(source.license)
    counts: dict[str, int] = {}
    for key, text in source.reader(root):
        n = counts[key] = counts.get(key, 0) + 1
        doc_id = f"{source.name}/{key}" + (f"#{n}" if n > 1 else "")
        yield Document(
            doc_id=doc_id,
            text=text,
            license=source.license,
            license_class=cls,
            source=source.name,
            url=source.url,
        )
