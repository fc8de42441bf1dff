"""Verbatim span lookup for attribution: a suffix array over tokens, as in infini-gram.

`NgramIndex.longest_matches(text)` names the documents that share the longest verbatim
spans with `text`: for each document, its longest span in common with the text, then
documents ranked by that length.

Unit: tokens, each a run of word characters or a single other non-space character
(so "don't." is `don ' t .`). Matching is case-sensitive and ignores whitespace, so
re-wrapped or re-indented text still matches. `SpanMatch.length` counts these tokens;
its offsets are characters, in the document and in the query.

Tokens are kept as 64-bit hashes (blake2b), not strings: the index holds no vocabulary,
segments built at different times agree on ids, and a deleted document leaves nothing
behind once its tokens are gone. A collision needs two distinct tokens in 2^64; it
could at worst lengthen a span by a token.

The index is a list of segments (datastore.suffix), each with its own suffix array over
its documents' tokens (every document ends with a separator token, so no span crosses
documents).
`add` buffers documents; the buffer becomes a segment at the next lookup or save, and
a new segment is merged with the one before it while that one is at most twice its
size, so there are O(log n) segments. A query searches every segment and merges the
answers. `delete` removes documents from their segment at once by dropping their
positions from the suffix array (suffixes compare only up to their own separator, so
the rest stay sorted); `save` writes changed segments and removes replaced files.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from datastore.errors import ConflictError, CorruptDatastoreError, InvalidInputError, NotFoundError
from datastore.suffix import Segment, load_segment, save_segment, tokenize

MANIFEST = "ngram.json"
FORMAT_VERSION = 1
# Below this many occurrences a span is extended by direct comparison instead of
# further binary searches on the suffix array.
_FEW = 16


@dataclass(frozen=True)
class SpanMatch:
    """The longest span `doc_id` shares with the query: `length` tokens at characters
    [doc_start, doc_end) of the document and [query_start, query_end) of the query."""

    doc_id: str
    length: int
    doc_start: int
    doc_end: int
    query_start: int
    query_end: int

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {self.length}")
        if not 0 <= self.doc_start < self.doc_end:
            raise ValueError(f"doc_start/doc_end must satisfy 0 <= start < end for {self.doc_id}")
        if not 0 <= self.query_start < self.query_end:
            raise ValueError(
                f"query_start/query_end must satisfy 0 <= start < end for {self.doc_id}"
            )


# One candidate group of a query: every suffix-array entry sa[a:b] of segment `seg`
# shares `length` tokens with the query from query token `qpos`.
_Group = tuple[int, int, int, int, int]  # (length, qpos, seg, a, b)


def _groups_at(seg_no: int, seg: Segment, q: np.ndarray, i: int, min_length: int) -> list[_Group]:
    """Candidate groups for query tokens q[i:], each occurrence counted at the length of
    its own longest match (ranges shrink as the span grows; what drops out at length L
    matched exactly L)."""
    tokens, sa = seg.tokens, seg.sa
    lo, hi, depth = 0, len(sa), 0
    ranges: list[tuple[int, int]] = []  # ranges[L - 1]: entries matching q[i:i + L]
    while i + depth < len(q) and hi - lo > _FEW:
        value = q[i + depth]

        def key(p: np.int64, d: int = depth) -> np.uint64:
            return tokens[p + d]

        new_lo = bisect.bisect_left(sa, value, lo, hi, key=key)
        new_hi = bisect.bisect_right(sa, value, new_lo, hi, key=key)
        if new_lo == new_hi:
            break
        lo, hi, depth = new_lo, new_hi, depth + 1
        ranges.append((lo, hi))
    groups: list[_Group] = []
    if hi - lo > _FEW:
        # Stopped on a mismatch or at the query's end: all of the last range matched
        # exactly `depth` tokens (depth 0: q[i] occurs nowhere).
        if depth >= min_length:
            groups.append((depth, i, seg_no, lo, hi))
    else:
        groups += _extend(seg_no, seg, q, i, depth, lo, hi, min_length)
    # What each range holds beyond the next (longer) one matched exactly its length.
    for length in range(depth - 1, max(min_length, 1) - 1, -1):
        (a, b), (c, d) = ranges[length - 1], ranges[length]
        groups += [(length, i, seg_no, x, y) for x, y in ((a, c), (d, b)) if x < y]
    return groups


def _extend(
    seg_no: int, seg: Segment, q: np.ndarray, i: int, depth: int, lo: int, hi: int,
    min_length: int,
) -> list[_Group]:
    """Groups of one entry each for sa[lo:hi], whose suffixes all match q[i:i + depth]:
    each extended by direct comparison to its full match length."""
    groups = []
    rest = q[i + depth :]
    tokens = seg.tokens
    for e in range(lo, hi):
        start = seg.sa[e] + depth
        ahead = tokens[start : start + len(rest)]
        same = ahead == rest[: len(ahead)]
        length = depth + (int(np.argmin(same)) if not same.all() else len(same))
        if length >= min_length:
            groups.append((length, i, seg_no, e, e + 1))
    return groups


class NgramIndex:
    """Suffix-array index of documents' tokens, answering longest verbatim matches."""

    def __init__(self, path: Path, segments: list[Segment], next_name: int) -> None:
        self.path = path
        self._segments = segments
        self._pending: list[tuple[str, np.ndarray, np.ndarray]] = []
        self._doc_ids = {d for s in segments for d in s.doc_ids}
        self._next_name = next_name

    @classmethod
    def create(cls, path: Path) -> Self:
        """A new empty index in folder `path` (created; must be absent or empty)."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConflictError(f"{path} already exists and is not an empty folder")
        path.mkdir(parents=True, exist_ok=True)
        index = cls(path, [], 0)
        index.save()
        return index

    @classmethod
    def from_dir(cls, path: Path) -> Self:
        """The index saved in folder `path`."""
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise NotFoundError(f"no n-gram index in {path} (missing {MANIFEST})")
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            if manifest["version"] != FORMAT_VERSION:
                raise ValueError(f"format version {manifest['version']}")
            segments = [load_segment(path, name) for name in manifest["segments"]]
            return cls(path, segments, int(manifest["next_name"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptDatastoreError(f"{path}: unreadable n-gram index: {e}") from None

    def __len__(self) -> int:
        return len(self._doc_ids)

    def add(self, doc_id: str, text: str) -> None:
        """Index a document; its id must be new."""
        if not doc_id:
            raise InvalidInputError("doc_id must not be empty")
        if doc_id in self._doc_ids:
            raise ConflictError(f"document {doc_id!r} is already in the n-gram index")
        self._doc_ids.add(doc_id)
        self._pending.append((doc_id, *tokenize(text)))

    def delete(self, doc_ids: Collection[str]) -> None:
        """Remove documents from lookups now and from disk at `save`; unknown ids are ignored."""
        gone = set(doc_ids) & self._doc_ids
        if not gone:
            return
        self._pending = [p for p in self._pending if p[0] not in gone]
        for s, seg in enumerate(self._segments):
            drop = [d for d, doc_id in enumerate(seg.doc_ids) if doc_id in gone]
            if drop:
                self._segments[s] = seg.without(drop)
        self._segments = [seg for seg in self._segments if seg.doc_ids]
        self._doc_ids -= gone

    def save(self) -> None:
        """Write new and changed segments, then the manifest, then remove stale files."""
        self._flush()
        for seg in self._segments:
            if seg.name is None:
                seg.name = f"seg-{self._next_name:06d}"
                self._next_name += 1
                save_segment(self.path, seg)
        names = [seg.name for seg in self._segments]
        manifest = {"version": FORMAT_VERSION, "segments": names, "next_name": self._next_name}
        tmp = self.path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest), encoding="utf-8")
        os.replace(tmp, self.path / MANIFEST)
        for f in self.path.glob("seg-*.npz"):
            if f.stem not in names:
                f.unlink()

    def _flush(self) -> None:
        """Turn buffered documents into a segment; merge while the previous is small."""
        if not self._pending:
            return
        self._segments.append(Segment.build(self._pending))
        self._pending = []
        segs = self._segments
        while len(segs) >= 2 and len(segs[-2].tokens) <= 2 * len(segs[-1].tokens):
            merged = Segment.build([*segs[-2].documents(), *segs[-1].documents()])
            segs[-2:] = [merged]

    def longest_matches(
        self,
        text: str,
        k: int = 5,
        allow: Callable[[str], bool] | None = None,
        min_length: int = 6,
    ) -> list[SpanMatch]:
        """Up to k documents `allow` accepts, by their longest span (>= min_length
        tokens) shared with `text`: longest first, ties by doc_id; per document the span
        that starts first in `text`, then first in the document."""
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        if min_length < 1:
            raise InvalidInputError(f"min_length must be >= 1, got {min_length}")
        self._flush()
        q, q_offsets = tokenize(text)
        groups = [
            g
            for s, seg in enumerate(self._segments)
            for i in range(len(q) - min_length + 1)
            for g in _groups_at(s, seg, q, i, min_length)
        ]
        groups.sort(key=lambda g: (-g[0], g[1]))
        found: list[SpanMatch] = []
        seen: set[str] = set()
        g = 0
        while g < len(groups) and len(found) < k:
            length = groups[g][0]
            level = []
            while g < len(groups) and groups[g][0] == length:
                level.append(groups[g])
                g += 1
            found += self._new_at_level(level, q_offsets, seen, allow)
        return found[:k]

    def _new_at_level(
        self,
        level: list[_Group],
        q_offsets: np.ndarray,
        seen: set[str],
        allow: Callable[[str], bool] | None,
    ) -> list[SpanMatch]:
        """Matches for documents first met at this length, sorted by doc_id; marks them seen.

        `level` is sorted by query position, so a document's first occurrence in it has
        the earliest query start; among those, the earliest document position wins.
        """
        length = level[0][0]  # the same for the whole level
        best: dict[str, tuple[int, int, int, int]] = {}  # doc_id -> (qpos, pos, seg, d)
        for _, qpos, s, a, b in level:
            seg = self._segments[s]
            positions = seg.sa[a:b]
            docs = np.searchsorted(seg.starts, positions, side="right") - 1
            for pos, d in zip(positions.tolist(), docs.tolist(), strict=True):
                doc_id = seg.doc_ids[d]
                if doc_id in seen:
                    continue
                old = best.get(doc_id)
                if old is None or (qpos, pos) < old[:2]:
                    best[doc_id] = (qpos, pos, s, d)
        seen.update(best)
        matches = []
        for doc_id in sorted(best):
            if allow is not None and not allow(doc_id):
                continue
            qpos, pos, s, _ = best[doc_id]
            offsets = self._segments[s].offsets
            matches.append(
                SpanMatch(
                    doc_id=doc_id,
                    length=length,
                    doc_start=int(offsets[pos, 0]),
                    doc_end=int(offsets[pos + length - 1, 1]),
                    query_start=int(q_offsets[qpos, 0]),
                    query_end=int(q_offsets[qpos + length - 1, 1]),
                )
            )
        return matches
