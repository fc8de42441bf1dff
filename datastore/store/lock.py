"""One writer at a time per datastore folder, across processes.

Every write of a local folder (a build for its whole run; an add, an opt-out, a
compaction or a reindex for its own duration, from the command line or from `silo serve`)
holds an exclusive `flock` on `writer.lock` in the folder, and writes who holds it (pid,
command, since when) into the file. A second writer is refused at once, or after a short
wait for a short write, with a `WriterBusyError` naming the holder, and writes nothing.
The kernel releases the lock when its holder dies (`kill -9` included), so a lock is
never left behind.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from datastore.errors import WriterBusyError

LOCK_FILE = "writer.lock"
POLL_S = 0.05


def this_command() -> str:
    """What this process is, for the message a second writer gets."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200] if sys.argv else "python"


class FolderLock:
    """The writer lock of one datastore folder."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE

    @contextmanager
    def hold(self, what: str, wait_s: float = 0.0) -> Iterator[None]:
        """Hold the lock while the block runs; WriterBusyError if another process keeps
        it past `wait_s` seconds."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.ENOENT):
                raise
            yield  # a folder this process cannot write (or that is not there): no writer
            return  # to keep out, and any write fails on its own
        try:
            self._acquire(fd, what, time.monotonic() + wait_s)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": this_command(),
                                          "writing": what, "since": time.time()}).encode(), 0)
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _acquire(self, fd: int, what: str, deadline: float) -> None:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WriterBusyError(f"{self.path.parent} is being written by "
                                          f"{self._holder(fd)}; nothing was written ({what} "
                                          "refused). Try again when it has finished") from None
                time.sleep(POLL_S)

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            info = {}
        if not info:
            return "another process"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
        return (f"process {info.get('pid')} ({info.get('command')}: {info.get('writing')}, "
                f"since {since})")
