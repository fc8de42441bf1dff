"""The N most likely tokens of a kNN-LM mixture, exactly, without the (n, V) mixture.

A token no neighbour voted for has p(y) = (1 - a) p_LM(y), which orders such tokens as
the LM does; so the mixture's N most likely tokens lie among the LM's N most likely and
the tokens the neighbours voted for. The mixture is computed at those candidates alone:
each neighbour vote's mass for a candidate comes from the row's values sorted once and a
prefix sum of their weights (a search per candidate), not from a (n, V) scatter. With a
large vocabulary (SmolLM2's 49,152 tokens) this is most of the cost of top logprobs.
"""

from __future__ import annotations

import math

import torch

from silo.combination import columns, member_weights
from silo.knnlm import KnnParams, nearest_distance, neighbour_log_weights
from silo.request import Plan


def voted_mass(distances: torch.Tensor, values: torch.Tensor, temperature: float,
               tokens: torch.Tensor) -> torch.Tensor:
    """The kNN probability mass each row's neighbours give to each of its `tokens`:
    distances, values (m, k), tokens (m, c) -> (m, c) float64."""
    weights = neighbour_log_weights(distances, values, temperature).exp().double()
    ordered, order = values.sort(dim=1)
    cum = torch.cat([torch.zeros(len(values), 1, dtype=torch.float64),
                     weights.gather(1, order).cumsum(1)], dim=1)
    left = torch.searchsorted(ordered, tokens.contiguous())
    right = torch.searchsorted(ordered, tokens.contiguous(), right=True)
    return cum.gather(1, right) - cum.gather(1, left)


def _weights(distances: torch.Tensor, values: torch.Tensor, plan: Plan,
             context: torch.Tensor | None) -> tuple[list[KnnParams], list[slice], torch.Tensor]:
    """The members, their columns and their weights a_i (m, M) float64, as the mixer
    weighs them (one datastore: lam, or lam w with the relevance weight; `context` (m, M)
    the distances relevance is measured from, where not each row's d_1)."""
    if plan.members:
        members = list(plan.members)
        return members, columns(members), member_weights(distances, values, members,
                                                          plan.vote, context)
    lam = plan.knn.row_lam(distances, values, None if context is None else context[:, 0])
    a = (lam.double() if isinstance(lam, torch.Tensor)
         else torch.full((len(values),), float(lam), dtype=torch.float64))
    # a row has a kNN distribution where it has a usable neighbour (knnlm)
    has = torch.isfinite(nearest_distance(distances, values))
    return [plan.knn], [slice(0, values.shape[1])], (a * has)[:, None]


def mixture_top(lm: torch.Tensor, distances: torch.Tensor, values: torch.Tensor,
                plan: Plan, n: int, context: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The n most likely tokens of the plan's mixture and their log-probs, per row:
    lm (m, V) log-probs, distances, values (m, k) -> values (m, n), ids (m, n)."""
    n = min(n, lm.shape[1])
    members, cols, a = _weights(distances, values, plan, context)
    top_lm = lm.topk(n, dim=1).indices
    cand = torch.cat([values.clamp(min=0), top_lm], dim=1)  # padding looks like token 0
    invalid = torch.cat([values < 0, torch.zeros_like(top_lm, dtype=torch.bool)], dim=1)
    lm_cand = lm.gather(1, cand).double()
    p = (1 - a.sum(1, keepdim=True).clamp(max=1.0)) * lm_cand.exp()
    for i, (c, params) in enumerate(zip(cols, members, strict=True)):
        p = p + a[:, i, None] * voted_mass(distances[:, c], values[:, c],
                                           params.temperature, cand)
    with torch.no_grad():
        scores = torch.log(p)
    none = a.sum(1) <= 0  # no datastore takes part: the LM's log-probs as they are
    scores = torch.where(none[:, None], lm_cand, scores)
    # each token once: of equal candidates only the first in sorted order counts
    ordered, order = cand.masked_fill(invalid, -1).sort(dim=1, stable=True)
    repeat = torch.zeros_like(invalid)
    repeat.scatter_(1, order[:, 1:], ordered[:, 1:] == ordered[:, :-1])
    # a valid token of probability 0 (lambda 1, no vote) still ranks above a masked one
    scores = scores.clamp(min=-_FLOOR).masked_fill(invalid | repeat, -math.inf)
    best, at = scores.topk(n, dim=1)
    return best.masked_fill(best <= -_FLOOR, -math.inf).float(), cand.gather(1, at)


_FLOOR = 1e300  # below every finite log-prob
