"""Replicas: serving throughput with 1 and 2 `silo serve` replicas over one shared
datastore (PostgreSQL table, Milvus FLAT index) on loopback; the time from an opt-out's
acknowledgement by replica A until replica B excludes the document; and the Milvus
server index against faiss (search latency and recall@k at the same settings on the same
keys), including what Strong consistency would cost against the fence.

Starts its own PostgreSQL cluster and Milvus server (tests/pg.py, tests/milvus.py).

    python bench/replicas.py --part knn --entries 50000
    python bench/replicas.py --part serve --docs 60 --seconds 20 --clients 4
    python bench/replicas.py --part sync --docs 60
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
from served import median_seconds as _timed  # noqa: E402

from datastore.config import DatastoreConfig  # noqa: E402
from datastore.index.milvus_server import MilvusServerIndex  # noqa: E402
from datastore.table.factory import DATABASE_ENV  # noqa: E402
from tests.milvus import milvus_server  # noqa: E402
from tests.pg import cluster, find_bin_dir  # noqa: E402

ADMIN = {"Authorization": "Bearer bench-admin"}
K = 8


def _keys(n: int, dim: int, seed: int) -> np.ndarray:
    """Clustered keys, like hidden states: 256 centres plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, dim)).astype(np.float32)
    return (centres[rng.integers(0, 256, n)]
            + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact, strict=True)]))


def _faiss(kind: str, keys: np.ndarray, nlist: int, m: int) -> Any:
    dim = keys.shape[1]
    index: Any
    if kind == "FLAT":
        index = faiss.IndexFlatL2(dim)
    elif kind == "HNSW":
        index = faiss.IndexHNSWFlat(dim, 16)
        index.hnsw.efConstruction = 200
        index.hnsw.efSearch = 64
    else:
        index = faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, nlist, m, 8)
        index.train(keys)
        index.nprobe = 16
    index.add(keys)
    return index


def _milvus(kind: str, keys: np.ndarray, uri: str, folder: Path, nlist: int, m: int,
            ) -> tuple[MilvusServerIndex, int]:
    config = DatastoreConfig(backend="milvus", milvus_uri=uri, milvus_index=kind,
                             nlist=nlist, m=m, nbits=8, nprobe=16, name=f"bench_{kind}")
    index = MilvusServerIndex.create(folder, config, keys.shape[1])
    n = len(keys)
    zeros = np.zeros(n, np.int64)
    index.add_entries(keys, np.arange(n), {"value": zeros, "charpos": zeros,
                                           "doc_row": np.arange(n) // 100,
                                           "license_class": zeros, "source": ["s"] * n})
    index.save()  # flushed segments are sealed; the server builds their ANN index
    _wait_for_index(index, n)
    return index, index.fence()


def _wait_for_index(index: MilvusServerIndex, n: int, timeout_s: float = 300) -> None:
    """Until every row is in a built index; then reload, so searches use it (not the
    brute-force scan of unindexed segments)."""
    client, name = index.client, index.collection
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        info = client.describe_index(name, client.list_indexes(name)[0])
        if int(info.get("indexed_rows", 0)) >= n:
            break
        time.sleep(1)
    client.release_collection(name)
    client.load_collection(name)


