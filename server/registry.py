"""The datastores a service knows, by name, and which one is active.

Each opened datastore gets its own `SiloLM` sharing the one model, so swapping is a
reference swap: a request holds the SiloLM it started with and finishes on it, while
requests that start after the swap get the new one. Datastores open lazily, on first
use or activation, under a lock (opening checks every file's checksum). A request over
several datastores gets one SiloLM combining theirs (`SiloLM.combine`), made once per
set of names.

`resolve` turns a request's `datastore` / `datastores` and its key's allowed
datastores into the SiloLM that serves it: an unknown name is a 404, one the key may not
use a 403, an empty list a 400.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from datastore.errors import InvalidInputError, NotFoundError
from datastore.store.datastore import Datastore
from server.errors import ApiError
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
        self._combined: dict[tuple[str, ...], SiloLM] = {}
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
        self._known(name)
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self._open_lm(self.paths[name])
            return self._loaded[name]

    def combined(self, names: Sequence[str]) -> SiloLM:
        """The SiloLM over the datastores `names` (two or more; sorted, so that a set is
        served the same whatever order it is named in)."""
        key = tuple(sorted(set(names)))
        found = self._combined.get(key)
        if found is not None:
            return found
        members = [(n, self.lm(n)) for n in key]
        with self._lock:
            if key not in self._combined:
                self._combined[key] = SiloLM.combine(members)
            return self._combined[key]

    def resolve(self, datastore: str | None, datastores: Sequence[str] | str | None,
                allowed: frozenset[str] | None = None,
                default: Sequence[str] | None = None) -> SiloLM:
        """The SiloLM for a request that names `datastore` or `datastores` (a list, or
        "all": every datastore `allowed` may use); with neither, the `default` set
        (["all"] for all; None: the active datastore), as far as `allowed` goes."""
        if datastore is not None and datastores is not None:
            raise InvalidInputError("give silo.datastore or silo.datastores, not both")
        if datastore is not None:
            return self.lm(self._allowed([datastore], allowed)[0])
        if datastores is not None:
            if isinstance(datastores, str):
                if datastores != "all":
                    raise InvalidInputError(f"datastores must be a list of names or 'all', "
                                            f"got {datastores!r}")
                names = self._usable(allowed)
            else:
                if not datastores:
                    raise InvalidInputError("datastores must name at least one datastore")
                names = self._allowed(datastores, allowed)
            return self._serving(names)
        if default is None:
            name = self._active
            if name is not None and allowed is not None and name not in allowed:
                names = self._usable(allowed)
                return self._serving(names)
            return self.lm(name)
        names = (self._usable(allowed) if list(default) == ["all"]
                 else [n for n in default if allowed is None or n in allowed])
        if not names:
            raise ApiError(403, "this key may use none of the default datastores ("
                           f"{', '.join(default)}); name one it may use", "permission_error",
                           "datastore_not_allowed")
        return self._serving(names)

    def _serving(self, names: Sequence[str]) -> SiloLM:
        return self.lm(names[0]) if len(set(names)) == 1 else self.combined(names)

    def _known(self, name: str) -> None:
        if name not in self.paths:
            raise NotFoundError(
                f"no datastore named {name!r}; known: {', '.join(sorted(self.paths)) or 'none'}")

    def _allowed(self, names: Sequence[str], allowed: frozenset[str] | None) -> list[str]:
        for name in names:
            self._known(name)
            if allowed is not None and name not in allowed:
                raise ApiError(403, f"this key may not use datastore {name!r}; it may use "
                               f"{', '.join(sorted(allowed))}", "permission_error",
                               "datastore_not_allowed")
        return list(names)

    def _usable(self, allowed: frozenset[str] | None) -> list[str]:
        names = sorted(n for n in self.paths if allowed is None or n in allowed)
        if not names:
            raise ApiError(403, "this key may use none of the service's datastores",
                           "permission_error", "datastore_not_allowed")
        return names

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

    def datastore(self, name: str | None = None, allowed: frozenset[str] | None = None,
                  ) -> Datastore:
        """The datastore object of `name` (active if None); a NotFoundError if none, a
        403 when `allowed` does not hold it."""
        target = name or self._active
        if allowed is not None and target is not None:  # none: the 404 below says so
            self._allowed([target], allowed)
        store = self.lm(name).datastore
        if store is None:
            raise NotFoundError("no datastore is active; the service runs parametric only")
        return store

    def close(self) -> None:
        for lm in self._loaded.values():
            if lm.datastore is not None:
                lm.datastore.close()
