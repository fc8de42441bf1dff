"""Generation under load: completions per second for 1 and 16 concurrent clients.

    OMP_NUM_THREADS=1 python bench/generation_load.py [--model DIR] [--datastore DIR]
        [--rounds 2] [--per-client 4] [--profile]

The server is `silo serve`'s app in its own process (bench/served.py; one torch thread,
so the event loop keeps the other core), by default with the shipped model and
`silo serve`'s default datastore (built into the cache on first use). The clients are
httpx clients in threads of this process. Each request is a 2-3 word prompt,
`max_tokens` 16, temperature 0.8 and its own seed; the loads are each mode alone
(parametric, knnlm, ric) and the mix, whose requests go round robin parametric, knnlm,
knnlm, ric. For every load, one client sends `--per-client` x 16 requests one after
another, then 16 clients send `--per-client` each; the loads and the 1/16 pairs are
interleaved over `--rounds` rounds and the medians reported, with the ratio 16 : 1 and
each mode's 16-client rate against parametric's.

Then the same loads stepped directly in this process (`SiloLM.start`/`step`: the 16
requests one at a time, and stepped together), the ceiling batching allows, and with `--profile`
where a 16-row step of the mix spends its time: the forward passes, the kNN searches,
the BM25 retrieval, the mixture, sampling, and detokenising (each wrapped with a timer),
next to the served step time per token (the rest is the event loop, HTTP and the hop to
the model thread).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from served import serve, stop  # noqa: E402

from silo.lm import GenerationRequest, SiloConfig, SiloLM, SiloOptions  # noqa: E402

PROMPTS = ("The program", "A computer is", "In the beginning", "The language",
           "An operating system", "The word", "A network", "Data is", "The first",
           "A function returns", "The user", "Memory is", "The system", "A file",
           "The compiler", "Software is")
LOADS = {"parametric": ("parametric",), "knnlm": ("knnlm",), "ric": ("ric",),
         "mix": ("parametric", "knnlm", "knnlm", "ric")}
CLIENTS = 16
TOKENS = 16


def _request(load: str, client: int, i: int) -> tuple[str, str, int]:
    """(prompt, mode, seed) of the i-th request of a client under a load."""
    modes = LOADS[load]
    n = client * 1000 + i
    return PROMPTS[n % len(PROMPTS)], modes[(client + i) % len(modes)], n


def _served(url: str, load: str, clients: int, per_client: int) -> float:
    """Completions per second: `clients` threads each sending `per_client` requests in
    turn (the httpx clients are made before the clock starts)."""
    made = [httpx.Client(base_url=url, timeout=600) for _ in range(clients)]

    def one(c: int) -> None:
        for i in range(per_client):
            prompt, mode, seed = _request(load, c, i)
            made[c].post("/v1/completions", json={
                "prompt": prompt, "max_tokens": TOKENS, "temperature": 0.8, "seed": seed,
                "silo": {"mode": mode}}).raise_for_status()
    try:
        t = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(clients)))
        return clients * per_client / (time.perf_counter() - t)
    finally:
        for c in made:
            c.close()


def _requests(lm: SiloLM, load: str, clients: int) -> list[GenerationRequest]:
    out = []
    for c in range(clients):
        prompt, mode, seed = _request(load, c, 0)
        out.append(GenerationRequest(tuple(lm.encode(prompt)), max_tokens=TOKENS,
                                     temperature=0.8, seed=seed,
                                     options=SiloOptions(mode=mode)))
    return out


def _stepped(lm: SiloLM, requests: list[GenerationRequest]) -> tuple[float, int]:
    """Completions per second of `requests` stepped together, and the steps taken."""
    t = time.perf_counter()
    states = lm.start(requests)
    steps = 0
    while not all(s.finished for s in states):
        lm.step(states)
        steps += 1
    assert all(s.error is None for s in states), [s.error for s in states]
    return len(requests) / (time.perf_counter() - t), steps


class _Timers:
    """Seconds spent in wrapped methods, by name (nested calls count in both)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, obj: Any, method: str, name: str) -> None:
        inner = getattr(obj, method)

        def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                self.seconds[name] += time.perf_counter() - t
        setattr(obj, method, timed)


