"""Soak: 16 clients against the served API for a fixed time; errors, latency, memory.

    OMP_NUM_THREADS=1 python bench/soak.py [--duration 600] [--clients 16]
        [--preset mini] [--threads 1] [--out docs]

The server runs in its own process (bench/served.py: the real app under uvicorn on
127.0.0.1, a small datastore built from the test corpus, the admin key set); the clients
are threads of this process, each a loop bounded by time and by count:

  * 15 inference clients, each in one mode (parametric, knnlm, ric, knnlm+ric in turn),
    attribution on for every other client; a third of the requests stream over SSE, and
    half of those hang up after the first event; greedy and sampled, n = 1 or 2, with
    and without logprobs, and 5% with temperature or top_p at 1e-300;
  * 1 admin client that adds two documents now and then, opts one out by id and the
    other by its source, and lists the receipts.

Reports errors by status (a 429 with Retry-After is back-pressure: the client waits as
told, and it is not an error; an error event inside a stream is an error), p50/p99
latency per mode (complete responses; a stream is timed to `data: [DONE]`), and the
server's RSS over time (VmRSS from /proc/PID/status every --sample-every seconds).
Writes soak.json and soak_rss.png into --out and prints the verdict: 0 errors, and the
mean RSS of the last third of the run within 10% of that of the first third.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import statistics
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from served import build_datastore, build_model, serve, stop

MODES = ("parametric", "knnlm", "ric", "knnlm+ric")
ADMIN_KEY = "soak-admin"
WORDS = ("the quick brown fox jumps over the lazy dog in the beginning god created the "
         "heaven and the earth def add return the sum of a and b heap queue algorithm "
         "kernel operating system lay to cause to lie down").split()
MAX_REQUESTS = 1_000_000  # per client: the time limit ends the loops long before
RSS_TOLERANCE = 0.10


@dataclass
class Tally:
    """What the clients saw; one lock guards it all."""

    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    backpressure: int = 0
    hung_up: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.latency[kind].append(seconds)

    def error(self, what: str) -> None:
        with self.lock:
            self.errors[what] += 1


def _body(rng: random.Random, mode: str, attribution: bool) -> dict[str, object]:
    greedy = rng.random() < 0.5
    body: dict[str, object] = {
        "prompt": " ".join(rng.choices(WORDS, k=rng.randint(4, 40))),
        "max_tokens": rng.randint(4, 32), "temperature": 0 if greedy else 0.8,
        "top_p": 1.0 if greedy else 0.9, "n": 1 if greedy else rng.choice((1, 2)),
        "silo": {"mode": mode, "attribution": attribution}}
    if rng.random() < 0.25:
        body["logprobs"] = 2
    if rng.random() < 0.05:  # edge values, which must not hurt the requests batched with them
        body[rng.choice(("temperature", "top_p"))] = 1e-300
    return body


def _backpressure(r: httpx.Response, tally: Tally) -> bool:
    """True (after waiting as told) when the server pushed back with 429 + Retry-After."""
    if r.status_code == 429 and "retry-after" in r.headers:
        with tally.lock:
            tally.backpressure += 1
        time.sleep(float(r.headers["retry-after"]))
        return True
    return False


def _stream(http: httpx.Client, body: dict[str, object], hang_up: bool, tally: Tally,
            ) -> float | None:
    """Seconds to `data: [DONE]`, or None if the client hung up or met an error."""
    started = time.perf_counter()
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            r.read()
            if not _backpressure(r, tally):
                tally.error(f"stream {r.status_code}")
            return None
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return time.perf_counter() - started
            if "error" in (event := json.loads(line[6:])):
                tally.error(f"stream error event {event['error'].get('type')}")
                return None
            if hang_up:
                with tally.lock:
                    tally.hung_up += 1
                return None  # leaving the block closes the connection mid-stream
    tally.error("stream ended without [DONE]")
    return None


def _inference_client(url: str, index: int, end: float, tally: Tally) -> None:
    rng = random.Random(index)
    mode, attribution = MODES[index % len(MODES)], (index // len(MODES)) % 2 == 1
    with httpx.Client(base_url=url, timeout=120) as http:
        for _ in range(MAX_REQUESTS):
            if time.monotonic() >= end:
                return
            body = _body(rng, mode, attribution)
            try:
                if rng.random() < 1 / 3:
                    seconds = _stream(http, body, rng.random() < 0.5, tally)
                else:
                    started = time.perf_counter()
                    r = http.post("/v1/completions", json=body)
                    seconds = time.perf_counter() - started
                    if r.status_code != 200:
                        seconds = None
                        if not _backpressure(r, tally):
                            tally.error(str(r.status_code))
            except httpx.HTTPError as e:
                tally.error(type(e).__name__)
                continue
            if seconds is not None:
                tally.ok(mode, seconds)


def _admin_client(url: str, end: float, tally: Tally, every_s: float) -> None:
    counter = itertools.count()
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=url, timeout=120, headers=headers) as http:
        for _ in range(MAX_REQUESTS):
            if time.monotonic() + every_s >= end:
                return
            time.sleep(every_s)
            n = next(counter)
            docs = [{"id": f"soak/{n}/{j}", "text": " ".join(random.choices(WORDS, k=60)),
                     "license": "CC0-1.0", "source": f"soak-{n}-{j}"} for j in range(2)]
            calls: list[tuple[str, str, str, object]] = [
                ("add", "POST", "/admin/documents", {"documents": docs}),
                ("optout", "POST", "/admin/optout", {"doc_ids": [docs[0]["id"]]}),
                ("optout", "POST", "/admin/optout", {"source": docs[1]["source"]}),
                ("receipts", "GET", "/admin/optouts", None)]
            for kind, method, path, payload in calls:
                started = time.perf_counter()
                try:
                    r = http.request(method, path, json=payload)
                except httpx.HTTPError as e:
                    tally.error(f"admin {type(e).__name__}")
                    break
                if r.status_code != 200:
                    tally.error(f"admin {kind} {r.status_code}")
                    break
                tally.ok(f"admin {kind}", time.perf_counter() - started)


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def _sample_rss(pid: int, every_s: float, stop_at: threading.Event,
                samples: list[tuple[float, float]]) -> None:
    started = time.monotonic()
    while not stop_at.is_set():
        rss = _rss_mib(pid)
        if rss is not None:
            samples.append((round(time.monotonic() - started, 2), round(rss, 1)))
        stop_at.wait(every_s)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _thirds(samples: list[tuple[float, float]]) -> tuple[float, float]:
    """Mean RSS of the first and the last third of the run (by time)."""
    span = samples[-1][0]
    first = [m for t, m in samples if t <= span / 3]
    last = [m for t, m in samples if t >= 2 * span / 3]
    return statistics.fmean(first), statistics.fmean(last)


def _plot(samples: list[tuple[float, float]], first: float, last: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, mib = zip(*samples, strict=True)
    span = t[-1]
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.plot(t, mib, lw=1, label="server RSS")
    ax.hlines([first, last], [0, 2 * span / 3], [span / 3, span], colors="C1", lw=2,
              label="mean of first / last third")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(0, 1.1 * max(mib))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=600, help="seconds of traffic")
    ap.add_argument("--clients", type=int, default=16, help="inference clients + 1 admin")
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--sample-every", type=float, default=2.0, help="RSS sampling, seconds")
    ap.add_argument("--admin-every", type=float, default=5.0, help="admin round, seconds")
    ap.add_argument("--out", type=Path, default=Path("docs"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    model = build_model(work / "model", args.preset)
    store = build_datastore(model, work / "store")
    proc, url = serve(model, store, args.threads, admin_key=ADMIN_KEY)
    tally, samples, done = Tally(), [], threading.Event()
    sampler = threading.Thread(target=_sample_rss,
                               args=(proc.pid, args.sample_every, done, samples))
    try:
        sampler.start()
        end = time.monotonic() + args.duration
        with ThreadPoolExecutor(args.clients) as pool:
            jobs = [pool.submit(_inference_client, url, i, end, tally)
                    for i in range(args.clients - 1)]
            jobs.append(pool.submit(_admin_client, url, end, tally, args.admin_every))
            for job in jobs:
                job.result()
        alive = proc.poll() is None
    finally:
        done.set()
        sampler.join()
        stop(proc)
    if not alive:
        tally.error("server exited")
    first, last = _thirds(samples)
    change = last / first - 1
    errors = sum(tally.errors.values())
    passed = errors == 0 and abs(change) <= RSS_TOLERANCE
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "duration_s": args.duration, "clients": args.clients, "preset": args.preset,
        "threads": args.threads,
        "latency_ms": {kind: {"n": len(v), "p50": round(1e3 * statistics.median(v), 1),
                              "p99": round(1e3 * _percentile(v, 0.99), 1)}
                       for kind, v in sorted(tally.latency.items())},
        "errors": dict(tally.errors), "backpressure_429": tally.backpressure,
        "hung_up_streams": tally.hung_up,
        "rss_mib": {"first_third_mean": round(first, 1), "last_third_mean": round(last, 1),
                    "change": round(change, 4), "samples": samples},
        "verdict": "pass" if passed else "fail"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(samples, first, last, args.out / "soak_rss.png")
    print(f"{args.duration:.0f} s, {args.clients} clients, preset {args.preset}, "
          f"server threads {args.threads}")
    for kind, lat in result["latency_ms"].items():  # type: ignore[union-attr]
        print(f"  {kind:18s} n {lat['n']:6d}  p50 {lat['p50']:8.1f} ms  "
              f"p99 {lat['p99']:8.1f} ms")
    print(f"errors {dict(tally.errors) or 0}; 429 back-pressure {tally.backpressure}; "
          f"streams hung up {tally.hung_up}")
    print(f"server RSS: first third {first:.1f} MiB, last third {last:.1f} MiB "
          f"({100 * change:+.1f}%)")
    print(f"verdict: {result['verdict']} (pass = 0 errors and the last third's RSS "
          f"within {100 * RSS_TOLERANCE:.0f}% of the first third's)")


if __name__ == "__main__":
    main()
