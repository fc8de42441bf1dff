"""The transparency log in the document table: every change a leaf, in order, written in
the change's own transaction; the stored tree agrees with RFC 9162's; an older table's
history is recorded when it is first opened. On SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

from datastore.config import DatastoreConfig
from datastore.store.datastore import Datastore
from datastore.tlog.leaf import Action, Leaf, selector_sha256, sha256_hex
from datastore.tlog.merkle import (
    MemoryHashes,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from datastore.tlog.note import Checkpoint
from tests.datastore.synthetic import SyntheticEncoder, corpus

CONFIG = DatastoreConfig(backend="faiss-flat", flush_entries=64, encode_batch=4)


def _build(path: Path, n: int = 30) -> Datastore:
    return Datastore.build(path, corpus(n, seed=3), SyntheticEncoder(), CONFIG, progress=False)


def _leaves(store: Datastore) -> list[Leaf]:
    size = store.log.head().size
    return [Leaf.decode(data) for _, data in store.log.entries(0, size)]


def test_every_change_is_a_leaf_in_order(tmp_path: Path, table_backend: str) -> None:
    docs = corpus(30, seed=3)
    store = _build(tmp_path / "ds")
    adds = _leaves(store)
    assert {leaf.action for leaf in adds} == {Action.ADD} and len(adds) > 1  # one per flush
    named = [d for leaf in adds for d in leaf.documents]
    assert [d.id_sha256 for d in named] == [sha256_hex(d.doc_id) for d in docs]
    assert [d.text_sha256 for d in named] == [sha256_hex(d.text) for d in docs]
    assert [d.license_class for d in named] == [d.license_class for d in docs]

    receipt = store.optout(doc_ids=["doc-7", "doc-2", "doc-7"], reason="not in the log")
    optout = _leaves(store)[receipt.log_index]  # type: ignore[index]
    assert optout.action == Action.OPTOUT and receipt.log_index == len(adds)
    assert optout.selector == ("doc_ids", selector_sha256("doc_ids", ["doc-7", "doc-2"]))
    assert [d.id_sha256 for d in optout.documents] == [sha256_hex("doc-7"), sha256_hex("doc-2")]
    by_source = store.optout(source=docs[0].source)
    assert _leaves(store)[-1].selector == ("source", selector_sha256("source", docs[0].source))
    assert store.compact() > 0
    purge = _leaves(store)[-1]
    assert purge.action == Action.PURGE
    assert {d.id_sha256 for d in purge.documents} == {
        sha256_hex(d) for d in ("doc-7", "doc-2", *by_source.doc_ids)}
    store.reindex(DatastoreConfig(backend="exact", flush_entries=64, encode_batch=4))
    last = _leaves(store)[-1]
    assert last.action == Action.REINDEX and last.config_sha256 is not None
    text = b"".join(data for _, data in store.log.entries(0, 10_000))
    assert b"doc-7" not in text and b"not in the log" not in text  # hashes only
    store.close()


def test_the_stored_tree_is_rfc_9162s(tmp_path: Path, table_backend: str) -> None:
    store = _build(tmp_path / "ds", 60)
    for i in range(5):
        store.optout(doc_ids=[f"doc-{i}"])
    size = store.log.head().size
    memory = MemoryHashes()
    for _, data in store.log.entries(0, size):
        memory.append(data)
    for n in range(1, size + 1):
        head = store.log.head(n)
        assert head.root == memory.root(n)
        for i in range(n):
            assert verify_inclusion(i, n, leaf_hash(store.log.entries(i, i + 1)[0][1]),
                                    store.log.inclusion(i, n), head.root)
        for m in range(n + 1):
            assert verify_consistency(m, n, memory.root(m), head.root,
                                      store.log.consistency(m, n))
    store.close()


def test_a_receipt_carries_its_leaf_checkpoint_and_proof(tmp_path: Path,
                                                         table_backend: str) -> None:
    store = _build(tmp_path / "ds")
    receipt = store.optout(doc_ids=["doc-3"])
    proof = store.log.receipt(receipt.log_index)  # type: ignore[arg-type]
    cp = Checkpoint.parse(proof.checkpoint)  # no key: the checkpoint text alone
    assert cp.size == receipt.log_index + 1 and cp.origin.startswith("silo/datastore/")  # type: ignore[operator]
    assert verify_inclusion(proof.index, cp.size, leaf_hash(proof.leaf), list(proof.inclusion),
                            cp.root)
    assert store.view.log == store.log.head()  # the view names the log with the write
    store.close()


def test_concurrent_writers_append_one_leaf_each(tmp_path: Path, table_backend: str) -> None:
    store = _build(tmp_path / "ds", 40)
    before = store.log.head().size
    receipts = []

    def optout(i: int) -> None:
        receipts.append(store.optout(doc_ids=[f"doc-{i}"]))

    threads = [threading.Thread(target=optout, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.log_index for r in receipts) == list(range(before, before + 12))  # type: ignore[type-var]
    leaves = _leaves(store)
    for r in receipts:
        assert leaves[r.log_index].documents[0].id_sha256 == sha256_hex(r.doc_ids[0])  # type: ignore[index]
    store.close()


def test_an_older_table_gets_its_history_as_the_first_leaves(tmp_path: Path) -> None:
    store = _build(tmp_path / "ds")
    removed = store.optout(doc_ids=["doc-4", "doc-9"])
    store.compact()
    store.optout(source=corpus(30, seed=3)[0].source)
    store.close()
    import sqlite3

    db = sqlite3.connect(tmp_path / "ds" / "documents.sqlite")  # as a version before the log
    with db:
        db.execute("DELETE FROM log_leaves")
        db.execute("DELETE FROM log_hashes")
        db.execute("DELETE FROM log_state")
        db.execute("UPDATE documents SET text_sha256 = NULL")
        db.execute("UPDATE optouts SET log_index = NULL")
    db.close()
    store = Datastore.open(tmp_path / "ds")
    leaves = _leaves(store)
    assert [leaf.action for leaf in leaves] == [Action.ADD, Action.OPTOUT, Action.OPTOUT,
                                                Action.PURGE]
    assert len(leaves[0].documents) == 30
    erased = {d.id_sha256: d.text_sha256 for d in leaves[0].documents}
    assert erased[sha256_hex("doc-4")] == "0" * 64  # its text was erased before the log
    assert erased[sha256_hex("doc-5")] == sha256_hex(corpus(30, seed=3)[5].text)
    assert [r.log_index for r in store.receipts()] == [1, 2]
    assert leaves[1].selector == ("doc_ids", selector_sha256("doc_ids", list(removed.doc_ids)))
    assert {d.id_sha256 for d in leaves[3].documents} == {sha256_hex("doc-4"),
                                                         sha256_hex("doc-9")}
    store.close()

