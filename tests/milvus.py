"""A throwaway Milvus server for tests: the `milvus` package's standalone server
(`milvus-server`, Milvus 2.3.5 with embedded etcd and local storage) in a temporary
folder, every port it lets one choose a free one (its embedded etcd always takes peer port
2380, so one such server runs per machine). It answers in about 40 s; tests start it once per module
or session. `pause` freezes it (an outage) and `resume` ends the outage; a killed
server restarted on the same data waits out its stale etcd sessions (minutes), so tests
use pause.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.pg import _free_port

PORT_OPTIONS = ("--etcd-port", "--root-coord-port", "--proxy-internal-port",
                "--query-coord-port", "--query-node-port", "--index-coord-port",
                "--index-node-port", "--data-coord-port", "--data-node-port")
START_TIMEOUT_S = 180


def find_server() -> str | None:
    """The milvus-server script, beside this interpreter or on the PATH."""
    beside = Path(sys.executable).parent / "milvus-server"
    return str(beside) if beside.exists() else shutil.which("milvus-server")


def missing() -> str | None:
    """Why a Milvus server cannot be started here, or None."""
    if find_server() is None:
        return "the Milvus server is not installed (pip install -e '.[milvus]')"
    try:
        import pymilvus  # noqa: F401
    except ImportError:
        return "pymilvus is not installed (pip install -e '.[milvus]')"
    return None


class MilvusServer:
    """One standalone server: its URI, stop (kill) and start."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.ports = {option: _free_port() for option in PORT_OPTIONS}
        self.uri = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [find_server() or "milvus-server", "--data", str(self.folder / "data"),
                "--proxy-port", str(self.port)]
        for option, port in self.ports.items():
            args += [option, str(port)]
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 (the child keeps it)
        self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self._wait()

    def _wait(self) -> None:
        from pymilvus import MilvusClient

        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                break
            try:
                MilvusClient(uri=self.uri, timeout=3).list_collections()
                return
            except Exception:
                time.sleep(2)
        tail = (self.folder / "server.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"the Milvus server did not come up:\n{tail}")

    def pause(self) -> None:
        """Freeze the server (an outage: connections stay open, nothing answers)."""
        assert self._proc is not None
        os.killpg(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        os.killpg(self._proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Kill the server and everything it started (an outage, not a shutdown)."""
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait()
        self._proc = None


@contextmanager
def milvus_server() -> Iterator[MilvusServer]:
    """A started server in a new temporary folder, killed and removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="silo-milvus-"))
    server = MilvusServer(folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
