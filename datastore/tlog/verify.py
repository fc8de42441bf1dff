"""The data owner's checks of the transparency log ("silo verify"), without trusting
the operator beyond its signing key.

Everything the server says reaches this module through one injected
`fetch(path) -> bytes` (which raises on an HTTP error), over the log's public routes:

    GET /v1/log/checkpoint                       the signed checkpoint note
    GET /v1/log/key                              the log's verifier key
    GET /v1/log/entries?start=S&end=E            {"entries": [{"index", "leaf"}, ...]}
    GET /v1/log/proof/inclusion?index=I&size=N   {"index", "size", "hashes": [...]}
    GET /v1/log/proof/consistency?from=A&to=B    {"from", "to", "hashes": [...]}

Results are `Finding`s, one line each; a malformed answer or receipt is a failing
finding, never an exception. Decoded fields the server sends beside a leaf are never
used: leaves are decoded here from their bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from datastore.errors import InvalidInputError
from datastore.tlog.history import History, replay
from datastore.tlog.keys import Verifier
from datastore.tlog.leaf import SELECTOR_KINDS, Action, Leaf, selector_sha256, sha256_hex
from datastore.tlog.merkle import (
    HASH_SIZE,
    MemoryHashes,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from datastore.tlog.note import Checkpoint, UnverifiedNoteError, open_note

Fetch = Callable[[str], bytes]

CHECKPOINT_PATH = "/v1/log/checkpoint"
KEY_PATH = "/v1/log/key"

def entries_path(start: int, end: int) -> str:
    return f"/v1/log/entries?start={start}&end={end}"


def inclusion_path(index: int, size: int) -> str:
    return f"/v1/log/proof/inclusion?index={index}&size={size}"


def consistency_path(old: int, new: int) -> str:
    return f"/v1/log/proof/consistency?from={old}&to={new}"


@dataclass(frozen=True)
class Finding:
    """One check: passed or not, and what it found, in one line."""

    ok: bool
    message: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.message}"


def all_ok(findings: Iterable[Finding]) -> bool:
    """True iff there is at least one finding and every finding passed."""
    findings = list(findings)
    return bool(findings) and all(f.ok for f in findings)


class _Stop(Exception):
    """A check that cannot go on; its message becomes a failing finding."""


def _fetch(fetch: Fetch, path: str) -> bytes:
    try:
        data = fetch(path)
    except Exception as e:  # whatever the transport raises, the owner reads one line
        raise _Stop(f"could not fetch {path}: {e}") from None
    if not isinstance(data, bytes):
        raise _Stop(f"{path} returned {type(data).__name__}, not bytes")
    return data


def _fetch_json(fetch: Fetch, path: str) -> dict[str, Any]:
    try:
        value = json.loads(_fetch(fetch, path))
    except (ValueError, UnicodeDecodeError):
        raise _Stop(f"{path} did not return JSON") from None
    if not isinstance(value, dict):
        raise _Stop(f"{path} did not return a JSON object")
    return value


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Stop(f"{what} is not an integer >= 0")
    return value


def _base64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise _Stop(f"{what} is missing or not a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _Stop(f"{what} is not valid base64") from None


def _hashes(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list):
        raise _Stop(f"{what} is missing or not a list of hashes")
    out = [_base64(h, f"{what}[{i}]") for i, h in enumerate(value)]
    if any(len(h) != HASH_SIZE for h in out):
        raise _Stop(f"{what} holds a hash that is not {HASH_SIZE} bytes")
    return out


def _log_key(fetch: Fetch, verifier: Verifier | None) -> tuple[Verifier | None, list[Finding]]:
    """The key to check signatures with: the one given, else the server's own (TOFU)."""
    if verifier is not None:
        return verifier, []
    try:
        key = Verifier.from_text(_fetch(fetch, KEY_PATH).decode("utf-8"))
    except _Stop as e:
        return None, [Finding(False, f"{e}; there is no log key to check signatures with")]
    except (UnicodeDecodeError, InvalidInputError) as e:
        return None, [Finding(False, f"the server's log key is malformed: {e}")]
    return key, [Finding(True, f"log key {key.to_text()} was taken from the server (trust on "
                               "first use): these checks are only as good as that key; "
                               "pin the key you trust instead")]


def _checkpoint(note: str | bytes, key: Verifier | None,
                what: str) -> tuple[Finding, Checkpoint | None]:
    """Open a checkpoint note. An unverified one still yields its checkpoint, so that
    the proofs can be checked too; its failing finding already says it proves nothing."""
    try:
        text, signed = open_note(note, [key] if key else []).text, None
    except UnverifiedNoteError as e:
        if e.text is None:
            return Finding(False, f"{what} is malformed: {e}"), None
        text, signed = e.text, str(e)
    except InvalidInputError as e:
        return Finding(False, f"{what} is malformed: {e}"), None
    try:
        cp = Checkpoint.parse(text)
    except InvalidInputError as e:
        return Finding(False, f"{what} is not a checkpoint: {e}"), None
    if signed is not None:
        return Finding(False, f"{what} (size {cp.size}) is not verified: {signed}"), cp
    assert key is not None  # open_note verified a signature by it
    return Finding(True, f"{what} (size {cp.size}) is signed by "
                         f"{key.name}+{key.key_id:08x}"), cp


