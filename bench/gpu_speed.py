"""kNN-LM scoring throughput on a GPU against the parametric LM, at 50M+ datastore entries.

Everything is synthetic, so it runs on a machine without network or data: a randomly
initialised LM of a preset (`base` by default) in bf16, keys of its hidden size in fp16
(clustered, so IVF has lists to find), random next-token values, random token ids to
score. The datastore lives on the device only (50M 512-d fp16 keys are 51 GB): no key
file is written.

Searches: the torch exact search (`TorchExactIndex`, fp16 tiles); the torch IVF-PQ
(`IvfPq`), trained on the device by k-means on a sample (coarse centroids, then PQ
codebooks on the residuals, as faiss trains) and filled by the torch encoder; the same
with an opt-out filter excluding 1% of the entries; and faiss-gpu IVF-PQ with the same
quantizer where faiss-gpu is installed. faiss is not needed otherwise. Cases are timed
in interleaved rounds after one warm-up, each figure the median over rounds, ratios
against parametric within this run; the JSON is rewritten after every round, so a run
cut short still leaves its figures. Scoring = forward pass, log-softmax, search, kNN
distribution, interpolation, gathering the targets' log-probs.

    python bench/gpu_speed.py --entries 50000000 --preset base        # on a GPU
    python bench/gpu_speed.py --entries 20000 --preset tiny --nlist 64 --m 8 \\
        --batch 2 --seq 64 --train-size 8192                           # CPU dry run
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from datastore.filter import EntryFilter, compute_filter
from datastore.index.torch_exact import TorchExactIndex
from datastore.table.records import snapshot_of
from silo.config import get_preset
from silo.knnlm import KnnParams, interpolate, knn_log_probs
from silo.model import build_lm

if TYPE_CHECKING:
    from datastore.index.torch_ivfpq import IvfPq

Search = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def env_default(name: str, default: Any) -> Any:
    """SILO_GPU_<NAME> from the environment, else `default` (arguments override both)."""
    raw = os.environ.get(f"SILO_GPU_{name.upper()}")
    return default if raw is None else type(default)(raw)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default, help_ in [
        ("entries", 50_000_000, "datastore entries"),
        ("preset", "base", "LM preset (silo/config.py)"),
        ("vocab", 8192, "LM vocabulary"),
        ("batch", 8, "sequences per forward pass"),
        ("seq", 512, "tokens per sequence"),
        ("batches", 2, "batches scored per case and round"),
        ("exact_batches", 1, "batches per round for exact search (slowest)"),
        ("rounds", 3, "interleaved timing rounds"),
        ("k", 1024, "neighbours (SILO's k)"),
        ("nlist", 4096, "IVF lists"), ("m", 64, "PQ sub-quantizers"),
        ("nbits", 8, "bits per PQ code"), ("nprobe", 8, "lists probed"),
        ("train_size", 163_840, "keys the IVF-PQ is trained on (40 x nlist)"),
        ("excluded", 0.01, "fraction of entries the filtered case excludes"),
        ("tile_elems", 0, "exact search tile, in distances (0 = the index default)"),
        ("seed", 0, "random seed"),
        ("budget_s", 0.0, "stop adding timed rounds after this many seconds (0 = no limit)"),
        ("tests", "", "the CUDA tests' outcome, recorded verbatim in the JSON"),
    ]:
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(default),
                        default=env_default(name, default), help=help_)
    ap.add_argument("--device", default=os.environ.get(
        "SILO_GPU_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(os.environ.get("OUT", "bench/out")) / "gpu.json"
    ap.add_argument("--json", type=Path, default=out, help="where the results go")
    return ap.parse_args(argv)


def synthetic_keys(n: int, dim: int, device: torch.device, seed: int) -> torch.Tensor:
    """(n, dim) keys around 1024 random centres, fp16 on CUDA (fp32 on CPU), made in
    slices on the device; unit-variance coordinates like a normed hidden state."""
    g = torch.Generator(device=device).manual_seed(seed)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    centres = torch.randn(1024, dim, device=device, generator=g)
    keys = torch.empty(n, dim, dtype=dtype, device=device)
    for s in range(0, n, 1 << 20):
        e = min(n, s + (1 << 20))
        pick = torch.randint(0, len(centres), (e - s,), device=device, generator=g)
        noise = torch.randn(e - s, dim, device=device, generator=g)
        keys[s:e] = (0.8 * centres[pick] + 0.6 * noise).to(dtype)
    return keys


def nearest(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """x (b, n, d), c (b, k, d) float32 -> (b, n) index of each row's nearest centre."""
    return (c.pow(2).sum(-1)[:, None, :] - 2 * x @ c.transpose(1, 2)).argmin(-1)


