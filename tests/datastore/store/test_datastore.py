"""The Datastore facade: the equivalence guarantee, opt-out durability and concurrency,
compaction, restartable builds, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from datastore.config import DatastoreConfig
from datastore.document import Document, LicenseClass
from datastore.errors import (
    ConflictError,
    CorruptDatastoreError,
    InvalidInputError,
    InvalidSelectorError,
    ModelMismatchError,
    NotFoundError,
)
from datastore.filter import AccessScope, SearchFilter
from datastore.store.datastore import Datastore
from datastore.store.state import StoreState
from tests.datastore.synthetic import CLASSES, SyntheticEncoder, corpus

ROOT = Path(__file__).resolve().parents[3]
# every test runs on both document tables: SQLite in the folder, and PostgreSQL
pytestmark = pytest.mark.usefixtures("table_backend")


def _build(path: Path, docs: list[Document], backend: str = "exact", **kw: object,
           ) -> Datastore:
    params: dict[str, object] = dict(nlist=8, m=8, nbits=4 if backend == "faiss-ivfpq-fs"
                                     else 8, nprobe=3, flush_entries=64, encode_batch=4)
    config = DatastoreConfig(backend=backend, **(params | kw))  # type: ignore[arg-type]
    return Datastore.build(path, docs, SyntheticEncoder(), config, progress=False)


def _queries(store: Datastore, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(store.kv), size=n, replace=False)
    noise = 0.05 * rng.standard_normal((n, store.kv.dim))
    return (np.asarray(store.kv.keys[rows], np.float32) + noise).astype(np.float32)


def _located(store: Datastore, ids: np.ndarray) -> list[list[tuple[str, int]]]:
    """entry ids (q, k) -> (doc_id, position) per hit: ids differ between stores."""
    out = []
    for row in ids:
        infos = store.entry_info([i for i in row.tolist() if i >= 0])
        out.append([(e.doc_id, e.position) for e in infos])
    return out


def _assert_same_results(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
                         store_a: Datastore, store_b: Datastore) -> None:
    """Equal distances, and equal hits wherever no tie straddles the k-th place."""
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
    for d, hits_a, hits_b in zip(a[0], _located(store_a, a[1]), _located(store_b, b[1]),
                                 strict=True):
        assert len(hits_a) == len(hits_b)
        cutoff = d[np.isfinite(d)].max() - 1e-4
        sure = [i for i in range(len(hits_a)) if d[i] < cutoff]
        assert {hits_a[i] for i in sure} == {hits_b[i] for i in sure}


def _random_filter(rng: np.random.Generator) -> SearchFilter:
    policy = frozenset(c for c in CLASSES if rng.random() < 0.6) or frozenset({CLASSES[0]})
    sources = frozenset(s for s in ("news", "books", "code") if rng.random() < 0.7)
    scope = AccessScope(sources=sources or None)
    return SearchFilter(policy=policy, scope=scope)


def _allowed(doc: Document, request: SearchFilter, removed: set[str]) -> bool:
    assert request.policy is not None
    return doc.doc_id not in removed and doc.license_class in request.policy and (
        request.scope.sources is None or doc.source in request.scope.sources)


@pytest.mark.parametrize("backend", ["exact", "faiss-flat", "faiss-ivfpq", "faiss-ivfpq-fs"])
def test_filtered_store_equals_store_without_excluded_documents(tmp_path: Path,
                                                                backend: str) -> None:
    docs = corpus(60, seed=1)
    full = _build(tmp_path / "full", docs, backend)
    removed = {"doc-3", "doc-17", "doc-40"}
    full.optout(doc_ids=sorted(removed))
    trained = tmp_path / "full" / "index.faiss" if "ivfpq" in backend else None
    rng = np.random.default_rng(0)
    for trial in range(4):
        request = _random_filter(rng)
        kept = [d for d in docs if _allowed(d, request, removed)]
        config = replace(full.config, backend=backend)
        reduced = Datastore.build(tmp_path / f"reduced{trial}", kept, SyntheticEncoder(),
                                  config, progress=False, trained_index=trained)
        queries = _queries(full, 12, seed=trial)
        got = full.knn_search(queries, 8, request)
        want = reduced.knn_search(queries, 8)
        _assert_same_results(got, want, full, reduced)
        excluded = {d.doc_id for d in docs} - {d.doc_id for d in kept}
        assert not {h[0] for row in _located(full, got[1]) for h in row} & excluded
        reduced.close()


def test_reindex_swaps_the_backend_and_leaves_opted_out_documents_out(tmp_path: Path) -> None:
    store = _build(tmp_path / "ds", corpus(40, seed=4))
    store.optout(doc_ids=["doc-3", "doc-9"])
    queries = _queries(store, 10, seed=1)
    want = store.knn_search(queries, 6)
    live = store.info().live_entries
    assert store.reindex(replace(store.config, backend="faiss-flat")) == live
    assert len(store.index) == live  # type: ignore[arg-type]
    got = store.knn_search(queries, 6)  # exact both: the same neighbours
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    store.close()
    reopened = Datastore.open(tmp_path / "ds")  # checksums of the new index verified
    assert reopened.config.backend == "faiss-flat"
    np.testing.assert_array_equal(reopened.knn_search(queries, 6)[1], got[1])
    reopened.reindex(replace(reopened.config, backend="faiss-ivfpq-fs", nbits=4))
    _, ids = reopened.knn_search(queries, 6)
    assert not {e.doc_id for e in reopened.entry_info(ids[ids >= 0].tolist())} & \
        {"doc-3", "doc-9"}
    reopened.reindex(replace(reopened.config, backend="exact"))  # no index file
    assert not (tmp_path / "ds" / "index.faiss").exists()
    reopened.close()
    assert Datastore.open(tmp_path / "ds").config.backend == "exact"


def test_a_reindex_cut_short_is_finished_at_the_next_open(tmp_path: Path) -> None:
    from datastore.manifest import read_manifest, write_manifest

    store = _build(tmp_path / "ds", corpus(30, seed=5))
    queries = _queries(store, 8, seed=2)
    want = store.knn_search(queries, 5)
    store.close()
    # the intent written, then a crash before the index was saved
    manifest = read_manifest(tmp_path / "ds")
    config = replace(DatastoreConfig.from_json(manifest.config), backend="faiss-flat")
    write_manifest(tmp_path / "ds", replace(manifest, status="reindexing",
                                            config=config.to_json()))
    reopened = Datastore.open(tmp_path / "ds")
    assert reopened.manifest.status == "ready" and (tmp_path / "ds" / "index.faiss").exists()
    np.testing.assert_allclose(reopened.knn_search(queries, 5)[0], want[0], rtol=1e-5,
                               atol=1e-5)
    reopened.close()
    assert Datastore.open(tmp_path / "ds").manifest.status == "ready"


def test_reindex_of_nprobe_alone_rebuilds_nothing_and_bad_changes_are_refused(
        tmp_path: Path) -> None:
    store = _build(tmp_path / "ds", corpus(60, seed=6), "faiss-ivfpq")
    before = (tmp_path / "ds" / "index.faiss").stat().st_mtime_ns
    store.reindex(replace(store.config, nprobe=7))
    assert (tmp_path / "ds" / "index.faiss").stat().st_mtime_ns == before
    assert store.index.nprobe == 7  # type: ignore[union-attr]
    with pytest.raises(InvalidInputError, match="block_tokens"):
        store.reindex(replace(store.config, block_tokens=64))
    with pytest.raises(InvalidInputError, match="local index"):
        store.reindex(replace(store.config, backend="milvus"))
    # parameters the index cannot take are refused before anything is written
    with pytest.raises(InvalidInputError, match="nlist=100000"):
        store.reindex(replace(store.config, backend="faiss-ivfpq-fs", nlist=100_000,
                              nbits=4))
    assert store.config.backend == "faiss-ivfpq" and store.knn_search(
        _queries(store, 3, seed=0), 4)[1].min() >= 0
    store.close()
    reopened = Datastore.open(tmp_path / "ds")
    assert (reopened.config.backend, reopened.config.nprobe) == ("faiss-ivfpq", 7)
    assert reopened.manifest.status == "ready"


def test_optout_survives_kill_9_in_another_process(tmp_path: Path) -> None:
    store = _build(tmp_path / "ds", corpus(30))
    store.close()
    script = (
        "import os, signal, sys\n"
        "from datastore.store.datastore import Datastore\n"
        f"s = Datastore.open({str(tmp_path / 'ds')!r})\n"
        "r = s.optout(doc_ids=['doc-4', 'doc-5'], reason='owner request')\n"
        "print(r.optout_id, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    optout_id = done.stdout.strip()
    reopened = Datastore.open(tmp_path / "ds")
    (receipt,) = reopened.receipts(optout_id)
    assert receipt.doc_ids == ("doc-4", "doc-5") and receipt.reason == "owner request"
    assert reopened.snapshot.removed[[4, 5]].all()
    _, ids = reopened.knn_search(np.asarray(reopened.kv.keys[:200], np.float32), 5)
    docs = {e.doc_id for e in reopened.entry_info(ids[ids >= 0].tolist())}
    assert not docs & {"doc-4", "doc-5"}


@pytest.mark.parametrize("backend", ["exact", "faiss-flat"])
def test_search_started_after_the_receipt_never_sees_the_removed_document(
        tmp_path: Path, backend: str) -> None:
    store = _build(tmp_path / "ds", corpus(80, seed=2), backend)
    target = store.table.get("doc-7")
    queries = np.asarray(store.kv.keys[target.entry_start:target.entry_end], np.float32)
    acked = threading.Event()
    stop = threading.Event()
    violations: list[int] = []
    searches_after_ack = [0]

    # one thread under a policy, so a warm bitmap is carried across the opt-out
    not_restricted = SearchFilter(policy=frozenset(LicenseClass) - {LicenseClass.RESTRICTED})

    def search_loop(request: SearchFilter | None) -> None:
        while not stop.is_set():
            after = acked.is_set()
            _, ids = store.knn_search(queries, 3, request)
            hit = (ids >= target.entry_start) & (ids < target.entry_end)
            if after:
                searches_after_ack[0] += 1
                if hit.any():
                    violations.append(int(ids[hit][0]))

    threads = [threading.Thread(target=search_loop, args=(r,))
               for r in (None, None, not_restricted)]
    for t in threads:
        t.start()
    receipt = store.optout(doc_ids=["doc-7"])
    acked.set()
    while searches_after_ack[0] < 30:
        stop.wait(0.01)
    stop.set()
    for t in threads:
        t.join()
    assert receipt.entries_removed == target.entry_end - target.entry_start
    assert violations == []


@pytest.mark.parametrize("backend", ["exact", "faiss-ivfpq"])
def test_compaction_leaves_no_byte_of_the_removed_text(tmp_path: Path, backend: str) -> None:
    docs = corpus(40, seed=3)
    secret = "zebrafishsecret"
    docs[11] = replace(docs[11], text=f"w1 w2 {secret} w3 {secret}x w4 w5")
    store = _build(tmp_path / "ds", docs, backend)
    row = store.table.get("doc-11")
    store.optout(doc_ids=["doc-11"])
    assert store.compact() == 1
    for path in (tmp_path / "ds").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert not np.asarray(store.kv.keys[row.entry_start:row.entry_end]).any()
    assert len(store.index) == len(store.kv) - (  # type: ignore[arg-type]
        row.entry_end - row.entry_start if backend != "exact" else 0)
    assert store.receipts()[0].purged_at is not None
    store.close()
    reopened = Datastore.open(tmp_path / "ds")  # checksums were refreshed
    assert reopened.compact() == 0
    assert reopened.entry_info([row.entry_start])[0].snippet is None


def test_add_documents_is_incremental_and_searchable(tmp_path: Path) -> None:
    docs = corpus(30, seed=4)
    store = _build(tmp_path / "ds", docs[:20], "faiss-flat")
    encoder = SyntheticEncoder()
    calls_before = encoder.calls
    stats = store.add_documents(docs[20:], encoder)
    assert stats.documents == 10 and encoder.calls - calls_before == 3  # 10 docs / batch 4
    whole = _build(tmp_path / "whole", docs, "faiss-flat")
    queries = _queries(whole, 10, seed=0)
    _assert_same_results(store.knn_search(queries, 5), whole.knn_search(queries, 5),
                         store, whole)
    with pytest.raises(ConflictError, match="doc-3"):
        store.add_documents([docs[3]], encoder)
    store.close()
    assert Datastore.open(tmp_path / "ds").info().documents == 30


def test_interrupted_build_resumes_to_the_same_datastore(tmp_path: Path) -> None:
    docs = corpus(40, seed=5)

    def crashing() -> object:
        for i, doc in enumerate(docs):
            if i == 25:
                raise KeyboardInterrupt
            yield doc

    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "ds", crashing())  # type: ignore[arg-type]
    with open(tmp_path / "ds" / "keys.f16", "ab") as f:
        f.write(b"\x01" * 100)  # a flush that never reached the table
    with pytest.raises(CorruptDatastoreError, match="did not finish"):
        Datastore.open(tmp_path / "ds")
    resumed = _build(tmp_path / "ds", docs)
    clean = _build(tmp_path / "clean", docs)
    assert resumed.snapshot.doc_ids == clean.snapshot.doc_ids
    for name in ("keys.f16", "values.i32", "charpos.i32"):
        assert (tmp_path / "ds" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()


def test_entry_info_maps_entries_to_documents_and_snippets(tmp_path: Path) -> None:
    docs = [Document("a", "alpha beta gamma", "mit", LicenseClass.SW, "code"),
            Document("b", "one", "cc0", LicenseClass.PD, "books"),  # one token: no entry
            Document("c", "delta epsilon zeta eta", "cc-by", LicenseClass.BY, "news")]
    store = _build(tmp_path / "ds", docs)
    info = store.entry_info([0, 1, 2, 4])
    assert [(e.doc_id, e.position) for e in info] == [("a", 0), ("a", 1), ("c", 0), ("c", 2)]
    assert info[2].license_class is LicenseClass.BY and info[2].source == "news"
    assert info[1].char_offset == docs[0].text.index("gamma")
    assert "epsilon" in (info[2].snippet or "")
    enc = SyntheticEncoder()
    assert store.values(np.array([0, 4, -1])).tolist() == [
        enc.tokenize("beta")[0], enc.tokenize("eta")[0], -1]


def test_bad_input_gives_library_errors_naming_the_culprit(tmp_path: Path) -> None:
    store = _build(tmp_path / "ds", corpus(10))
    with pytest.raises(NotFoundError, match="nope"):
        store.optout(doc_ids=["doc-1", "nope"])
    with pytest.raises(InvalidSelectorError):
        store.optout()
    with pytest.raises(InvalidSelectorError):
        store.optout(doc_ids=["doc-1"], source="news")
    with pytest.raises(NotFoundError, match="999999"):
        store.entry_info([999999])
    with pytest.raises(InvalidInputError, match="16"):
        store.knn_search(np.zeros((2, 3), np.float32), 4)
    with pytest.raises(InvalidInputError, match="k must"):
        store.knn_search(np.zeros((2, 16), np.float32), 0)
    assert store.snapshot.removed.sum() == 0  # failed opt-outs removed nothing
    store.close()
    with pytest.raises(ModelMismatchError, match="rebuild"):
        Datastore.open(tmp_path / "ds", encoder_fingerprint="another-model")
    with pytest.raises(CorruptDatastoreError, match="not a datastore"):
        Datastore.open(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["keys.f16", "values.i32", "index.faiss"])
def test_corrupted_file_is_reported_by_name(tmp_path: Path, name: str) -> None:
    _build(tmp_path / "ds", corpus(20), "faiss-flat").close()
    path = tmp_path / "ds" / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDatastoreError, match=name):
        Datastore.open(tmp_path / "ds")


def test_optout_by_source_and_url_prefix_is_idempotent(tmp_path: Path) -> None:
    docs = corpus(12)
    docs[0] = replace(docs[0], url="https://news.example/x%_1")
    store = _build(tmp_path / "ds", docs)
    by_url = store.optout(url_prefix="https://news.example/x%_")
    assert by_url.doc_ids == ("doc-0",)
    by_source = store.optout(source="news")
    assert set(by_source.doc_ids) == {d.doc_id for d in docs if d.source == "news"} - {"doc-0"}
    again = store.optout(source="news")
    assert again.doc_ids == () and again.entries_removed == 0
    assert store.optout(doc_ids=["doc-0"]).doc_ids == ()
    assert [r.optout_id for r in store.receipts()][:2] == [by_url.optout_id,
                                                            by_source.optout_id]
    info = store.info()
    assert info.live_documents == 8 and info.optouts == 4


def test_optout_rebuilds_filter_from_table_on_reload(tmp_path: Path, table_backend: str,
                                                     ) -> None:
    store = _build(tmp_path / "ds", corpus(15), "faiss-flat")
    store.optout(doc_ids=["doc-2"])
    store.close()
    reopened = Datastore.open(tmp_path / "ds")
    assert reopened.entry_filter().allows_doc("doc-2") is False
    assert reopened.entry_filter().allows_doc("doc-3") is True
    in_folder = os.path.exists(tmp_path / "ds" / "documents.sqlite")
    assert in_folder == (table_backend == "sqlite")


def test_bm25_and_verbatim_go_through_the_same_filter(tmp_path: Path) -> None:
    docs = corpus(20, seed=6)
    docs[4] = replace(docs[4], text="the rare aardvark sings an aria under the moon",
                      license_class=LicenseClass.PD)
    docs[9] = replace(docs[9], text="an aardvark sings an aria under the sun at noon",
                      license_class=LicenseClass.RESTRICTED)
    store = _build(tmp_path / "ds", docs, block_tokens=4, block_overlap=1)
    assert store.snapshot.n_blocks > len(docs)
    hits = store.bm25_search("aardvark aria", 5)
    assert {h.doc_id for h in hits} == {"doc-4", "doc-9"}
    permissive = SearchFilter(policy=frozenset({LicenseClass.PD, LicenseClass.SW,
                                                LicenseClass.BY, LicenseClass.COPYLEFT}))
    assert {h.doc_id for h in store.bm25_search("aardvark aria", 5, permissive)} == {"doc-4"}
    spans = store.verbatim("aardvark sings an aria under the", 3)
    assert {s.doc_id for s in spans} >= {"doc-4", "doc-9"}
    store.optout(doc_ids=["doc-4"])
    assert {h.doc_id for h in store.bm25_search("aardvark aria", 5)} == {"doc-9"}
    assert "doc-4" not in {s.doc_id for s in store.verbatim("rare aardvark sings", 3)}
    record = store.table.get("doc-9")
    block = store.bm25.doc(record.block_start)  # type: ignore[union-attr]
    assert block.doc_id == "doc-9" and block.text in docs[9].text


class _FailingEncoder(SyntheticEncoder):
    """Raises on its n-th encode call, like a process killed mid-add."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at

    def encode(self, batch):  # type: ignore[no-untyped-def]
        if self.calls + 1 == self.fail_at:
            raise KeyboardInterrupt
        return super().encode(batch)


