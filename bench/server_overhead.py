"""Server overhead and batching: the served API, in its own process, against SiloLM.

    OMP_NUM_THREADS=1 python bench/server_overhead.py [--preset mini | --model DIR]
        [--requests 12] [--threads 1]

The server runs as a separate process (bench/served.py: `uvicorn --factory
server.app:create_app` on 127.0.0.1, a free port, `--limit-max-requests` so it stops by
itself, and terminated at the end in any case) with `OMP_NUM_THREADS` = `--threads`; the
direct calls run in this process with `torch.set_num_threads(--threads)`, the same
budget, and never at the same time as the server works. One thread is the default: on a
small machine whose cores other work also uses, two OpenMP threads per process spin
against each other (a 32-token completion took 1.0 s with two and 0.16 s with one on the
2-core machine of docs/BENCHMARKS.md). Clients are httpx clients in a thread pool of
this process. Measures, in one run on one machine:

  * p50 latency of a 32-token greedy completion: direct `SiloLM.generate` vs served;
  * p50 latency of scoring one prompt: direct `SiloLM.score` vs served
    (echo, max_tokens=0), of a 1-token completion and of `GET /healthz`;
  * throughput of 32-token greedy completions, 16 concurrent clients vs 1, in
    parametric and knnlm modes (completions per second, each client sending its
    requests one after another), next to the ceiling batching allows: 16 generations
    stepped together by `SiloLM.step` in this process vs 1;
  * where the CPU went while served: the server's event loop (its main thread), its
    other threads (the model thread), and the clients (this process), per request and
    in cores (CPU seconds per second of the measurement), next to the CPU of one direct
    `SiloLM.score` call.

Model: a randomly initialised preset (weights do not change the cost), or with --model a
saved one (the shipped models/silo-small), with a small datastore built from the test
corpus.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from served import build_datastore, build_model, serve, stop  # noqa: E402
from served import median_seconds as _p50  # noqa: E402

from silo.lm import (  # noqa: E402
    GenerationRequest,
    ScoreRequest,
    SiloConfig,
    SiloLM,
    SiloOptions,
)  # noqa: E402

MODES = ("parametric", "knnlm")
TOKENS = 32


class _Cpu:
    """CPU seconds spent from `start()` on: the server's main thread (the event loop), its
    other threads (the model thread), and this process (the clients)."""

    def __init__(self, pid: int) -> None:
        self.server = psutil.Process(pid)
        self.pid = pid

    def _now(self) -> tuple[float, float, float, float]:
        loop = other = 0.0
        for t in self.server.threads():
            if t.id == self.pid:
                loop += t.user_time + t.system_time
            else:
                other += t.user_time + t.system_time
        me = resource.getrusage(resource.RUSAGE_SELF)
        return loop, other, me.ru_utime + me.ru_stime, time.perf_counter()

    def start(self) -> None:
        self._start = self._now()

    def report(self, requests: int) -> str:
        loop, model, clients, wall = (b - a for a, b in zip(self._start, self._now(),
                                                            strict=True))
        return (f"CPU ms/request: event loop {1e3 * loop / requests:.2f}, model thread "
                f"{1e3 * model / requests:.2f}, clients {1e3 * clients / requests:.2f}; "
                f"cores: event loop {loop / wall:.2f}, model thread {model / wall:.2f}, "
                f"clients {clients / wall:.2f}")


def _throughput(url: str, body: dict[str, object], clients: int, per_client: int) -> float:
    """Requests per second, `clients` threads each sending `per_client` in turn. The
    clients are made before the clock starts: making an httpx client builds an SSL
    context, about 25 ms of CPU, more than the server spends on a request."""
    made = [httpx.Client(base_url=url, timeout=600) for _ in range(clients)]

    def one(c: httpx.Client) -> None:
        for _ in range(per_client):
            c.post("/v1/completions", json=body).raise_for_status()
    try:
        t = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, made))
        return clients * per_client / (time.perf_counter() - t)
    finally:
        for c in made:
            c.close()


def _stepped(lm: SiloLM, request: GenerationRequest, k: int) -> float:
    """Completions per second of k copies of `request` stepped together (direct)."""
    t = time.perf_counter()
    states = lm.start([request] * k)
    while not all(s.finished for s in states):
        lm.step(states)
    return k / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--model", type=Path, default=None,
                    help="a saved model to serve instead of a random --preset")
    ap.add_argument("--requests", type=int, default=12, help="samples per latency p50")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads, for the server process and the direct calls")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp())
    model = args.model or build_model(work / "model", args.preset)
    store = build_datastore(model, work / "store")
    lm = SiloLM.from_dirs(model, store, config=SiloConfig(batch_size=16))  # as served
    prompt = tuple(range(10, 10 + args.prompt_tokens))
    n = args.requests
    parametric = SiloOptions(mode="parametric")
    gen = GenerationRequest(prompt, max_tokens=TOKENS, temperature=0, options=parametric)
    lm.generate(gen)  # warm up
    direct_gen = _p50(lambda: lm.generate(gen), n)
    score = ScoreRequest(prompt, options=parametric)
    cpu = time.process_time()
    direct_score = _p50(lambda: lm.score([score]), 10 * n)
    direct_score_cpu = (time.process_time() - cpu) / (10 * n)
    ceiling = {mode: (_stepped(lm, replace(gen, options=SiloOptions(mode=mode)), 1),
                      _stepped(lm, replace(gen, options=SiloOptions(mode=mode)), 16))
               for mode in MODES}

    bodies = {mode: {"prompt": list(prompt), "max_tokens": TOKENS, "temperature": 0,
                     "silo": {"mode": mode}} for mode in MODES}
    body_score = {"prompt": list(prompt), "max_tokens": 0, "echo": True, "logprobs": 0,
                  "silo": {"mode": "parametric"}}
    body_one = {**bodies["parametric"], "max_tokens": 1}
    per_many = 4
    per_single = per_many * (16 // 4)  # the one client sends as many as 4 of the 16
    budget = 2 * n + 31 * n + 2 + len(MODES) * (per_single + 16 * per_many) + 1000
    proc, url = serve(model, store, args.threads, budget)
    usage = _Cpu(proc.pid)
    try:
        http = httpx.Client(base_url=url, timeout=600)
        http.post("/v1/completions", json=bodies["parametric"]).raise_for_status()  # warm up
        served_gen = _p50(lambda: http.post("/v1/completions", json=bodies["parametric"])
                          .raise_for_status(), n)
        usage.start()
        served_score = _p50(lambda: http.post("/v1/completions", json=body_score)
                            .raise_for_status(), 10 * n)
        score_cpu = usage.report(10 * n)
        served_one = _p50(lambda: http.post("/v1/completions", json=body_one)
                          .raise_for_status(), 10 * n)
        health = _p50(lambda: http.get("/healthz").raise_for_status(), 10 * n)
        rates, cpus = {}, {}
        for mode in MODES:
            one = _throughput(url, bodies[mode], 1, per_single)
            usage.start()
            many = _throughput(url, bodies[mode], 16, per_many)
            rates[mode], cpus[mode] = (one, many), usage.report(16 * per_many)
    finally:
        stop(proc)
    print(f"threads {args.threads}, model {args.model or 'preset ' + args.preset}, prompt "
          f"{len(prompt)} tokens")
    print(f"{TOKENS}-token completion p50: direct {direct_gen * 1e3:.1f} ms, served "
          f"{served_gen * 1e3:.1f} ms (x{served_gen / direct_gen:.3f})")
    print(f"scoring p50: direct {direct_score * 1e3:.2f} ms ({direct_score_cpu * 1e3:.2f} ms "
          f"CPU), served {served_score * 1e3:.2f} ms; throughput ratio served/direct "
          f"{direct_score / served_score:.3f}")
    print(f"  served scoring {score_cpu}")
    print(f"1-token completion p50 {served_one * 1e3:.2f} ms, /healthz p50 "
          f"{health * 1e3:.2f} ms")
    for mode, (one, many) in rates.items():
        print(f"{mode} {TOKENS}-token completions: 1 client {one:.2f} req/s, 16 clients "
              f"{many:.2f} req/s (x{many / one:.2f}); direct SiloLM.step 1 "
              f"{ceiling[mode][0]:.2f}/s, 16 together {ceiling[mode][1]:.2f}/s "
              f"(x{ceiling[mode][1] / ceiling[mode][0]:.2f})")
        print(f"  16 clients {cpus[mode]}")


if __name__ == "__main__":
    main()
