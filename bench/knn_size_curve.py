"""kNN search cost per token against datastore size, beside the LM's forward cost.

Synthetic datastores of 1M, 10M and 50M entries with keys of the mini model's hidden
size (128), indexed as the reproduction's: faiss IVF-PQ, nlist 4096, M 64 x 8 bits,
searched with nprobe 32 and k 1024, 16 queries per call (a scoring batch's step), one
thread. Building them the usual way would take hours on a small CPU (assigning 50M keys
to 4096 centroids is 5e13 flops), and the search cost does not depend on what the codes
say, only on how many there are in the probed lists. So the coarse centroids are the
centres of a Gaussian mixture (no k-means), the PQ codebooks are trained on a sample of
it, and the inverted lists are filled with random codes, the same number per list in
expectation (N / nlist; a real store's lists are less even, which costs more). Queries
are drawn from the mixture.

Beside it, the same lists as IVF-PQ fast-scan (`faiss-ivfpq-fs`): 4-bit codes with twice
the sub-quantizers (M 128 at dim 128: the same 64 bytes per entry), random codes built
as a plain 4-bit IVF-PQ and converted (faiss packs them in SIMD blocks), measured in the
same run.

The pointer path (datastore.pointers) replaces a search by: reading the values of the
previous position's k neighbours (which voted for the observed token), and exact
distances to the keys of the followed successors, then ordering them. Its cost is
measured on a key file (fp16, N x 128) and a value file of each size, with `--followed`
successors per token; the kNN cost per token with pointers is then
share_searched x search + (1 - share_searched) x follow.

    python bench/knn_size_curve.py build [--no-keys]        # not timed: writes runs/knn_size_curve
    OMP_NUM_THREADS=1 python bench/knn_size_curve.py measure
    python bench/knn_size_curve.py clean                    # the files are large (~20 GB)
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from datastore.index.faiss_index import FASTSCAN_QUERIES_PER_LIST
from datastore.pointers import exact_distances, nearest


def ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def centres(args: argparse.Namespace) -> np.ndarray:
    """(nlist, dim) float32 mixture centres, the same for every size (seeded)."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((args.nlist, args.dim)).astype(np.float32)


def mixture(args: argparse.Namespace, n: int, seed: int) -> np.ndarray:
    """(n, dim) float32 points: a random centre plus Gaussian noise of `--spread`."""
    rng = np.random.default_rng(seed)
    c = centres(args)[rng.integers(0, args.nlist, n)]
    return c + args.spread * rng.standard_normal((n, args.dim)).astype(np.float32)


def random_ivfpq(args: argparse.Namespace, n: int, m: int, nbits: int) -> Any:
    """IVF-PQ over the mixture's centres with random codes, the same list sizes for
    every index of size n (seeded by n)."""
    quantizer = faiss.IndexFlatL2(args.dim)
    quantizer.add(centres(args))
    index = faiss.IndexIVFPQ(quantizer, args.dim, args.nlist, m, nbits)
    index.train(mixture(args, 65_536, seed=1))  # PQ only: the quantizer holds nlist centres
    index.own_fields = True
    quantizer.this.disown()
    rng = np.random.default_rng(n)
    sizes = rng.multinomial(n, np.full(args.nlist, 1 / args.nlist))
    invlists: Any = index.invlists
    start = 0
    for lst, size in enumerate(sizes.tolist()):
        codes = rng.integers(0, 256, (size, index.code_size), dtype=np.uint8)
        ids = np.arange(start, start + size, dtype=np.int64)
        invlists.add_entries(lst, size, faiss.swig_ptr(ids), faiss.swig_ptr(codes))
        start += size
    index.ntotal = n
    return index


def build_size(args: argparse.Namespace, n: int) -> None:
    """index.faiss (IVF-PQ, random codes), index_fs.faiss (the fast-scan one), and unless
    --no-keys keys.f16 (n, dim) and values.i32 (n,) for the pointer step."""
    folder = args.work / str(n)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "index.faiss").exists():
        faiss.write_index(random_ivfpq(args, n, args.m, 8), str(folder / "index.faiss"))
    if not (folder / "index_fs.faiss").exists():
        plain = random_ivfpq(args, n, 2 * args.m, 4)
        faiss.write_index(faiss.IndexIVFPQFastScan(plain), str(folder / "index_fs.faiss"))
        del plain
    if args.no_keys or (folder / "values.npy").exists():
        return
    rng = np.random.default_rng(n + 1)
    keys = np.lib.format.open_memmap(folder / "keys.npy", "w+", np.float16, (n, args.dim))
    for at in range(0, n, 1 << 20):
        part = min(1 << 20, n - at)
        # random fp16 bit patterns in [0.125, 1): the gather's cost, not the values, matters
        keys[at:at + part] = rng.integers(0x3000, 0x3C00, (part, args.dim),
                                          dtype=np.uint16).view(np.float16)
    keys.flush()
    del keys
    np.save(folder / "values.npy", rng.integers(0, 4096, n, dtype=np.int32))