def _compare(kind: str, keys: np.ndarray, queries: np.ndarray, exact: np.ndarray,
             uri: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """faiss and Milvus at the same settings: batched and one-query latency, recall@K."""
    f_index = _faiss(kind, keys, args.nlist, args.m)
    index, fence = _milvus(kind, keys, uri, folder, args.nlist, args.m)

    def milvus(q: np.ndarray) -> np.ndarray:
        return index._search(q, K, "id >= 0", index._at(fence))[1]

    row: dict[str, Any] = {
        "faiss_batch_ms": 1e3 * _timed(lambda: f_index.search(queries, K), 5),
        "milvus_batch_ms": 1e3 * _timed(lambda: milvus(queries), 5),
        "faiss_one_ms": 1e3 * _timed(lambda: f_index.search(queries[:1], K), 50),
        "milvus_one_ms": 1e3 * _timed(lambda: milvus(queries[:1]), 50),
        "faiss_recall": _recall(f_index.search(queries, K)[1], exact),
        "milvus_recall": _recall(milvus(queries), exact)}
    if kind == "FLAT":  # what the fence saves: a Strong search per request
        row["milvus_one_strong_ms"] = 1e3 * _timed(lambda: index.search(queries[:1], K), 10)
    index.client.drop_collection(index.collection)
    index.close()
    return row


def knn_part(args: argparse.Namespace) -> dict[str, Any]:
    keys = _keys(args.entries, args.dim, 0)
    queries = _keys(args.queries, args.dim, 1)
    exact = _faiss("FLAT", keys, 0, 0).search(queries, K)[1]
    out: dict[str, Any] = {"entries": args.entries, "dim": args.dim, "queries": args.queries}
    with milvus_server() as server, tempfile.TemporaryDirectory() as tmp:
        for kind in ("FLAT", "HNSW", "IVF_PQ"):
            out[kind] = _compare(kind, keys, queries, exact, server.uri, Path(tmp), args)
    return out


def _build_shared(folder: Path, docs: int, uri: str) -> None:
    corpus = folder.parent / "corpus.jsonl"
    import gzip

    with gzip.open(ROOT / "data" / "corpus" / "foldoc.jsonl.gz", "rt") as src, \
            open(corpus, "w") as dst:
        for i, line in enumerate(src):
            if i >= docs:
                break
            dst.write(line)
    subprocess.run([str(Path(sys.executable).parent / "silo"), "datastore", "build",
                    "--corpus", str(corpus), "--out", str(folder), "--backend", "milvus",
                    "--milvus-uri", uri, "--name", "bench"], check=True,
                   stdout=subprocess.DEVNULL)


def _serve(folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    from tests.server.conftest import free_port

    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "silo"), "serve", "--port",
                             str(port), "--datastore", str(folder)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError("silo serve did not come up")


def _throughput(urls: list[str], texts: list[str], clients: int, seconds: float) -> float:
    """Scoring requests per second, clients spread over the replicas round-robin."""
    done = [0] * clients
    stop = time.time() + seconds

    def client(c: int) -> None:
        with httpx.Client(base_url=urls[c % len(urls)], timeout=120) as http:
            while time.time() < stop:
                r = http.post("/v1/completions", json={
                    "prompt": texts[done[c] % len(texts)], "max_tokens": 0, "echo": True,
                    "logprobs": 1, "silo": {"mode": "knnlm", "k": K}})
                r.raise_for_status()
                done[c] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / seconds


def _propagation(a: str, b: str, docs: list[dict[str, Any]], rounds: int) -> dict[str, float]:
    """Seconds from A's acknowledgement until B's first response excluding the document,
    and B's latency for the same request when nothing changed."""
    until, steady = [], []
    for doc in docs[:rounds]:
        body = {"text": doc["text"][:200], "k": 10}
        steady.append(_timed(partial(httpx.post, b + "/v1/attribution", json=body,
                                     timeout=60), 3))
        r = httpx.post(a + "/admin/optout", json={"doc_ids": [doc["id"]]}, headers=ADMIN,
                       timeout=60)
        r.raise_for_status()
        acked = time.perf_counter()
        while True:
            named = {d["doc_id"] for s in httpx.post(b + "/v1/attribution", json=body,
                                                     timeout=60).json()["sentences"]
                     for d in s["documents"]}
            if doc["id"] not in named:
                break
        until.append(time.perf_counter() - acked)
    return {"ack_to_excluded_ms": 1e3 * statistics.median(until),
            "ack_to_excluded_max_ms": 1e3 * max(until),
            "steady_request_ms": 1e3 * statistics.median(steady)}


def serve_part(args: argparse.Namespace) -> dict[str, Any]:
    import gzip

    bin_dir = find_bin_dir()
    assert bin_dir is not None, "PostgreSQL is not installed"
    with gzip.open(ROOT / "data" / "corpus" / "foldoc.jsonl.gz", "rt") as f:
        docs = [json.loads(line) for _, line in zip(range(args.docs), f, strict=False)]
    texts = [d["text"][:300] for d in docs[:20]]
    with cluster(bin_dir) as pg, milvus_server() as server, \
            tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, DATABASE_ENV: pg.url(), "SILO_ADMIN_KEY": "bench-admin",
               "SILO_AUDIT_LOG": str(Path(tmp) / "audit.jsonl")}
        os.environ[DATABASE_ENV] = pg.url()
        _build_shared(Path(tmp) / "shared", args.docs, server.uri)
        for name in ("a", "b"):
            shutil.copytree(Path(tmp) / "shared", Path(tmp) / name)
        (proc_a, a), (proc_b, b) = (_serve(Path(tmp) / "a", env),
                                    _serve(Path(tmp) / "b", env))
        try:
            _throughput([a], texts, 1, 2.0)  # warm both
            _throughput([b], texts, 1, 2.0)
            one = _throughput([a], texts, args.clients, args.seconds)
            two = _throughput([a, b], texts, args.clients, args.seconds)
            prop = _propagation(a, b, docs[20:], args.rounds)
        finally:
            proc_a.kill()
            proc_b.kill()
    return {"docs": args.docs, "clients": args.clients, "one_replica_rps": one,
            "two_replicas_rps": two, "ratio": two / one, **prop}


def sync_part(args: argparse.Namespace) -> dict[str, Any]:
    """What the per-search sequence check costs: `change_seq()` on each table, against
    a whole filtered kNN search of a small faiss-flat datastore on that table."""
    from datastore.store.datastore import Datastore
    from tests.datastore.synthetic import SyntheticEncoder, corpus

    bin_dir = find_bin_dir()
    assert bin_dir is not None, "PostgreSQL is not installed"
    out: dict[str, Any] = {}
    with cluster(bin_dir) as pg, tempfile.TemporaryDirectory() as tmp:
        for name, url in (("sqlite", None), ("postgres", pg.url())):
            if url:
                os.environ[DATABASE_ENV] = url
            config = DatastoreConfig(backend="faiss-flat", flush_entries=4096)
            with Datastore.build(Path(tmp) / name, corpus(args.docs * 10, seed=1),
                                 SyntheticEncoder(), config, progress=False) as store:
                q = np.asarray(store.kv.keys[:1], np.float32)
                seq = _timed(store.table.change_seq, 1000)
                search = _timed(partial(store.knn_search, q, K), 1000)
                out[name] = {"change_seq_us": 1e6 * seq, "knn_search_us": 1e6 * search,
                             "share": seq / search}
            os.environ.pop(DATABASE_ENV, None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["knn", "serve", "sync"], required=True)
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--nlist", type=int, default=256)
    parser.add_argument("--m", type=int, default=8)
    parser.add_argument("--docs", type=int, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    parts = {"knn": knn_part, "serve": serve_part, "sync": sync_part}
    result = parts[args.part](args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
