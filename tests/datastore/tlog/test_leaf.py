"""The leaf format: exact bytes, strict decoding, and what is hashed."""

from __future__ import annotations

import hashlib

import pytest

from datastore.document import LicenseClass
from datastore.errors import InvalidInputError, InvalidSelectorError
from datastore.tlog.leaf import (
    Action,
    Leaf,
    LeafDocument,
    canonical_json,
    format_time,
    parse_time,
    selector_sha256,
    sha256_hex,
)

NOW = 1796165540.123456  # 2026-12-01T22:52:20.123456Z
DOCS = [("pd/0", "In the beginning.", LicenseClass.PD), ("sw/1", "def f(): pass", "sw")]


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_an_optout_leaf_is_exactly_these_bytes() -> None:
    leaf = Leaf.opted_out(DOCS, "doc_ids", ["pd/0", "sw/1"], NOW)
    assert leaf.encode() == (
        "silo-log-leaf v1\n"
        "action optout\n"
        "time 2026-12-01T22:52:20.123456Z\n"
        f"selector doc_ids {_h('pd/0' + chr(10) + 'sw/1')}\n"
        f"doc {_h('pd/0')} {_h('In the beginning.')} pd\n"
        f"doc {_h('sw/1')} {_h('def f(): pass')} sw\n").encode()
    assert b"pd/0" not in leaf.encode() and b"beginning" not in leaf.encode()


@pytest.mark.parametrize("leaf", [
    Leaf.added(DOCS, NOW),
    Leaf.opted_out(DOCS[:1], "source", "kjv", NOW),
    Leaf.opted_out([], "url_prefix", "https://example.org/", NOW),
    Leaf.purged(DOCS, NOW),
    Leaf.activated({"name": "wiki", "k": 1024}, NOW),
    Leaf.reindexed({"name": "wiki", "k": 2048}, 0.0),
])
def test_every_action_round_trips(leaf: Leaf) -> None:
    data = leaf.encode()
    assert data.endswith(b"\n") and Leaf.decode(data) == leaf
    assert Leaf.decode(data).encode() == data


def test_to_json_gives_the_decoded_fields() -> None:
    leaf = Leaf.opted_out(DOCS[:1], "source", "kjv", NOW)
    assert leaf.to_json() == {
        "action": "optout", "time": "2026-12-01T22:52:20.123456Z",
        "documents": [{"id_sha256": _h("pd/0"), "text_sha256": _h("In the beginning."),
                       "license_class": "pd"}],
        "selector": {"kind": "source", "sha256": _h("kjv")}, "config_sha256": None}
    activated = Leaf.activated({"b": [1, 2], "a": "é"}, NOW).to_json()
    assert activated["config_sha256"] == _h('{"a":"é","b":[1,2]}')
    assert activated["selector"] is None and activated["documents"] == []


def test_hashes_of_ids_texts_selectors_and_configs() -> None:
    assert sha256_hex("é") == hashlib.sha256("é".encode()).hexdigest()
    assert LeafDocument.of("a", "b", "by") == LeafDocument(_h("a"), _h("b"), LicenseClass.BY)
    assert selector_sha256("doc_ids", ["a", "b"]) == _h("a\nb")
    assert selector_sha256("doc_ids", ["b", "a"]) != selector_sha256("doc_ids", ["a", "b"])
    assert selector_sha256("source", "kjv") == _h("kjv")
    assert selector_sha256("url_prefix", "https://x/") == _h("https://x/")
    assert canonical_json({"b": 1, "a": None}) == b'{"a":null,"b":1}'


@pytest.mark.parametrize(("kind", "value"), [
    ("doc_ids", "one-string"), ("doc_ids", []), ("doc_ids", ["a\nb"]), ("doc_ids", [""]),
    ("source", ""), ("source", ["kjv"]), ("filter", "x"),
])
def test_bad_selectors_are_refused(kind: str, value: object) -> None:
    with pytest.raises(InvalidSelectorError):
        selector_sha256(kind, value)  # type: ignore[arg-type]


