"""Suffix arrays over token hashes: the segments the verbatim index (datastore.ngram)
searches.

Unit: tokens, each a run of word characters or a single other non-space character
(so "don't." is `don ' t .`), kept as 64-bit blake2b hashes. A segment is a run of
documents with one suffix array over their tokens; every document ends with a separator
token, so no span crosses documents, and dropping a document's positions keeps the rest
of the array sorted (suffixes compare only up to their own separator).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datastore.errors import CorruptDatastoreError

_TOKEN = re.compile(r"\w+|[^\w\s]")
# Ends every document. No token hashes to it, and it sorts after every token.
SEP = np.uint64(2**64 - 1)


def tokenize(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Token hashes (n,) uint64 (never SEP) and character offsets (n, 2) int64 of `text`."""
    spans, hashes = [], []
    for m in _TOKEN.finditer(text):
        spans.append(m.span())
        digest = hashlib.blake2b(m.group().encode("utf-8"), digest_size=8).digest()
        hashes.append(int.from_bytes(digest, "little") % int(SEP))
    return np.array(hashes, dtype=np.uint64), np.array(spans, dtype=np.int64).reshape(-1, 2)


def suffix_array(keys: np.ndarray) -> np.ndarray:
    """Suffix array of `keys` (n,) int64 by prefix doubling, O(n log^2 n).

    Returns sa (n,) int64: the start positions of the suffixes in sorted order. The last
    key must be unique (a separator), so that all suffixes differ.
    """
    n = len(keys)
    rank = np.unique(keys, return_inverse=True)[1].astype(np.int64)
    sa = np.argsort(rank, kind="stable")
    k = 1
    while n and rank[sa[-1]] < n - 1:  # until every suffix has its own rank
        # Sort by (rank of first k keys, rank of the next k keys): first 2k keys.
        second = np.full(n, -1, dtype=np.int64)
        second[: max(n - k, 0)] = rank[k:]
        sa = np.lexsort((second, rank))
        first, nxt = rank[sa], second[sa]
        changed = (first[1:] != first[:-1]) | (nxt[1:] != nxt[:-1])
        rank = np.empty(n, dtype=np.int64)
        rank[sa] = np.concatenate(([0], np.cumsum(changed)))
        k *= 2
    return sa.astype(np.int64)


@dataclass
class Segment:
    """Documents with one suffix array. Document d holds token positions
    [starts[d], starts[d + 1] - 1); position starts[d + 1] - 1 is its separator.

    doc_ids (n_docs,); starts (n_docs + 1,) int64; tokens (n,) uint64;
    offsets (n, 2) int64 character offsets in the document (separators: (-1, -1));
    sa (n,) int64; name: its file stem once saved and unchanged since, else None.
    """

    doc_ids: list[str]
    starts: np.ndarray
    tokens: np.ndarray
    offsets: np.ndarray
    sa: np.ndarray
    name: str | None = None

    @classmethod
    def build(cls, docs: list[tuple[str, np.ndarray, np.ndarray]]) -> Segment:
        """A segment over (doc_id, token hashes, offsets) triples."""
        sep_offsets = np.full((1, 2), -1, dtype=np.int64)
        tokens = np.concatenate([t for _, h, _ in docs for t in (h, [SEP])]).astype(np.uint64)
        offsets = np.concatenate([o for _, _, off in docs for o in (off, sep_offsets)])
        lengths = [len(h) + 1 for _, h, _ in docs]
        starts = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        return cls([d for d, _, _ in docs], starts, tokens, offsets,
                   segment_suffix_array(tokens, starts))

    def documents(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for d, doc_id in enumerate(self.doc_ids):
            a, b = self.starts[d], self.starts[d + 1] - 1
            yield doc_id, self.tokens[a:b], self.offsets[a:b]

    def without(self, drop: Collection[int]) -> Segment:
        """This segment less the documents at indices `drop`, suffix array kept sorted."""
        keep_doc = np.ones(len(self.doc_ids), dtype=bool)
        keep_doc[list(drop)] = False
        keep = np.repeat(keep_doc, np.diff(self.starts))  # per position
        new_pos = np.cumsum(keep) - 1
        lengths = np.diff(self.starts)[keep_doc]
        return Segment(
            doc_ids=[d for d, k in zip(self.doc_ids, keep_doc, strict=True) if k],
            starts=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
            tokens=self.tokens[keep],
            offsets=self.offsets[keep],
            sa=new_pos[self.sa[keep[self.sa]]],
        )


def segment_suffix_array(tokens: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Suffix array of a segment: separators made distinct, later documents' larger."""
    keys = np.unique(tokens, return_inverse=True)[1].astype(np.int64)
    sep_pos = starts[1:] - 1
    keys[sep_pos] = keys.max(initial=0) + 1 + np.arange(len(sep_pos))
    return suffix_array(keys)


def save_segment(path: Path, seg: Segment) -> None:
    assert seg.name is not None
    with (path / f"{seg.name}.npz").open("wb") as f:
        np.savez(
            f,
            doc_ids=np.array(seg.doc_ids, dtype=str),
            starts=seg.starts,
            tokens=seg.tokens,
            offsets=seg.offsets,
            sa=seg.sa,
        )
        f.flush()
        os.fsync(f.fileno())


def load_segment(path: Path, name: str) -> Segment:
    with np.load(path / f"{name}.npz", allow_pickle=False) as z:
        seg = Segment(
            doc_ids=[str(d) for d in z["doc_ids"]],
            starts=z["starts"],
            tokens=z["tokens"],
            offsets=z["offsets"],
            sa=z["sa"],
            name=name,
        )
    n = len(seg.tokens)
    if not (len(seg.starts) == len(seg.doc_ids) + 1 and seg.starts[-1] == n == len(seg.sa)):
        raise CorruptDatastoreError(f"{path / name}.npz: inconsistent array sizes")
    return seg
