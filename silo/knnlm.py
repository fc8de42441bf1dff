"""kNN-LM: the neighbour vote, its interpolation with the parametric LM, and the mass each
neighbour gave to a token (for attribution). Pure functions over torch tensors.

    p_kNN(y) = sum over neighbours i with value v_i = y of softmax_i(-d_i / tau)
    p(y)     = (1 - lam w) * p_LM(y) + lam w * p_kNN(y)    (lam weights the kNN side)
    w        = sigmoid((d0 - r) / T)                       (relevance; w = 1 when off)

w says how relevant the datastore is to this context: d_1 is the squared distance of the
query to its nearest neighbour, d0 the distance at which the datastore gets half its
weight, T how sharply the weight falls. It is a softmax over two options, the datastore
at distance d_1 and the parametric LM at a fixed d0, so a context far from everything in
the datastore gets the LM alone. d0 and T are tuned with k, lam and tau (silo.tuning).
r is d_1, or with a relevance decay beta > 0 the context's distance: d_1 averaged over
the sequence's positions so far (silo.relevance), which the caller passes in as `nearest`.
With `relevance_margin`, d_1 is measured from the query's distance to a reference index
over the LM's own training text (d_1 - d_ref: silo.relevance), so that text the LM
already knows well counts as far from the datastore even where it lands near its keys.

d_i are squared L2 distances, as every datastore backend returns them; neighbours padded
with entry id -1 (fewer than k allowed entries) take no part. A row with no neighbour at
all has no kNN distribution, and its mixture is the parametric one (lam acts as 0).
Everything is computed in log space, so tiny kNN masses and long-tail LM probabilities
survive in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from datastore.errors import InvalidInputError

MAX_K = 4096  # the most neighbours a request may ask for (the API's silo.k)
MAX_KNN_TEMPERATURE = 1e6  # the API's limit on silo.knn_temperature
FLOAT32_TAU = 1e-30  # from this temperature up, neighbour weights are computed in float32


@dataclass(frozen=True)
class KnnParams:
    """k neighbours, interpolation weight lam (kNN side), softmax temperature tau, and
    `pointers`: follow the successors of the neighbours that voted for the observed token
    instead of searching while at least this many remain (datastore.pointers; 0: search
    at every position)."""

    k: int = 1024
    lam: float = 0.25
    temperature: float = 1.0
    pointers: int = 0
    relevance: float | None = None  # d0 of the relevance weight; None: w = 1 everywhere
    relevance_temperature: float = 1.0  # T of the relevance weight
    # beta of the context's distance (silo.relevance); 0: the position's own d_1
    relevance_decay: float = 0.0
    # whether d_1 is measured from the distance to the reference (silo.relevance)
    relevance_margin: bool = False

    def __post_init__(self) -> None:
        if self.k < 1:
            raise InvalidInputError(f"k must be >= 1, got {self.k}")
        if not 0.0 <= self.lam <= 1.0:
            raise InvalidInputError(f"lam must be in [0, 1], got {self.lam}")
        if not self.temperature > 0:
            raise InvalidInputError(f"temperature must be > 0, got {self.temperature}")
        if self.pointers < 0:
            raise InvalidInputError(f"pointers must be >= 0, got {self.pointers}")
        if self.relevance is not None and not math.isfinite(self.relevance):
            raise InvalidInputError(f"relevance must be a finite distance, got "
                                    f"{self.relevance}")
        if not (math.isfinite(self.relevance_temperature) and self.relevance_temperature > 0):
            raise InvalidInputError(f"relevance_temperature must be > 0, got "
                                    f"{self.relevance_temperature}")
        if not 0.0 <= self.relevance_decay <= 1.0:
            raise InvalidInputError(f"relevance_decay must be in [0, 1], got "
                                    f"{self.relevance_decay}")

    @property
    def smooths(self) -> bool:
        """Whether the weight is measured from the context's distance (silo.relevance)
        rather than the position's own nearest neighbour: with a decay, or from the
        reference (whose distances the caller carries, as it carries the context's)."""
        return self.relevance is not None and (self.relevance_decay > 0
                                               or self.relevance_margin)

    @property
    def margin(self) -> bool:
        """Whether the weight reads the distance to the reference (silo.relevance)."""
        return self.relevance is not None and self.relevance_margin

    def row_lam(self, distances: torch.Tensor, values: torch.Tensor,
                nearest: torch.Tensor | None = None) -> float | torch.Tensor:
        """The kNN side's weight per row: lam, or with relevance on lam * w (n,) float32,
        from the rows' neighbours (distances (n, k), values (n, k), -1 = padding), or
        from `nearest` (n,) where given: the distance to measure it from (the context's,
        silo.relevance)."""
        if self.relevance is None or self.lam == 0.0:
            return self.lam
        if nearest is None:
            nearest = nearest_distance(distances, values)
        return self.lam * relevance_of(nearest, self.relevance,
                                       self.relevance_temperature).float()


def nearest_distance(distances: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(n,) the smallest valid neighbour distance of each row (float64; inf for a row
    without one)."""
    # the minimum in the distances' own dtype, then widened: the same value, without a
    # float64 copy of the whole block
    d = distances.masked_fill((values < 0) | torch.isnan(distances), math.inf)
    return d.amin(dim=1).to(torch.float64)


def relevance_of(nearest: torch.Tensor, d0: float, temperature: float) -> torch.Tensor:
    """w = sigmoid((d0 - d_1) / T) from the nearest distances d_1 (n,) -> (n,) float64;
    0 where d_1 is inf (no neighbour)."""
    return torch.sigmoid((d0 - nearest.double()) / temperature)


def neighbour_log_weights(distances: torch.Tensor, values: torch.Tensor,
                          temperature: float) -> torch.Tensor:
    """log softmax(-d / tau) over each row's valid neighbours.

    distances (n, k) squared L2, values (n, k) int64 with -1 for padding -> (n, k)
    float32 log weights, -inf at padding; a row with no valid neighbour is all -inf.
    """
    logits, _, none = vote_logits(distances, values, temperature)
    out = torch.log_softmax(logits, dim=1).masked_fill_(none, -math.inf)
    return out.float()


def vote_logits(distances: torch.Tensor, values: torch.Tensor, temperature: float,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`relative_logits` in the dtype the vote is computed in: float32, or below
    FLOAT32_TAU float64, so that tau keeps its value down to the smallest denormal (in
    float32 a tau below 1e-45 is 0 and d / tau is nan)."""
    return relative_logits(distances, values, temperature,
                           torch.float32 if temperature >= FLOAT32_TAU else torch.float64)


def relative_logits(distances: torch.Tensor, values: torch.Tensor, temperature: float,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-(d - d_1) / tau per neighbour in `dtype`, measured from each row's nearest valid
    neighbour d_1: (n, k) logits (-inf at padding), d_1 (n, 1) (inf without one) and the
    rows without a valid neighbour (n, 1) bool, whose logits are not meaningful."""
    d = distances.to(dtype, copy=True)
    d.masked_fill_((values < 0) | torch.isnan(distances), math.inf)
    # measured from the nearest valid neighbour, whose logit is then exactly 0: however
    # small tau (or large d), the nearest keeps its weight instead of all of them
    # underflowing to -inf; tau -> 0 tends to a vote of the nearest neighbours alone
    nearest = d.amin(dim=1, keepdim=True)
    none = ~torch.isfinite(nearest)  # rows with no valid neighbour
    # padding: inf - nearest = inf, a logit of -inf
    logits = d.sub_(nearest.masked_fill(none, 0.0)).div_(-temperature)
    return logits, nearest, none


def knn_log_probs(distances: torch.Tensor, values: torch.Tensor, vocab_size: int,
                  temperature: float) -> torch.Tensor:
    """log p_kNN over the vocabulary.

    distances (n, k), values (n, k) int64 (-1 = padding) -> (n, vocab_size) float32;
    -inf for tokens no neighbour voted for (every token of a row with no neighbour).
    """
    return vote_log_probs(neighbour_log_weights(distances, values, temperature).exp(),
                          values, vocab_size)


def vote_log_probs(weights: torch.Tensor, values: torch.Tensor, vocab_size: int,
                   ) -> torch.Tensor:
    """log of the neighbours' weights (n, k) summed per token they voted for (values
    (n, k), -1 = padding, whose weight is 0) -> (n, vocab_size) float32."""
    probs = torch.zeros(values.shape[0], vocab_size, dtype=torch.float32,
                        device=values.device)
    probs.scatter_add_(1, values.clamp(min=0), weights)  # padding adds 0 to token 0
    return probs.log()


def interpolate(lm_log_probs: torch.Tensor, knn_log_probs: torch.Tensor,
                lam: float | torch.Tensor, has_neighbours: torch.Tensor | None = None,
                ) -> torch.Tensor:
    """log((1 - lam) p_LM + lam p_kNN), per row.

    lm_log_probs, knn_log_probs (n, V) -> (n, V). `has_neighbours` (n,) bool marks rows
    with a kNN distribution; the others keep the LM's row unchanged. lam = 0 returns
    `lm_log_probs` itself, bit for bit. `lam` may be a weight per row (n,) (KnnParams.
    row_lam): a row whose weight is 0 keeps the LM's row bit for bit too.
    """
    if isinstance(lam, torch.Tensor):
        return _interpolate_rows(lm_log_probs, knn_log_probs, lam, has_neighbours)
    if lam == 0.0:
        return lm_log_probs
    if lam == 1.0:
        mixed = knn_log_probs
    else:
        mixed = torch.logaddexp(lm_log_probs + math.log1p(-lam), knn_log_probs + math.log(lam))
    if has_neighbours is None:
        return mixed
    return torch.where(has_neighbours[:, None], mixed, lm_log_probs)


def _interpolate_rows(lm_log_probs: torch.Tensor, knn_log_probs: torch.Tensor,
                      lam: torch.Tensor, has_neighbours: torch.Tensor | None) -> torch.Tensor:
    """`interpolate` with a weight per row: `mix` with one kNN distribution."""
    weights = lam.to(torch.float64)
    if has_neighbours is not None:
        weights = weights * has_neighbours
    return mix(lm_log_probs, [knn_log_probs], weights[:, None])


def mix(lm: torch.Tensor, knn: Sequence[torch.Tensor], weights: torch.Tensor,
        ) -> torch.Tensor:
    """log((1 - sum_i a_i) p_LM + sum_i a_i p_i), a weight a_i per row and distribution:
    lm (n, X) and each of `knn` (n, X) log-probs, weights (n, M). A row where no a_i is
    positive keeps the LM's row bit for bit (silo.combination mixes several datastores
    with it, `interpolate` one with a weight per row)."""
    rest = torch.log1p(-weights.sum(1).clamp(max=1.0))  # -inf when the kNN side takes all
    logw = torch.log(weights)  # -inf for a distribution without a share
    parts = [lm + rest[:, None].to(lm.dtype)]
    parts += [p + logw[:, i, None].to(p.dtype) for i, p in enumerate(knn)]
    mixed = torch.logsumexp(torch.stack(parts), dim=0)
    none = weights.sum(1) <= 0
    return torch.where(none[:, None], lm, mixed)


def mixed_log_probs(lm: torch.Tensor, distances: torch.Tensor, values: torch.Tensor,
                    lam: float | torch.Tensor, temperature: float) -> torch.Tensor:
    """`interpolate(lm, knn_log_probs(distances, values, V, temperature), lam, rows with
    neighbours)` without the log of the (n, V) kNN distribution or an (n, V) logaddexp:
    a token no neighbour voted for gets the LM's log-prob plus log(1 - lam) (exactly
    what the mixture gives it), and the mixture is computed at the neighbours' tokens
    alone, by the same formulas (equal up to the last bit of float32 rounding, since
    torch's vectorised and scalar exp differ). lm (n, V) log-probs; lam a float or
    (n,) per row."""
    if not isinstance(lam, torch.Tensor) and lam == 0.0:
        return lm
    weights = neighbour_log_weights(distances, values, temperature).exp()
    tokens = values.clamp(min=0)  # padding adds 0 to token 0, and reads token 0's mass
    probs = torch.zeros_like(lm).scatter_add_(1, tokens, weights)
    knn_at = probs.gather(1, tokens).log()  # (n, k) log p_kNN at the voted tokens
    has = torch.isfinite(knn_at).any(dim=1)
    at = interpolate(lm.gather(1, tokens), knn_at, lam, has)  # the mixture there
    share = (lam.to(torch.float64) if isinstance(lam, torch.Tensor)
             else torch.full((len(lm),), lam, dtype=torch.float64)) * has
    rest = torch.log1p(-share.clamp(max=1.0)).to(lm.dtype)  # log(1 - lam), 0 without
    return (lm + rest[:, None]).scatter_(1, tokens, at)


def target_log_probs(lm_target: torch.Tensor, distances: torch.Tensor, values: torch.Tensor,
                     targets: torch.Tensor, lam: float | torch.Tensor, temperature: float,
                     ) -> torch.Tensor:
    """log((1 - lam) p_LM(y) + lam p_kNN(y)) at each row's target y only: what
    `interpolate(lm, knn_log_probs(...))` gives at the targets, without the (n, V) tensors.

    lm_target (n,) log p_LM(y), distances (n, k), values (n, k), targets (n,) -> (n,).
    """
    if not isinstance(lam, torch.Tensor) and lam == 0.0:
        return lm_target  # as interpolate returns it, without computing the weights
    weights = neighbour_log_weights(distances, values, temperature).exp()
    knn = mass_on_targets(weights, values, targets).sum(dim=1).log()
    return interpolate(lm_target[:, None], knn[:, None], lam, (weights > 0).any(dim=1))[:, 0]


def mass_on_targets(weights: torch.Tensor, values: torch.Tensor, targets: torch.Tensor,
                     ) -> torch.Tensor:
    """(n, k) neighbour weights where the neighbour's value is its row's target, else 0."""
    return torch.where(values == targets[:, None], weights, torch.zeros_like(weights))


def target_neighbour_mass(distances: torch.Tensor, values: torch.Tensor,
                          targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """The kNN probability mass each neighbour gave to its row's target token.

    distances (n, k), values (n, k), targets (n,) -> (n, k) float32: softmax weight where
    the neighbour's value is the target, 0 elsewhere. Rows sum to p_kNN(target); times lam
    this is each neighbour's contribution to the mixture (DESIGN: Attribution).
    """
    return mass_on_targets(neighbour_log_weights(distances, values, temperature).exp(),
                            values, targets)
