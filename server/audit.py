"""The admin audit log: one JSON line per admin action (who, what, when, outcome).

Lines are appended and fsync'd before the action's response is sent, so the log holds
every acknowledged action.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


class AuditLog:
    """Append-only JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def record(self, who: str, action: str, outcome: str, **detail: Any) -> None:
        line = json.dumps({"time": time.time(), "who": who, "action": action,
                           "outcome": outcome, **detail}, default=str, sort_keys=True)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
