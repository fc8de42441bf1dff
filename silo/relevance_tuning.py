"""Tuning the relevance weight: how a datastore's weight falls off its domain.

With text from outside the datastore's domain, the relevance weight (silo.knnlm:
w = sigmoid((d0 - r) / T)) is tuned at the grid's k and tau: the decay beta of the
context's distance r (silo.relevance; 0: the position's own nearest distance d_1),
where the scores carry the distances to the reference whether d_1 is measured from them,
d0 and T over the spread of r, and lam again with them, so that the datastore makes no
off-domain text worse than the parametric LM by more than a tolerance while keeping as
much of its gain on its own domain as it can. With a document tolerance, each
off-domain document of at least DOCUMENT_TOKENS tokens is held to it as well: a weight
from the context's distance treats a whole document alike, so a document that looks like
the datastore's domain all through is where it can do harm, and a pooled bound lets one
such document hide among the others. As in silo.tuning, the search for the neighbours
runs once; every candidate recombines the cached scores.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from datastore.errors import InvalidInputError
from silo.knnlm import relevance_of
from silo.tuning import (
    Grid,
    GridPoint,
    TargetScores,
    context_distances,
    knn_target_prob,
    mix_at_targets,
    perplexity,
)

RELEVANCE_QUANTILES = tuple(float(q) for q in np.linspace(0.05, 0.95, 19))
RELEVANCE_SPREADS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # T as a share of the distances' IQR
# beta of the context's distance: 0 is the position's own d_1 (the weight before the
# context's distance existed), 1 the mean over the whole context so far
RELEVANCE_DECAYS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0)
# documents shorter than this are not held to the document tolerance alone: over a few
# dozen tokens a perplexity ratio is noise
DOCUMENT_TOKENS = 256


@dataclass(frozen=True)
class RelevanceReport:
    """What `tune_relevance` measured, per domain: the parametric LM's perplexity, the
    datastore's at one weight everywhere (the grid's best point), and at the choice."""

    choice: GridPoint
    uniform_point: GridPoint  # the grid's best, at one weight everywhere
    parametric: dict[str, float]
    uniform: dict[str, float]
    weighted: dict[str, float]
    feasible: bool  # every off-domain perplexity within the tolerance of the LM's
    # at the choice, the worst ratio to the LM of an off-domain document of at least
    # DOCUMENT_TOKENS tokens (1.0 when there is none)
    worst_document: float = 1.0


def relevance_grid(nearest: np.ndarray) -> list[tuple[float, float]]:
    """(d0, T) candidates: d0 at quantiles of the nearest distances, T shares of their
    interquartile range."""
    finite = nearest[np.isfinite(nearest)]
    if not len(finite):
        raise InvalidInputError("no token has a neighbour to tune the relevance weight on")
    d0s = np.quantile(finite, RELEVANCE_QUANTILES)
    q1, q3 = np.quantile(finite, [0.25, 0.75])
    spread = float(q3 - q1) or float(np.abs(finite).mean()) or 1.0
    return [(float(d0), spread * f) for d0 in d0s for f in RELEVANCE_SPREADS]


def _relevance(nearest: np.ndarray, d0: float, temperature: float) -> np.ndarray:
    """silo.knnlm.relevance_of on numpy: (n,) -> (n,) float64."""
    return relevance_of(torch.from_numpy(nearest), d0, temperature).numpy()


class Documents:
    """The documents of one domain's scores with at least DOCUMENT_TOKENS tokens, for
    their perplexity ratios to the LM alone."""

    def __init__(self, scores: TargetScores) -> None:
        starts = np.flatnonzero(scores.starts)
        ends = np.append(starts[1:], len(scores.starts))
        long = ends - starts >= DOCUMENT_TOKENS
        self.starts, self.sizes = starts[long], (ends - starts)[long]
        # reduceat sums each [start, next start) span: spans of short documents in
        # between are summed with the start before them, so every span is cut at its end
        self.bounds = np.stack([self.starts, self.starts + self.sizes], 1).ravel()
        self.lm = self._means(scores.lm_logprob)

    def _means(self, logprob: np.ndarray) -> np.ndarray:
        if not len(self.starts):
            return np.zeros(0)
        padded = np.append(logprob, 0.0)  # a span may end at the very end
        return np.add.reduceat(padded, self.bounds)[::2] / self.sizes

    def worst(self, logprob: np.ndarray) -> float:
        """The largest perplexity ratio to the LM over the documents (1.0 without one)."""
        return float(np.exp(self.lm - self._means(logprob)).max(initial=1.0))


def tune_relevance(own: Mapping[str, TargetScores], off: Mapping[str, TargetScores],
                   best: GridPoint, lams: Sequence[float] = Grid().lams,
                   tolerance: float = 0.01, decays: Sequence[float] = RELEVANCE_DECAYS,
                   document_tolerance: float | None = None) -> RelevanceReport:
    """Choose beta, d0, T and lam at `best`'s k and tau: among the settings that keep
    every off-domain perplexity within `tolerance` of the parametric LM's (and, with
    `document_tolerance`, every off-domain document of at least DOCUMENT_TOKENS tokens
    within that), the one with the lowest mean log-perplexity over the `own` domains;
    when none does, the one whose worst off-domain ratio is lowest. Each domain's scores
    should mark where its sequences start (TargetScores.first): the context's distance
    restarts there, and those are the documents."""
    if not own or not off:
        raise InvalidInputError("tuning the relevance weight needs text of the datastore's "
                                "own domains and text from outside them")
    domains = {**{f"own:{d}": s for d, s in own.items()}, **{f"off:{d}": s
                                                            for d, s in off.items()}}
    parts = {}
    for name, s in domains.items():
        has = np.asarray((s.values[:, :best.k] >= 0).any(1))
        parts[name] = (s.lm_logprob, knn_target_prob(s, best.k, best.temperature), has)
    parametric = {n: perplexity(p[0]) for n, p in parts.items()}
    uniform = {n: perplexity(mix_at_targets(*p, best.lam)) for n, p in parts.items()}
    own_names = [n for n in parts if n.startswith("own:")]
    off_names = [n for n in parts if n.startswith("off:")]
    documents = {n: Documents(domains[n]) for n in off_names}
    # the distance to the reference as a second way to measure it, where it was measured
    margins = (False, True) if all(s.baseline is not None for s in domains.values()) \
        else (False,)
    ranked = []
    for margin, decay in itertools.product(margins, decays):
        context = {n: context_distances(s, best.k, decay, margin) for n, s in domains.items()}
        for d0, t in relevance_grid(np.concatenate(list(context.values()))):
            weights = {n: _relevance(r, d0, t) for n, r in context.items()}
            for lam in lams:
                mixed = {n: mix_at_targets(*p, lam * weights[n]) for n, p in parts.items()}
                ppl = {n: perplexity(x) for n, x in mixed.items()}
                worst = max(ppl[n] / parametric[n] for n in off_names)
                doc = max(documents[n].worst(mixed[n]) for n in off_names)
                ok = worst <= 1 + tolerance and (document_tolerance is None
                                                 or doc <= 1 + document_tolerance)
                own_log = float(np.mean([math.log(ppl[n]) for n in own_names]))
                ranked.append((ok, worst, own_log, d0, t, lam, decay, margin, ppl, doc))
    feasible = [r for r in ranked if r[0]]
    pick = (min(feasible, key=lambda r: r[2]) if feasible
            else min(ranked, key=lambda r: (r[1], r[2])))
    _, _, own_log, d0, t, lam, decay, margin, ppl, doc = pick
    choice = replace(best, lam=lam, relevance=d0, relevance_temperature=t,
                     relevance_decay=decay, relevance_margin=margin,
                     perplexity=float(np.exp(own_log)))
    return RelevanceReport(choice, best, parametric, uniform, ppl, bool(feasible), doc)
