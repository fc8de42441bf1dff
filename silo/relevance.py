"""The context's distance to a datastore: the nearest-neighbour distance averaged over the
positions of a sequence so far, which the relevance weight is measured from.

One position's nearest distance d_1 is a noisy sign of the datastore's relevance: text
about computing (the Python docs) lands as near FOLDOC's keys at many positions as FOLDOC's
own text does. Over a sequence the two drift apart, as c-BTM routes experts by the whole
context, not the last token. So the weight is measured from an exponentially weighted
average of d_1 over the positions of the sequence up to and including this one:

    r_t = sum_{s <= t} beta^(t - s) d_s / sum_{s <= t} beta^(t - s)

beta = 0 is the position's own d_1 (the weight as before); beta = 1 the mean over the
whole context. Positions without a neighbour (d_s = inf) take no part; r_t is inf while
no position had one. `beta` is tuned with the weight (silo.relevance_tuning) and stored
as KnnParams.relevance_decay, one per datastore (M of them in a combination).

What is averaged may be d_1 measured from the LM's own text (KnnParams.relevance_margin):
d_1 - d_ref, with d_ref the query's distance to its nearest entry of a reference index
over the LM's training text (silo.retrieval). Text about computing that the LM was
trained on (the Python docs) lands as near FOLDOC's keys as FOLDOC's own text, but much
nearer the reference; FOLDOC's text the other way round. The reference holds none of the
datastore's documents and is searched without a filter, so an opt-out or a scope never
changes d_ref, and in a combination every member reads the same d_ref.

A trace is the running sums (num, den) of one sequence, per datastore: scoring carries it
from position to position (`smooth`, rows of several sequences in order), generation from
step to step (`advance`, one row per sequence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Trace:
    """The running sums of a sequence so far, per datastore: num = sum beta^(t-s) d_s and
    den = sum beta^(t-s) over its positions with a neighbour, (M,) float64 each."""

    num: np.ndarray
    den: np.ndarray

    @classmethod
    def empty(cls, members: int) -> Trace:
        return cls(np.zeros(members), np.zeros(members))

    @property
    def distance(self) -> np.ndarray:
        """r = num / den (M,), inf where no position had a neighbour."""
        return context_distance(self.num, self.den)


def context_distance(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, inf where den is 0: (..., M) -> (..., M) float64."""
    safe = np.where(den > 0, den, 1.0)
    return np.where(den > 0, num / safe, np.inf)


def advance(num: np.ndarray, den: np.ndarray, nearest: np.ndarray,
            decays: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """One position more for each row: num, den (n, M) of each row's sequence so far and
    the position's nearest distances (n, M) -> the new num, den (n, M)."""
    beta = np.asarray(decays, dtype=np.float64)
    found = np.isfinite(nearest)
    return (num * beta + np.where(found, nearest, 0.0), den * beta + found)


def smooth(nearest: np.ndarray, first: np.ndarray, decays: Sequence[float],
           carry: Trace | None = None) -> tuple[np.ndarray, Trace]:
    """r_t for rows that are consecutive positions of sequences in order: nearest (n, M),
    `first` (n,) bool marks a row that starts a sequence, `carry` the trace of the
    sequence the first rows continue (a new one when None). Returns r (n, M) float64 and
    the trace after the last row."""
    n, m = nearest.shape
    trace = carry or Trace.empty(m)
    num, den = trace.num.copy(), trace.den.copy()
    out = np.empty((n, m), np.float64)
    # one column at a time over plain floats: a Python loop over rows, but no numpy call
    # per row (a 400-token prompt takes well under a millisecond)
    for j, beta in enumerate(decays):
        nu, de = float(num[j]), float(den[j])
        col = out[:, j]
        for i, (d, f) in enumerate(zip(nearest[:, j].tolist(), first.tolist(), strict=True)):
            if f:
                nu = de = 0.0
            nu *= beta
            de *= beta
            if d != np.inf and d == d:  # finite (a distance is never -inf)
                nu += d
                de += 1.0
            col[i] = nu / de if de > 0 else np.inf
        num[j], den[j] = nu, de
    return out, Trace(num, den)
