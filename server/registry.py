"""The datastores a service knows, by name, and which one is active.

Each opened datastore gets its own `SiloLM` sharing the one model, so swapping is a
reference swap: a request holds the SiloLM it started with and finishes on it, while
requests that start after the swap get the new one. Datastores open lazily, on first
use or activation, under a lock (opening checks every file's checksum).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from datastore.errors import NotFoundError
from datastore.store.datastore import Datastore
from silo.lm import SiloLM


class DatastoreRegistry:
    """name -> folder, name -> opened SiloLM, and the active name (None: parametric)."""

    def __init__(self, paths: dict[str, Path], active: str | None,
                 open_lm: Callable[[Path], SiloLM], parametric: SiloLM) -> None:
        if active is not None and active not in paths:
            raise NotFoundError(f"no datastore named {active!r}")
        self.paths = dict(paths)
        self._open_lm = open_lm
        self._parametric = parametric
        self._loaded: dict[str, SiloLM] = {}
        self._lock = threading.Lock()
        self._active = active

    @property
    def active(self) -> str | None:
        return self._active

    def lm(self, name: str | None = None) -> SiloLM:
        """The SiloLM of datastore `name` (the active one if None)."""
        name = name or self._active
        if name is None:
            return self._parametric
        found = self._loaded.get(name)
        if found is not None:
            return found
        if name not in self.paths:
            raise NotFoundError(
                f"no datastore named {name!r}; known: {', '.join(sorted(self.paths)) or 'none'}")
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self._open_lm(self.paths[name])
            return self._loaded[name]

    def activate(self, name: str) -> SiloLM:
        """Open `name` if needed, then make it the active datastore (atomically)."""
        lm = self.lm(name)
        self._active = name
        return lm

    def name_of(self, lm: SiloLM) -> str | None:
        """The name under which `lm` was opened; None for the parametric one."""
        return next((n for n, x in self._loaded.items() if x is lm), None)

    def loaded(self) -> dict[str, SiloLM]:
        return dict(self._loaded)

    def datastore(self, name: str | None = None) -> Datastore:
        """The datastore object of `name` (active if None); a NotFoundError if none."""
        store = self.lm(name).datastore
        if store is None:
            raise NotFoundError("no datastore is active; the service runs parametric only")
        return store

    def close(self) -> None:
        for lm in self._loaded.values():
            if lm.datastore is not None:
                lm.datastore.close()
