"""Roots, proofs, keys and signed notes against vectors from Go's golang.org/x/mod/sumdb
(see vectors/README.md): an implementation we did not write must agree byte for byte."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from datastore.tlog.keys import Signer, Verifier
from datastore.tlog.merkle import (
    MemoryHashes,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from datastore.tlog.note import open_checkpoint, open_note, sign_note

VECTORS = Path(__file__).parent / "vectors"


def _load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@pytest.fixture(scope="module")
def tree() -> tuple[dict[str, Any], MemoryHashes]:
    vectors = _load("tlog_vectors.json")
    store = MemoryHashes()
    for leaf in vectors["leaves"]:
        store.append(_b64(leaf))
    return vectors, store


def test_roots_equal_go(tree: tuple[dict[str, Any], MemoryHashes]) -> None:
    vectors, store = tree
    assert len(vectors["roots"]) > 70
    for size, root in vectors["roots"].items():
        assert store.root(int(size)) == _b64(root), size


def test_inclusion_proofs_equal_go(tree: tuple[dict[str, Any], MemoryHashes]) -> None:
    vectors, store = tree
    leaves = [_b64(x) for x in vectors["leaves"]]
    for v in vectors["inclusion"]:
        go = [_b64(h) for h in v["hashes"]]
        assert inclusion_proof(v["index"], v["size"], store.read) == go, v
        assert verify_inclusion(v["index"], v["size"], leaf_hash(leaves[v["index"]]), go,
                                store.root(v["size"]))


def test_consistency_proofs_equal_go(tree: tuple[dict[str, Any], MemoryHashes]) -> None:
    vectors, store = tree
    for v in vectors["consistency"]:
        go = [_b64(h) for h in v["hashes"]]
        assert consistency_proof(v["old"], v["new"], store.read) == go, v
        assert verify_consistency(v["old"], v["new"], store.root(v["old"]),
                                  store.root(v["new"]), go)


def test_keys_from_a_seed_equal_go() -> None:
    for key in _load("note_vectors.json")["keys"]:
        signer = Signer.from_seed(key["name"], _b64(key["seed"]))
        assert signer.to_text() == key["signer"]
        assert signer.verifier().to_text() == key["verifier"]
        assert Signer.from_text(key["signer"]) == signer
        assert Verifier.from_text(key["verifier"]) == signer.verifier()


def test_go_notes_verify_and_our_signatures_equal_go() -> None:
    vectors = _load("note_vectors.json")
    log_key, witness_key = (Signer.from_text(k["signer"]) for k in vectors["keys"])
    for note in vectors["notes"]:
        assert sign_note(note["text"], [log_key]) == note["signed"]
        assert sign_note(note["text"], [log_key, witness_key]) == note["cosigned"]
        opened = open_note(note["signed"], [log_key.verifier()])
        assert opened.text == note["text"] and opened.verified_by == (log_key.verifier(),)
        # the witness's signature is kept, unchecked, when only the log's key is known
        opened = open_note(note["cosigned"], [log_key.verifier()])
        assert [s.name for s in opened.unknown] == ["witness.example/w1"]
        both = open_note(note["cosigned"], [log_key.verifier(), witness_key.verifier()])
        assert len(both.verified_by) == 2 and not both.unknown


def test_go_checkpoints_parse() -> None:
    vectors = _load("note_vectors.json")
    verifier = Verifier.from_text(vectors["keys"][0]["verifier"])
    cp = open_checkpoint(vectors["notes"][0]["signed"], [verifier])
    assert (cp.origin, cp.size, cp.extensions) == ("silo.example/log", 5, ())
    cp = open_checkpoint(vectors["notes"][1]["cosigned"], [verifier])
    assert (cp.size, cp.root, cp.extensions) == (0, bytes(32), ("extension line",))