def test_interrupted_add_is_repaired_at_open(tmp_path: Path) -> None:
    docs = corpus(40, seed=7)
    store = _build(tmp_path / "ds", docs[:20], "faiss-flat")
    with pytest.raises(KeyboardInterrupt):
        store.add_documents(docs[20:], _FailingEncoder(fail_at=4))  # 3 batches flushed
    store.close()
    reopened = Datastore.open(tmp_path / "ds")
    committed = len(reopened.snapshot.doc_ids)
    assert 20 < committed < 40
    assert len(reopened.index) == len(reopened.kv) == reopened.snapshot.n_entries  # type: ignore[arg-type]
    reopened.add_documents(docs[committed:], SyntheticEncoder())
    whole = _build(tmp_path / "whole", docs, "faiss-flat")
    queries = _queries(whole, 10, seed=1)
    _assert_same_results(reopened.knn_search(queries, 5), whole.knn_search(queries, 5),
                         reopened, whole)
    reopened.close()
    Datastore.open(tmp_path / "ds")  # checksums verify again


def test_add_cut_after_the_index_was_saved_adds_nothing_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = corpus(30, seed=8)
    store = _build(tmp_path / "ds", docs[:20], "faiss-flat")

    def cut(self: StoreState, rewritten: object = (), **changes: object) -> None:
        raise KeyboardInterrupt  # the add's last step: its manifest

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(StoreState, "save_manifest", cut)
        store.add_documents(docs[20:], SyntheticEncoder())
    store.close()
    reopened = Datastore.open(tmp_path / "ds")
    assert len(reopened.snapshot.doc_ids) == 30
    assert len(reopened.index) == len(reopened.kv)  # type: ignore[arg-type]


def test_compaction_cut_midway_is_finished_at_open(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    docs = corpus(20, seed=9)
    secret = "quokkasecret"
    docs[5] = replace(docs[5], text=f"w1 {secret} w2 w3")
    store = _build(tmp_path / "ds", docs, "faiss-flat")
    store.optout(doc_ids=["doc-5"])

    def cut(table: object, rows: object, now: float) -> None:
        raise KeyboardInterrupt  # after vectors and blocks went, before the text

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr("datastore.table.base.DocumentTable.purge", cut)
        store.compact()
    store.close()
    reopened = Datastore.open(tmp_path / "ds")
    assert reopened.manifest.status == "ready" and reopened.receipts()[0].purged_at
    for path in (tmp_path / "ds").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    reopened.close()
    Datastore.open(tmp_path / "ds")
