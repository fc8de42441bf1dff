"""A served app for the benchmarks: a randomly initialised preset (weights do not change
the cost), a small datastore built with it from the test corpus, and the server in its
own process.

The server is `uvicorn --factory server.app:create_app` on 127.0.0.1 at a free port,
with `OMP_NUM_THREADS` = `threads` and the settings given as `SILO_*` variables; with
`max_requests` it stops by itself after that many requests (`--limit-max-requests`),
and `stop` ends it in any case.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import make_documents  # noqa: E402
from tests.server.conftest import STORE_CONFIG, free_port  # noqa: E402


def median_seconds(fn: Callable[[], object], n: int) -> float:
    """Median wall seconds of `n` calls of `fn`."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def build_model(folder: Path, preset: str) -> Path:
    from silo.model import build_lm
    from silo.tokenizer import train_tokenizer

    texts = [f"the quick brown fox {i} jumps over the lazy dog {i * 7}" for i in range(200)]
    tok = train_tokenizer(texts, vocab_size=2000)
    build_lm(preset, len(tok), special_ids=(tok.bos_token_id, tok.eos_token_id,
                                            tok.pad_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_datastore(model: Path, folder: Path) -> Path:
    from datastore.store.datastore import Datastore
    from silo.encoder import LMEncoder
    from silo.model import load_lm

    encoder = LMEncoder.from_loaded(load_lm(model))
    Datastore.build(folder, make_documents(), encoder, STORE_CONFIG, progress=False).close()
    return folder


def serve(model: Path, store: Path, threads: int = 1, max_requests: int | None = None,
          **settings: object) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server process; returns it and its base url once it answers."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "SILO_MODEL": str(model),
           "SILO_DATASTORE": str(store), "SILO_AUDIT_LOG": str(store.parent / "audit.jsonl"),
           "PYTHONPATH": str(ROOT),
           **{f"SILO_{name.upper()}": str(value) for name, value in settings.items()}}
    limit = ["--limit-max-requests", str(max_requests)] if max_requests else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "server.app:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *limit],
        env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code < 500:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError("the server did not start within 120 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server process, killing it if it does not end within 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
