"""Fixtures for the server tests: a tiny model folder, a tiny datastore built with it,
and a live uvicorn server on 127.0.0.1 (a free port) running the real app.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from datastore.config import DatastoreConfig
from datastore.document import Document
from server.app import create_app
from server.settings import Settings
from tests.conftest import make_documents

ADMIN_KEY = "admin-secret"
USER_KEY = "user-secret"
STORE_CONFIG = DatastoreConfig(backend="faiss-flat", block_tokens=16, block_overlap=4,
                               name="tiny")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_lm, tiny_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny-silo"
    tiny_lm.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def build_store(model_dir: Path, folder: Path, docs: list[Document]) -> Path:
    from datastore.store.datastore import Datastore
    from silo.encoder import LMEncoder
    from silo.model import load_lm

    encoder = LMEncoder.from_loaded(load_lm(model_dir))
    Datastore.build(folder, docs, encoder, STORE_CONFIG, progress=False).close()
    return folder


@pytest.fixture(scope="session")
def store_template(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(model_dir, tmp_path_factory.mktemp("stores") / "main",
                       make_documents())


@pytest.fixture
def store_dir(store_template: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny datastore (tests opt out of and add to it)."""
    return Path(shutil.copytree(store_template, tmp_path / "main"))


@dataclass
class Live:
    """A running server: its base url, settings and the app it runs (in this process)."""

    url: str
    settings: Settings
    app: Any = None

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def start_server(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                            log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture
def make_live(tmp_path: Path) -> Iterator[object]:
    """Start servers with given settings; all are stopped at the end of the test."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def make(**overrides: object) -> Live:
        values: dict[str, object] = {"audit_log": tmp_path / "audit.jsonl",
                                     "batch_wait_ms": 1.0}
        values.update(overrides)
        settings = Settings(**values)  # type: ignore[arg-type]
        server, thread, url = start_server(settings)
        running.append((server, thread))
        return Live(url, settings, server.config.app)

    yield make
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def live(make_live, model_dir: Path, store_dir: Path) -> Live:
    """The tiny model with its datastore, admin and user keys set."""
    return make_live(model=model_dir, datastore=store_dir, admin_key=ADMIN_KEY,
                     api_keys=USER_KEY)
