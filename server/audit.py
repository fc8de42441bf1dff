"""The admin audit log: one entry per admin action, refused ones included (who, what,
when, outcome), written before the action's response is sent.

Entries go to the file `SILO_AUDIT_LOG` names (JSON lines, fsync'd) when it is set, else
into the active datastore's document table (its `audit` table: SQLite in the datastore
folder, or PostgreSQL, shared by every replica). With neither, they go to the service's
log only. What an action changed is also in the datastore's transparency log; the audit
log keeps what the public log must not: who asked, and why.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datastore.table.base import DocumentTable

log = logging.getLogger("server.audit")


class AuditLog:
    """The audit log of one service (see the module docstring)."""

    def __init__(self, path: Path | None, table: Callable[[], DocumentTable | None]) -> None:
        self.path = None if path is None else Path(path)
        self._table = table
        self._lock = threading.Lock()

    def record(self, who: str, action: str, outcome: str, **detail: Any) -> None:
        now = time.time()
        if self.path is not None:
            line = json.dumps({"time": now, "who": who, "action": action,
                               "outcome": outcome, **detail}, default=str, sort_keys=True)
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            return
        table = self._table()
        if table is None:
            log.warning("audit (no datastore to record it in): %s %s %s %s", who, action,
                        outcome, json.dumps(detail, default=str))
            return
        table.record_audit(who, action, outcome, detail, now)

    def entries(self) -> list[dict[str, Any]]:
        if self.path is not None:
            if not self.path.exists():
                return []
            with open(self.path, encoding="utf-8") as fh:
                return [json.loads(line) for line in fh if line.strip()]
        table = self._table()
        return [] if table is None else table.audit_entries()
