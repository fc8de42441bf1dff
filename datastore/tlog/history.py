"""A document's history in the log: the leaves that name it, replayed in order, and its
status at the log's size (live, opted out, purged, or never added)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from datastore.errors import InvalidInputError
from datastore.tlog.leaf import Action, Leaf

LIVE, OPTED_OUT, PURGED, NEVER_ADDED = "live", "opted out", "purged", "never added"
# what each action does to a document it names: (event name, status after it)
_EVENTS = {Action.ADD: ("added", LIVE), Action.OPTOUT: ("opted out", OPTED_OUT),
           Action.PURGE: ("purged", PURGED)}


@dataclass(frozen=True)
class Event:
    """One leaf that names a matching document."""

    index: int
    time: str
    action: str  # "added", "opted out" or "purged"
    id_sha256: str


@dataclass(frozen=True)
class History:
    """What the log says of the documents matching the hashes, at log size `size`.

    `documents` pairs each matching document (by id hash) with its status; `status` sums
    them up: live if any is live, else opted out, else purged, else never added.
    """

    id_sha256: str | None
    text_sha256: str | None
    size: int
    events: tuple[Event, ...]
    documents: tuple[tuple[str, str], ...]
    status: str

    def summary(self) -> str:
        named = " and ".join(f"{what} sha256 {h[:16]}…" for what, h in
                             (("id", self.id_sha256), ("text", self.text_sha256)) if h)
        return f"document with {named}: {self.status} at log size {self.size}"


def replay(leaves: Sequence[Leaf | None], id_sha256: str | None = None,
           text_sha256: str | None = None) -> History:
    """Replay the log for the documents whose id hash and/or text hash match (both, when
    both are given). leaves[i] is leaf i; None stands for one that could not be decoded."""
    if id_sha256 is None and text_sha256 is None:
        raise InvalidInputError("name the document by the hash of its id, of its text, or both")
    events, status = [], {}
    for index, leaf in enumerate(leaves):
        if leaf is None or leaf.action not in _EVENTS:
            continue
        name, after = _EVENTS[leaf.action]
        for d in leaf.documents:
            if id_sha256 in (None, d.id_sha256) and text_sha256 in (None, d.text_sha256):
                events.append(Event(index, leaf.time, name, d.id_sha256))
                status[d.id_sha256] = after
    overall = next((s for s in (LIVE, OPTED_OUT, PURGED) if s in status.values()),
                   NEVER_ADDED)
    return History(id_sha256, text_sha256, len(leaves), tuple(events),
                   tuple(status.items()), overall)