def _consistency(fetch: Fetch, old: Checkpoint, new: Checkpoint, what: str) -> Finding:
    """Is `new` (the server's current checkpoint) an extension of `old`?"""
    if old.origin != new.origin:
        return Finding(False, f"{what} is for log {old.origin!r}, the server's current "
                              f"checkpoint for {new.origin!r}")
    head = f"the current checkpoint (size {new.size})"
    if new.size < old.size:
        return Finding(False, f"{head} is smaller than {what} (size {old.size}): the log "
                              "shrank")
    proof: list[bytes] = []
    if new.size > old.size:
        try:
            answer = _fetch_json(fetch, consistency_path(old.size, new.size))
            if (answer.get("from"), answer.get("to")) != (old.size, new.size):
                raise _Stop(f"the consistency proof is for sizes {answer.get('from')!r} -> "
                            f"{answer.get('to')!r}, not {old.size} -> {new.size}")
            proof = _hashes(answer.get("hashes"), "the consistency proof")
        except _Stop as e:
            return Finding(False, f"cannot check {head} against {what}: {e}")
    if not verify_consistency(old.size, new.size, old.root, new.root, proof):
        return Finding(False, f"{head} is NOT an extension of {what} (size {old.size}): "
                              "the log was rewritten or forked")
    return Finding(True, f"{head} is a consistent extension of {what} (size {old.size})")


@dataclass(frozen=True)
class _Entry:
    """The log part of a receipt, with the documents to look for."""

    index: int
    leaf: bytes
    checkpoint: str
    inclusion: list[bytes]
    doc_ids: tuple[str, ...]
    selector: dict[str, Any] | None


def _receipt_entry(receipt: Any, doc_ids: Sequence[str]) -> _Entry:
    if not isinstance(receipt, dict):
        raise _Stop("it is not a JSON object")
    log = receipt.get("log")
    if not isinstance(log, dict):
        raise _Stop('it has no "log" object: no log entry was recorded for it')
    note = log.get("checkpoint")
    if not isinstance(note, str) or not note:
        raise _Stop("log.checkpoint is missing or not note text")
    ids = list(doc_ids) or receipt.get("doc_ids")
    if not isinstance(ids, list) or not all(isinstance(d, str) for d in ids):
        raise _Stop("doc_ids is missing or not a list of strings")
    selector = receipt.get("selector")
    if selector is not None and not isinstance(selector, dict):
        raise _Stop("selector is not a JSON object")
    return _Entry(_count(log.get("index"), "log.index"), _base64(log.get("leaf"), "log.leaf"),
                  note, _hashes(log.get("inclusion"), "log.inclusion"), tuple(ids), selector)


def _leaf_findings(entry: _Entry) -> list[Finding]:
    """Does the leaf record the opt-out of the documents (and selector) of the receipt?"""
    try:
        leaf = Leaf.decode(entry.leaf)
    except InvalidInputError as e:
        return [Finding(False, f"the receipt's leaf does not decode: {e}")]
    if leaf.action != Action.OPTOUT:
        return [Finding(False, f"the receipt's leaf records {leaf.action!s}, not an opt-out")]
    listed = {d.id_sha256 for d in leaf.documents}
    missing = [d for d in entry.doc_ids if sha256_hex(d) not in listed]
    out = [Finding(not missing,
                   f"the opt-out leaf lists all {len(entry.doc_ids)} documents" if not missing
                   else f"the opt-out leaf does not list {len(missing)} of the "
                        f"{len(entry.doc_ids)} documents: {', '.join(missing[:5])}")]
    if entry.selector is not None and leaf.selector is not None:
        out.append(_selector_finding(entry.selector, leaf.selector))
    return out


def _selector_finding(selector: dict[str, Any], logged: tuple[str, str]) -> Finding:
    kinds = [k for k in SELECTOR_KINDS if k in selector]
    if len(kinds) != 1:
        return Finding(False, "the receipt's selector does not name exactly one of "
                              f"{', '.join(SELECTOR_KINDS)}")
    try:
        digest = selector_sha256(kinds[0], selector[kinds[0]])
    except InvalidInputError as e:
        return Finding(False, f"the receipt's selector is malformed: {e}")
    if (kinds[0], digest) != logged:
        return Finding(False, f"the leaf's selector ({logged[0]}) is not the receipt's "
                              f"({kinds[0]})")
    return Finding(True, f"the leaf's selector is the receipt's ({kinds[0]})")


