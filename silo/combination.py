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
from dataclasses import dataclass

import torch

from datastore.errors import InvalidInputError
from silo.knnlm import (
    KnnParams,
    mass_on_targets,
    mix,
    nearest_distance,
    vote_log_probs,
    vote_logits,
)


def columns(members: Sequence[KnnParams]) -> list[slice]:
    """Each member's columns in the side-by-side neighbour block."""
    out, start = [], 0
    for p in members:
        out.append(slice(start, start + p.k))
        start += p.k
    return out


@dataclass(frozen=True)
class Votes:
    """One member's neighbours as they vote, from one pass over its (n, k) block: the
    log softmax(-d / tau) weights (n, k) float32 (-inf at padding), each row's nearest
    distance d_1 (n,) float64 and log Z = log sum_j e^{-d_j / tau} (n,) float64 (inf
    and -inf for a row without a neighbour)."""

    log_weights: torch.Tensor
    nearest: torch.Tensor
    log_mass: torch.Tensor

    @classmethod
    def of(cls, distances: torch.Tensor, values: torch.Tensor, temperature: float) -> Votes:
        """As silo.knnlm.neighbour_log_weights computes the weights, with log Z summed
        from the nearest so that it cannot underflow."""
        logits, nearest, none = vote_logits(distances, values, temperature)
        log_weights = torch.log_softmax(logits, dim=1).masked_fill_(none, -math.inf)
        rest = torch.logsumexp(logits, dim=1, keepdim=True).double()
        log_mass = (rest - nearest.double() / temperature).masked_fill(none, -math.inf)
        return cls(log_weights.float(), nearest.double()[:, 0], log_mass[:, 0])

    def target_mass(self, values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(n, k) each neighbour's weight where it voted for its row's target, else 0
        (silo.knnlm.target_neighbour_mass)."""
        return mass_on_targets(self.log_weights.exp(), values, targets)


def member_votes(distances: torch.Tensor, values: torch.Tensor,
                 members: Sequence[KnnParams]) -> list[Votes]:
    """Each member's Votes from its columns of the side-by-side block."""
    return [Votes.of(distances[:, c], values[:, c], p.temperature)
            for c, p in zip(columns(members), members, strict=True)]


def member_nearest(distances: torch.Tensor, values: torch.Tensor,
                   members: Sequence[KnnParams], baseline: torch.Tensor | None = None,
                   ) -> torch.Tensor:
    """d_1 of each member's neighbours: (n, sum k) each -> (n, M) float64 (inf where a
    member has no neighbour in the row); for a member whose weight is measured from the
    reference, d_1 - d_ref with `baseline` (n,) the rows' distances d_ref to it."""
    out = torch.stack([nearest_distance(distances[:, c], values[:, c])
                       for c in columns(members)], 1)
    margin = [i for i, p in enumerate(members) if p.margin]
    if margin:
        assert baseline is not None, "a weight measured from the reference needs its distances"
        out[:, margin] -= baseline.to(torch.float64)[:, None]
    return out


VOTES = ("joint", "separate")
# the vote of a set without one of its own whose members are not all weighted by
# relevance (uniform weights): the joint vote is then what one merged store gives (50.18
# against 47.64 on the mixed set, the separate vote 63.49: docs/BENCHMARKS.md)
DEFAULT_VOTE = "joint"


def default_vote(members: Sequence[KnnParams]) -> str:
    """The vote of a set without one of its own (silo.set_tuning): with every member
    weighted by its relevance, separate (each store's weight then says how much its own
    vote counts; 47.05 against the joint vote's 47.70 on the mixed set, and never worse
    in three runs: docs/BENCHMARKS.md); otherwise DEFAULT_VOTE."""
    weighted = bool(members) and all(p.relevance is not None for p in members)
    return "separate" if weighted else DEFAULT_VOTE


def check_vote(vote: str) -> str:
    if vote not in VOTES:
        raise InvalidInputError(f"vote must be one of {list(VOTES)}, got {vote!r}")
    return vote


def member_weights(distances: torch.Tensor, values: torch.Tensor,
                   members: Sequence[KnnParams], vote: str = DEFAULT_VOTE,
                   context: torch.Tensor | None = None) -> torch.Tensor:
    """b_i per row and member under the vote: (n, sum k) each -> (n, M) float64;
    `context` (n, M) the distances relevance is measured from, where not d_1."""
    return weights_of(member_votes(distances, values, members), members, vote, context)


def weights_of(votes: Sequence[Votes], members: Sequence[KnnParams], vote: str = DEFAULT_VOTE,
               context: torch.Tensor | None = None) -> torch.Tensor:
    """`member_weights` from the members' Votes."""
    nearest = torch.stack([v.nearest for v in votes], 1)
    shares = relevance_shares(nearest, members, context)
    if check_vote(vote) == "separate":
        return shares
    return joint_shares(torch.stack([v.log_mass for v in votes], 1), members, shares, nearest)


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


def joint_shares(log_z: torch.Tensor, members: Sequence[KnnParams], shares: torch.Tensor,
                 nearest: torch.Tensor) -> torch.Tensor:
    """b_i of the joint vote from each member's log Z (n, M), the shares a_i (n, M) and
    the nearest distances."""
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


def combined_log_probs(lm: torch.Tensor, distances: torch.Tensor, values: torch.Tensor,
                       members: Sequence[KnnParams], vocab_size: int,
                       vote: str = DEFAULT_VOTE, context: torch.Tensor | None = None,
                       ) -> torch.Tensor:
    """The mixture over the vocabulary: lm (n, V) -> (n, V) float32."""
    votes = member_votes(distances, values, members)
    knn = [vote_log_probs(v.log_weights.exp(), values[:, c], vocab_size)
           for c, v in zip(columns(members), votes, strict=True)]
    return mix(lm, knn, weights_of(votes, members, vote, context))


def combined_target_log_probs(lm_target: torch.Tensor, distances: torch.Tensor,
                              values: torch.Tensor, targets: torch.Tensor,
                              members: Sequence[KnnParams], vote: str = DEFAULT_VOTE,
                              context: torch.Tensor | None = None) -> torch.Tensor:
    """The mixture at each row's target only: lm_target (n,) -> (n,)."""
    votes = member_votes(distances, values, members)
    return mix(lm_target[:, None], target_logs(votes, values, targets, members),
               weights_of(votes, members, vote, context))[:, 0]


def target_logs(votes: Sequence[Votes], values: torch.Tensor, targets: torch.Tensor,
                members: Sequence[KnnParams]) -> list[torch.Tensor]:
    """log p_i(target) of each member's vote, (n, 1) each (-inf where none voted for
    it): what the mixture at the targets weighs."""
    return [v.target_mass(values[:, c], targets).sum(1).log()[:, None]
            for c, v in zip(columns(members), votes, strict=True)]


def contributions(distances: torch.Tensor, values: torch.Tensor, targets: torch.Tensor,
                  members: Sequence[KnnParams], vote: str = DEFAULT_VOTE,
                  context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each neighbour's share of its row's target in the mixture, b_i times its kNN
    mass: (n, sum k) float64; and the weights b_i (n, M)."""
    votes = member_votes(distances, values, members)
    weights = weights_of(votes, members, vote, context)
    mass = torch.cat([v.target_mass(values[:, c], targets).double() * weights[:, i, None]
                      for i, (c, v) in enumerate(zip(columns(members), votes, strict=True))],
                     dim=1)
    return mass, weights