def kmeans(x: torch.Tensor, k: int, iters: int, g: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means, batched: x (b, n, d) float32 -> (b, k, d) centres (an empty
    cluster keeps its previous centre)."""
    b, n, d = x.shape
    c = x[:, torch.randperm(n, device=x.device, generator=g)[:k]].clone()
    rows = torch.arange(b, device=x.device)[:, None] * k
    for _ in range(iters):
        assign = (nearest(x, c) + rows).reshape(-1)  # (b * n,) flat cluster ids
        sums = torch.zeros(b * k, d, device=x.device).index_add_(0, assign, x.reshape(-1, d))
        counts = torch.bincount(assign, minlength=b * k)[:, None]
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c.reshape(-1, d)).view(b, k, d)
    return c


def train_ivfpq(keys: torch.Tensor, args: argparse.Namespace) -> IvfPq:
    """IVF-PQ trained on the device (k-means on a sample: coarse centroids, then PQ
    codebooks on the residuals, as faiss trains it on the CPU, which at nlist 4096 would
    take much of the time budget) and filled by the torch encoder."""
    from datastore.index.torch_ivfpq import IvfPq

    g = torch.Generator(device=keys.device).manual_seed(args.seed + 2)
    rows = torch.randperm(len(keys), device=keys.device, generator=g)[: args.train_size]
    sample = keys[rows].float()
    centroids = kmeans(sample[None], args.nlist, 10, g)[0]
    residuals = sample - centroids[nearest(sample[None], centroids[None])[0]]
    residuals = residuals[: 256 * 2 ** args.nbits]  # faiss, too, trains PQ on <= 256 x ksub
    per_sub = residuals.view(len(residuals), args.m, -1).transpose(0, 1).contiguous()
    ivf = IvfPq.trained(centroids, kmeans(per_sub, 2 ** args.nbits, 25, g))
    lists, codes = ivf.encode(keys)
    return IvfPq.from_codes(ivf, lists, codes, torch.arange(len(keys), device=keys.device))


def opt_out_filter(n: int, fraction: float, doc_len: int = 1000) -> EntryFilter:
    """Documents of `doc_len` entries, `fraction` of them opted out (spread evenly),
    through the one filter function."""
    starts = np.arange(0, n, doc_len, dtype=np.int64)
    ends = np.minimum(starts + doc_len, n)
    docs = len(starts)
    ranges = np.stack([starts, ends, np.arange(docs), np.arange(1, docs + 1)], 1)
    every = max(1, round(1 / fraction)) if fraction > 0 else docs + 1
    removed = np.arange(docs) % every == 0
    snap = snapshot_of([f"d{i}" for i in range(docs)], ["pd"] * docs, ["s"] * docs, removed,
                       ranges)
    return compute_filter(snap)


def faiss_gpu_search(ivf: IvfPq, keys: torch.Tensor, nprobe: int) -> Search:
    """faiss-gpu IVF-PQ with the same trained quantizer, the keys added through faiss."""
    import faiss

    m, ksub, dsub = ivf.codebooks.shape
    dim = m * dsub
    trained: Any = faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, len(ivf.centroids), m,
                                    ksub.bit_length() - 1)
    trained.quantizer.add(ivf.centroids.cpu().numpy())
    faiss.copy_array_to_vector(ivf.codebooks.cpu().numpy().ravel(), trained.pq.centroids)
    trained.is_trained = True
    opts = faiss.GpuClonerOptions()
    opts.useFloat16 = True  # float16 lookup tables: needed for M = 64 on the GPU
    res = faiss.StandardGpuResources()
    gpu: Any = faiss.index_cpu_to_gpu(res, 0, trained, opts)
    for s in range(0, len(keys), 1 << 20):
        gpu.add(keys[s:s + (1 << 20)].float().cpu().numpy())
    gpu.nprobe = nprobe
    held = (res, gpu)  # the resources must live as long as the index

    def search(q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        d, i = held[1].search(q.float().cpu().numpy(), k)
        return torch.from_numpy(d).to(q.device), torch.from_numpy(i).to(q.device)

    return search


class Scorer:
    """Scores token batches with the LM alone or with kNN-LM over one search."""

    def __init__(self, model: Any, values: torch.Tensor, vocab: int, params: KnnParams) -> None:
        self.model, self.values, self.vocab, self.params = model, values, vocab, params

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, search: Search | None) -> torch.Tensor:
        """(b, t) token ids -> (b * (t - 1),) float32 log-probs of each next token."""
        hidden = self.model.base_model(input_ids=ids).last_hidden_state  # after final norm
        logits = self.model.get_output_embeddings()(hidden[:, :-1])
        lp = torch.log_softmax(logits.float(), -1).reshape(-1, self.vocab)
        targets = ids[:, 1:].reshape(-1, 1)
        if search is not None:
            q = hidden[:, :-1].reshape(-1, hidden.shape[-1]).float()
            dist, nn = search(q, self.params.k)
            values = torch.where(nn >= 0, self.values[nn.clamp_min(0)], -1)
            knn = knn_log_probs(dist, values, self.vocab, self.params.temperature)
            lp = interpolate(lp, knn, self.params.lam, (nn >= 0).any(1))
        return lp.gather(1, targets)[:, 0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    clock: dict[str, float] = {}
    t0 = time.perf_counter()
    model: Any = build_lm(args.preset, args.vocab, seed=args.seed)
    model = model.to(device, torch.bfloat16).eval()  # the LM in bf16, cast here
    dim = get_preset(args.preset).hidden_size
    need = max(args.nlist, 2 ** args.nbits)
    if dim % args.m or args.train_size < need:
        raise SystemExit(f"--m {args.m} must divide the hidden size {dim}, and --train-size "
                         f"must be at least max(nlist, 2^nbits) = {need}")
    keys = synthetic_keys(args.entries, dim, device, args.seed)
    values = torch.randint(0, args.vocab, (args.entries,), device=device)
    sync(device)
    clock["model_and_keys_s"] = time.perf_counter() - t0
    opted_out = opt_out_filter(args.entries, args.excluded)
    cases: list[tuple[str, Search | None, int]] = [("parametric", None, args.batches)]
    ivfpq_cases(keys, args, opted_out, cases, clock)
    exact = TorchExactIndex(keys)
    exact.tile_elems = args.tile_elems or exact.tile_elems
    del keys  # the exact index holds them
    cases.insert(1, ("knnlm, torch exact", lambda q, k: exact.search_tensor(q, k),
                     args.exact_batches))
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "dry_run": device.type != "cuda", "torch": torch.__version__,
           "faiss": faiss_version(), "faiss_gpu": any("faiss-gpu" in c[0] for c in cases),
           "preset": args.preset, "dim": dim, "vocab": args.vocab, "lm_dtype": "bf16",
           "entries": args.entries, "k": args.k, "nlist": args.nlist, "m": args.m,
           "nbits": args.nbits, "nprobe": args.nprobe, "batch": args.batch, "seq": args.seq,
           "excluded_entries": opted_out.n_excluded_entries, "setup": clock,
           "cuda_tests": args.tests, "rounds": 0, "rows": []}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))  # the setup, should measuring be cut
    for rows, rounds in measure(args, model, values, cases, device):
        out.update(rows=rows, rounds=rounds)
        args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def ivfpq_cases(keys: torch.Tensor, args: argparse.Namespace, opted_out: EntryFilter,
                cases: list[tuple[str, Search | None, int]], clock: dict[str, float],
                ) -> None:
    """Append the IVF-PQ cases: torch, torch filtered, faiss-gpu where installed."""
    from datastore.index.torch_ivfpq import faiss_has_gpu

    t0 = time.perf_counter()
    ivf = train_ivfpq(keys, args)
    sync(keys.device)
    clock["ivfpq_train_and_fill_s"] = time.perf_counter() - t0
    probe = f"nprobe {args.nprobe}"
    cases += [
        (f"knnlm, torch IVF-PQ {probe}",
         lambda q, k: ivf.search_tensor(q, k, args.nprobe), args.batches),
        (f"knnlm, torch IVF-PQ {probe}, {args.excluded:.0%} opted out",
         lambda q, k: ivf.search_tensor(q, k, args.nprobe, opted_out), args.batches)]
    if faiss_has_gpu():
        t0 = time.perf_counter()
        cases.append((f"knnlm, faiss-gpu IVF-PQ {probe}",
                      faiss_gpu_search(ivf, keys, args.nprobe), args.batches))
        clock["faiss_gpu_fill_s"] = time.perf_counter() - t0


def faiss_version() -> str | None:
    try:
        import faiss
    except ImportError:
        return None
    return str(faiss.__version__)


def measure(args: argparse.Namespace, model: Any, values: torch.Tensor,
            cases: list[tuple[str, Search | None, int]], device: torch.device,
            ) -> Iterator[tuple[list[dict[str, Any]], int]]:
    """Interleaved rounds after a warm-up. After each timed round, yields the rows so far
    (tokens/s from the median round per case) and the rounds timed; stops early once
    `budget_s` is spent."""
    score = Scorer(model, values, args.vocab, KnnParams(k=args.k))
    g = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device)
               for _ in range(max(n for *_, n in cases))]
    seconds: dict[str, list[float]] = {name: [] for name, *_ in cases}
    mean_lp: dict[str, float] = {}
    start = time.perf_counter()
    for round_ in range(args.rounds + 1):  # round 0 warms up and is not counted
        if round_ > 1 and args.budget_s and time.perf_counter() - start > args.budget_s:
            return
        for name, search, n in cases:
            sync(device)
            t0 = time.perf_counter()
            lps = [score(b, search) for b in batches[:n]]
            sync(device)
            if round_:
                seconds[name].append(time.perf_counter() - t0)
            mean_lp[name] = float(torch.cat(lps).mean())
        if round_:
            yield summary(args, cases, seconds, mean_lp), round_


def summary(args: argparse.Namespace, cases: list[tuple[str, Search | None, int]],
            seconds: dict[str, list[float]], mean_lp: dict[str, float],
            ) -> list[dict[str, Any]]:
    """One row per case: tokens/s of its median round, and the ratio to parametric."""
    rows = []
    for name, _, n in cases:
        tokens = n * args.batch * (args.seq - 1)
        median = float(np.median(seconds[name]))
        rows.append({"mode": name, "tokens": tokens, "tokens_per_s": tokens / median,
                     "ms_per_batch": 1000 * median / n, "mean_logprob": mean_lp[name]})
    for r in rows:
        r["ratio"] = r["tokens_per_s"] / rows[0]["tokens_per_s"]
    return rows


if __name__ == "__main__":
    main()