def _inclusion_finding(entry: _Entry, cp: Checkpoint) -> Finding:
    where = f"the receipt's checkpoint (size {cp.size})"
    if entry.index >= cp.size:
        return Finding(False, f"the receipt's leaf index {entry.index} is not below the size "
                              f"of {where}")
    if not verify_inclusion(entry.index, cp.size, leaf_hash(entry.leaf), entry.inclusion,
                            cp.root):
        return Finding(False, f"the inclusion proof of leaf {entry.index} in {where} does "
                              "not verify")
    return Finding(True, f"leaf {entry.index} is included in {where}")


def verify_receipt(receipt: dict[str, Any], fetch: Fetch, verifier: Verifier | None,
                   since: str | None = None, doc_ids: Sequence[str] = ()) -> list[Finding]:
    """Check an opt-out receipt: its checkpoint's signature, its leaf's inclusion in it,
    that the leaf is the opt-out of `doc_ids` (default: the receipt's own), and that the
    server's current checkpoint extends it and, with `since`, the checkpoint note the
    owner saved earlier. With no `verifier` the server's own key is used (and said so).
    """
    if isinstance(doc_ids, str):
        raise InvalidInputError("doc_ids is a list of ids, not one string")
    key, findings = _log_key(fetch, verifier)
    try:
        entry = _receipt_entry(receipt, doc_ids)
    except _Stop as e:
        return [*findings, Finding(False, f"the receipt is malformed: {e}")]
    finding, old = _checkpoint(entry.checkpoint, key, "the receipt's checkpoint")
    findings.append(finding)
    if old is not None:
        findings.append(_inclusion_finding(entry, old))
    findings += _leaf_findings(entry)
    if old is None:
        return findings
    try:
        note = _fetch(fetch, CHECKPOINT_PATH)
    except _Stop as e:
        return [*findings, Finding(False, str(e))]
    finding, current = _checkpoint(note, key, "the server's current checkpoint")
    findings.append(finding)
    if current is None:
        return findings
    findings.append(_consistency(fetch, old, current, "the receipt's checkpoint"))
    if since is not None:
        finding, saved = _checkpoint(since, key, "the saved checkpoint")
        findings.append(finding)
        if saved is not None:
            findings.append(_consistency(fetch, saved, current, "the saved checkpoint"))
    return findings


def _fetch_leaves(fetch: Fetch, size: int) -> list[bytes]:
    """Leaves [0, size), page by page: the server may answer fewer than asked."""
    leaves: list[bytes] = []
    while len(leaves) < size:
        start = len(leaves)
        entries = _fetch_json(fetch, entries_path(start, size)).get("entries")
        if not isinstance(entries, list) or not entries:
            raise _Stop(f"the server returned no entries from index {start} (of {size})")
        if len(entries) > size - start:
            raise _Stop(f"the server returned more entries from index {start} than asked")
        for i, entry in enumerate(entries, start=start):
            if not isinstance(entry, dict) or _count(entry.get("index"), "index") != i:
                raise _Stop(f"entry {i} is missing or out of order")
            leaves.append(_base64(entry.get("leaf"), f"the leaf of entry {i}"))
    return leaves


def _decode_all(leaves: list[bytes]) -> tuple[list[Leaf | None], list[Finding]]:
    decoded: list[Leaf | None] = []
    errors = []
    for i, data in enumerate(leaves):
        try:
            decoded.append(Leaf.decode(data))
        except InvalidInputError as e:
            decoded.append(None)
            errors.append(f"leaf {i}: {e}")
    if not errors:
        return decoded, []
    return decoded, [Finding(False, f"{len(errors)} leaves do not decode (first: {errors[0]})")]


def document_history(fetch: Fetch, verifier: Verifier | None, doc_id: str | None = None,
                     text: str | None = None) -> tuple[list[Finding], History | None]:
    """Check the whole log against the server's signed checkpoint (every leaf fetched,
    the tree rebuilt, its root compared), then replay it for one document, named by its
    id, its text, or both. The history is None when the log could not be read; it is
    only worth trusting when `all_ok(findings)`."""
    if doc_id is None and text is None:
        raise InvalidInputError("name the document by its id, its text, or both")
    key, findings = _log_key(fetch, verifier)
    try:
        note = _fetch(fetch, CHECKPOINT_PATH)
    except _Stop as e:
        return [*findings, Finding(False, str(e))], None
    finding, cp = _checkpoint(note, key, "the server's current checkpoint")
    findings.append(finding)
    if cp is None:
        return findings, None
    try:
        leaves = _fetch_leaves(fetch, cp.size)
    except _Stop as e:
        return [*findings, Finding(False, f"cannot read the log: {e}")], None
    tree = MemoryHashes()
    for data in leaves:
        tree.append(data)
    findings.append(
        Finding(True, f"the {cp.size} leaves served rebuild the checkpoint's root")
        if tree.root() == cp.root else
        Finding(False, f"the {cp.size} leaves served do NOT rebuild the checkpoint's root: "
                       "the log served is not the log signed"))
    decoded, errors = _decode_all(leaves)
    history = replay(decoded, None if doc_id is None else sha256_hex(doc_id),
                     None if text is None else sha256_hex(text))
    return findings + errors, history