def per_call(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of `repeat` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def follow_cost(keys: np.ndarray, values: np.ndarray, queries: np.ndarray, k: int,
                followed: int, seed: int) -> Callable[[], Any]:
    """One pointer step for a batch of queries: the values of each query's k previous
    neighbours (random entries), then exact distances to `followed` successors and the
    k nearest of them (datastore.pointers' arithmetic)."""
    rng = np.random.default_rng(seed)
    n = len(values)
    prev = rng.integers(0, n - 1, (len(queries), k), dtype=np.int64)

    def step() -> Any:
        agree = values[prev] >= 0  # the vote check reads every previous neighbour's value
        succ = np.where(agree, prev + 1, -1)
        succ[:, followed:] = -1  # `followed` of them voted for the observed token
        dist = exact_distances(keys, queries, succ)
        return nearest(dist, succ, k)

    return step


def search_cost(path: Path, args: argparse.Namespace, batches: list[np.ndarray],
                ) -> tuple[float, np.ndarray]:
    """Seconds per query of `path`'s index at --nprobe and --k, and its list sizes."""
    index: Any = faiss.read_index(str(path))
    index.nprobe = args.nprobe
    if isinstance(index, faiss.IndexIVFFastScan):
        index.qbs2 = FASTSCAN_QUERIES_PER_LIST  # as the datastore's backend searches it
    sizes = np.array([index.invlists.list_size(i) for i in range(args.nlist)])

    def search() -> None:
        for b in batches:
            index.search(b, args.k)

    return per_call(search, args.repeat) / sum(len(b) for b in batches), sizes


def measure_size(args: argparse.Namespace, n: int, queries: np.ndarray) -> dict[str, Any]:
    folder = args.work / str(n)
    batches = [queries[i:i + args.batch] for i in range(0, len(queries), args.batch)]
    search_s, sizes = search_cost(folder / "index.faiss", args, batches)
    fastscan_s, _ = search_cost(folder / "index_fs.faiss", args, batches)
    row = {"entries": n, "mean_list": float(sizes.mean()), "max_list": int(sizes.max()),
           "codes_scanned_per_query": float(sizes.mean()) * args.nprobe,
           "search_ms_per_token": 1000 * search_s,
           "fastscan_ms_per_token": 1000 * fastscan_s, "follow_ms_per_token": None}
    if (folder / "values.npy").exists():
        keys = np.load(folder / "keys.npy", mmap_mode="r")
        values = np.load(folder / "values.npy", mmap_mode="r")
        steps = [follow_cost(keys, values, b, args.k, args.followed, seed=i)
                 for i, b in enumerate(batches)]
        row["follow_ms_per_token"] = 1000 * per_call(lambda: [s() for s in steps],
                                                     args.repeat) / len(queries)
    print(json.dumps(row), flush=True)
    return row


@torch.inference_mode()
def forward_ms_per_token(model_dir: Path, repeat: int) -> dict[str, Any]:
    """The parametric forward pass per token: 16 rows of 256 tokens, as scoring runs."""
    from silo.model import load_lm  # bench/ may use silo; only for the model here

    model = load_lm(model_dir).model
    ids = torch.randint(0, model.config.vocab_size, (16, 256))
    sec = per_call(lambda: torch.log_softmax(model(input_ids=ids).logits.float(), -1), repeat)
    return {"model": str(model_dir), "forward_ms_per_token": 1000 * sec / ids.numel(),
            "hidden": int(model.config.hidden_size)}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("phase", choices=("build", "measure", "clean"))
    ap.add_argument("--sizes", type=ints, default=[1_000_000, 10_000_000, 50_000_000])
    ap.add_argument("--dim", type=int, default=128, help="the mini model's hidden size")
    ap.add_argument("--nlist", type=int, default=4096)
    ap.add_argument("--m", type=int, default=64)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16, help="queries per search call")
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--followed", type=int, default=64,
                    help="successors followed per token on the pointer path")
    ap.add_argument("--spread", type=float, default=0.5, help="noise around each centre")
    ap.add_argument("--no-keys", action="store_true",
                    help="build no key and value files (no pointer step measured)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", type=Path, default=Path("runs/mini/pdsw"))
    ap.add_argument("--work", type=Path, default=Path("runs/knn_size_curve"))
    ap.add_argument("--json", type=Path, default=Path("runs/knn_size_curve.json"))
    args = ap.parse_args(argv)
    if args.phase == "clean":
        shutil.rmtree(args.work, ignore_errors=True)
        return
    if args.phase == "build":
        for n in args.sizes:
            build_size(args, n)
            print(f"built {n:,} entries in {args.work / str(n)}", flush=True)
        return
    forward = forward_ms_per_token(args.model, args.repeat)
    queries = mixture(args, args.queries, seed=2)
    rows = [measure_size(args, n, queries) for n in args.sizes]
    for r in rows:
        for name in ("search", "fastscan", "follow"):
            ms = r[f"{name}_ms_per_token"]
            r[f"{name}_x_forward"] = None if ms is None else ms / forward["forward_ms_per_token"]
    out = {"forward": forward, "nlist": args.nlist, "m": args.m, "nprobe": args.nprobe,
           "k": args.k, "batch": args.batch, "followed": args.followed,
           "torch_threads": torch.get_num_threads(), "faiss_threads": faiss.omp_get_max_threads(),
           "rows": rows}
    args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
