"""Several datastores in one mixture (c-BTM for datastores). Pure functions over torch
tensors, as silo.knnlm for one datastore.

    p    = (1 - sum_i a_i) p_LM + sum_i a_i p_i          a_i = lam_i w_i
    w_i  = e^{s_i} / (1 + sum_j e^{s_j})                 s_i = (d0_i - d_1i) / T_i

p_i is datastore i's kNN distribution for the position (its k_i neighbours at its tau_i),
d_1i the distance to its nearest allowed neighbour, and d0_i, T_i its tuned relevance
weight (silo.knnlm.KnnParams.relevance). The weights are a softmax over the options, the
parametric LM at score 0 and each datastore at s_i, so relevance is absolute, not only a
share among datastores: a context far from every datastore gets the LM alone. With one
datastore w = sigmoid(s), its weight alone. When a member has no relevance weight (or
the request turns it off) the weights are uniform, w_i = 1 / n. A member without an
allowed neighbour for a row takes no part in it (w_i = 0).

The neighbours of the members sit side by side in one (n, sum_i k_i) block, member i's
k_i columns after those of the members before it (`columns`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from silo.knnlm import (
    KnnParams,
    knn_log_probs,
    mix,
    nearest_distance,
    target_neighbour_mass,
)


def columns(members: Sequence[KnnParams]) -> list[slice]:
    """Each member's columns in the side-by-side neighbour block."""
    out, start = [], 0
    for p in members:
        out.append(slice(start, start + p.k))
        start += p.k
    return out


def member_weights(distances: torch.Tensor, values: torch.Tensor,
                   members: Sequence[KnnParams]) -> torch.Tensor:
    """a_i = lam_i w_i per row and member: (n, sum k) each -> (n, M) float64."""
    cols = columns(members)
    nearest = torch.stack([nearest_distance(distances[:, c], values[:, c]) for c in cols], 1)
    present = torch.isfinite(nearest)
    lams = torch.tensor([p.lam for p in members], dtype=torch.float64)
    if all(p.relevance is not None for p in members):
        d0 = torch.tensor([p.relevance for p in members], dtype=torch.float64)
        t = torch.tensor([p.relevance_temperature for p in members], dtype=torch.float64)
        scores = ((d0 - nearest) / t).masked_fill(~present, -math.inf)
        # the LM's option at score 0 joins the softmax
        options = torch.cat([torch.zeros(len(scores), 1, dtype=torch.float64), scores], 1)
        w = torch.softmax(options, dim=1)[:, 1:]
    else:
        w = present.to(torch.float64) / len(members)
    return w * lams


def combined_log_probs(lm: torch.Tensor, distances: torch.Tensor, values: torch.Tensor,
                       members: Sequence[KnnParams], vocab_size: int) -> torch.Tensor:
    """The mixture over the vocabulary: lm (n, V) -> (n, V) float32."""
    weights = member_weights(distances, values, members)
    knn = [knn_log_probs(distances[:, c], values[:, c], vocab_size, p.temperature)
           for c, p in zip(columns(members), members, strict=True)]
    return mix(lm, knn, weights)


def combined_target_log_probs(lm_target: torch.Tensor, distances: torch.Tensor,
                              values: torch.Tensor, targets: torch.Tensor,
                              members: Sequence[KnnParams]) -> torch.Tensor:
    """The mixture at each row's target only: lm_target (n,) -> (n,)."""
    weights = member_weights(distances, values, members)
    knn = [target_neighbour_mass(distances[:, c], values[:, c], targets, p.temperature)
           .sum(1).log()[:, None] for c, p in zip(columns(members), members, strict=True)]
    return mix(lm_target[:, None], knn, weights)[:, 0]


def contributions(distances: torch.Tensor, values: torch.Tensor, targets: torch.Tensor,
                  members: Sequence[KnnParams]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each neighbour's share of its row's target in the mixture, a_i times its kNN
    mass: (n, sum k) float64; and the weights a_i (n, M)."""
    weights = member_weights(distances, values, members)
    mass = torch.cat([target_neighbour_mass(distances[:, c], values[:, c], targets,
                                            p.temperature).double() * weights[:, i, None]
                      for i, (c, p) in enumerate(zip(columns(members), members, strict=True))],
                     dim=1)
    return mass, weights
