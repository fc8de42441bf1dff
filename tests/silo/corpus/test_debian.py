import gzip
import stat
from pathlib import Path

from datastore.document import LicenseClass
from silo.corpus.debian import SOURCES, dictd_number, read_dictd, source_documents

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def encode(n: int) -> str:
    digits = ""
    while True:
        digits = _B64[n % 64] + digits
        n //= 64
        if n == 0:
            return digits


def make_dictd(folder: Path, name: str, entries: list[tuple[list[str], str]]) -> None:
    """Write NAME.index and NAME.dict.dz the way dictfmt does (synonyms share a span)."""
    folder.mkdir(parents=True, exist_ok=True)
    blob, index = b"00-database-info\nheader text\n", ["00-database-info\tA\tc"]
    for heads, text in entries:
        data = (text + "\n").encode()
        for head in heads:
            index.append(f"{head}\t{encode(len(blob))}\t{encode(len(data))}")
        blob += data
    (folder / f"{name}.index").write_text("\n".join(sorted(index)) + "\n")
    with gzip.open(folder / f"{name}.dict.dz", "wb") as fh:
        fh.write(blob)


def test_dictd_numbers_are_base64_most_significant_first() -> None:
    assert dictd_number("A") == 0
    assert dictd_number("Ph") == 15 * 64 + 33
    assert dictd_number(encode(123456789)) == 123456789


def test_read_dictd_one_document_per_definition(tmp_path: Path) -> None:
    make_dictd(
        tmp_path,
        "foldoc",
        [
            (["kernel"], "kernel\n  The core of an OS."),
            (["LWP", "light-weight process"], "A thread."),
            (["café"], "A small restaurant, ünïcode."),
        ],
    )
    pairs = list(read_dictd(tmp_path / "foldoc.index", tmp_path / "foldoc.dict.dz"))
    assert [p[1] for p in pairs] == [
        "kernel\n  The core of an OS.",
        "A thread.",
        "A small restaurant, ünïcode.",
    ]
    assert pairs[0][0] == "kernel"


def test_sources_keep_their_package_licence(tmp_path: Path) -> None:
    make_dictd(
        tmp_path / "usr/share/dictd",
        "gcide",
        [(["lay"], "Lay, v. t. To place."), (["lie"], "Lie, v. i. To recline.")],
    )
    docs = list(source_documents(SOURCES["gcide"], tmp_path))
    assert [d.doc_id for d in docs] == ["gcide/lay", "gcide/lie"]
    assert {d.license_class for d in docs} == {LicenseClass.COPYLEFT}
    expected = {
        "kjv": "pd",
        "jargon": "pd",
        "devil": "pd",
        "elements": "pd",
        "pydoc": "sw",
        "stdlib": "sw",
        "wordnet": "sw",
        "gcide": "copyleft",
        "foldoc": "copyleft",
        "vera": "copyleft",
    }
    from datastore.document import classify_license

    assert {n: classify_license(s.license).value for n, s in SOURCES.items()} == expected


def test_kjv_is_split_into_chapters(tmp_path: Path) -> None:
    # The package's `bible` program prints one verse a line; stand one in with a script.
    bible = tmp_path / "usr/bin/bible"
    bible.parent.mkdir(parents=True)
    bible.write_text(
        "#!/bin/sh\nprintf 'Ge1:1 In the beginning.\\nGe1:2 And the earth\\n"
        "  was void.\\nGe2:1 Thus the heavens.\\n'\n"
    )
    bible.chmod(bible.stat().st_mode | stat.S_IEXEC)
    docs = list(source_documents(SOURCES["kjv"], tmp_path))
    assert [d.doc_id for d in docs] == ["kjv/Ge1", "kjv/Ge2"]
    assert docs[0].text == "1:1 In the beginning.\n1:2 And the earth was void."
    assert docs[0].license_class is LicenseClass.PD


def test_stdlib_skips_tests(tmp_path: Path) -> None:
    lib = tmp_path / "usr/lib/python3.11"
    (lib / "test").mkdir(parents=True)
    (lib / "json").mkdir()
    (lib / "json/__init__.py").write_text("import re\n")
    (lib / "test/test_json.py").write_text("assert True\n")
    (lib / "heapq.py").write_text("def heappush(heap, item): ...\n")
    ids = [d.doc_id for d in source_documents(SOURCES["stdlib"], tmp_path)]
    assert ids == ["stdlib/heapq.py", "stdlib/json/__init__.py"]
