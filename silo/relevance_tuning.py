"""Tuning the relevance weight: how a datastore's weight falls off its domain.

With text from outside the datastore's domain, the relevance weight (silo.knnlm:
w = sigmoid((d0 - d_1) / T)) is tuned at the grid's k and tau: d0 and T over the spread
of the nearest-neighbour distances, and lam again with them, so that the datastore makes
no off-domain text worse than the parametric LM by more than a tolerance while keeping as
much of its gain on its own domain as it can. As in silo.tuning, the search for the
neighbours runs once; every candidate recombines the cached scores.
"""

from __future__ import annotations

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
    knn_target_prob,
    mix_at_targets,
    nearest_distances,
    perplexity,
)

RELEVANCE_QUANTILES = tuple(float(q) for q in np.linspace(0.05, 0.95, 19))
RELEVANCE_SPREADS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # T as a share of the distances' IQR


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


def tune_relevance(own: Mapping[str, TargetScores], off: Mapping[str, TargetScores],
                   best: GridPoint, lams: Sequence[float] = Grid().lams,
                   tolerance: float = 0.01) -> RelevanceReport:
    """Choose d0, T and lam at `best`'s k and tau: among the settings that keep every
    off-domain perplexity within `tolerance` of the parametric LM's, the one with the
    lowest mean log-perplexity over the `own` domains; when none does, the one whose
    worst off-domain ratio is lowest."""
    if not own or not off:
        raise InvalidInputError("tuning the relevance weight needs text of the datastore's "
                                "own domains and text from outside them")
    domains = {**{f"own:{d}": s for d, s in own.items()}, **{f"off:{d}": s
                                                            for d, s in off.items()}}
    parts = {}
    for name, s in domains.items():
        has = np.asarray((s.values[:, :best.k] >= 0).any(1))
        parts[name] = (s.lm_logprob, knn_target_prob(s, best.k, best.temperature), has,
                       nearest_distances(s, best.k))
    pooled = np.concatenate([p[3] for p in parts.values()])
    parametric = {n: perplexity(p[0]) for n, p in parts.items()}
    uniform = {n: perplexity(mix_at_targets(p[0], p[1], p[2], best.lam)) for n, p in parts.items()}
    own_names = [n for n in parts if n.startswith("own:")]
    off_names = [n for n in parts if n.startswith("off:")]
    ranked = []
    for d0, t in relevance_grid(pooled):
        weights = {n: _relevance(p[3], d0, t) for n, p in parts.items()}
        for lam in lams:
            ppl = {n: perplexity(mix_at_targets(p[0], p[1], p[2], lam * weights[n]))
                   for n, p in parts.items()}
            worst = max(ppl[n] / parametric[n] for n in off_names)
            own_log = float(np.mean([math.log(ppl[n]) for n in own_names]))
            ranked.append((worst <= 1 + tolerance, worst, own_log, d0, t, lam, ppl))
    feasible = [r for r in ranked if r[0]]
    pick = (min(feasible, key=lambda r: r[2]) if feasible
            else min(ranked, key=lambda r: (r[1], r[2])))
    _, _, own_log, d0, t, lam, ppl = pick
    choice = replace(best, lam=lam, relevance=d0, relevance_temperature=t,
                     perplexity=float(np.exp(own_log)))
    return RelevanceReport(choice, best, parametric, uniform, ppl, bool(feasible))
