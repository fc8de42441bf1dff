"""What the transparency log costs, at 1e4 and 1e6 leaves (SQLite document table).

A synthetic datastore (exact backend, 2,000 documents) has its log padded with leaves to
each size (`activate` leaves, appended in transactions of 10,000), then:

- opt-out: 200 opt-outs of one document each through `Datastore.optout` (tombstone and
  leaf in one fsync'd transaction, then the filter swap), the median of the whole call and
  of the `append` inside it (timed where the table calls it);
- checkpoint: the root at the current size and the signed note (Ed25519);
- proofs: an inclusion proof of a random leaf and a consistency proof from a random older
  size to the current one, each with its hash count against ceil(log2 n);
- a request's checkpoint: the log head the request's view carries, as the response's
  `silo.checkpoint` and `Silo-Checkpoint` header.

    python bench/tlog.py --sizes 1e4,1e6
    python bench/tlog.py --pad DATASTORE --leaves 1000000   # a served store, for silo verify
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from datastore_synthetic import ClusterEncoder, documents  # noqa: E402
from served import median_seconds  # noqa: E402

import datastore.table.base as table_base  # noqa: E402
from datastore.config import DatastoreConfig  # noqa: E402
from datastore.store.datastore import Datastore  # noqa: E402
from datastore.table.base import DocumentTable  # noqa: E402
from datastore.tlog.keys import Signer  # noqa: E402
from datastore.tlog.leaf import Leaf  # noqa: E402
from server.transparency import checkpoint_header, checkpoint_ref  # noqa: E402

DOCS = 2_000
OPTOUTS = 200
PROOFS = 200
PAD_BATCH = 10_000


def pad(table: DocumentTable, leaves: int) -> None:
    """Append `activate` leaves until the log holds `leaves` (one transaction per batch)."""
    size = table.log.size_and_id()[0]
    with tqdm(total=max(0, leaves - size), desc="padding the log", unit="leaf") as bar:
        while size < leaves:
            n = min(PAD_BATCH, leaves - size)
            with table._transaction() as run:
                for i in range(n):
                    table_base.append(run, Leaf.activated({"pad": size + i}, time.time()))
            size += n
            bar.update(n)


def _median_ms(fn: Callable[[], Any], times: int) -> float:
    return median_seconds(fn, times) * 1e3


def measure(store: Datastore, victims: list[str], signer: Signer) -> dict[str, Any]:
    appended: list[float] = []
    real_append = table_base.append

    def timed_append(run: Any, leaf: Leaf) -> Any:
        start = time.perf_counter()
        try:
            return real_append(run, leaf)
        finally:
            appended.append(time.perf_counter() - start)

    optout_s = []
    table_base.append = timed_append  # type: ignore[assignment]
    try:
        for doc_id in victims:
            start = time.perf_counter()
            store.optout(doc_ids=[doc_id])
            optout_s.append(time.perf_counter() - start)
    finally:
        table_base.append = real_append
    log = store.log
    log.signer = signer
    n = log.head().size
    rng = random.Random(0)
    inclusion_len, consistency_len = [], []

    def inclusion() -> None:
        inclusion_len.append(len(log.inclusion(rng.randrange(n), n)))

    def consistency() -> None:
        consistency_len.append(len(log.consistency(rng.randrange(1, n), n)))

    def request_checkpoint() -> None:
        head = store.view.log
        checkpoint_ref(head)
        checkpoint_header(head)

    bound = math.ceil(math.log2(n))
    return {
        "leaves": n,
        "optout_ms": statistics.median(optout_s) * 1e3,
        "append_ms": statistics.median(appended) * 1e3,
        "root_ms": _median_ms(lambda: log.head(), PROOFS),
        "signed_checkpoint_ms": _median_ms(log.note, PROOFS),
        "inclusion_ms": _median_ms(inclusion, PROOFS),
        "consistency_ms": _median_ms(consistency, PROOFS),
        "proof_hashes_max": f"{max(inclusion_len)} / {max(consistency_len)} (bound {bound})",
        "request_checkpoint_us": _median_ms(request_checkpoint, 20_000) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e4,1e6")
    parser.add_argument("--pad", type=Path, help="pad this datastore's log and stop")
    parser.add_argument("--leaves", type=float, default=1e6)
    args = parser.parse_args()
    if args.pad is not None:
        with Datastore.open(args.pad, verify=False) as store:
            pad(store.table, int(args.leaves))
        return
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    signer = Signer.from_seed("bench-log", bytes(32))
    with tempfile.TemporaryDirectory() as tmp:
        encoder = ClusterEncoder(dim=32)
        store = Datastore.build(Path(tmp) / "ds", documents(DOCS, 40), encoder,
                                DatastoreConfig(backend="exact"), progress=False)
        ids = list(store.snapshot.doc_ids)
        rows = []
        for i, size in enumerate(sizes):
            pad(store.table, size - OPTOUTS)
            rows.append(measure(store, ids[i * OPTOUTS:(i + 1) * OPTOUTS], signer))
        store.close()
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + " --- |" * len(keys))
    for row in rows:
        print("| " + " | ".join(f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k])
                                for k in keys) + " |")


if __name__ == "__main__":
    main()
