"""The log's leaf format: what one entry of the transparency log commits to.

The log is public while documents may be hidden by access scopes, so a leaf never
holds a document's id, text or source in clear: it holds the SHA-256 (lowercase hex) of
the id's and of the text's UTF-8 bytes, which the data owner, knowing both, can
recompute. A leaf is canonical UTF-8 text, one field per line, every line ending in LF:

    silo-log-leaf v1
    action optout
    time 2026-12-01T22:52:20.123456Z
    selector doc_ids <sha256 of the ids joined by LF>
    doc <sha256(id)> <sha256(text)> <licence class>

    add, purge           one or more `doc` lines
    optout               one `selector <kind> <sha256>` line (kind doc_ids, source or
                         url_prefix; the hash of the ids joined by LF, or of the string),
                         then zero or more `doc` lines: the documents it removed
    activate, reindex    one `config <sha256 of the config's canonical JSON>` line

Decoding is strict: bytes that do not re-encode to themselves are refused, so one leaf
has one encoding and its hash identifies it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from datastore.document import LicenseClass
from datastore.errors import InvalidInputError, InvalidSelectorError, UnknownLicenseError

VERSION_LINE = "silo-log-leaf v1"
SELECTOR_KINDS = ("doc_ids", "source", "url_prefix")

_HEX = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


class Action(StrEnum):
    ADD = "add"
    OPTOUT = "optout"
    PURGE = "purge"
    ACTIVATE = "activate"
    REINDEX = "reindex"


_WITH_DOCS = (Action.ADD, Action.OPTOUT, Action.PURGE)
_WITH_CONFIG = (Action.ACTIVATE, Action.REINDEX)

DocTriple = tuple[str, str, LicenseClass | str]  # (doc_id, text, licence class)


def sha256_hex(text: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 bytes of `text`."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_json(value: Any) -> bytes:
    """The one JSON encoding hashed for a config: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def selector_sha256(kind: str, value: str | Sequence[str]) -> str:
    """Hash of an opt-out selector's value: the doc ids joined by LF, or the source or
    url prefix string."""
    if kind not in SELECTOR_KINDS:
        raise InvalidSelectorError(
            f"selector kind {kind!r} is not one of {', '.join(SELECTOR_KINDS)}")
    if kind == "doc_ids":
        if isinstance(value, str) or not value:
            raise InvalidSelectorError("a doc_ids selector is a non-empty list of ids")
        if not all(isinstance(d, str) and d and "\n" not in d for d in value):
            raise InvalidSelectorError("doc ids in a selector are non-empty strings "
                                       "without newlines")
        return sha256_hex("\n".join(value))
    if not isinstance(value, str) or not value:
        raise InvalidSelectorError(f"a {kind} selector is a non-empty string")
    return sha256_hex(value)


