"""Pointers: the entry after a neighbour as a candidate for the next token (RetoMaton).

Entry e of a document predicted the token at its position + 1; entry e + 1 of the same
document is the state after that token. When a neighbour e of position t voted for the
token that really came next (its value equals the observed token), e + 1 is a good
neighbour for position t + 1, and following it costs one distance per candidate instead
of a search (Alon et al., 2022, "Neuro-symbolic language modeling with automaton-augmented
retrieval"). A search is made only where too few such pointers remain.

    Datastore.follow(queries, previous, tokens, k, filter, min_pointers)
        -> (distances, ids, searched)

Followed entries pass the same entry filter as every search (datastore.filter): an
excluded document's entries are never followed, so the equivalence guarantee holds on
this path too. Their distances are exact squared L2 to the stored fp16 keys.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from datastore.filter import EntryFilter

# (queries (q, dim), k) -> (distances (q, k), ids (q, k)): the index under one filter
Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def successors(entry_filter: EntryFilter, values: np.ndarray, previous: np.ndarray,
               tokens: np.ndarray) -> np.ndarray:
    """The entries to follow: previous (q, k) entry ids (-1 padded) and the token that
    came next at each of the q positions (q,) -> (q, k) int64 ids of e + 1 for every
    neighbour e that voted for that token, is followed in its own document by e + 1,
    and whose e + 1 the filter allows; -1 elsewhere."""
    prev = np.asarray(previous, dtype=np.int64)
    out = np.full(prev.shape, -1, np.int64)
    docs = entry_filter.docs
    if docs.n_entries == 0:
        return out
    safe = np.clip(prev, 0, docs.n_entries - 1)
    # the few neighbours that voted for the token: the document lookups run on them only
    rows, cols = np.nonzero((prev >= 0) & (values[safe] == np.asarray(tokens)[:, None]))
    succ = prev[rows, cols] + 1
    in_doc = succ < docs.entry_end[docs.rows_of_entries(safe[rows, cols])]  # same document
    keep = in_doc & ~entry_filter.excludes(succ)
    out[rows[keep], cols[keep]] = succ[keep]
    return out


def exact_distances(keys: np.ndarray, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Squared L2 from each query (q, dim) to the keys of its ids (q, k) -> (q, k)
    float32, inf at -1. Only the ids present are gathered: followed rows are mostly -1
    (a few of k neighbours voted for the token)."""
    dist = np.full(ids.shape, np.inf, np.float32)
    rows, cols = np.nonzero(ids >= 0)
    if len(rows):
        # torch casts fp16 to fp32 about 10x faster than numpy, which has no F16C path
        gathered = torch.from_numpy(np.ascontiguousarray(keys[ids[rows, cols]])).float()
        diff = gathered.numpy() - np.asarray(queries, dtype=np.float32)[rows]
        dist[rows, cols] = np.einsum("nd,nd->n", diff, diff)
    return dist


def compact(ids: np.ndarray) -> np.ndarray:
    """(q, k) ids, -1 padded -> (q, w) with each row's ids first, in their order, and w
    the most any row has (at least 1): followed rows hold a few ids among k, and the
    distances and the sort then run over w columns instead of k."""
    valid = ids >= 0
    counts = valid.sum(axis=1)
    rows, cols = np.nonzero(valid)
    at = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    out = np.full((len(ids), max(int(counts.max(initial=0)), 1)), -1, np.int64)
    out[rows, at] = ids[rows, cols]
    return out


def nearest(dist: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of each row, nearest first, padded with (inf, -1)."""
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    dist, ids = np.take_along_axis(dist, order, 1), np.take_along_axis(ids, order, 1)
    if ids.shape[1] < k:  # pad after the sort, which then runs over the given columns only
        pad = k - ids.shape[1]
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return dist, ids


def follow(entry_filter: EntryFilter, keys: np.ndarray, values: np.ndarray,
           queries: np.ndarray, previous: np.ndarray | None, tokens: np.ndarray | None,
           k: int, min_pointers: int, search: Search,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kNN neighbours of q queries under one entry filter, following pointers where at
    least `min_pointers` of them remain and calling `search` (the index, under the same
    filter) elsewhere. `Datastore.follow` runs this against its current snapshot.

    queries (q, dim) float32; previous (q, k') the neighbours of each query's position
    before (None or -1 rows: none, so search); tokens (q,) the token that came after
    that position. Returns distances (q, k) float32, entry ids (q, k) int64 (-1 padded)
    and searched (q,) bool.
    """
    q = np.asarray(queries, dtype=np.float32)
    if previous is None or tokens is None:
        follow_ids = np.full((len(q), 1), -1, np.int64)
    else:
        follow_ids = successors(entry_filter, values, previous, tokens)
    searched = (follow_ids >= 0).sum(axis=1) < max(min_pointers, 1)
    dist = np.full((len(q), k), np.inf, np.float32)
    ids = np.full((len(q), k), -1, np.int64)
    if searched.any():
        dist[searched], ids[searched] = search(q[searched], k)
    kept = ~searched
    if kept.any():
        followed = compact(follow_ids[kept])
        d = exact_distances(keys, q[kept], followed)
        dist[kept], ids[kept] = nearest(d, followed, k)
    return dist, ids, searched
