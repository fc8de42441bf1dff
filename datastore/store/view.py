"""What a search reads, and how it is swapped: the view of the document table, the entry
filters computed over it, and the lock between searches and index writes.

Searches never take a lock on the opt-out path: they read the current `View` (an
immutable reference to a `TableSnapshot` and what it was read at), compute or reuse its
`EntryFilter`, search, and retry if an opt-out swapped the snapshot meanwhile, so a
search that starts after an opt-out is acknowledged never returns a removed document.
Writes that change the index itself (adds, compaction, a reindex) hold the index's write
lock; searches hold its read lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from datastore.filter import EntryFilter, SearchFilter, compute_filter
from datastore.table.log import EMPTY_HEAD, LogHead
from datastore.table.records import TableSnapshot, snapshot_of

FILTER_CACHE = 32  # filters kept per snapshot (one per distinct policy/scope)


@dataclass(frozen=True)
class View:
    """What a search reads, swapped as one reference: the table snapshot, the change
    sequence it reflects (at least), the transparency log's head (every change the log
    holds below its size is in the snapshot), and for a shared index the fence to search
    at and the rows whose index delete is not yet behind it (excluded by expression)."""

    snapshot: TableSnapshot
    seq: int
    log: LogHead = EMPTY_HEAD
    fence: int = 0
    pending: tuple[int, ...] = ()


EMPTY_VIEW = View(snapshot_of((), (), (), np.zeros(0, bool), np.zeros((0, 4), np.int64)), -1)


class Views:
    """The current view, the filters computed over it (cached per snapshot and request),
    and the lock under which the view is swapped (one reload or write at a time)."""

    def __init__(self) -> None:
        self.current = EMPTY_VIEW
        self.lock = threading.Lock()
        self._filters: OrderedDict[tuple[int, SearchFilter], EntryFilter] = OrderedDict()

    @property
    def snapshot(self) -> TableSnapshot:
        return self.current.snapshot

    def after_write(self, snap: TableSnapshot, seq: int, log: LogHead | None = None,
                    **shared: Any) -> None:
        """Install the state after this process's own write of sequence `seq`: labelled
        `seq`, with the log's head after the write, only when nothing else was written
        since the view was read (else the next sync reloads). The caller holds `lock`."""
        view = self.current
        alone = view.seq == seq - 1
        self.current = replace(view, snapshot=snap, seq=seq if alone else view.seq,
                               log=log if alone and log is not None else view.log, **shared)

    def filter_of(self, snap: TableSnapshot, request: SearchFilter | None) -> EntryFilter:
        """The filter of `request` over `snap`, computed once per snapshot (datastore.filter
        decides it)."""
        key = (id(snap), request or SearchFilter())
        found = self._filters.get(key)
        if found is not None and found.docs is snap:
            return found
        entry_filter = compute_filter(snap, key[1])
        self._filters[key] = entry_filter
        while len(self._filters) > FILTER_CACHE:
            self._filters.popitem(last=False)
        return entry_filter

    def carry_filters(self, old: TableSnapshot, new: TableSnapshot, rows: np.ndarray) -> None:
        """Derive the warm filters of `old` for `new`, which differs by more removed `rows`
        (cheaply), so the next search after an opt-out pays no rebuild."""
        for (snap_id, request), entry_filter in list(self._filters.items()):
            if snap_id == id(old) and entry_filter.docs is old:
                self._filters[(id(new), request)] = entry_filter.excluding(new, rows)


class ReadWriteLock:
    """Many readers or one writer (searches vs. index mutation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()