def _profile(lm: SiloLM, requests: list[GenerationRequest]) -> tuple[float, int, dict[str, float]]:
    """Wall seconds of stepping `requests` together, the steps, and per part seconds."""
    import silo.generation as generation

    timers = _Timers()
    for method in ("forward", "prefill", "decode"):
        timers.wrap(lm.runner, method, f"forward passes ({method})")
    timers.wrap(lm.retriever, "search", "kNN search")
    timers.wrap(lm.retriever, "passages", "BM25 retrieval")
    timers.wrap(lm.mixer, "mixed", "mixture")
    timers.wrap(lm.codec, "decode", "detokenising")
    timers.wrap(generation, "sample_many", "sampling")
    t = time.perf_counter()
    _, steps = _stepped(lm, requests)
    return time.perf_counter() - t, steps, dict(timers.seconds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    ap.add_argument("--datastore", type=Path, default=None,
                    help="default: silo serve's default datastore (built once)")
    ap.add_argument("--reference", type=Path, default=None,
                    help="the reference index the datastore's weight reads, if it reads one "
                         "(default: with the default datastore, its reference)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--per-client", type=int, default=4)
    ap.add_argument("--loads", default=",".join(LOADS))
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-served", action="store_true", help="only the direct rows")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from silo.cli.serve_cmd import default_datastore, default_reference
    from silo.model import DEFAULT_MODEL

    model = args.model or DEFAULT_MODEL
    store = args.datastore or default_datastore(model)
    reference = args.reference or (default_reference(model) if args.datastore is None else None)
    with_reference = {} if reference is None else {"reference": reference}
    loads = args.loads.split(",")
    served: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in loads}
    if not args.no_served:
        per = args.per_client
        budget = args.rounds * len(loads) * (CLIENTS * per * 2) + 100
        proc, url = serve(model, store, 1, budget, torch_threads=1, **with_reference)
        try:
            _served(url, "mix", 1, 4)  # warm up
            for _ in range(args.rounds):
                for name in loads:
                    served[name][0].append(_served(url, name, 1, CLIENTS * per))
                    served[name][1].append(_served(url, name, CLIENTS, per))
        finally:
            stop(proc)
    lm = SiloLM.from_dirs(model, store, config=SiloConfig(batch_size=16),
                          reference_dir=reference)
    direct: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in loads}
    _stepped(lm, _requests(lm, "mix", 4))  # warm up
    for _ in range(args.rounds):
        for name in loads:
            reqs = _requests(lm, name, CLIENTS)
            # one at a time, as the one served client sends them
            direct[name][0].append(len(reqs) / sum(1 / _stepped(lm, [r])[0] for r in reqs))
            direct[name][1].append(_stepped(lm, reqs)[0])
    print(f"model {model}, datastore {store}, reference {reference}; {TOKENS} tokens, "
          "temperature 0.8, "
          f"{args.rounds} rounds, medians")
    print("| load | served, 1 client | served, 16 clients | 16 : 1 | x parametric at 16 "
          "| direct, 1 | direct, 16 stepped together | 16 : 1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    med = {n: [statistics.median(v) if v else float("nan") for v in (*served[n], *direct[n])]
           for n in loads}
    base = med.get("parametric", [float("nan")] * 4)[1]
    for name in loads:
        s1, s16, d1, d16 = med[name]
        print(f"| {name} | {s1:.2f} | {s16:.2f} | {s16 / s1:.2f}x | {s16 / base:.2f}x "
              f"| {d1:.2f} | {d16:.2f} | {d16 / d1:.2f}x |")
    if args.profile:
        wall, steps, parts = _profile(lm, _requests(lm, "mix", CLIENTS))
        print(f"\n16 mixed requests stepped together: {wall:.2f} s, {steps} steps, "
              f"{1e3 * wall / steps:.1f} ms a step")
        for part, sec in sorted(parts.items(), key=lambda p: -p[1]):
            print(f"  {part}: {sec:.2f} s ({100 * sec / wall:.0f}%)")
        rest = wall - sum(parts.values())
        print(f"  the rest (plans, bookkeeping, events): {rest:.2f} s "
              f"({100 * rest / wall:.0f}%)")
        if "mix" in med and not args.no_served:
            print(f"served, 16 clients: {1e3 * CLIENTS / med['mix'][1] / steps:.1f}"
                  f" ms a step-equivalent against {1e3 * wall / steps:.1f} ms direct")


if __name__ == "__main__":
    main()