def test_time_is_rfc3339_utc_with_microseconds() -> None:
    assert format_time(NOW) == "2026-12-01T22:52:20.123456Z"
    assert format_time(0) == "1970-01-01T00:00:00.000000Z"
    assert parse_time("2026-12-01T22:52:20.123456Z") == pytest.approx(NOW, abs=1e-6)
    for seconds in (-1.0, float("nan"), float("inf"), 1e20):
        with pytest.raises(InvalidInputError):
            format_time(seconds)
    for bad in ("2026-12-01T22:52:20Z", "2026-13-01T22:52:20.123456Z",
                "2026-12-01 22:52:20.123456Z", "2026-12-01T22:52:20.123456+00:00"):
        with pytest.raises(InvalidInputError):
            parse_time(bad)


def _replace(data: bytes, old: str, new: str) -> bytes:
    assert old.encode() in data
    return data.replace(old.encode(), new.encode(), 1)


GOOD = Leaf.opted_out(DOCS, "doc_ids", ["pd/0", "sw/1"], NOW).encode()


@pytest.mark.parametrize(("data", "line"), [
    (_replace(GOOD, "v1", "v2"), "line 1"),
    (_replace(GOOD, "action optout", "action forget"), "line 2"),
    (_replace(GOOD, "action optout", "action  optout"), "line 2"),
    (_replace(GOOD, "time 2026", "time  2026"), "line 3"),
    (_replace(GOOD, ".123456Z", ".123456"), "line 3"),
    (_replace(GOOD, "selector doc_ids", "selector doc_id"), "line 4"),
    (_replace(GOOD, "selector doc_ids " + _h("pd/0\nsw/1")[:2], "selector doc_ids AB"),
     "line 4"),
    (_replace(GOOD, " pd\n", " PD\n"), "line 5"),
    (_replace(GOOD, " pd\n", " pd \n"), "line 5"),
    (_replace(GOOD, " sw\n", " gpl\n"), "line 6"),
    (_replace(GOOD, "doc " + _h("sw/1"), "doc " + _h("pd/0")), "line 6"),
    (GOOD + b"trailing\n", "line 7"),
    (GOOD.replace(b"\n", b"\r\n"), "line 1"),
])
def test_decoding_is_strict_and_names_the_line(data: bytes, line: str) -> None:
    with pytest.raises(InvalidInputError, match=line):
        Leaf.decode(data)


def test_decoding_refuses_what_has_no_line_to_name() -> None:
    for data in (GOOD[:-1], GOOD + b"\n", b"\xff\n", b""):
        with pytest.raises(InvalidInputError):
            Leaf.decode(data)
    add = Leaf.added(DOCS, NOW).encode()
    with pytest.raises(InvalidInputError, match="line 4.*at least one document"):
        Leaf.decode(b"".join(add.splitlines(keepends=True)[:3]))
    activate = Leaf.activated({}, NOW).encode()
    with pytest.raises(InvalidInputError, match="line 5.*no documents"):
        Leaf.decode(activate + add.splitlines(keepends=True)[3])


def test_leaf_fields_are_validated() -> None:
    t = format_time(NOW)
    doc = LeafDocument.of("a", "b", "pd")
    for bad in [lambda: Leaf(Action.ADD, t),
                lambda: Leaf(Action.ADD, t, (doc, doc)),
                lambda: Leaf(Action.OPTOUT, t, (doc,)),
                lambda: Leaf(Action.ADD, t, (doc,), ("source", _h("x"))),
                lambda: Leaf(Action.OPTOUT, t, (), ("source", "abc")),
                lambda: Leaf(Action.ACTIVATE, t),
                lambda: Leaf(Action.ACTIVATE, t, (doc,), config_sha256=_h("c")),
                lambda: Leaf("delete", t, (doc,)),  # type: ignore[arg-type]
                lambda: Leaf(Action.ADD, "yesterday", (doc,)),
                lambda: LeafDocument("A" * 64, _h("b"), LicenseClass.PD),
                lambda: LeafDocument.of("a", "b", "MIT")]:
        with pytest.raises(InvalidInputError):
            bad()
    assert Leaf("add", t, (doc,)).action is Action.ADD  # type: ignore[arg-type]
