"""The data owner's checks against a real log in memory, served by a fake of the log's
five public routes (standing in for the HTTP server)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from datastore.errors import InvalidInputError
from datastore.tlog.history import LIVE, NEVER_ADDED, OPTED_OUT, PURGED, replay
from datastore.tlog.keys import Signer
from datastore.tlog.leaf import Leaf, sha256_hex
from datastore.tlog.merkle import MemoryHashes, consistency_proof, inclusion_proof
from datastore.tlog.note import Checkpoint
from datastore.tlog.verify import Finding, all_ok, document_history, verify_receipt

KEY = Signer.from_seed("silo.example/log", bytes(range(32)))
ROGUE = Signer.from_seed("silo.example/log", bytes(range(1, 33)))
T = 1796165540.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class FakeServer:
    """A log held as the service holds it, and the routes that serve it."""

    def __init__(self, signer: Signer | None = KEY, page: int = 3) -> None:
        self.signer, self.page = signer, page
        self.tree = MemoryHashes()
        self.leaves: list[bytes] = []
        self.served: dict[int, bytes] = {}  # leaves served in place of the logged ones

    def append(self, leaf: Leaf) -> int:
        self.leaves.append(leaf.encode())
        return self.tree.append(leaf.encode())

    def checkpoint(self, size: int | None = None) -> str:
        size = self.tree.size if size is None else size
        cp = Checkpoint("silo.example/log", size, self.tree.root(size))
        return cp.sign([self.signer]) if self.signer else cp.to_text()

    def receipt(self, index: int, doc_ids: list[str], selector: dict[str, Any]) -> dict[str, Any]:
        size = self.tree.size
        return {"optout_id": "o1", "doc_ids": doc_ids, "selector": selector,
                "log": {"index": index, "leaf": _b64(self.leaves[index]),
                        "checkpoint": self.checkpoint(size),
                        "inclusion": [_b64(h) for h in
                                      inclusion_proof(index, size, self.tree.read)]}}

    def fetch(self, path: str) -> bytes:
        url = urlsplit(path)
        q = {k: int(v[0]) for k, v in parse_qs(url.query).items()}
        if url.path == "/v1/log/checkpoint":
            return self.checkpoint().encode()
        if url.path == "/v1/log/key" and self.signer:
            return (self.signer.verifier().to_text() + "\n").encode()
        if url.path == "/v1/log/entries":
            end = min(q["end"], q["start"] + self.page, self.tree.size)
            return self._json({"entries": [
                {"index": i, "leaf": _b64(self.served.get(i, self.leaves[i])),
                 **self._fields(i)} for i in range(q["start"], end)]})
        if url.path == "/v1/log/proof/consistency":
            hashes = consistency_proof(q["from"], q["to"], self.tree.read)
            return self._json({"from": q["from"], "to": q["to"],
                               "hashes": [_b64(h) for h in hashes]})
        raise LookupError(f"404 Not Found: {path}")

    def _fields(self, i: int) -> dict[str, Any]:
        """The decoded fields the server sends beside a leaf (the verifier ignores them)."""
        try:
            return Leaf.decode(self.leaves[i]).to_json()
        except InvalidInputError:
            return {}

    @staticmethod
    def _json(value: dict[str, Any]) -> bytes:
        return json.dumps(value).encode()


def _docs(*names: str) -> list[tuple[str, str, str]]:
    return [(n, f"text of {n}", "pd") for n in names]


def _build(server: FakeServer) -> tuple[dict[str, Any], str]:
    """A log with an opt-out of a and b at index 2, then more changes. Returns the
    receipt and a checkpoint note the owner saved after it."""
    server.append(Leaf.activated({"name": "wiki"}, T))
    server.append(Leaf.added(_docs("a", "b", "c", "d"), T + 1))
    server.append(Leaf.opted_out(_docs("a", "b"), "doc_ids", ["a", "b", "z"], T + 2))
    receipt = server.receipt(2, ["a", "b"], {"doc_ids": ["a", "b", "z"]})
    server.append(Leaf.opted_out(_docs("c"), "source", "src", T + 3))
    saved = server.checkpoint()
    server.append(Leaf.purged(_docs("a", "b", "c"), T + 4))
    server.append(Leaf.added(_docs("e"), T + 5))
    server.append(Leaf.reindexed({"name": "wiki", "k": 2}, T + 6))
    return receipt, saved


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


def _failing(findings: list[Finding]) -> list[str]:
    return [f.message for f in findings if not f.ok]


def test_a_good_receipt_verifies(server: FakeServer) -> None:
    receipt, saved = _build(server)
    findings = verify_receipt(receipt, server.fetch, KEY.verifier(), since=saved)
    assert all_ok(findings), _failing(findings)
    text = "\n".join(map(str, findings))
    for said in ("signed by silo.example/log", "leaf 2 is included", "lists all 2",
                 "selector is the receipt's", "extension of the receipt's checkpoint (size 3)",
                 "extension of the saved checkpoint (size 4)"):
        assert said in text
    assert not any("trust on first use" in f.message for f in findings)


def test_without_a_pinned_key_the_servers_key_is_used_and_said_so(server: FakeServer) -> None:
    receipt, _ = _build(server)
    findings = verify_receipt(receipt, server.fetch, None)
    assert all_ok(findings)
    assert "trust on first use" in findings[0].message
    assert KEY.verifier().to_text() in findings[0].message


def test_explicit_doc_ids_are_checked_against_the_leaf(server: FakeServer) -> None:
    receipt, _ = _build(server)
    assert all_ok(verify_receipt(receipt, server.fetch, KEY.verifier(), doc_ids=["b"]))
    failing = _failing(verify_receipt(receipt, server.fetch, KEY.verifier(),
                                      doc_ids=["a", "c"]))
    assert failing == ["the opt-out leaf does not list 1 of the 2 documents: c"]


def test_a_tampered_leaf_fails(server: FakeServer) -> None:
    receipt, _ = _build(server)
    receipt["log"]["leaf"] = _b64(Leaf.opted_out(_docs("a", "b", "x"), "doc_ids",
                                                 ["a", "b", "z"], T + 2).encode())
    failing = _failing(verify_receipt(receipt, server.fetch, KEY.verifier()))
    assert failing == ["the inclusion proof of leaf 2 in the receipt's checkpoint (size 3) "
                       "does not verify"]


def test_a_leaf_that_is_not_the_optout_fails(server: FakeServer) -> None:
    receipt, _ = _build(server)
    receipt["log"]["leaf"] = _b64(server.leaves[1])
    failing = _failing(verify_receipt(receipt, server.fetch, KEY.verifier()))
    assert any("records add, not an opt-out" in m for m in failing)
    receipt, _ = _build(FakeServer())
    receipt["selector"] = {"doc_ids": ["a", "b"]}
    failing = _failing(verify_receipt(receipt, server.fetch, KEY.verifier()))
    assert failing == ["the leaf's selector (doc_ids) is not the receipt's (doc_ids)"]


def test_a_tampered_inclusion_proof_fails(server: FakeServer) -> None:
    receipt, _ = _build(server)
    proof = receipt["log"]["inclusion"]
    proof[0] = _b64(bytes(32))
    failing = _failing(verify_receipt(receipt, server.fetch, KEY.verifier()))
    assert len(failing) == 1 and "inclusion proof of leaf 2" in failing[0]


def test_a_checkpoint_signed_by_another_key_fails(server: FakeServer) -> None:
    receipt, _ = _build(server)
    cp = Checkpoint.parse(receipt["log"]["checkpoint"].split("\n\n")[0] + "\n")
    receipt["log"]["checkpoint"] = cp.sign([ROGUE])
    failing = _failing(verify_receipt(receipt, server.fetch, KEY.verifier()))
    assert len(failing) == 1
    assert "receipt's checkpoint (size 3) is not verified" in failing[0]
    assert "no signature by a known key" in failing[0]
    # and a server whose own checkpoints are signed by another key
    rogue = FakeServer(ROGUE)
    receipt, _ = _build(rogue)
    failing = _failing(verify_receipt(receipt, rogue.fetch, KEY.verifier()))
    assert len(failing) == 2 and all("not verified" in m for m in failing)


def test_a_forked_log_is_not_an_extension_of_the_saved_checkpoint(server: FakeServer) -> None:
    receipt, saved = _build(server)
    fork = FakeServer()  # the same history, but the opt-out at index 2 rewritten
    fork.append(Leaf.decode(server.leaves[0]))
    fork.append(Leaf.decode(server.leaves[1]))
    fork.append(Leaf.opted_out(_docs("b"), "doc_ids", ["b"], T + 2))
    for data in server.leaves[3:]:
        fork.append(Leaf.decode(data))
    fork.append(Leaf.added(_docs("a"), T + 7))
    findings = verify_receipt(receipt, fork.fetch, KEY.verifier(), since=saved)
    failing = _failing(findings)
    assert failing == [
        "the current checkpoint (size 8) is NOT an extension of the receipt's checkpoint "
        "(size 3): the log was rewritten or forked",
        "the current checkpoint (size 8) is NOT an extension of the saved checkpoint "
        "(size 4): the log was rewritten or forked"]


def test_a_log_that_shrank_or_changed_origin_fails(server: FakeServer) -> None:
    receipt, saved = _build(server)
    small = FakeServer()
    small.append(Leaf.decode(server.leaves[0]))
    failing = _failing(verify_receipt(receipt, small.fetch, KEY.verifier(), since=saved))
    assert len(failing) == 2 and all("the log shrank" in m for m in failing)

    def other_origin(path: str) -> bytes:
        if path == "/v1/log/checkpoint":
            cp = Checkpoint("other.example/log", server.tree.size, server.tree.root())
            return cp.sign([KEY]).encode()
        return server.fetch(path)

    failing = _failing(verify_receipt(receipt, other_origin, KEY.verifier()))
    assert failing == ["the receipt's checkpoint is for log 'silo.example/log', the "
                       "server's current checkpoint for 'other.example/log'"]


def test_a_bad_consistency_answer_fails(server: FakeServer) -> None:
    receipt, _ = _build(server)
    for answer in [b"not json", b"[]", b'{"from": 3, "to": 7, "hashes": ["!"]}',
                   b'{"from": 1, "to": 7, "hashes": []}', b'{"from": 3, "to": 7}']:
        def fetch(path: str, answer: bytes = answer) -> bytes:
            return answer if "consistency" in path else server.fetch(path)

        failing = _failing(verify_receipt(receipt, fetch, KEY.verifier()))
        assert len(failing) == 1 and "cannot check the current checkpoint" in failing[0]


def test_an_unreachable_server_is_a_finding(server: FakeServer) -> None:
    receipt, _ = _build(server)

    def down(path: str) -> bytes:
        raise ConnectionError("connection refused")

    findings = verify_receipt(receipt, down, None)
    assert not all_ok(findings)
    assert "could not fetch /v1/log/key: connection refused" in findings[0].message


def test_an_unsigned_log_fails_but_is_still_checked() -> None:
    server = FakeServer(signer=None)
    receipt, _ = _build(server)
    findings = verify_receipt(receipt, server.fetch, None)
    failing = _failing(findings)
    assert "could not fetch /v1/log/key" in failing[0]
    assert all("carries no signature" in m for m in failing[1:]) and len(failing) == 3
    assert any(f.ok and "leaf 2 is included" in f.message for f in findings)


def _with(receipt: dict[str, Any], where: str, key: str, value: Any) -> dict[str, Any]:
    """A copy of the receipt with receipt[key] (where "") or receipt["log"][key] set to
    `value`, or removed when `value` is DROP."""
    out = copy.deepcopy(receipt)
    target = out if not where else out[where]
    if value is DROP:
        del target[key]
    else:
        target[key] = value
    return out


DROP = object()


@pytest.mark.parametrize(("where", "key", "value"), [
    ("", "log", DROP), ("", "log", None), ("", "log", []),
    ("log", "index", DROP), ("log", "index", "2"), ("log", "index", -1), ("log", "index", True),
    ("log", "leaf", "not base64!"), ("log", "leaf", 7), ("log", "leaf", DROP),
    ("log", "checkpoint", None), ("log", "checkpoint", ""),
    ("log", "inclusion", "AAAA"), ("log", "inclusion", ["AAAA"]), ("log", "inclusion", [None]),
    ("", "doc_ids", "a"), ("", "doc_ids", DROP), ("", "doc_ids", [1]), ("", "selector", ["a"]),
])
def test_a_malformed_receipt_is_one_failing_finding(server: FakeServer, where: str, key: str,
                                                    value: Any) -> None:
    receipt, _ = _build(server)
    findings = verify_receipt(_with(receipt, where, key, value), server.fetch, KEY.verifier())
    assert len(findings) == 1 and not findings[0].ok
    assert findings[0].message.startswith("the receipt is malformed: ")
    if where:
        assert f"{where}.{key}" in findings[0].message


def test_a_receipt_that_is_not_an_object_is_a_finding(server: FakeServer) -> None:
    bad: list[Any] = [[], "text", None]
    for receipt in bad:
        findings = verify_receipt(receipt, server.fetch, KEY.verifier())
        assert _failing(findings) == ["the receipt is malformed: it is not a JSON object"]


def test_malformed_checkpoint_and_leaf_in_a_receipt_are_findings(server: FakeServer) -> None:
    receipt, _ = _build(server)
    receipt["log"]["checkpoint"] = "garbage"
    receipt["log"]["leaf"] = _b64(b"not a leaf\n")
    failing = _failing(verify_receipt(receipt, server.fetch, KEY.verifier()))
    assert [m.split(":")[0] for m in failing] == ["the receipt's checkpoint is malformed",
                                                  "the receipt's leaf does not decode"]


def test_document_history_reports_each_status(server: FakeServer) -> None:
    _build(server)
    expect = {"a": OPTED_OUT, "c": OPTED_OUT, "d": LIVE, "e": LIVE, "nobody": NEVER_ADDED}
    for doc_id, status in expect.items():
        findings, history = document_history(server.fetch, KEY.verifier(), doc_id=doc_id)
        assert all_ok(findings), _failing(findings)
        assert history is not None and history.size == 7
        if status == OPTED_OUT:  # then purged by compaction
            assert history.status == PURGED
            assert [(e.action, e.index) for e in history.events][-1] == ("purged", 4)
        else:
            assert history.status == status
    findings, history = document_history(server.fetch, KEY.verifier(), doc_id="a")
    assert history is not None
    assert [(e.index, e.action, e.time) for e in history.events] == [
        (1, "added", "2026-12-01T22:52:21.000000Z"),
        (2, "opted out", "2026-12-01T22:52:22.000000Z"),
        (4, "purged", "2026-12-01T22:52:24.000000Z")]
    assert "purged at log size 7" in history.summary()


def test_document_history_by_text_finds_copies(server: FakeServer) -> None:
    _build(server)
    server.append(Leaf.added([("copy-of-d", "text of d", "pd")], T + 8))
    _, history = document_history(server.fetch, KEY.verifier(), text="text of d")
    assert history is not None and history.status == LIVE
    assert {i for i, _ in history.documents} == {sha256_hex("d"), sha256_hex("copy-of-d")}
    _, history = document_history(server.fetch, KEY.verifier(), doc_id="d", text="text of d")
    assert history is not None and len(history.events) == 1


def test_a_rewritten_log_does_not_rebuild_the_signed_root(server: FakeServer) -> None:
    _build(server)
    server.served[2] = Leaf.opted_out(_docs("b"), "doc_ids", ["a", "b", "z"], T + 2).encode()
    findings, history = document_history(server.fetch, KEY.verifier(), doc_id="a")
    assert _failing(findings) == ["the 7 leaves served do NOT rebuild the checkpoint's root: "
                                  "the log served is not the log signed"]
    assert history is not None  # returned, but its findings say it is not to be trusted


def test_document_history_over_a_broken_server(server: FakeServer) -> None:
    _build(server)

    def no_entries(path: str) -> bytes:
        return b'{"entries": []}' if "entries" in path else server.fetch(path)

    findings, history = document_history(no_entries, KEY.verifier(), doc_id="a")
    assert history is None
    assert _failing(findings) == ["cannot read the log: the server returned no entries from "
                                  "index 0 (of 7)"]

    def out_of_order(path: str) -> bytes:
        if "entries" in path:
            page = json.loads(server.fetch(path))
            page["entries"].reverse()
            return json.dumps(page).encode()
        return server.fetch(path)

    findings, history = document_history(out_of_order, KEY.verifier(), doc_id="a")
    assert history is None and "out of order" in _failing(findings)[0]
    server.page = 1  # one entry a page still reads the whole log
    findings, history = document_history(server.fetch, KEY.verifier(), doc_id="a")
    assert all_ok(findings) and history is not None and history.status == PURGED


def test_a_leaf_that_does_not_decode_is_reported(server: FakeServer) -> None:
    _build(server)
    server.leaves[5] = b"garbage\n"  # as if it had been logged so, and signed
    server.tree = MemoryHashes()
    for data in server.leaves:
        server.tree.append(data)
    findings, history = document_history(server.fetch, KEY.verifier(), doc_id="e")
    assert _failing(findings) == ["1 leaves do not decode (first: leaf 5: leaf line 1: "
                                  "expected 'silo-log-leaf v1', got 'garbage')"]
    assert history is not None and history.status == NEVER_ADDED


def test_replay_is_pure() -> None:
    leaves = [Leaf.added(_docs("a"), T), None, Leaf.opted_out(_docs("a"), "source", "s", T),
              Leaf.added(_docs("a"), T + 9)]
    history = replay(leaves, id_sha256=sha256_hex("a"))
    assert [(e.index, e.action) for e in history.events] == [(0, "added"), (2, "opted out"),
                                                              (3, "added")]
    assert history.status == LIVE and history.size == 4
    assert replay(leaves[:3], text_sha256=sha256_hex("text of a")).status == OPTED_OUT
    assert replay([], id_sha256=sha256_hex("a")).status == NEVER_ADDED
    with pytest.raises(InvalidInputError):
        replay(leaves)


def test_all_ok_needs_findings() -> None:
    assert not all_ok([])
    assert all_ok([Finding(True, "x")]) and not all_ok([Finding(True, "x"), Finding(False, "y")])
    assert str(Finding(False, "bad")) == "FAIL  bad"
