"""One writer at a time per local datastore folder (datastore.store.lock): a second build
or write is refused and writes nothing, a killed build resumes to a clean build's store,
and a write made by another process is seen by the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from datastore.errors import WriterBusyError
from datastore.knn import FILES as KV_FILES
from datastore.store.datastore import Datastore
from datastore.store.lock import FolderLock
from tests.datastore.store.test_datastore import _assert_same_results, _build, _queries
from tests.datastore.synthetic import SyntheticEncoder, corpus

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.usefixtures("table_backend")

# a build of 40 synthetic documents that stops after 25 (a batch half-encoded), says so in
# `marker`, and waits to be killed
STALLED_BUILD = """
import sys, time
from pathlib import Path
from datastore.config import DatastoreConfig
from datastore.store.datastore import Datastore
from tests.datastore.synthetic import SyntheticEncoder, corpus
folder, marker = Path(sys.argv[1]), Path(sys.argv[2])
def documents():
    for i, doc in enumerate(corpus(40, seed=3)):
        if i == 25:
            marker.write_text("stalled")
            time.sleep(600)
        yield doc
config = DatastoreConfig(backend="exact", flush_entries=64, encode_batch=4)
Datastore.build(folder, documents(), SyntheticEncoder(), config, progress=False)
"""

HOLD = """
import sys, time
from pathlib import Path
from datastore.store.lock import FolderLock
with FolderLock(Path(sys.argv[1])).hold("a test write"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _sizes(folder: Path) -> dict[str, int]:
    return {name: (folder / name).stat().st_size for name in KV_FILES
            if (folder / name).exists()}


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    for _ in range(600):
        if path.exists():
            return
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.1)
    raise AssertionError(f"{path} never appeared")


def test_a_second_build_is_refused_and_a_killed_build_resumes_to_a_clean_build(
        tmp_path: Path) -> None:
    folder, marker = tmp_path / "ds", tmp_path / "stalled"
    first = _spawn(STALLED_BUILD, str(folder), str(marker))
    try:
        _wait_for(marker, first)
        before = _sizes(folder)
        with pytest.raises(WriterBusyError) as refused:
            _build(folder, corpus(40, seed=3))
        message = str(refused.value)
        assert f"process {first.pid}" in message and "a build" in message
        assert "nothing was written" in message
        assert _sizes(folder) == before  # the second build wrote not one key
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    resumed = _build(folder, corpus(40, seed=3))  # the README's "run it again"
    clean = _build(tmp_path / "clean", corpus(40, seed=3))
    assert resumed.snapshot.doc_ids == clean.snapshot.doc_ids
    assert len(resumed.kv) == len(clean.kv)
    np.testing.assert_array_equal(np.asarray(resumed.kv.keys[:]), np.asarray(clean.kv.keys[:]))
    np.testing.assert_array_equal(np.asarray(resumed.kv.values[:]),
                                  np.asarray(clean.kv.values[:]))
    queries = _queries(clean, 8, seed=2)
    _assert_same_results(resumed.knn_search(queries, 5), clean.knn_search(queries, 5),
                         resumed, clean)
    resumed.close()
    Datastore.open(folder).close()  # every checksum verifies


def test_a_write_while_another_process_writes_is_refused_and_writes_nothing(
        tmp_path: Path) -> None:
    store = _build(tmp_path / "ds", corpus(20))
    holder = _spawn(HOLD, str(tmp_path / "ds"), "60")
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before, rows = _sizes(tmp_path / "ds"), store.snapshot.n_entries
        with pytest.raises(WriterBusyError, match=f"process {holder.pid} .*a test write"):
            store.add_documents(corpus(25)[20:], SyntheticEncoder())
        with pytest.raises(WriterBusyError):
            store.optout(doc_ids=["doc-3"])
        assert _sizes(tmp_path / "ds") == before
        assert store.snapshot.n_entries == rows and not store.snapshot.removed.any()
        assert store.table.existing(["doc-21"]) == []
    finally:
        holder.kill()
        holder.communicate()
    store.optout(doc_ids=["doc-3"])  # the kernel let the lock go with its holder
    assert store.snapshot.removed.sum() == 1


def test_a_write_waits_for_a_short_write(tmp_path: Path) -> None:
    store = _build(tmp_path / "ds", corpus(20))
    holder = _spawn(HOLD, str(tmp_path / "ds"), "0.5")
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    receipt = store.optout(doc_ids=["doc-2"])  # waited for the holder to finish
    assert receipt.doc_ids == ("doc-2",)
    holder.communicate()


def test_a_write_from_another_process_is_seen_by_the_next_write(tmp_path: Path) -> None:
    docs = corpus(30, seed=5)
    serving = _build(tmp_path / "ds", docs[:20])  # open in this process, like `silo serve`
    added = subprocess.run([sys.executable, "-c", (
        "import sys\n"
        "from datastore.store.datastore import Datastore\n"
        "from tests.datastore.synthetic import SyntheticEncoder, corpus\n"
        "with Datastore.open(sys.argv[1]) as s:\n"
        "    s.add_documents(corpus(30, seed=5)[20:], SyntheticEncoder())\n"),
        str(tmp_path / "ds")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert added.returncode == 0, added.stderr
    serving.optout(doc_ids=["doc-25"])  # a document the other process added
    clean = _build(tmp_path / "clean", docs)
    clean.optout(doc_ids=["doc-25"])
    assert serving.snapshot.doc_ids == clean.snapshot.doc_ids
    assert len(serving.kv) == len(clean.kv)
    queries = _queries(clean, 8, seed=4)
    _assert_same_results(serving.knn_search(queries, 5), clean.knn_search(queries, 5),
                         serving, clean)
    serving.close()
    Datastore.open(tmp_path / "ds").close()


def test_the_lock_names_its_holder_only_while_held(tmp_path: Path) -> None:
    lock = FolderLock(tmp_path)
    with lock.hold("a test write"):
        assert str(os.getpid()) in lock.path.read_text()
    assert lock.path.read_text() == ""
    with lock.hold("again"):  # released: taken again at once
        pass