def format_time(unix_seconds: float) -> str:
    """RFC 3339 UTC with microseconds and a Z: '2026-12-01T22:52:20.123456Z'."""
    if not isinstance(unix_seconds, (int, float)) or not math.isfinite(unix_seconds) or (
            unix_seconds < 0):
        raise InvalidInputError(f"time must be unix seconds >= 0, got {unix_seconds!r}")
    try:
        d = datetime.fromtimestamp(unix_seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidInputError(f"time {unix_seconds!r} is out of range") from None
    # by hand: strftime's %Y does not pad years below 1000 on every platform
    return (f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:"
            f"{d.second:02d}.{d.microsecond:06d}Z")


def parse_time(text: str) -> float:
    """Unix seconds of a time in the form `format_time` writes."""
    if not isinstance(text, str) or not _TIME.fullmatch(text):
        raise InvalidInputError(f"time {str(text)[:40]!r} is not RFC 3339 UTC with microseconds")
    try:
        d = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidInputError(f"time {text!r} is not a valid date and time") from None
    return d.timestamp()


def _check_hex(value: str, what: str) -> None:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise InvalidInputError(
            f"{what} must be 64 lowercase hex digits, got {str(value)[:80]!r}")


def _license_class(value: LicenseClass | str) -> LicenseClass:
    """Exactly a licence class name; no case folding, so one leaf has one encoding."""
    if value not in set(LicenseClass):
        allowed = ", ".join(c.value for c in LicenseClass)
        raise UnknownLicenseError(f"licence class {value!r} is not one of {allowed}")
    return LicenseClass(value)


@dataclass(frozen=True)
class LeafDocument:
    """One document as a leaf names it."""

    id_sha256: str
    text_sha256: str
    license_class: LicenseClass

    def __post_init__(self) -> None:
        _check_hex(self.id_sha256, "id_sha256")
        _check_hex(self.text_sha256, "text_sha256")
        object.__setattr__(self, "license_class", _license_class(self.license_class))

    @classmethod
    def of(cls, doc_id: str, text: str, license_class: LicenseClass | str) -> LeafDocument:
        """The leaf entry of a document from its id, text and licence class."""
        return cls(sha256_hex(doc_id), sha256_hex(text), _license_class(license_class))


@dataclass(frozen=True)
class Leaf:
    """One log entry. `time` is the canonical text of `format_time`."""

    action: Action
    time: str
    documents: tuple[LeafDocument, ...] = ()
    selector: tuple[str, str] | None = None  # (kind, sha256 hex of its value)
    config_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.action not in set(Action):
            raise InvalidInputError(f"leaf action {self.action!r} is not one of "
                                    f"{', '.join(a.value for a in Action)}")
        object.__setattr__(self, "action", Action(self.action))
        parse_time(self.time)
        if not isinstance(self.documents, tuple) or not all(
                isinstance(d, LeafDocument) for d in self.documents):
            raise InvalidInputError("leaf documents must be a tuple of LeafDocument")
        self._check_shape()
        ids = [d.id_sha256 for d in self.documents]
        if len(set(ids)) != len(ids):
            raise InvalidInputError("a leaf names a document twice")

    def _check_shape(self) -> None:
        """Which fields each action carries (see the module docstring)."""
        a = self.action
        if a in (Action.ADD, Action.PURGE) and not self.documents:
            raise InvalidInputError(f"{a} leaves name at least one document")
        if a in _WITH_CONFIG and self.documents:
            raise InvalidInputError(f"{a} leaves name no documents")
        if (self.selector is not None) != (a == Action.OPTOUT):
            raise InvalidInputError("a selector is carried by optout leaves, and only them")
        if self.selector is not None:
            if (not isinstance(self.selector, tuple) or len(self.selector) != 2
                    or self.selector[0] not in SELECTOR_KINDS):
                raise InvalidInputError(
                    f"leaf selector must be (kind, sha256) with kind one of "
                    f"{', '.join(SELECTOR_KINDS)}, got {self.selector!r}")
            _check_hex(self.selector[1], "selector sha256")
        if (self.config_sha256 is not None) != (a in _WITH_CONFIG):
            raise InvalidInputError("a config hash is carried by activate and reindex "
                                    "leaves, and only them")
        if self.config_sha256 is not None:
            _check_hex(self.config_sha256, "config_sha256")

    @property
    def unix_time(self) -> float:
        return parse_time(self.time)

    def encode(self) -> bytes:
        lines = [VERSION_LINE, f"action {self.action}", f"time {self.time}"]
        if self.selector is not None:
            lines.append(f"selector {self.selector[0]} {self.selector[1]}")
        if self.config_sha256 is not None:
            lines.append(f"config {self.config_sha256}")
        lines += [f"doc {d.id_sha256} {d.text_sha256} {d.license_class}"
                  for d in self.documents]
        return "".join(line + "\n" for line in lines).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> Leaf:
        """Parse a leaf; anything that is not its own canonical encoding is refused."""
        if not isinstance(data, bytes):
            raise InvalidInputError("a leaf is bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError("leaf is not valid UTF-8") from None
        if not text.endswith("\n"):
            raise InvalidInputError("leaf does not end with a newline")
        leaf = _parse_lines(text[:-1].split("\n"))
        encoded = leaf.encode()
        if encoded != data:
            again = encoded.decode("utf-8").split("\n")
            number = next((i for i, (a, b) in enumerate(zip(text.split("\n"), again,
                                                            strict=False), 1) if a != b), 1)
            raise InvalidInputError(f"leaf line {number} is not in canonical form")
        return leaf

    def to_json(self) -> dict[str, Any]:
        """The decoded fields, as the log's API shows them."""
        return {
            "action": self.action.value,
            "time": self.time,
            "documents": [{"id_sha256": d.id_sha256, "text_sha256": d.text_sha256,
                           "license_class": d.license_class.value} for d in self.documents],
            "selector": None if self.selector is None else
            {"kind": self.selector[0], "sha256": self.selector[1]},
            "config_sha256": self.config_sha256,
        }

    @classmethod
    def added(cls, docs: Iterable[DocTriple], now: float) -> Leaf:
        return cls(Action.ADD, format_time(now), _documents(docs))

    @classmethod
    def opted_out(cls, docs: Iterable[DocTriple], selector_kind: str,
                  selector_value: str | Sequence[str], now: float) -> Leaf:
        """`docs` are the documents the opt-out removed (possibly none)."""
        selector = (selector_kind, selector_sha256(selector_kind, selector_value))
        return cls(Action.OPTOUT, format_time(now), _documents(docs), selector)

    @classmethod
    def purged(cls, docs: Iterable[DocTriple], now: float) -> Leaf:
        return cls(Action.PURGE, format_time(now), _documents(docs))

    @classmethod
    def activated(cls, config_json: Mapping[str, Any], now: float) -> Leaf:
        config = hashlib.sha256(canonical_json(config_json)).hexdigest()
        return cls(Action.ACTIVATE, format_time(now), config_sha256=config)

    @classmethod
    def reindexed(cls, config_json: Mapping[str, Any], now: float) -> Leaf:
        config = hashlib.sha256(canonical_json(config_json)).hexdigest()
        return cls(Action.REINDEX, format_time(now), config_sha256=config)


def _documents(docs: Iterable[DocTriple]) -> tuple[LeafDocument, ...]:
    return tuple(LeafDocument.of(doc_id, text, cls) for doc_id, text, cls in docs)


@contextmanager
def _line(number: int) -> Iterator[None]:
    """Name leaf line `number` in the InvalidInputError raised inside."""
    try:
        yield
    except InvalidInputError as e:
        raise InvalidInputError(f"leaf line {number}: {e}") from None


def _values(lines: list[str], number: int, key: str, n: int = 1) -> list[str]:
    """The n space-separated values of line `number` (1-based), which is `key ...`."""
    if number > len(lines):
        raise InvalidInputError(f"leaf ends before line {number} ({key})")
    words = lines[number - 1].split(" ")
    if words[0] != key or len(words) != n + 1:
        raise InvalidInputError(f"leaf line {number}: expected {key!r} and {n} value(s), "
                                f"got {lines[number - 1][:80]!r}")
    return words[1:]


def _parse_lines(lines: list[str]) -> Leaf:
    """A leaf from its lines (without their LFs); each error names its line."""
    if lines[0] != VERSION_LINE:
        raise InvalidInputError(f"leaf line 1: expected {VERSION_LINE!r}, got "
                                f"{lines[0][:80]!r}")
    (action,) = _values(lines, 2, "action")
    if action not in set(Action):
        raise InvalidInputError(f"leaf line 2: unknown action {action[:40]!r}")
    (time,) = _values(lines, 3, "time")
    with _line(3):
        parse_time(time)
    at, selector, config = 4, None, None
    if action == Action.OPTOUT:
        kind, digest = _values(lines, at, "selector", 2)
        selector = (kind, digest)
        if kind not in SELECTOR_KINDS:
            raise InvalidInputError(f"leaf line {at}: unknown selector kind {kind[:40]!r}")
        with _line(at):
            _check_hex(digest, "selector sha256")
        at += 1
    elif action in _WITH_CONFIG:
        (config,) = _values(lines, at, "config")
        with _line(at):
            _check_hex(config, "config sha256")
        at += 1
    if action in _WITH_CONFIG and len(lines) >= at:
        raise InvalidInputError(f"leaf line {at}: {action} leaves name no documents")
    if action in (Action.ADD, Action.PURGE) and len(lines) < at:
        raise InvalidInputError(f"leaf ends before line {at}: {action} leaves name at "
                                "least one document")
    docs, seen = [], set()
    for number in range(at, len(lines) + 1):
        id_sha, text_sha, license_class = _values(lines, number, "doc", 3)
        with _line(number):
            docs.append(LeafDocument(id_sha, text_sha, _license_class(license_class)))
        if id_sha in seen:
            raise InvalidInputError(f"leaf line {number}: the document is named twice")
        seen.add(id_sha)
    return Leaf(Action(action), time, tuple(docs), selector, config)
