"""Several datastores in one mixture (c-BTM for datastores). Pure functions over torch
tensors, as silo.knnlm for one datastore.

    p    = (1 - sum_i b_i) p_LM + sum_i b_i p_i
    a_i  = lam_i w_i,   w_i = e^{s_i} / (1 + sum_j e^{s_j}),   s_i = (d0_i - d_1i) / T_i

p_i is datastore i's kNN distribution for the position (its k_i neighbours at its tau_i),
d_1i the distance to its nearest allowed neighbour (or, where the member's relevance
decay is set, the context's distance to it: silo.relevance, passed in as `context`),
and d0_i, T_i its tuned relevance weight (silo.knnlm.KnnParams.relevance). The weights
are a softmax over the options, the parametric LM at score 0 and each datastore at s_i,
so relevance is absolute, not only a share among datastores: a context far from every
datastore gets the LM alone. With one datastore w = sigmoid(s), its weight alone. When
a member has no relevance weight (or the request turns it off) the weights are uniform,
w_i = 1 / n. A member without an allowed neighbour for a row takes no part in it
(w_i = 0).

How the kNN side's share sum_i a_i is divided among the datastores is the vote:

    separate   b_i = a_i: each datastore's neighbours vote among themselves, and the
               datastores' distributions are mixed at their weights
    joint      one vote over every member's neighbours, neighbour j of datastore i at
               logit -d_ij / tau_i + log a_i (its relevance as an offset on the
               distances): b_i = (sum_k a_k) a_i Z_i / sum_k a_k Z_k with
               Z_i = sum_j e^{-d_ij / tau_i}, so a datastore with nearer neighbours
               takes more of the share, as in one merged store (MassiveDS)

With one datastore the two are the same. The neighbours of the members sit side by side
in one (n, sum_i k_i) block, member i's k_i columns after those of the members before it
(`columns`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from datastore.errors import InvalidInputError
from silo.knnlm import (
    KnnParams,
    knn_log_probs,
    mix,
    nearest_distance,
    relative_logits,
    target_neighbour_mass,
)


def columns(members: Sequence[KnnParams]) -> list[slice]:
    """Each member's columns in the side-by-side neighbour block."""
    out, start = [], 0
    for p in members:
        out.append(slice(start, start + p.k))
        start += p.k
    return out


def member_nearest(distances: torch.Tensor, values: torch.Tensor,
                   members: Sequence[KnnParams]) -> torch.Tensor:
    """d_1 of each member's neighbours: (n, sum k) each -> (n, M) float64 (inf where a
    member has no neighbour in the row)."""
    return torch.stack([nearest_distance(distances[:, c], values[:, c])
                        for c in columns(members)], 1)


VOTES = ("joint", "separate")
DEFAULT_VOTE = "joint"  # measured against "separate" in docs/BENCHMARKS.md


def check_vote(vote: str) -> str:
    if vote not in VOTES:
        raise InvalidInputError(f"vote must be one of {list(VOTES)}, got {vote!r}")
    return vote


def member_weights(distances: torch.Tensor, values: torch.Tensor,
                   members: Sequence[KnnParams], vote: str = DEFAULT_VOTE,
                   context: torch.Tensor | None = None) -> torch.Tensor:
    """b_i per row and member under the vote: (n, sum k) each -> (n, M) float64;
    `context` (n, M) the distances relevance is measured from, where not d_1."""
    nearest = member_nearest(distances, values, members)
    shares = relevance_shares(nearest, members, context)
    if check_vote(vote) == "separate":
        return shares
    return joint_shares(distances, values, members, shares, nearest)


def relevance_shares(nearest: torch.Tensor, members: Sequence[KnnParams],
                     context: torch.Tensor | None = None) -> torch.Tensor:
    """a_i = lam_i w_i per row and member from the nearest distances (n, M), or from
    the `context` distances (n, M) where given; a member without a neighbour in the row
    (nearest inf) has no share either way."""
    present = torch.isfinite(nearest)
    if context is not None:
        nearest = context.to(torch.float64)
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


def joint_shares(distances: torch.Tensor, values: torch.Tensor, members: Sequence[KnnParams],
                 shares: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
    """b_i of the joint vote from the shares a_i (n, M) and the nearest distances."""
    log_z = torch.stack([_log_mass(distances[:, c], values[:, c], p.temperature)
                         for c, p in zip(columns(members), members, strict=True)], 1)
    total = shares.sum(1, keepdim=True)
    logits = torch.log(shares) + log_z
    # every logit -inf with a share somewhere: tau so small that -d_1 / tau overflows;
    # the limit tau -> 0 gives it all to the nearest by d_1 / tau (compared as logs)
    lost = ~torch.isfinite(logits).any(1, keepdim=True) & (total > 0)
    if lost.any():
        taus = torch.tensor([p.temperature for p in members], dtype=torch.float64)
        ratio = (nearest.log() - taus.log()).masked_fill(shares <= 0, math.inf)
        logits = torch.where(lost, torch.where(ratio == ratio.amin(1, keepdim=True),
                                               torch.log(shares), -math.inf), logits)
    split = torch.softmax(logits, dim=1).nan_to_num(nan=0.0)
    return total * split


def _log_mass(distances: torch.Tensor, values: torch.Tensor, temperature: float,
              ) -> torch.Tensor:
    """log Z = log sum_j e^{-d_j / tau} over each row's valid neighbours (n,) float64,
    summed from the nearest so that the sum cannot underflow; -inf for a row without a
    neighbour."""
    logits, nearest, none = relative_logits(distances, values, temperature, torch.float64)
    rest = torch.logsumexp(logits, dim=1, keepdim=True)
    return (rest - nearest / temperature).masked_fill(none, -math.inf)[:, 0]


def combined_log_probs(lm: torch.Tensor, distances: torch.Tensor, values: torch.Tensor,
                       members: Sequence[KnnParams], vocab_size: int,
                       vote: str = DEFAULT_VOTE, context: torch.Tensor | None = None,
                       ) -> torch.Tensor:
    """The mixture over the vocabulary: lm (n, V) -> (n, V) float32."""
    weights = member_weights(distances, values, members, vote, context)
    knn = [knn_log_probs(distances[:, c], values[:, c], vocab_size, p.temperature)
           for c, p in zip(columns(members), members, strict=True)]
    return mix(lm, knn, weights)


def combined_target_log_probs(lm_target: torch.Tensor, distances: torch.Tensor,
                              values: torch.Tensor, targets: torch.Tensor,
                              members: Sequence[KnnParams], vote: str = DEFAULT_VOTE,
                              context: torch.Tensor | None = None) -> torch.Tensor:
    """The mixture at each row's target only: lm_target (n,) -> (n,)."""
    weights = member_weights(distances, values, members, vote, context)
    knn = [target_neighbour_mass(distances[:, c], values[:, c], targets, p.temperature)
           .sum(1).log()[:, None] for c, p in zip(columns(members), members, strict=True)]
    return mix(lm_target[:, None], knn, weights)[:, 0]


def contributions(distances: torch.Tensor, values: torch.Tensor, targets: torch.Tensor,
                  members: Sequence[KnnParams], vote: str = DEFAULT_VOTE,
                  context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each neighbour's share of its row's target in the mixture, b_i times its kNN
    mass: (n, sum k) float64; and the weights b_i (n, M)."""
    weights = member_weights(distances, values, members, vote, context)
    mass = torch.cat([target_neighbour_mass(distances[:, c], values[:, c], targets,
                                            p.temperature).double() * weights[:, i, None]
                      for i, (c, p) in enumerate(zip(columns(members), members, strict=True))],
                     dim=1)
    return mass, weights
