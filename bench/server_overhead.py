"""Server overhead and batching: the served API against calling SiloLM directly.

    python bench/server_overhead.py [--preset mini] [--requests 20]

Measures, in one run on one machine: p50 latency of a 32-token greedy completion
(direct `SiloLM.generate` vs `POST /v1/completions`), single-client scoring throughput
(direct `SiloLM.score` vs echo+max_tokens=0 requests), and scoring throughput with 16
concurrent clients vs 1. Model: a randomly initialised preset (weights do not change
the cost), parametric mode, no datastore.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.settings import Settings  # noqa: E402
from silo.lm import GenerationRequest, ScoreRequest, SiloLM, SiloOptions  # noqa: E402
from tests.server.conftest import start_server  # noqa: E402

PARAMETRIC = SiloOptions(mode="parametric")


def _model(folder: Path, preset: str) -> Path:
    from silo.model import build_lm
    from silo.tokenizer import train_tokenizer

    texts = [f"the quick brown fox {i} jumps over the lazy dog {i * 7}" for i in range(200)]
    tok = train_tokenizer(texts, vocab_size=2000)
    build_lm(preset, len(tok), special_ids=(tok.bos_token_id, tok.eos_token_id,
                                            tok.pad_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _p50(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    args = ap.parse_args()
    folder = _model(Path(tempfile.mkdtemp()) / "model", args.preset)
    lm = SiloLM.from_dirs(folder)
    prompt = tuple(range(10, 10 + args.prompt_tokens))
    gen = GenerationRequest(prompt, max_tokens=32, temperature=0, options=PARAMETRIC)
    score = ScoreRequest(prompt, options=PARAMETRIC)
    _, _, url = start_server(Settings(model=folder, audit_log=Path(tempfile.mkdtemp()) / "a"))
    http = httpx.Client(base_url=url, timeout=300)
    body_gen = {"prompt": list(prompt), "max_tokens": 32, "temperature": 0}
    body_score = {"prompt": list(prompt), "max_tokens": 0, "echo": True, "logprobs": 0}
    n = args.requests
    lm.generate(gen), http.post("/v1/completions", json=body_gen)  # warm up
    direct_gen = _p50(lambda: lm.generate(gen), n)
    served_gen = _p50(lambda: http.post("/v1/completions", json=body_gen).raise_for_status(), n)
    direct_score = _p50(lambda: lm.score([score]), n)
    served_score = _p50(lambda: http.post("/v1/completions", json=body_score)
                        .raise_for_status(), n)

    def burst(clients: int, per_client: int) -> float:
        def one(_: int) -> None:
            with httpx.Client(base_url=url, timeout=300) as c:
                for _ in range(per_client):
                    c.post("/v1/completions", json=body_score).raise_for_status()
        t = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(clients)))
        return clients * per_client / (time.perf_counter() - t)

    one_client = burst(1, 4 * n)
    sixteen = burst(16, max(1, n // 4))
    print(f"32-token completion p50: direct {direct_gen * 1e3:.1f} ms, served "
          f"{served_gen * 1e3:.1f} ms (x{served_gen / direct_gen:.3f})")
    print(f"scoring p50 ({len(prompt)} tokens): direct {direct_score * 1e3:.2f} ms, served "
          f"{served_score * 1e3:.2f} ms; throughput ratio served/direct "
          f"{direct_score / served_score:.3f}")
    print(f"scoring throughput: 1 client {one_client:.1f} req/s, 16 clients "
          f"{sixteen:.1f} req/s (x{sixteen / one_client:.2f})")


if __name__ == "__main__":
    main()
